# Everything a fresh machine needs: `make demo` and `make test` install what they use; `make view` (after
# `make demo`) shows the demo's pyramid in Neuroglancer; `make lint` runs ruff and mypy.
#
# `make install` (run by demo, test and lint) sets up, each step skipped when already done:
#   1. the Debian packages below, with apt-get (through sudo when not root);
#   2. .venv/ with pip, setuptools and what the h5py build needs;
#   3. h5py built from source against Debian's parallel HDF5 (Open MPI), checked to have MPI;
#   4. blockfs itself, editable, with the extras [tools,interop,serve,remote,napari,test,lint].
# A stamp records completion; editing pyproject.toml, setup.py or this Makefile re-runs the steps.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
APT_GET ?= apt-get
APT_PACKAGES := openmpi-bin libopenmpi-dev libhdf5-openmpi-dev pkg-config libopenjp2-7 chromium chromium-driver nginx
# napari's tests: a headless X server, Mesa's software OpenGL, and the X libraries that the Qt 6 of PyQt6 loads.
APT_PACKAGES += xvfb libgl1-mesa-dri libglx-mesa0 libegl1 libfontconfig1 libdbus-1-3 libglib2.0-0 libxkbcommon-x11-0 \
  libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 \
  libxcb-xfixes0 libxcb-xkb1
H5PY_CHECK := import h5py, sys; sys.exit(0 if h5py.get_config().mpi else 1)

# Open MPI refuses to run as root, and more ranks than cores, unless told; CI runs as root on 2 cores.
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export OMPI_MCA_rmaps_base_oversubscribe := 1

# h5py's C flags, after Python's own (-g -O3 here; the later flag wins). -g0 is what shortens the build;
# -O2 costs build time and buys no speed, since the writes run in HDF5, not in h5py. Measured on 2 cores
# shared with other work (load average 3-7), h5py 3.16.0 on Debian's HDF5 1.10.8 (openmpi), one at a time:
#   build:                                             -O1 -g0 128 s, -O2 -g0 138 s (156 s through this
#                                                      recipe in a fresh clone at load 4-8: hence 2-5 minutes);
#   1 GiB uint16 in 64^3 chunks into tmpfs, h5py only: -O1 0.69-1.64 s, -O2 0.73-3.59 s;
#   blockfs2hdf of the 1 GiB demo volume, serial:      -O1 4.5-7.8 s,   -O2 6.5-7.1 s,
#   against 3.5-4.3 s for the registry wheel (h5py 3.16.0 with its own HDF5 2.0.0, serial only):
#   the gap is the HDF5 library, which no h5py flag changes.
H5PY_CFLAGS ?= -O1 -g0
H5PY_BUILD_MINUTES := 2-5

DEMO_OUTPUT ?= demo-output

BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_ARGS ?=

.PHONY: install system-packages demo view lint test bench clean

install: $(STAMP)

# dpkg-query's status abbreviation is "ii " for an installed package; anything else counts as missing.
system-packages:
	@missing=""; \
	for package in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${db:Status-Abbrev}' "$$package" 2>/dev/null | grep -q '^ii' || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "Installing Debian packages:$$missing"; \
	  $$sudo $(APT_GET) update && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml setup.py Makefile
	@$(MAKE) --no-print-directory system-packages
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip 'setuptools>=77.0.1'
	$(PIP) install -q mpi4py numpy 'Cython>=3,<4' pkgconfig packaging
	@# h5py from source against parallel HDF5; --no-build-isolation keeps pip from compiling mpi4py
	@# (16 minutes, 21 GB). H5PY_CFLAGS: see its definition above. A ticker prints the time spent every
	@# 30 s, since pip prints nothing while it compiles; its sleep writes nowhere, so it holds no pipe open.
	@if $(PY) -c '$(H5PY_CHECK)' 2>/dev/null; then \
	  echo "h5py with parallel HDF5 is installed"; \
	else \
	  multiarch=$$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch 2>/dev/null); \
	  hdf5_dir=$${HDF5_DIR:-/usr/lib/$$multiarch/hdf5/openmpi}; \
	  if [ ! -f "$$hdf5_dir/include/hdf5.h" ]; then \
	    echo "parallel HDF5 not found in $$hdf5_dir (is libhdf5-openmpi-dev installed? set HDF5_DIR=...)" >&2; \
	    exit 1; \
	  fi; \
	  echo "Building h5py against parallel HDF5 in $$hdf5_dir (once; about $(H5PY_BUILD_MINUTES) minutes on 2 cores; pip prints nothing meanwhile)"; \
	  start=$$(date +%s); \
	  ( while sleep 30 >/dev/null 2>&1; do echo "  still building h5py: $$(( $$(date +%s) - start )) s"; done ) & ticker=$$!; \
	  CFLAGS="$(H5PY_CFLAGS)" CC=mpicc HDF5_MPI=ON HDF5_DIR="$$hdf5_dir" H5PY_SETUP_REQUIRES=0 \
	    $(PIP) install -q --no-build-isolation --no-binary=h5py h5py; status=$$?; \
	  kill $$ticker 2>/dev/null; wait $$ticker 2>/dev/null; \
	  [ $$status = 0 ] || exit 1; \
	  echo "h5py built in $$(( $$(date +%s) - start )) s"; \
	fi
	$(PY) -c '$(H5PY_CHECK)' || { echo "h5py was built without MPI" >&2; exit 1; }
	@# h5py is installed and satisfies [tools] now, so pip keeps the parallel build
	$(PIP) install -q -e '.[tools,interop,serve,remote,napari,test,lint]'
	$(PY) -c '$(H5PY_CHECK)' || { echo "installing blockfs replaced the parallel h5py" >&2; exit 1; }
	touch $@

demo: install
	$(PY) -m blockfs.demo --output $(DEMO_OUTPUT)
	@echo "or, in this folder: make view"

# The demo's pyramid in Neuroglancer: prints the URL (with its token) to open; Ctrl-C stops the server.
view: install
	@test -f $(DEMO_OUTPUT)/pyramid/info || { echo "$(DEMO_OUTPUT)/pyramid: not built yet; run make demo first" >&2; exit 1; }
	$(VENV)/bin/blockfs view $(DEMO_OUTPUT)/pyramid

# The linter and the type checker, as pyproject.toml configures them (mypy: strict on the engine modules).
lint: install
	$(VENV)/bin/ruff check blockfs tests benchmarks
	$(VENV)/bin/mypy

test: install lint
	$(PY) -m pytest

$(BENCH_STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q -U pip
	$(BENCH_VENV)/bin/python -m pip install -q -e '.[interop,serve,remote]' zarr zarrs tensorstore h5py hdf5plugin psutil mpi4py
	touch $@

# Speed and memory side by side with the machine's limits and the peers, on demand (5 interleaved rounds;
# about 10 minutes per 128 MiB on 2 cores, not in `make test`). BENCH_ARGS=--quick for a short look;
# BENCH_ARGS="--sizes 128M --only compare,read" for the side-by-side table; "--sizes 256M,1G,4G" for the curve.
bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) demo-output .pytest_cache .hypothesis
