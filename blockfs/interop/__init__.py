"""Interop with zarr, OME-Zarr and dask: a zarr view of any volume, repacking to OME-Zarr, dask in and out.

``zarr_format`` (zarr metadata and chunks), ``repack`` (to-zarr), ``shard`` and ``tools`` need only
blockfs's own dependencies; ``store`` and ``unpack`` (from-zarr) import zarr, ``dask_io`` imports dask.
"""
