"""blockfs benchmarks: speed and memory against the machine's limits and the peers, on demand.

Run ``python -m benchmarks --help``. Not part of the test suite.
"""
