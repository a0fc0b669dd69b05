"""Pure NumPy kernels: distances, exact top-k, k-means, graph and IVF indexes, ID codecs.

Nothing in this package reads or writes files; every kernel takes arrays and returns
arrays, so it can be tested and benchmarked alone.
"""
