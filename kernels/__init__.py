"""Kernels: pure-PyTorch references (the oracles every fast path is tested against) and small tensor utilities."""

from kernels.dct import anti_diagonal_lowpass_masks, dct2, dct_matrix, idct2
from kernels.errors import KernelUnavailableError
from kernels.mlstm import mlstm_chunkwise_ref, mlstm_parallel_ref, mlstm_recurrent_ref
from kernels.routes import check_permutation, gather_tokens, invert_permutation, scatter_add_paths, scatter_tokens
from kernels.selective_scan import selective_scan_naive, selective_scan_ref

__all__ = [
    "KernelUnavailableError",
    "anti_diagonal_lowpass_masks",
    "check_permutation",
    "dct2",
    "dct_matrix",
    "gather_tokens",
    "idct2",
    "invert_permutation",
    "mlstm_chunkwise_ref",
    "mlstm_parallel_ref",
    "mlstm_recurrent_ref",
    "scatter_add_paths",
    "scatter_tokens",
    "selective_scan_naive",
    "selective_scan_ref",
]
