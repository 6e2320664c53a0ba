# Everything a fresh machine needs: `make demo` and `make test` install what they use.
#
# `make install` (run by both) sets up, each step skipped when already done:
#   1. the Debian packages below, with apt-get (through sudo when not root);
#   2. .venv/ with pip, setuptools and what the h5py build needs;
#   3. h5py built from source against Debian's parallel HDF5 (Open MPI), checked to have MPI;
#   4. blockfs itself, editable, with the extras [tools,interop,serve,test].
# A stamp records completion; editing pyproject.toml, setup.py or this Makefile re-runs the steps.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
APT_GET ?= apt-get
APT_PACKAGES := openmpi-bin libopenmpi-dev libhdf5-openmpi-dev pkg-config libopenjp2-7 chromium chromium-driver
H5PY_CHECK := import h5py, sys; sys.exit(0 if h5py.get_config().mpi else 1)

# Open MPI refuses to run as root, and more ranks than cores, unless told; CI runs as root on 2 cores.
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export OMPI_MCA_rmaps_base_oversubscribe := 1

BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_ARGS ?=

.PHONY: install system-packages demo test bench clean

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
	@# (16 minutes, 21 GB), and -O1 -g0 halves the build (~100 s).
	@if $(PY) -c '$(H5PY_CHECK)' 2>/dev/null; then \
	  echo "h5py with parallel HDF5 is installed"; \
	else \
	  multiarch=$$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch 2>/dev/null); \
	  hdf5_dir=$${HDF5_DIR:-/usr/lib/$$multiarch/hdf5/openmpi}; \
	  if [ ! -f "$$hdf5_dir/include/hdf5.h" ]; then \
	    echo "parallel HDF5 not found in $$hdf5_dir (is libhdf5-openmpi-dev installed? set HDF5_DIR=...)" >&2; \
	    exit 1; \
	  fi; \
	  echo "Building h5py against parallel HDF5 in $$hdf5_dir (about 2 minutes)"; \
	  CFLAGS="-O1 -g0" CC=mpicc HDF5_MPI=ON HDF5_DIR="$$hdf5_dir" H5PY_SETUP_REQUIRES=0 \
	    $(PIP) install -q --no-build-isolation --no-binary=h5py h5py || exit 1; \
	fi
	$(PY) -c '$(H5PY_CHECK)' || { echo "h5py was built without MPI" >&2; exit 1; }
	@# h5py is installed and satisfies [tools] now, so pip keeps the parallel build
	$(PIP) install -q -e '.[tools,interop,serve,test]'
	$(PY) -c '$(H5PY_CHECK)' || { echo "installing blockfs replaced the parallel h5py" >&2; exit 1; }
	touch $@

demo: install
	$(PY) -m blockfs.demo

test: install
	$(PY) -m pytest

$(BENCH_STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q -U pip
	$(BENCH_VENV)/bin/python -m pip install -q -e '.[interop,serve]' zarr zarrs tensorstore h5py hdf5plugin psutil mpi4py
	touch $@

# Speed and memory side by side with the machine's limits and the peers, on demand (5 interleaved rounds;
# about 10 minutes per 128 MiB on 2 cores, not in `make test`). BENCH_ARGS=--quick for a short look;
# BENCH_ARGS="--sizes 128M --only compare,read" for the side-by-side table; "--sizes 256M,1G,4G" for the curve.
bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) demo-output .pytest_cache .hypothesis
