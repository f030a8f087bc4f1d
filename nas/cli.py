"""`nas` command line. Today: `nas presets` builds every seed-paper preset and checks its parameter count against the
published one (the platform's `nas run` / `show` / `export` come with the platform issue)."""

from __future__ import annotations

import sys
import time

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def presets(
    include_test: bool = typer.Option(False, "--include-test", help="also list the tiny test_* presets"),
    forward: bool = typer.Option(True, help="run one forward pass of each preset on a random image (CPU)"),
) -> None:
    """Build every preset, count its parameters against the published count, and run one forward pass."""
    import torch

    from blocks import PRESETS, build_backbone, count_parameters, get_preset, list_presets
    from blocks.routes import route_name

    console = Console(width=None if sys.stdout.isatty() else 150)
    table = Table(title="Seed-paper presets: our parameter count vs the published one")
    for col in ("preset", "layout", "mixer", "route", "readout", "tokens", "ours", "published", "ratio", "forward"):
        table.add_column(col, justify="right" if col in ("tokens", "ours", "published", "ratio", "forward") else "left")
    failures = 0
    names = list_presets(include_test=include_test)
    with console.status("building presets…") as status:
        for name in names:
            status.update(f"building {name}…")
            spec, preset = get_preset(name), PRESETS.get(name)
            ours = count_parameters(spec)
            pub = preset.published_params
            ratio = ours / pub if pub else None
            ok = ratio is None or abs(ratio - 1) < 0.01
            failures += not ok
            fwd = "-"
            if forward:
                torch.manual_seed(0)
                model = build_backbone(spec).eval()
                t = time.perf_counter()
                with torch.no_grad():
                    out = model(torch.randn(1, spec.in_chans, spec.img_size, spec.img_size))
                fwd = f"{(time.perf_counter() - t) * 1e3:.0f} ms" if torch.isfinite(out).all() else "NaN!"
                failures += fwd == "NaN!"
            m = build_backbone(spec, device="meta")
            table.add_row(name, spec.layout, spec.mixer.name, route_name(spec.route) if spec.route else "-",
                          spec.readout, str(m.layout.length), f"{ours:,}", f"{pub:,}" if pub else "-",
                          f"{ratio:.4f}" if ratio else "-", fwd, style=None if ok else "red")
    console.print(table)
    if failures:
        console.print(f"[red]{failures} preset(s) off their published count or not finite[/red]")
        raise typer.Exit(1)


@app.command(name="version")
def version() -> None:
    """Print the package and PyTorch versions."""
    import torch
    from importlib.metadata import version as v

    print(f"visionseq-nas {v('visionseq-nas')}, torch {torch.__version__}, python {sys.version.split()[0]}")


if __name__ == "__main__":
    app()
