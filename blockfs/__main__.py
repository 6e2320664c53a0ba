"""``python -m blockfs``: the ``blockfs`` command."""

import sys

from .cli import main

sys.exit(main())
