"""Import layering: no cycles among the modules of blocks/ and kernels/, counting imports inside functions too (a cycle
hidden in a function is still a cycle; `if TYPE_CHECKING:` blocks hold annotations only and never run), and kernels/
never imports blocks/ or nas/."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("blocks", "kernels")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules imported anywhere in `path` (relative imports resolved; TYPE_CHECKING blocks skipped)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    skipped = {id(n) for block in ast.walk(tree)
               if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
               for stmt in block.body for n in ast.walk(stmt)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from . import mixers` imports a module
    return out


def _graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    names = {_module_name(p) for p in files}
    return {_module_name(p): {m for m in _imports(p) if m in names and m != _module_name(p)} for p in files}


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            # a package's __init__ importing its own submodules is how a package is assembled, not a cycle
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " → ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_kernels_do_not_import_the_layers_above():
    for path in (ROOT / "kernels").rglob("*.py"):
        above = {m for m in _imports(path) if m.split(".")[0] in ("blocks", "nas", "dashboard")}
        assert not above, f"{path.relative_to(ROOT)} imports {sorted(above)}"


def test_only_the_timm_bridge_imports_timm():
    """timm's package import loads torchvision.ops (~2.6 s here, ~9.7 s on the GPU machine per process; blocks/layers.py
    says why): the grammar uses its own DropPath/Mlp, and only the timm integration imports timm."""
    bridge = {"blocks.timm_models"}
    for path in (ROOT / "blocks").rglob("*.py"):
        if _module_name(path) in bridge:
            continue
        found = {m for m in _imports(path) if m.split(".")[0] in ("timm", "torchvision")}
        assert not found, f"{path.relative_to(ROOT)} imports {sorted(found)}"


def test_a_worker_imports_nothing_of_the_driver():
    """A Ray worker imports the trainable's module, then builds and trains a model: none of that may load the driver's
    modules (the plan, the store, the searcher, SQLAlchemy, Optuna) or timm/torchvision (session 14: a worker spent
    ~19 s importing on the GPU machine before its first trial). Checked in a fresh interpreter."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "import nas.trainable\n"
        "from blocks import build_backbone, get_preset\n"
        "import nas.trial, nas.data, blocks.model_file\n"
        "for name in ('test_vim', 'test_vil', 'test_vmamba', 'test_deit', 'test_mambaout', 'test_globalmamba'):\n"
        "    m = build_backbone(get_preset(name))\n"
        "torch.optim.AdamW(m.parameters())\n"
        "bad = ('optuna', 'sqlalchemy', 'alembic', 'timm', 'torchvision', 'nas.driver', 'nas.plan', 'nas.store',\n"
        "       'nas.tune_adapter', 'nas.execute', 'nas.database')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in bad or m in bad))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"a worker loaded {out.stdout.strip()}"
