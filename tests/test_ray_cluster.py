"""`nas run --address` on a real multi-node Ray cluster on this machine: a head node (no CPUs, so it runs no trial)
and two worker nodes, each started with `ray start` as its own process tree with its own resources (one CPU and a
custom resource `w1` / `w2`). A study runs on it through the CLI in a subprocess; the store shows its trials ran on
both worker nodes. Then a worker node is killed (its whole process tree: raylet, agents and the trial's worker
process, as when a machine dies) while a trial runs on it: Tune retries the trial on the surviving node and the
study completes with every cell finished exactly once.

The cluster uses token authentication (Ray's default for `ray start --head` since 2.5x): a fresh token is passed to
every node and to the driver through RAY_AUTH_MODE / RAY_AUTH_TOKEN. Every node gets its own process group, and the
finaliser kills exactly those groups (never `ray stop`, which would stop other Ray instances on a shared machine).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAS = [sys.executable, "-m", "nas.cli"]
RAY = str(Path(sys.executable).parent / "ray")

STUDY = """
name: {name}
question: multi-node check
search_space: tiny_plain
fixed: {{route: bi, dims: [16], depths: [1]}}
factors:
  readout: [head, middle]
seeds: {seeds}
data: {{name: digits, n_train: {n_train}, n_test: 64, img_size: 16}}
train: {{epochs: {epochs}, batch_size: 32, lr: 3.0e-3, warmup_epochs: 0.5}}
execution: {{cpus_per_trial: 1, retries: 4}}
measure: {{skip: true}}
"""

pytestmark = pytest.mark.skipif(not Path(RAY).exists(), reason="the `ray` command is not installed beside python")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    name: str
    pgid: int  # the process group of its `ray start` (every daemon of the node stays in it)
    node_id: str = ""

    def pids(self) -> set[int]:
        """Every process of the node: its process group and their descendants (Ray puts each worker process in a
        process group of its own, under the raylet)."""
        table = _processes()
        mine = {pid for pid, (_, pgid) in table.items() if pgid == self.pgid}
        while True:
            more = {pid for pid, (ppid, _) in table.items() if ppid in mine} - mine
            if not more:
                return mine
            mine |= more

    def alive(self) -> bool:
        return bool(self.pids())

    def kill(self) -> None:
        """SIGKILL every process of the node at once, as when its machine dies."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _processes() -> dict[int, tuple[int, int]]:
    """pid → (parent pid, process group) for every live, non-zombie process."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            out[int(proc.name)] = (int(fields[1]), int(fields[2]))
    return out


@dataclass
class Cluster:
    address: str
    env: dict[str, str]
    temp_dir: Path
    nodes: dict[str, Node] = field(default_factory=dict)

    def start_node(self, name: str, args: list[str], timeout: float = 120) -> Node:
        log = self.temp_dir / f"{name}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([RAY, "start", "--disable-usage-stats", f"--temp-dir={self.temp_dir}",
                                     "--node-ip-address=127.0.0.1", *args], stdout=out, stderr=subprocess.STDOUT,
                                    env=self.env, start_new_session=True, cwd=ROOT)
        node = Node(name, proc.pid)
        self.nodes[name] = node
        rc = proc.wait(timeout=timeout)
        assert rc == 0, f"ray start ({name}) failed:\n{log.read_text()[-3000:]}"
        node.node_id = _raylet_node_id(node.pgid)
        return node

    def teardown(self) -> None:
        for node in self.nodes.values():
            node.kill()


def _raylet_node_id(pgid: int) -> str:
    """The node id on the command line of the raylet in this process group."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getpgid(int(proc.name)) != pgid:
                continue
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ProcessLookupError):
            continue
        if argv and argv[0].endswith(b"/raylet"):
            for a in argv:
                if a.startswith(b"--node_id="):
                    return a.split(b"=", 1)[1].decode()
    raise AssertionError(f"no raylet in process group {pgid}")


@pytest.fixture(scope="module")
def cluster():
    temp_dir = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    c = Cluster(f"127.0.0.1:{port}", env, temp_dir)
    try:
        c.start_node("head", ["--head", f"--port={port}", "--num-cpus=0", "--num-gpus=0",
                              "--include-dashboard=false"])
        for w in ("w1", "w2"):  # one at a time: two raylets starting together race for the same ports
            c.start_node(w, [f"--address={c.address}", "--num-cpus=1", "--num-gpus=0",
                             f"--resources={json.dumps({w: 1})}"])
        yield c
    finally:
        c.teardown()
        time.sleep(0.5)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _write(tmp: Path, name: str, *, seeds: str = "[0, 1]", epochs: int = 2, n_train: int = 128) -> Path:
    path = tmp / "studies" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(STUDY.format(name=name, seeds=seeds, epochs=epochs, n_train=n_train))
    return path


