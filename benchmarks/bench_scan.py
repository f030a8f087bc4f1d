"""Route-fused Triton selective scan against mamba-ssm compositions, and against the physical floor.

Run on the GPU machine:  python benchmarks/bench_scan.py [--quick] [--out results.md]
Backward tiles / gradient layouts only:  python benchmarks/bench_scan.py --bwd-sweep [--out bwd.md]
Backward path loop vs one program per path:  python benchmarks/bench_scan.py --bwd-grid-sweep [--out grid.md]
Needs only torch and triton (+ mamba_ssm for the baselines; without it those rows say so).

Workloads (bf16 u, Δ, B, C, z; fp32 A, D, Δ-bias; Δ-softplus on):
- vim_ti_224:  B=64, D=384, L=197, N=16, the bidirectional route, z-gate, merge "mean" (Vim's /2).
- vim_ti_1248: B=4, D=384, L=6085, N=16, same route.
- vmamba_t_s1: B=128, C=96, 56×56 (L=3136), N=1, the 4-route cross scan, no z, merge "sum".
Baselines, as the public codebases run them (the inputs each side receives are prepared outside the timing):
- bi: Vim's v2 composition: flip x and z (copies), two mamba-ssm calls (Δ, B, C of the backward branch are already in
  flipped order, as Vim computes them after the flip), flip the backward output, add, halve.
- cross4: VMamba's composition: cross-scan copies of x (4 routes), one mamba-ssm call over (B, 4C, L) with 4 B/C
  groups (Δ, B, C already in route order, as VMamba computes them after the cross scan), cross-merge (inverse
  permutations and the sum).
- "scan only": the mamba-ssm call(s) alone, no copies: a lower bound for any copy-based pipeline.
Floor: max(HBM bytes / measured copy bandwidth, exp2-class evaluations / measured exp2 rate), where bytes count each
input read once and each output written once (u shared by all paths counts once), and fwd+bwd counts the forward
plus a backward that re-reads the inputs, reads dout and writes every gradient; exp2-class evaluations are one
exp2 per (path, channel, state, step) plus softplus's exp and log per (path, channel, step), doubled for fwd+bwd
(the backward must recompute the decays or read them back).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch
import triton

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from kernels.triton.roofline import (copy_bandwidth_gbs, device_line, exp2_rate_per_s,  # noqa: E402
                                     emit_report, median_ms)
from kernels.triton.scan_config import lane_bwd_fills  # noqa: E402
from kernels.triton.selective_scan import (BWD_CANDIDATES, BWD_GRID_CANDIDATES, ScanConfig,  # noqa: E402
                                           _chunk_default, _default_for, default_config,
                                           selective_scan_paths_triton)

try:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    MAMBA_NOTE = "mamba-ssm " + __import__("mamba_ssm").__version__
except Exception as exc:  # the baseline is optional: rows say why it is missing
    selective_scan_fn = None
    MAMBA_NOTE = f"mamba-ssm unavailable ({type(exc).__name__}: {exc})"

WORKLOADS = {
    "vim_ti_224": dict(bsz=64, dim=384, length=197, n_state=16, route="bi", gate=True, merge="mean"),
    "vim_ti_1248": dict(bsz=4, dim=384, length=6085, n_state=16, route="bi", gate=True, merge="mean"),
    "vmamba_t_s1": dict(bsz=128, dim=96, length=3136, n_state=1, route="cross4", gate=False, merge="sum", side=56),
}
CONFIGS = {  # ScanConfig tuples: the default run uses the first, None = what a model gets at the workload's batch
    # (`_default_for`: the lane backward's tiles only where its programs fill the GPU; one config keeps a run's Triton
    # compile time short); --sweep tries all, keeps the best
    16: [None, ("chunk", 4, 64, 2), ("chunk", 8, 32, 4), ("seq", 16, 16, 2), ("seq", 8, 16, 1)],
    1: [None, ("chunk", 64, 64, 4), ("seq", 64, 16, 2), ("seq", 32, 16, 1)],
}


def route_paths(kind: str, length: int, side: int | None = None) -> torch.Tensor:
    rows = torch.arange(length)
    if kind == "bi":
        return torch.stack([rows, rows.flip(0)])
    cols = rows.view(side, side).t().reshape(-1)
    return torch.stack([rows, cols, rows.flip(0), cols.flip(0)])


def make_inputs(w: dict, n_paths: int, dev: str = "cuda", dtype=torch.bfloat16):
    g = torch.Generator(device=dev).manual_seed(0)
    bsz, dim, length, n_state = w["bsz"], w["dim"], w["length"], w["n_state"]

    def rnd(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g, device=dev) * scale).to(dt)

    shared_u = w["route"] == "cross4"  # VMamba scans one x along four routes; Vim has a conv per direction
    u = rnd(bsz, 1 if shared_u else n_paths, dim, length)
    u = u.expand(bsz, n_paths, dim, length) if shared_u else u
    delta = rnd(bsz, n_paths, dim, length, scale=0.5)
    A = -torch.arange(1, n_state + 1, device=dev, dtype=torch.float32).repeat(n_paths, dim, 1)
    B, C = rnd(bsz, n_paths, n_state, length), rnd(bsz, n_paths, n_state, length)
    D = rnd(n_paths, dim, dt=torch.float32)
    bias = rnd(n_paths, dim, scale=0.5, dt=torch.float32) - 4.0
    z = rnd(bsz, dim, length) if w["gate"] else None
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=bias)


def channel_last(x: dict) -> dict:
    """The same values with (batch, L, ..., channels) memory, as token-wise Linear layers produce them; the kernel
    reads them through strides (no copy)."""
    out = {}
    for k, v in x.items():
        if v is None or k in ("A", "D", "delta_bias") or k == "u_copies":
            out[k] = v
        elif v.dim() == 4 and v.stride(1) == 0:  # u shared by every path
            out[k] = v[:, 0].transpose(1, 2).contiguous().transpose(1, 2).unsqueeze(1).expand_as(v)
        elif v.dim() == 4:
            out[k] = v.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
        else:
            out[k] = v.transpose(1, 2).contiguous().transpose(1, 2)
    return out


def mixer_layout(x: dict, grad: bool = False) -> tuple[dict, list[torch.Tensor]]:
    """The same values in the SSM mixer's memory, as views of leaves: u and Δ (P, batch, L, E) as the path conv writes
    them, B and C two column blocks of one (P, batch, L, 2N + 12) x_proj output (16-byte vector loads of their rows),
    z (batch, L, E). This is what the kernel sees in training; `channel_last` keeps B and C apart. Bi route only (u
    per path)."""
    n, rank = x["B"].shape[2], 12

    def leaf(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.detach().clone().requires_grad_(grad)

    u, delta = (leaf(x[k].permute(1, 0, 3, 2).contiguous()) for k in ("u", "delta"))
    xdbl = torch.zeros(*u.shape[:3], 2 * n + rank, device=u.device, dtype=x["B"].dtype)
    xdbl[..., :n], xdbl[..., n:2 * n] = x["B"].permute(1, 0, 3, 2), x["C"].permute(1, 0, 3, 2)
    xdbl = leaf(xdbl)
    z = leaf(x["z"].transpose(1, 2).contiguous()) if x["z"] is not None else None
    A, D, bias = leaf(x["A"]), leaf(x["D"]), leaf(x["delta_bias"])
    views = dict(u=u.permute(1, 0, 3, 2), delta=delta.permute(1, 0, 3, 2), A=A,
                 B=xdbl[..., :n].permute(1, 0, 3, 2), C=xdbl[..., n:2 * n].permute(1, 0, 3, 2), D=D,
                 z=z.transpose(1, 2) if z is not None else None, delta_bias=bias)
    return views, [t for t in (u, delta, xdbl, A, D, z, bias) if t is not None]


def permuted_for_baseline(x: dict, paths: torch.Tensor) -> dict:
    """Δ, B, C in each path's own order: what the public codebases hold when they call the scan."""
    idx = paths.to(x["u"].device)
    return {k: torch.stack([x[k][:, p].index_select(-1, idx[p]) for p in range(idx.shape[0])], 1)
            for k in ("delta", "B", "C")}


