"""Conversions between volumes and other formats: TIFF, JPEG 2000 and HDF5 export, TIFF-stack import."""
