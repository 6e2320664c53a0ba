"""Scaling out over MPI: the rank helpers the tools share, and collective volumes.

``blockfs.parallel.mpi`` finds the ranks a tool runs on and splits work between them;
``blockfs.parallel.collective`` lets every rank of a communicator write one volume, each shard
appended to by exactly one rank (``Directory(...).create(comm=comm)``). mpi4py is imported only
when a communicator is in use or the process was started by an MPI launcher.
"""
