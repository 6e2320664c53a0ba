"""Interop with zarr, OME-Zarr and dask: a zarr view of any volume, repacking to OME-Zarr, dask in and out.

``blockfs.interop.zarr_format`` needs only numpy; the other modules import zarr or dask.
"""