def _args(tmp: Path, c: Cluster) -> list[str]:
    # --max-concurrent 2 (one trial per worker node) keeps two trials pending at once; with one pending trial at a time
    # (Tune's default for a searcher), trials this short would all reuse the first trial's actor on one node
    return ["--db", f"sqlite:///{tmp / 'nas.db'}", "--address", c.address, "--max-concurrent", "2",
            "--set", f"storage.artifacts={tmp / 'artifacts'}", "--set", f"storage.ray_results={tmp / 'ray'}"]


def _store(tmp: Path):
    from nas.store import Store

    return Store(f"sqlite:///{tmp / 'nas.db'}", read_only=True)


def test_trials_run_on_both_worker_nodes(cluster, tmp_path):
    # trials of a few seconds: Tune hands a finished trial's actor to the next pending trial, so trials shorter than
    # an actor's start-up on the other node would all run on the first node
    study = _write(tmp_path, "cluster_spread", epochs=3, n_train=1536)  # digits holds 1797 images
    proc = subprocess.run([*NAS, "run", str(study), *_args(tmp_path, cluster)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**cluster.env, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 trial(s) finished, 0 failed" in proc.stdout, proc.stdout
    trials = _store(tmp_path).trials("cluster_spread")
    assert len(trials) == 4 and {t.state for t in trials} == {"complete"}
    workers = {cluster.nodes[w].node_id for w in ("w1", "w2")}
    used = {t.node_id for t in trials}
    assert used <= workers, f"a trial ran off the worker nodes: {used - workers} (head has no CPU)"
    assert len(used) == 2, f"all trials ran on one node: {used}"
    assert all(n.alive() for n in cluster.nodes.values())


def test_worker_node_killed_mid_trial_is_retried_elsewhere(cluster, tmp_path):
    """Runs after the spread test (same module cluster); kills one worker node while a trial is on it."""
    # The driver stores every epoch at once here (NAS_EPOCH_FLUSH_S=0; by default it batches them once a second), and
    # epochs of 1,536 images last long enough that a trial seen at its first epochs is still training when its node
    # dies: with batched writes and short epochs a CI run killed a node whose trial had just finished, so nothing
    # was retried. retries 4 (STUDY): until Ray marks the killed node dead, a retry can land on it again and fail.
    study = _write(tmp_path, "cluster_fault", seeds="[0, 1, 2]", epochs=8, n_train=1536)
    by_id = {cluster.nodes[w].node_id: cluster.nodes[w] for w in ("w1", "w2")}
    url_db = tmp_path / "nas.db"
    proc = subprocess.Popen([*NAS, "run", str(study), *_args(tmp_path, cluster)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**cluster.env, "COLUMNS": "200", "NAS_EPOCH_FLUSH_S": "0"}, start_new_session=True)
    victim = victim_key = None
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if not url_db.exists():
                continue
            try:
                store = _store(tmp_path)
                running = [t for t in store.trials("cluster_fault", states=("running",))
                           if t.node_id in by_id and 1 <= len(store.epochs(t.id)) <= 4]
            except Exception:  # noqa: BLE001 - tables not created yet
                continue
            if running:  # a trial is early in its 8 epochs on a worker node: kill that node
                victim, victim_key = by_id[running[0].node_id], running[0].key
                victim.kill()
                break
        assert victim is not None, "no trial was seen running on a worker node"
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out
    assert not victim.alive()
    trials = _store(tmp_path).trials("cluster_fault")
    complete = [t for t in trials if t.state == "complete"]
    assert "6 trial(s) finished, 0 failed" in out, out
    assert len(complete) == 6 and len({t.key for t in complete}) == 6, [(t.key, t.state) for t in trials]
    assert len(trials) == 6  # one row per cell: the retry is the same trial, not a repeat
    (hit,) = [t for t in complete if t.key == victim_key]
    survivor = next(n for n in by_id.values() if n is not victim)
    assert hit.node_id == survivor.node_id, "the killed node's trial must finish on the surviving node"
    assert [e["epoch"] for e in _store(tmp_path).epochs(hit.id)] == list(range(1, 9))
    assert hit.attempts >= 2, f"the retried trial records {hit.attempts} attempt(s)"
