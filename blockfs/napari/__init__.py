"""blockfs in napari: an npe2 plugin (manifest ``napari.yaml``) that opens volumes and pyramids lazily and saves
image and labels layers as volumes.

- :mod:`.reader`: a volume or pyramid folder as one napari layer over :func:`blockfs.interop.dask_io.to_dask`;
- :mod:`.writer`: an image or labels layer written as a new volume, block row by block row.
"""
