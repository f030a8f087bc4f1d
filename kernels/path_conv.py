"""Causal depthwise conv1d + SiLU along each path of a route (Vim's per-path conv), in canonical token order.

    u[:, c] = scatter_c( SiLU( causal_dwconv1d( gather_c(x), weight[c], bias[c] ) ) )     for each conv c

x (B, L, E) canonical; weight (Pc, E, K); bias (Pc, E) or None; paths (Pc, L) with paths[c, t] the canonical position
path c visits at step t. Returns (B, Pc, L, E). The reference materialises the gathered copies (it is the oracle, and
the CPU path); `kernels.triton.path_conv` reads through the permutation instead. `kernels.dispatch.causal_conv1d_paths`
picks between them and reports which ran, like every op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

def causal_conv1d_paths_ref(x: Tensor, weight: Tensor, bias: Tensor | None, paths: Tensor) -> Tensor:
    """The gather → conv1d → SiLU → scatter composition (see the module docstring)."""
    length, n_conv, k = x.shape[1], weight.shape[0], weight.shape[-1]
    weight = weight.to(x.dtype)  # what autocast does for F.conv1d; the Triton kernel reads fp32 weights as they are
    bias = None if bias is None else bias.to(x.dtype)
    outs = []
    for c in range(n_conv):
        idx = paths[c].to(device=x.device, dtype=torch.long)
        y = F.conv1d(x.index_select(1, idx).transpose(1, 2), weight[c].unsqueeze(1),
                     None if bias is None else bias[c], padding=k - 1, groups=x.shape[-1])
        outs.append(F.silu(y[..., :length]).transpose(1, 2).index_select(1, torch.argsort(idx)))
    return torch.stack(outs, 1)


__all__ = ["causal_conv1d_paths_ref"]