def vim_baseline(x: dict, perm: dict, merge_scale: float):
    """Two mamba-ssm calls + flips + add (Vim v2)."""
    u, z = x["u"], x["z"]
    yf = selective_scan_fn(u[:, 0], x["delta"][:, 0], x["A"][0], x["B"][:, 0], x["C"][:, 0], x["D"][0], z,
                           x["delta_bias"][0], True)
    yb = selective_scan_fn(u[:, 1].flip(-1), perm["delta"][:, 1], x["A"][1], perm["B"][:, 1], perm["C"][:, 1],
                           x["D"][1], None if z is None else z.flip(-1), x["delta_bias"][1], True)
    return (yf + yb.flip(-1)) * merge_scale


def vmamba_baseline(x: dict, perm: dict, paths: torch.Tensor, inv: torch.Tensor, merge_scale: float):
    """Cross-scan copies + one grouped mamba-ssm call + cross-merge (VMamba)."""
    bsz, n_paths, dim, length = x["delta"].shape
    base = x["u"][:, 0]
    xs = torch.stack([base.index_select(-1, paths[p]) for p in range(n_paths)], 1)  # route copies
    y = selective_scan_fn(xs.view(bsz, n_paths * dim, length), perm["delta"].reshape(bsz, n_paths * dim, length),
                          x["A"].reshape(n_paths * dim, -1), perm["B"], perm["C"], x["D"].reshape(-1), None,
                          x["delta_bias"].reshape(-1), True).view(bsz, n_paths, dim, length)
    out = sum(y[:, p].index_select(-1, inv[p]) for p in range(n_paths))  # cross-merge
    return out * merge_scale


