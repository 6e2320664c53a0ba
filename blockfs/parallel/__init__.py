"""Scaling out over MPI: the rank helpers the features and tools share, and collective volumes.

``blockfs.parallel.mpi`` finds the ranks a tool runs on and splits work between them (a feature
takes them as ``ranks=SOLO``); ``blockfs.parallel.collective`` lets every rank of a communicator
write one volume, each shard appended to by exactly one rank (:func:`create_collective`,
:func:`open_collective`). mpi4py is imported only when a communicator is in use or the process was
started by an MPI launcher.
"""
