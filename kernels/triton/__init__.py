"""Triton fast paths: the route-fused selective scan and the chunkwise mLSTM.

Importing this package needs `triton`; `kernels.dispatch` imports it lazily and reports it unavailable otherwise.
"""