def scan_only(x: dict, perm: dict):
    """The mamba-ssm call(s) alone on ready-made, contiguous per-path inputs: no copies at all."""
    bsz, n_paths, dim, length = x["delta"].shape
    if n_paths == 2:
        return [selective_scan_fn(x["u"][:, p], perm["delta"][:, p], x["A"][p], perm["B"][:, p], perm["C"][:, p],
                                  x["D"][p], x["z"], x["delta_bias"][p], True) for p in range(2)]
    return selective_scan_fn(x["u_copies"].view(bsz, n_paths * dim, length),
                             perm["delta"].reshape(bsz, n_paths * dim, length), x["A"].reshape(n_paths * dim, -1),
                             perm["B"], perm["C"], x["D"].reshape(-1), None, x["delta_bias"].reshape(-1), True)


def fwd_bwd(fn, leaves: list[torch.Tensor]):
    """A callable running forward + backward of fn() with respect to leaves, one fixed upstream gradient."""
    out = fn()
    outs = out if isinstance(out, list) else [out]
    grads = [torch.randn_like(o) for o in outs]

    def run():
        res = fn()
        res = res if isinstance(res, list) else [res]
        torch.autograd.grad(res, leaves, grads, allow_unused=True)

    return run


def with_grad(x: dict) -> tuple[dict, list[torch.Tensor]]:
    leaves, out = [], {}
    for k, v in x.items():
        if v is None or k == "u_copies":
            out[k] = v
            continue
        if k == "u" and v.stride(1) == 0:
            leaf = v[:, :1].detach().clone().requires_grad_(True)
            out[k] = leaf.expand_as(v)
        else:
            leaf = v.detach().clone().requires_grad_(True)
            out[k] = leaf
        leaves.append(leaf)
    return out, leaves


def floor_ms(x: dict, n_paths: int, bw: float, rate: float, backward: bool) -> tuple[float, str]:
    uniq = [x["u"][:, :1] if x["u"].stride(1) == 0 else x["u"]] + [x[k] for k in
                                                                 ("delta", "A", "B", "C", "D", "z", "delta_bias")]
    in_bytes = sum(t.numel() * t.element_size() for t in uniq if t is not None)
    bsz, _, dim, length = x["delta"].shape
    out_bytes = bsz * dim * length * x["u"].element_size()
    n_state = x["A"].shape[-1]
    sfu = bsz * n_paths * dim * length * (n_state + 2)
    total = in_bytes + out_bytes
    if backward:
        total += in_bytes + out_bytes + in_bytes  # re-read inputs, read dout, write gradients
        sfu *= 2
    t_mem, t_sfu = total / bw * 1e3, sfu / rate * 1e3
    return max(t_mem, t_sfu), ("HBM" if t_mem >= t_sfu else "exp2")


def check_same(a: torch.Tensor, b: torch.Tensor, what: str) -> str:
    err = ((a.float() - b.float()).norm() / b.float().norm()).item()
    return f"{what}: rel. diff {err:.1e}"


