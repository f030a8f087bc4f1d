"""How much GPU time a study profile asks for, before it runs: the plan behind the `h200` profiles' comments.

Cost model (rough, for planning): a trial trains `epochs × n_train` images and evaluates `epochs × n_test` (a forward
is about a third of a training step); an image costs Σ over blocks of L_b × (1 + P_b) / 3 "token-blocks" (L_b
tokens, P_b scan paths: Vim's two-path bi block counts 1, a one-path block 0.67, VMamba's cross4 1.67). The rate is
the one measured reference before H4's speed-up: a Vim-Ti-width bi model (dim 192, depth 12, 64 tokens) trained at
about 8,500 images/s with 4 trials packed on one H100/H200, i.e. 8,500 × 12 × 65 ≈ 6.6M token-blocks/s for the
whole GPU. Small models are overhead-bound on a GPU, so width is ignored. Each trial also pays a fixed start-up
(worker process, Triton compile or cache load, data generation) of about 10 s of one slot.

    python benchmarks/gpu_budget.py                       # every study's h200 profile
    python benchmarks/gpu_budget.py studies/x.yaml --profile h200 --rate 1.3e7
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RATE = 6.6e6  # token-blocks per second for the whole GPU (see the docstring)
START_S = 10.0  # per trial, of one slot
SLOTS = 16  # trials packed at once (16 CPU cores, cpus_per_trial 1)
SEED_STUDIES = ("cls_token_position", "vim_bidirectional", "mambaout_need_ssm", "globalmamba_band_order",
                "vmamba_scan_routes", "vil_classification_design")


def token_blocks(spec) -> float:  # noqa: ANN001 - an ArchSpec
    """Σ_b L_b (1 + P_b) / 3 for one image, from one CPU forward with hooks on every mixer."""
    import torch

    from blocks import build_backbone
    from blocks.mixers.base import TokenMixer

    model = build_backbone(spec, kernel_backend="reference").eval()
    total = [0.0]

    def hook(module, args, _out) -> None:  # noqa: ANN001
        x = args[0]
        length = x.shape[1] if x.dim() == 3 else x.shape[1] * x.shape[2]  # (B, L, C) or (B, H, W, C)
        total[0] += length * (1 + module.n_paths) / 3

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, TokenMixer)]
    with torch.no_grad():
        model(torch.zeros(1, spec.in_chans, spec.img_size, spec.img_size))
    for h in handles:
        h.remove()
    return total[0]


def plan(study_path: str, profile: str, rate: float) -> tuple[int, float]:
    from nas.config import load_study
    from nas.data import make_dataset
    from nas.space import expand_grid, load_search_space

    sf = load_study(study_path, profile=profile)
    st = sf.study
    space = load_search_space(st.search_space, file=sf.path)
    d = st.data
    k = make_dataset(d.name, seed=0, n_train=16, n_test=16, img_size=32, **d.knobs).num_classes
    cells = expand_grid(st, space, img_size=d.img_size, num_classes=k, file=sf.path)
    per_spec = {c.spec.id: token_blocks(c.spec) for c in cells}
    images = st.train.epochs * (d.n_train + d.n_test / 3)
    gpu_s = sum(images * per_spec[c.spec.id] / rate + START_S / SLOTS for c in cells)
    levels = len(per_spec)
    print(f"{st.name:<28} {len(cells):>4} trials ({levels} levels × {len(st.seeds)} seeds)  {d.name} {d.img_size}²  "
          f"{st.train.epochs} × {d.n_train:,} images  token-blocks/image {min(per_spec.values()):.0f}–"
          f"{max(per_spec.values()):.0f}  ≈ {gpu_s:5.0f} GPU-s")
    return len(cells), gpu_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("studies", nargs="*", default=[f"studies/{s}.yaml" for s in SEED_STUDIES])
    ap.add_argument("--profile", default="h200")
    ap.add_argument("--rate", type=float, default=RATE, help="token-blocks per second for the whole GPU")
    args = ap.parse_args()
    n = total = 0.0
    for s in args.studies:
        trials, gpu_s = plan(s, args.profile, args.rate)
        n, total = n + trials, total + gpu_s
    print(f"{'all':<28} {int(n):>4} trials  ≈ {total:.0f} GPU-s of the whole GPU ({total / 60:.1f} min at "
          f"{args.rate:.2g} token-blocks/s)")


if __name__ == "__main__":
    main()
