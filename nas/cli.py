"""`nas` command line: run a study, list and show studies, export a trial's model, check the presets.

    nas run studies/cls_token_position.yaml      # train every cell, then print the ablation table
    nas show cls_token_position                  # the table again, from the database
    nas export cls_token_position -o best.safetensors

Bad input (a malformed study, an unknown key or name, a value out of range, a missing data path, an unreachable
database) prints one message naming the file, the key and what is allowed, and exits with code 2.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from nas.console import EXIT_BAD_INPUT, console as _console, db_url as _db_url, fail as _fail  # noqa: F401
from nas.console import study_name as _study_name
from nas.records import TrialState

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)


@app.command()
def run(
    study: str = typer.Argument(..., help="study file (studies/NAME.yaml) or its name"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate and list the trials with estimated cost; "
                                                           "run nothing, write nothing"),
    db: Optional[str] = typer.Option(None, "--db", help="database URL (default: the study's storage.url, "
                                                        "sqlite:///runs/nas.db)"),
    address: Optional[str] = typer.Option(None, "--address", help="join an existing Ray cluster (e.g. auto or "
                                                                   "HOST:6379)"),
    profile: Optional[str] = typer.Option(None, "--profile", help="apply one of the study's profiles (e.g. gpu)"),
    set_: list[str] = typer.Option([], "--set", help="override a study key: --set train.epochs=3 (repeatable)"),
    max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", min=1, help="at most this many trials "
                                                                                        "at once"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="run failed trials of an earlier run again"),
) -> None:
    """Run (or resume) a study and print its ablation table. Finished trials are never repeated."""
    from contextlib import nullcontext

    from nas.interrupts import STOPS

    # a run stops the same way on Ctrl-C and SIGTERM, leaving nothing running (nas/interrupts.py)
    with nullcontext() if dry_run else STOPS.installed():
        _run_command(_console(), study, profile, set_, db, address, dry_run, retry_failed, max_concurrent)


def _run_command(console: Console, study: str, profile: Optional[str], set_: list[str], db: Optional[str],
                 address: Optional[str], dry_run: bool, retry_failed: bool, max_concurrent: Optional[int]) -> None:
    from contextlib import nullcontext

    from blocks import NasError
    from nas.config import load_study
    from nas.interrupts import STOPS

    startup: Any = None  # nas.execute.Startup, begun beside the pre-flight (not for a dry run)

    def begin_startup(arms: list[Any]) -> None:
        nonlocal startup
        if not _store_would_open(sf.study):
            return  # the run is refused with the reason: start nothing for it
        from nas.execute import Startup

        startup = Startup(sf.study)
        startup.begin([a.spec.to_json() for a in arms], where=", beside the pre-flight")

    try:
        try:
            sf = load_study(study, profile=profile, sets=set_, db_url=db, address=address)
            from nas.plan import plan_study  # no Ray: a dry run never imports it

            if not dry_run:  # Ray Tune's imports before the checks' threads start: beside them, holding the GIL
                import nas.execute  # noqa: F401 - turn by turn, they took 3 s instead of ~1 (H200, call V)

            # a run holds Ctrl-C / SIGTERM while its checks run beside Ray's start (nas/interrupts.py)
            with nullcontext() if dry_run else STOPS.held(), console.status("checking the study…") as status:
                plan = plan_study(sf, progress=lambda msg: status.update(msg), timed=dry_run,
                                  beside=None if dry_run else begin_startup)
        except NasError as e:
            _fail(str(e))
        _run_planned(console, plan, dry_run, retry_failed, max_concurrent, startup)
    finally:
        if startup is not None:
            startup.close()  # a no-op after a run (the runner closed it); else nothing is left running


def _store_would_open(study: Any) -> bool:
    """Whether the run will open the study's database and find no other live driver on the study, found out without
    writing anything (a read-only look; a new SQLite file's folder must take a file). When not, the run refuses the
    study with the reason, and nothing should have started for it."""
    import tempfile

    from nas.database import sqlite_path
    from nas.errors import StoreError
    from nas.store import Store

    url = study.storage.url
    path = sqlite_path(url)
    if path is not None and not path.exists():
        folder = path.parent
        while not folder.exists():
            folder = folder.parent
        try:
            tempfile.TemporaryFile(dir=folder).close()
        except OSError:
            return False
        return True
    try:
        return Store(url, read_only=True).active_driver(study.name) is None
    except StoreError:  # cannot connect
        return False
    except Exception:  # noqa: BLE001 - e.g. a reachable database without our tables yet: the run creates them
        return True


def _run_planned(console: Console, plan: Any, dry_run: bool, retry_failed: bool, max_concurrent: Optional[int],
                 startup: Any) -> None:
    st = plan.study
    console.print(f"[bold]{st.name}[/bold]: {st.question or ''}  ({st.kind}, {plan.n_trials} trials, "
                  f"search space {plan.space.name}, data {st.data.name} {st.data.img_size}², "
                  f"{len(st.initial_seeds)} seed(s))")
    if st.adaptive_seeds is not None:
        a = st.adaptive_seeds
        console.print(f"adaptive seeding: {a.min} seeds now, up to {a.max} per level until the {a.confidence:.0%} "
                      f"interval's half-width is at most {a.target_halfwidth:g} (display unit of "
                      f"{st.objectives[0].metric})", highlight=False)
    if dry_run:
        _print_plan(console, plan)
        return
    from nas.errors import StoreError
    from nas.store import Store

    try:
        store = Store(st.storage.url)
    except StoreError as e:
        _fail(str(e))
    from nas.beside import import_beside

    # the closing table's imports (~1 s on the GPU machine), while the trials run
    import_beside("nas.summary", "scipy", "scipy.stats")
    _run_with_progress(console, plan, store, retry_failed=retry_failed, max_concurrent=max_concurrent,
                       startup=startup)
    _print_summary(console, store, st.name)


def _print_plan(console: Console, plan: Any) -> None:
    st = plan.study
    table = Table(title=f"{st.name}: trials (dry run, nothing written)")
    if st.kind == "grid":
        for col in ("#", *st.factors, "seed", "spec", "params", "est. CPU time"):
            table.add_column(col, justify="right" if col in ("#", "seed", "params", "est. CPU time") else "left")
        for i, c in enumerate(plan.cells):
            table.add_row(str(i), *[c.levels[f] for f in st.factors], str(c.seed), c.spec.id,
                          f"{plan.preflight[c.spec.id].params:,}", f"{plan.estimate_seconds(c.spec.id):.0f} s")
        console.print(table)
        total = sum(plan.estimate_seconds(c.spec.id) for c in plan.cells)
        console.print(f"{len(plan.cells)} trials, estimated {total / 60:.1f} CPU-minutes of training "
                      "(from one timed training step per spec; a rough guide)")
        if st.adaptive_seeds is not None:
            most = len(st.max_seeds) * sum(plan.estimate_seconds(a.spec.id) for a in plan.arms)
            console.print(f"later rounds: at most {len(st.max_seeds) * len(plan.arms)} trials in all, "
                          f"{most / 60:.1f} CPU-minutes")
    else:
        table.add_column("key")
        table.add_column("choices")
        for k, c in st.search.space.items():
            table.add_row(k, str(c if isinstance(c, list) else c.model_dump()))
        console.print(table)
        console.print(f"{st.search.n_trials} trials sampled by {st.search.sampler}; objectives "
                      f"{[(o.metric, o.resolved_direction) for o in st.objectives]}")


def _run_with_progress(console: Console, plan: Any, store: Any, **kwargs: Any) -> None:
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from nas.execute import run_study

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                        transient=False)
    task = {"id": None}
    state: dict[str, Any] = {"failed": 0, "running": 0, "done": 0, "t0": time.perf_counter(), "started": None}

    def queued(rnd: int, q: int, stale: int, done: int) -> None:
        msg = f"{done} trial(s) already done, {q} to run" if rnd == 1 else f"round {rnd}: {q} more trial(s) to run"
        if stale:
            msg += f", {stale} stale trial(s) from an interrupted run re-queued"
        progress.console.print(msg)
        if task["id"] is not None:
            progress.remove_task(task["id"])
        task["id"] = progress.add_task("trials" if rnd == 1 else f"round {rnd}", total=q, info="")

    def event(kind: str, info: dict[str, Any]) -> None:
        if task["id"] is None:
            return
        if kind == "setup":  # what happens before the first trial (MPS, the kernel warm-up, Ray), with its seconds
            progress.console.print(f"[dim]{escape(info['text'])}[/dim]", highlight=False)
            return
        if kind == "start":
            if state["started"] is None:  # start-up cost is the study's fixed overhead: say what it was
                state["started"] = time.perf_counter()
                progress.console.print(f"[dim]first trial started {state['started'] - state['t0']:.1f} s after the "
                                       "run began[/dim]", highlight=False)
            state["running"] += 1
        elif kind == "retry":  # the same trial starts again (a new "start" follows)
            state["running"] -= 1
            first = (info.get("error") or "").splitlines()[:1]
            progress.console.print(f"[yellow]trial retried:[/yellow] {escape(first[0] if first else '')}",
                                   highlight=False)
        elif kind in ("complete", "stopped", "failed"):
            state["running"] -= 1
            state["done"] += 1
            state["failed"] += kind == "failed"
            progress.advance(task["id"])
            if kind == "failed":
                progress.console.print(f"[red]trial failed:[/red] {escape(info.get('error', ''))}", highlight=False)
        text = f"running {state['running']}" + (f", [red]failed {state['failed']}[/red]" if state["failed"] else "")
        if kind == "epoch" and info.get("val_acc") is not None:
            text += f", last val_acc {100 * info['val_acc']:.1f}%"
        progress.update(task["id"], info=text)

    from blocks import NasError

    try:
        with progress:
            out = run_study(plan, store, command=shlex.join(sys.argv), on_event=event, on_queued=queued, **kwargs)
    except NasError as e:  # e.g. another driver runs this study, or the study exists with other objectives
        _fail(str(e))
    console.print(f"{out.completed} trial(s) finished, {out.failed} failed, in {out.wall_seconds:.0f} s "
                  f"(database: {out.url})" + (" — interrupted; run the same command to resume" if out.interrupted
                                             else ""))


def _print_summary(console: Console, store: Any, name: str, metric: str = "val_acc") -> None:
    from nas.beside import wait_for_imports

    wait_for_imports()  # the head start on these imports (nas/beside.py)
    from nas.summary import ablation_summary, ablation_table

    info = store.study(name)
    cfg = info.config
    trials = store.trials(name)
    if info.kind == "grid":
        summ = ablation_summary(cfg, trials, metric)
        paper = cfg.get("paper") or {}
        seeds = len({t.seed for t in trials if t.is_done})
        console.print(ablation_table(summ, title=f"{name}: {cfg.get('question') or ''}\n{summ.metric} on "
                                                 f"{cfg['data']['name']}, {seeds} seeds", paper_metric=None))
        if paper:
            console.print(f"paper: {paper.get('source', '')} ({paper.get('metric', '')}). Our numbers come from a "
                          "tiny model on a small data set: compare the ordering and the gaps, not the values.",
                          highlight=False)
    else:
        _print_search(console, cfg, trials)
    failed = [t for t in trials if t.state is TrialState.FAILED]
    for t in failed[:5]:
        console.print(f"[red]failed trial {t.number}[/red] {t.levels}: {(t.error or '').splitlines()[0]}",
                      highlight=False)


def _print_search(console: Console, cfg: dict[str, Any], trials: list[Any]) -> None:
    objectives = [o["metric"] for o in cfg["objectives"]]
    done = [t for t in trials if t.state is TrialState.COMPLETE]
    table = Table(title=f"{cfg['name']}: {len(done)} finished trials (best first by {objectives[0]})")
    for col in ("trial", "choices", *objectives, "params"):
        table.add_column(col)
    rev = cfg["objectives"][0].get("direction", "maximize") != "minimize"
    key = objectives[0]
    done.sort(key=lambda t: (t.values.get(key) is None, -(t.values.get(key) or 0) if rev else
                             (t.values.get(key) or 0)))
    for t in done[:15]:
        table.add_row(str(t.number), ", ".join(f"{k}={v}" for k, v in t.levels.items()),
                      *[f"{t.values.get(o):.4g}" if t.values.get(o) is not None else "–" for o in objectives],
                      f"{t.num_params:,}" if t.num_params else "–")
    console.print(table)
    stopped = sum(t.state is TrialState.STOPPED for t in trials)
    if stopped:
        console.print(f"{stopped} trial(s) stopped early by ASHA (their last epoch is in the database)")


@app.command(name="list")
def list_studies(db: Optional[str] = typer.Option(None, "--db", help="database URL")) -> None:
    """Every study in the database: status, attempts done / running / failed / interrupted (re-queued on resume),
    best accuracy, last update."""
    from nas.errors import StoreError
    from nas.store import Store

    try:
        store = Store(_db_url(db), read_only=True)
        rows = store.studies()
    except StoreError as e:
        _fail(str(e))
    table = Table(title=f"studies in {_db_url(db)}")
    for col in ("study", "kind", "status", "done", "running", "failed", "interrupted", "cells", "best val_acc",
                "updated"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.name, r.kind, r.status, str(r.done), str(r.running), str(r.failed), str(r.interrupted),
                      str(r.cells),
                      "–" if r.best_val_acc is None else f"{100 * r.best_val_acc:.1f}%",
                      r.updated_at.strftime("%Y-%m-%d %H:%M") if r.updated_at else "–")
    _console().print(table)


@app.command()
def show(
    study: str = typer.Argument(..., help="study name (or its file)"),
    db: Optional[str] = typer.Option(None, "--db", help="database URL"),
    metric: str = typer.Option("val_acc", help="metric to summarise (val_acc, val_loss, throughput, params, flops)"),
) -> None:
    """Per factor level: n, mean, 95% CI over seeds, paired difference against the reference, the paper's value."""
    from nas.errors import StoreError
    from nas.store import Store

    try:
        store = Store(_db_url(db), read_only=True)
        _print_summary(_console(), store, _study_name(study), metric)
    except StoreError as e:
        _fail(str(e))


@app.command()
def export(
    study: str = typer.Argument(..., help="study name (or its file)"),
    out: Path = typer.Option(..., "-o", "--out", help="output file (.safetensors; a .json beside it with --pair)"),
    trial: Optional[int] = typer.Option(None, "--trial", help="trial number (default: the best finished trial)"),
    db: Optional[str] = typer.Option(None, "--db", help="database URL"),
    pair: bool = typer.Option(False, "--pair", help="also write the ArchSpec JSON beside the weights"),
    fmt: str = typer.Option("safetensors", "--format", help="safetensors (the model file) or onnx (the reference "
                               "kernels' path, checked against PyTorch with onnxruntime)"),
) -> None:
    """Write a trial's model (safetensors weights + ArchSpec JSON in its header), loadable with
    `blocks.load_backbone(path)` or `timm.create_model("visionseq_model_file", model_file=path)` — no pickle anywhere;
    or, with --format onnx, an ONNX file for deployment."""
    from nas.errors import NasError, StoreError
    from nas.export import export_model_file
    from nas.store import Store

    if fmt not in ("safetensors", "onnx"):
        _fail(f"--format {fmt!r}: allowed are safetensors, onnx")
    try:
        store = Store(_db_url(db), read_only=True)
        name = _study_name(study)
        info = store.study(name)
        if trial is None:
            done = [t for t in store.trials(name, states=(TrialState.COMPLETE,)) if t.val_acc is not None]
            if not done:
                raise StoreError(f"study {name!r} has no finished trial to export")
            chosen = max(done, key=lambda t: t.val_acc)
        else:
            chosen = store.trial(name, trial)
        arts = [a for a in store.artifacts(chosen.id) if a.kind == "model"]
        if not arts or not Path(arts[-1].path).exists():
            raise StoreError(f"trial {chosen.number} of {name!r} ({chosen.state}) has no model file" +
                             (f" (expected {arts[-1].path})" if arts else ""))
        meta = {"study": name, "trial": str(chosen.number), "seed": str(chosen.seed),
                "val_acc": str(chosen.val_acc), "levels": ", ".join(f"{k}={v}" for k, v in chosen.levels.items()),
                "question": info.question}
        if fmt == "onnx":
            from nas.export_onnx import export_onnx

            onnx = export_onnx(Path(arts[-1].path), out, metadata=meta)
            path = onnx.path
            _console().print(f"ONNX: {onnx.bytes / 1e6:.1f} MB, {onnx.nodes} nodes, {onnx.seconds:.0f} s; onnxruntime "
                             f"vs PyTorch logits: max abs diff {onnx.max_abs_diff:.1e}")
        else:
            path = export_model_file(Path(arts[-1].path), out, meta, pair=pair)
    except NasError as e:  # StoreError, a model file that does not read, the onnx extra missing
        _fail(str(e))
    _console().print(f"trial {chosen.number} ({', '.join(f'{k}={v}' for k, v in chosen.levels.items())}, seed "
                     f"{chosen.seed}, val_acc {100 * (chosen.val_acc or 0):.1f}%) → {path}")


@app.command()
def presets(
    include_test: bool = typer.Option(False, "--include-test", help="also list the tiny test_* presets"),
    forward: bool = typer.Option(False, help="also build each preset for real and time one CPU forward (slow)"),
) -> None:
    """Every preset's parameter count (counted on the meta device: instant) against the published count."""
    import torch

    from blocks import build_backbone, list_presets, summarize_preset

    console = _console()
    table = Table(title="Seed-paper presets: our parameter count vs the published one")
    for col in ("preset", "layout", "mixer", "route", "readout", "tokens", "ours", "published", "ratio", "forward"):
        table.add_column(col, justify="right" if col in ("tokens", "ours", "published", "ratio", "forward") else "left")
    failures = 0
    with console.status("counting…") as status:
        for name in list_presets(include_test=include_test):
            status.update(f"{'building' if forward else 'counting'} {name}…")
            row = summarize_preset(name)
            failures += not row.matches
            fwd = "-"
            if forward:
                torch.manual_seed(0)
                model = build_backbone(row.spec).eval()
                t = time.perf_counter()
                with torch.no_grad():
                    out = model(torch.randn(1, row.spec.in_chans, row.spec.img_size, row.spec.img_size))
                fwd = f"{(time.perf_counter() - t) * 1e3:.0f} ms" if torch.isfinite(out).all() else "NaN!"
                failures += fwd == "NaN!"
            pub = row.published_params
            table.add_row(name, row.layout, row.mixer, row.route, row.readout, str(row.tokens), f"{row.params:,}",
                          f"{pub:,}" if pub else "-", f"{row.ratio:.4f}" if row.ratio else "-", fwd,
                          style=None if row.matches else "red")
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


def _register_extensions() -> None:
    """`nas dashboard` and `nas report` live with the dashboard (dashboard/commands.py)."""
    try:
        from dashboard.commands import register
    except ImportError:
        return
    register(app)


_register_extensions()


def main() -> None:
    """The `nas` console command: the Typer app, then a fast exit (nas/fast_exit.py says why)."""
    from nas.fast_exit import run_and_exit

    run_and_exit(app)


if __name__ == "__main__":
    main()