def bench_workload(name: str, w: dict, bw: float, rate: float, reps: int, notes: list[str],
                   sweep: bool = False) -> list[list]:
    paths = route_paths(w["route"], w["length"], w.get("side")).cuda()
    inv = torch.argsort(paths, dim=1)
    n_paths = paths.shape[0]
    scale = 1.0 / n_paths if w["merge"] == "mean" else 1.0
    x = make_inputs(w, n_paths)
    perm = permuted_for_baseline(x, paths)
    rows = []

    def ours(xx, config=None):
        return selective_scan_paths_triton(xx["u"], xx["delta"], xx["A"], xx["B"], xx["C"], xx["D"], xx["z"],
                                           xx["delta_bias"], True, paths, w["merge"], config=config)

    # tile sweep on fwd+bwd; fwd and bwd share the chunking, so one config serves both
    best = None
    xg, leaves = with_grad(x)
    for cfg in CONFIGS[16 if w["n_state"] >= 16 else 1][: (None if sweep else 1)]:
        cfg = tuple(cfg or _default_for(x["u"], w["n_state"]))
        try:
            t = median_ms(fwd_bwd(lambda: ours(xg, cfg), leaves), warmup=3, reps=max(5, reps // 4))
        except Exception as exc:  # a tile that does not compile is skipped, and said so
            notes.append(f"{name}: config {cfg} failed: {type(exc).__name__}")
            continue
        notes.append(f"{name}: config {cfg} fwd+bwd {t:.3f} ms")
        if best is None or t < best[1]:
            best = (cfg, t)
    cfg = best[0]
    t_fwd = median_ms(lambda: ours(x, cfg), reps=reps)
    t_fb = median_ms(fwd_bwd(lambda: ours(xg, cfg), leaves), reps=reps)
    f_fwd, bound_f = floor_ms(x, n_paths, bw, rate, False)
    f_fb, bound_fb = floor_ms(x, n_paths, bw, rate, True)
    rows.append([name, f"fused {w['route']} (triton {cfg}, channel-first)", t_fwd, t_fb, "1.00", "1.00",
                 f"{f_fwd / t_fwd:.0%} ({bound_f})", f"{f_fb / t_fb:.0%} ({bound_fb})", f"{t_fb / t_fwd:.2f}"])
    xc = channel_last(x)
    notes.append(check_same(ours(xc, cfg), ours(x, cfg), f"{name}: channel-last vs channel-first output"))
    xcg, leaves_c = with_grad(xc)
    tc_fwd = median_ms(lambda: ours(xc, cfg), reps=reps)
    tc_fb = median_ms(fwd_bwd(lambda: ours(xcg, cfg), leaves_c), reps=reps)
    rows.append([name, f"fused {w['route']} (triton {cfg}, channel-last)", tc_fwd, tc_fb,
                 f"{tc_fwd / t_fwd:.2f}", f"{tc_fb / t_fb:.2f}", f"{f_fwd / tc_fwd:.0%} ({bound_f})",
                 f"{f_fb / tc_fb:.0%} ({bound_fb})", f"{tc_fb / tc_fwd:.2f}"])
    if triton.next_power_of_2(w["n_state"]) < 16:  # VMamba's one state: the bi route's lane tiles beside the chunk
        lane = lane_tiles(x, n_paths)
        notes.append(check_same(ours(xc, lane), ours(xc, cfg), f"{name}: lane tiles vs default output"))
        tl_fwd = median_ms(lambda: ours(xc, lane), reps=reps)
        tl_fb = median_ms(fwd_bwd(lambda: ours(xcg, lane), leaves_c), reps=reps)
        rows.append([name, f"fused {w['route']} (triton {tuple(lane)}: lane tiles, channel-last)", tl_fwd, tl_fb,
                     f"{tl_fwd / t_fwd:.2f}", f"{tl_fb / t_fb:.2f}", f"{f_fwd / tl_fwd:.0%} ({bound_f})",
                     f"{f_fb / tl_fb:.0%} ({bound_fb})", f"{tl_fb / tl_fwd:.2f}"])
    tm_fwd = tm_fb = None
    if w["route"] == "bi":  # the layout the SSM mixer trains with (B/C rows read as vectors)
        xm, _ = mixer_layout(x)
        notes.append(check_same(ours(xm, cfg), ours(x, cfg), f"{name}: mixer layout vs channel-first output"))
        xmg, leaves_m = mixer_layout(x, grad=True)
        tm_fwd = median_ms(lambda: ours(xm, cfg), reps=reps)
        tm_fb = median_ms(fwd_bwd(lambda: ours(xmg, cfg), leaves_m), reps=reps)
        rows.append([name, f"fused {w['route']} (triton {cfg}, the SSM mixer's layout)", tm_fwd, tm_fb,
                     f"{tm_fwd / t_fwd:.2f}", f"{tm_fb / t_fb:.2f}", f"{f_fwd / tm_fwd:.0%} ({bound_f})",
                     f"{f_fb / tm_fb:.0%} ({bound_fb})", f"{tm_fb / tm_fwd:.2f}"])
        if ScanConfig(*cfg).bwd_segments != 1:
            # the default's lane backward runs in sequence segments here (its whole programs would leave SMs idle):
            # beside it the choice before session 22, the chunk backward with checkpoints every 16 steps
            old = ScanConfig(*cfg)._replace(steps=16, bwd="chunk", bwd_bc="atomic", bwd_segments=1)
            notes.append(check_same(ours(xm, old), ours(x, cfg), f"{name}: chunk bwd vs default output"))
            gs = [torch.autograd.grad(ours(xmg, c).float().square().sum(), leaves_m) for c in (old, cfg)]
            notes.append(f"{name}: chunk bwd vs default (segmented lane bwd) gradients: max rel. diff "
                         f"{max(((a - b).norm() / b.norm()).item() for a, b in zip(*gs)):.1e}")
            to_fwd = median_ms(lambda: ours(xm, old), reps=reps)
            to_fb = median_ms(fwd_bwd(lambda: ours(xmg, old), leaves_m), reps=reps)
            rows.append([name, f"fused {w['route']} (triton {tuple(old)}: chunk bwd, the default before session 22, "
                         "mixer's layout)", to_fwd, to_fb, f"{to_fwd / t_fwd:.2f}", f"{to_fb / t_fb:.2f}",
                         f"{f_fwd / to_fwd:.0%} ({bound_f})", f"{f_fb / to_fb:.0%} ({bound_fb})",
                         f"{to_fb / to_fwd:.2f}"])
    if selective_scan_fn is None:
        rows.append([name, MAMBA_NOTE, "-", "-", "-", "-", "-", "-", "-"])
        return rows
    if w["route"] == "bi":
        base = lambda xx, pp: vim_baseline(xx, pp, scale)  # noqa: E731
        label = "2× mamba-ssm + flips + add"
    else:
        base = lambda xx, pp: vmamba_baseline(xx, pp, paths, inv, scale)  # noqa: E731
        label = "cross-scan copies + mamba-ssm + merge"
        x["u_copies"] = torch.stack([x["u"][:, 0].index_select(-1, paths[p]) for p in range(n_paths)], 1)
    notes.append(check_same(ours(x, cfg), base(x, perm), f"{name}: fused vs baseline output"))
    xb, leaves_b = with_grad({k: v for k, v in x.items() if k != "u_copies"})
    perm_b, leaves_p = with_grad(perm)
    tb_fwd = median_ms(lambda: base(x, perm), reps=reps)
    tb_fb = median_ms(fwd_bwd(lambda: base(xb, perm_b), leaves_b + leaves_p), reps=reps)
    rows.append([name, label, tb_fwd, tb_fb, f"{tb_fwd / t_fwd:.2f}", f"{tb_fb / t_fb:.2f}",
                 f"{f_fwd / tb_fwd:.0%}", f"{f_fb / tb_fb:.0%}", f"{tb_fb / tb_fwd:.2f}"])
    for what, (f, fb) in (("channel-last", (tc_fwd, tc_fb)), ("the mixer's layout", (tm_fwd, tm_fb))):
        if f is not None:  # the targets' ratios: the codebases' composition / ours in each of our layouts
            notes.append(f"{name}: {label} / fused bi in {what}: fwd {tb_fwd / f:.2f}x, fwd+bwd {tb_fb / fb:.2f}x")
    ts_fwd = median_ms(lambda: scan_only(x, perm), reps=reps)
    rows.append([name, "mamba-ssm scan only (no copies; lower bound)", ts_fwd, "-", f"{ts_fwd / t_fwd:.2f}", "-",
                 f"{f_fwd / ts_fwd:.0%}", "-", "-"])
    return rows


def bench_bwd_sweep(name: str, w: dict, reps: int, notes: list[str], candidates=BWD_CANDIDATES) -> list[list]:
    """Backward tiles and gradient layouts (BWD_CANDIDATES) on channel-last inputs, the SSM mixer's layout: fwd+bwd
    time against the first candidate (the previous default) in the same run, and the largest relative difference of
    any gradient from that candidate's."""
    paths = route_paths(w["route"], w["length"], w.get("side")).cuda()
    x = channel_last(make_inputs(w, paths.shape[0]))
    xg, leaves = with_grad(x)
    rows, base_t, base_g = [], None, None
    for cfg in candidates[16 if w["n_state"] >= 16 else 1]:
        def ours():
            return selective_scan_paths_triton(xg["u"], xg["delta"], xg["A"], xg["B"], xg["C"], xg["D"], xg["z"],
                                               xg["delta_bias"], True, paths, w["merge"], config=cfg)
        try:
            out = ours()
            dout = torch.randn(out.shape, generator=torch.Generator(device="cuda").manual_seed(3), device="cuda")
            grads = torch.autograd.grad(out, leaves, dout.to(out.dtype))
            t = median_ms(lambda: torch.autograd.grad(ours(), leaves, dout.to(out.dtype)), warmup=3, reps=reps)
        except Exception as exc:  # a tile that does not compile is skipped, and said so
            notes.append(f"{name}: backward tile {tuple(cfg)} failed: {type(exc).__name__}: {str(exc)[:80]}")
            continue
        if base_t is None:
            base_t, base_g = t, grads
        diff = max(((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()
                   for a, b in zip(grads, base_g))
        rows.append([name, f"bwd tile {cfg.bwd_bd} ch, {cfg.bwd_warps} warps, grads {cfg.grad_layout}, paths "
                     f"{cfg.bwd_paths}", t,
                     f"{base_t / t:.2f}", f"{diff:.1e}"])
        print(rows[-1], flush=True)
    return rows


LANE_CANDIDATES = {  # forward variants for --fwd-sweep (ScanConfig tuples; their backward is the chunk default's).
    # bd < 32 spreads a channel's states over 32 / bd lanes (selective_scan_lane.py)
    16: [("lane", 32, 32, 1, 4, 2, "input", "grid", 8, 0, "grid"), ("lane", 32, 32, 1, 4, 2, "input", "grid", 4, 0),
         ("lane", 16, 32, 1, 4, 2, "input", "grid", 8, 0), ("lane", 16, 32, 1, 4, 2, "input", "grid", 8, 0, "grid"),
         ("lane", 8, 32, 1, 4, 2, "input", "grid", 8, 0), ("lane", 8, 32, 1, 4, 2, "input", "grid", 8, 0, "grid"),
         ("lane", 8, 32, 1, 4, 2, "input", "grid", 16, 0, "grid"), ("lane", 4, 32, 1, 4, 2, "input", "grid", 8, 0)],
    1: [("lane", 32, 64, 1, 16, 2, "input", "grid", 8, 0, "grid"), ("lane", 32, 64, 1, 16, 2, "input", "grid", 16, 0, "grid"),
        ("lane", 64, 64, 2, 16, 2, "input", "grid", 16, 0, "grid"), ("lane", 32, 64, 1, 16, 2, "input", "grid", 32, 0, "grid")],
}


def bench_fwd_sweep(name: str, w: dict, bw: float, rate: float, reps: int, notes: list[str]) -> list[list]:
    """Forward variants (the chunk default and LANE_CANDIDATES) on channel-last inputs, the SSM mixer's layout, against
    the mamba-ssm composition measured in the same run; then fwd+bwd of the fastest forward. `name` ending in
    "_one" = one direction (P = 1) against one mamba-ssm call."""
    one = name.endswith("_one")
    w = dict(w, route="bi") if one else w
    paths = None if one else route_paths(w["route"], w["length"], w.get("side")).cuda()
    n_paths = 1 if one else paths.shape[0]
    merge = "sum" if one else w["merge"]
    x = make_inputs(w, n_paths)
    xc = channel_last(x)
    xcg, leaves = with_grad(xc)

    def ours(xx, cfg):
        return selective_scan_paths_triton(xx["u"], xx["delta"], xx["A"], xx["B"], xx["C"], xx["D"], xx["z"],
                                           xx["delta_bias"], True, paths, merge, config=cfg)

    base_fwd = base_fb = None
    label = "mamba-ssm unavailable"
    if selective_scan_fn is not None:
        if one:
            def base(xx, pp):
                return selective_scan_fn(xx["u"][:, 0], xx["delta"][:, 0], xx["A"][0], xx["B"][:, 0], xx["C"][:, 0],
                                         xx["D"][0], xx["z"], xx["delta_bias"][0], True)
            perm, label = {}, "1× mamba-ssm"
        else:
            perm = permuted_for_baseline(x, paths)
            scale = 1.0 / n_paths if merge == "mean" else 1.0
            if w["route"] == "bi":
                base, label = (lambda xx, pp: vim_baseline(xx, pp, scale)), "2× mamba-ssm + flips + add"
            else:
                inv = torch.argsort(paths, dim=1)
                base = lambda xx, pp: vmamba_baseline(xx, pp, paths, inv, scale)  # noqa: E731
                label = "cross-scan copies + mamba-ssm + merge"
        base_fwd = median_ms(lambda: base(x, perm), reps=reps)
        xb, leaves_b = with_grad(x)
        perm_b, leaves_p = with_grad(perm)
        base_fb = median_ms(fwd_bwd(lambda: base(xb, perm_b), leaves_b + leaves_p), reps=reps)
    f_fwd, bound = floor_ms(x, n_paths, bw, rate, False)
    f_fb, bound_fb = floor_ms(x, n_paths, bw, rate, True)
    ref_out = ours(xc, _chunk_default(w["n_state"]))
    rows, best = [], None
    for cfg in [_chunk_default(w["n_state"])] + [ScanConfig(*c) for c in LANE_CANDIDATES[16 if w["n_state"] >= 16 else 1]]:
        try:
            diff = ((ours(xc, cfg).float() - ref_out.float()).norm() / ref_out.float().norm()).item()
            t = median_ms(lambda: ours(xc, cfg), reps=reps)
        except Exception as exc:  # a variant that does not compile is skipped, and said so
            notes.append(f"{name}: {tuple(cfg)} failed: {type(exc).__name__}: {str(exc)[:100]}")
            continue
        desc = (f"{cfg.variant} {cfg.bd} ch, {cfg.warps} warps, tile {cfg.tile}, segments {cfg.segments or 'auto'}, "
                f"paths {cfg.fwd_paths}" if cfg.variant == "lane" else f"chunk default {tuple(cfg)[:4]}")
        rows.append([name, desc, t, "-", f"{base_fwd / t:.2f}" if base_fwd else "-", "-", f"{f_fwd / t:.0%} ({bound})",
                     "-", f"{diff:.1e}"])
        print(rows[-1], flush=True)
        if cfg.variant == "lane" and (best is None or t < best[1]):
            best = (cfg, t)
    if best is not None:
        cfg = best[0]
        t_fb = median_ms(fwd_bwd(lambda: ours(xcg, cfg), leaves), reps=reps)
        rows.append([name, f"best lane fwd + chunk bwd: {tuple(cfg)}", best[1], t_fb,
                     f"{base_fwd / best[1]:.2f}" if base_fwd else "-", f"{base_fb / t_fb:.2f}" if base_fb else "-",
                     f"{f_fwd / best[1]:.0%} ({bound})", f"{f_fb / t_fb:.0%} ({bound_fb})", f"fb/f {t_fb / best[1]:.2f}"])
        print(rows[-1], flush=True)
    if base_fwd:
        rows.append([name, label + " (channel-first, as the codebases run it)", base_fwd, base_fb, "1.00", "1.00",
                     f"{f_fwd / base_fwd:.0%}", f"{f_fb / base_fb:.0%}", f"fb/f {base_fb / base_fwd:.2f}"])
    return rows


def lane_tiles(x: dict, n_paths: int) -> ScanConfig:
    """The tiles the bi route gets at this batch (the lane forward and backward, the backward in sequence segments
    where its whole programs would not fill the GPU), for a scan that takes the chunk kernels by default (one path,
    or VMamba's one state): a choice made before the lane kernels' layout hint (session 16), reduce-scatter (session
    20) and the segmented backward (session 22); these rows ask whether it still holds."""
    bsz, _, dim, _ = x["u"].shape
    fills = lane_bwd_fills(bsz * n_paths * triton.cdiv(dim, 32), x["u"].device)
    return default_config(16, dim, n_paths=2, lane_bwd=fills)


def bench_single(bw: float, rate: float, reps: int, notes: list[str]) -> list[list]:
    """One direction (P = 1) at the Vim-Ti shape: ours (the default's chunk kernels, and the bi route's lane tiles)
    against one mamba-ssm call."""
    rows = []
    for name, w in (("vim_ti_224", WORKLOADS["vim_ti_224"]), ("vim_ti_1248", WORKLOADS["vim_ti_1248"])):
        x = make_inputs(dict(w, route="bi"), 1)
        args = lambda xx: (xx["u"], xx["delta"], xx["A"], xx["B"], xx["C"], xx["D"], xx["z"],  # noqa: E731
                           xx["delta_bias"])
        xg, leaves = with_grad(x)
        f_fwd, bound = floor_ms(x, 1, bw, rate, False)
        f_fb, bound_fb = floor_ms(x, 1, bw, rate, True)
        lane = lane_tiles(x, 1)
        default_out = None
        for label, cfg in (("one direction (triton)", None), (f"one direction (triton, lane tiles {tuple(lane)})",
                                                                 lane)):
            ours = lambda xx, c=cfg: selective_scan_paths_triton(*args(xx), True, None, "sum", config=c)  # noqa: E731
            if cfg is not None:
                notes.append(check_same(ours(x), default_out, f"{name}: one direction, lane tiles vs the default"))
            else:
                default_out = ours(x)
            t_fwd = median_ms(lambda: ours(x), reps=reps)
            t_fb = median_ms(fwd_bwd(lambda: ours(xg), leaves), reps=reps)
            rows.append([name, label, t_fwd, t_fb, "1.00", "1.00", f"{f_fwd / t_fwd:.0%} ({bound})",
                         f"{f_fb / t_fb:.0%} ({bound_fb})", f"{t_fb / t_fwd:.2f}"])
        if selective_scan_fn is None:
            continue

        def mamba(xx):
            u, d, A, B, C, D, z, bias = args(xx)
            return selective_scan_fn(u[:, 0], d[:, 0], A[0], B[:, 0], C[:, 0], D[0], z, bias[0], True)

        notes.append(check_same(default_out, mamba(x), f"{name}: one direction vs mamba-ssm"))
        tm_fwd = median_ms(lambda: mamba(x), reps=reps)
        tm_fb = median_ms(fwd_bwd(lambda: mamba(xg), leaves), reps=reps)
        for row in rows[-2:]:  # mamba-ssm / ours for both of our rows
            row[4], row[5] = f"{tm_fwd / row[2]:.2f}", f"{tm_fb / row[3]:.2f}"
        rows.append([name, "one direction (mamba-ssm)", tm_fwd, tm_fb, "1.00", "1.00", f"{f_fwd / tm_fwd:.0%}",
                     f"{f_fb / tm_fb:.0%}", f"{tm_fb / tm_fwd:.2f}"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="few repetitions, small sweep (smoke run)")
    ap.add_argument("--only", nargs="*", default=None, help="workload names")
    ap.add_argument("--out", default=None, help="write the markdown tables here too")
    ap.add_argument("--sweep", action="store_true", help="try every tile in CONFIGS (each costs Triton compiles)")
    ap.add_argument("--bwd-sweep", action="store_true", help="only the backward-tile table (BWD_CANDIDATES)")
    ap.add_argument("--bwd-grid-sweep", action="store_true", help="only the backward path-loop/grid table")
    ap.add_argument("--fwd-sweep", action="store_true", help="only the forward-variant table (chunk vs lane kernels)")
    args = ap.parse_args()
    reps = 5 if args.quick else 20
    torch.backends.cuda.matmul.allow_tf32 = False
    if args.bwd_sweep or args.bwd_grid_sweep:
        notes, rows = [], []
        for name, w in WORKLOADS.items():
            if not args.only or name in args.only:
                rows += bench_bwd_sweep(name, w, reps, notes,
                                        BWD_GRID_CANDIDATES if args.bwd_grid_sweep else BWD_CANDIDATES)
        header = ["workload", "backward variant (channel-last inputs)", "fwd+bwd ms", "first row / this (same run)",
                  "max grad rel. diff vs first row"]
        emit_report(f"device: {device_line()}; forward tile fixed (default_config); first row = previous default",
                    header, rows, notes, args.out)
        return
    bw = copy_bandwidth_gbs() * 1e9
    rate = exp2_rate_per_s()
    notes: list[str] = []
    if args.fwd_sweep:
        rows = []
        loads = dict(WORKLOADS, vim_ti_224_one=WORKLOADS["vim_ti_224"], vim_ti_1248_one=WORKLOADS["vim_ti_1248"])
        for name, w in loads.items():
            if not args.only or name in args.only:
                rows += bench_fwd_sweep(name, w, bw, rate, reps, notes)
        header = ["workload", "forward variant (channel-last inputs)", "fwd ms", "fwd+bwd ms", "baseline/this fwd",
                  "baseline/this fwd+bwd", "floor/time fwd", "floor/time fwd+bwd", "rel. diff vs default / ratio"]
        emit_report(f"device: {device_line()}; {MAMBA_NOTE}; copy {bw / 1e12:.2f} TB/s, exp2 {rate / 1e12:.2f} T/s",
                    header, rows, notes, args.out)
        return
    head = [f"device: {device_line()}; {MAMBA_NOTE}",
            f"measured ceilings: copy {bw / 1e12:.2f} TB/s (read+write), exp2 {rate / 1e12:.2f} T/s"]
    rows = []
    for name, w in WORKLOADS.items():
        if args.only and name not in args.only:
            continue
        rows += bench_workload(name, w, bw, rate, reps, notes, sweep=args.sweep)
        print(rows[-1], notes[-1], flush=True)  # partial progress, in case the run is cut off
    rows += bench_single(bw, rate, reps, notes)
    header = ["workload", "variant", "fwd ms", "fwd+bwd ms", "baseline/ours fwd", "baseline/ours fwd+bwd",
              "floor/time fwd", "floor/time fwd+bwd", "fwd+bwd / fwd"]
    emit_report("\n".join(head), header, rows, notes, args.out)


if __name__ == "__main__":
    main()
