"""``python -m blockfs.cli``: the ``blockfs`` command."""

import sys

from . import main

sys.exit(main())
