"""run_trial and measure_cost on CPU with tiny budgets."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from blocks import build_backbone, count_parameters, get_preset
from nas.data import make_dataset
from nas.errors import NasError, TrialDiverged
from nas.measure import measure_cost
from nas.trial import lr_at, param_groups, run_trial

FAST = dict(epochs=2, batch_size=16, lr=1e-3, weight_decay=0.05, warmup_epochs=1, measure={"skip": True})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and two OpenMP threads on a shared 2-core runner can stall."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    return make_dataset("shapes", seed=0, n_train=64, n_test=32, img_size=16)


def _spec(name, data):
    return get_preset(name).with_overrides({"img_size": data.img_size, "num_classes": data.num_classes})


@pytest.mark.parametrize("preset", ["test_vim", "test_deit"])
def test_same_seed_same_metrics_other_seed_differs(tiny, preset):
    spec = _spec(preset, tiny)
    a, b, c = (run_trial(spec, tiny, seed=s, **FAST) for s in (0, 0, 1))
    assert a.metrics == [dict(m, seconds=a.metrics[i]["seconds"]) for i, m in enumerate(b.metrics)]
    assert [m["train_loss"] for m in a.metrics] != [m["train_loss"] for m in c.metrics]
    assert a.params == count_parameters(spec) and a.spec_id == spec.id
    assert a.wall_seconds >= a.train_seconds > 0


def test_report_called_every_epoch_with_the_metrics(tiny):
    calls = []
    res = run_trial(_spec("test_vim", tiny), tiny, seed=0, report=lambda e, m: calls.append((e, m)),
                    **dict(FAST, epochs=3, measure={"repeats": 1, "warmup": 0}))
    assert [e for e, _ in calls] == [1, 2, 3]
    assert all(set(m) == {"train_loss", "val_loss", "val_acc", "lr", "seconds"} for _, m in calls)
    assert res.kernel_paths == {"causal_conv1d_paths": "reference", "selective_scan_paths": "reference",
                                "train_step": "eager"}  # the CPU path, recorded
    assert len(res.metrics) == 3 and res.val_acc == res.metrics[-1]["val_acc"]
    assert res.cost["params"] == res.params and res.cost["flops_terms"]["selective_scan"] > 0
    lrs = [m["lr"] for _, m in calls]  # epoch-start lr: mid-warm-up, then decaying along the cosine
    assert lrs[0] < lrs[1] and lrs[2] < lrs[1] <= FAST["lr"]


def test_huge_lr_or_poisoned_input_raises_trial_diverged(tiny):
    spec = _spec("test_deit", tiny)
    poisoned = type(tiny)(tiny.name, tiny.x_train.clone(), tiny.y_train, tiny.x_test, tiny.y_test, tiny.num_classes,
                          tiny.img_size)
    poisoned.x_train[5, 0, 0, 0] = float("nan")
    with pytest.raises(TrialDiverged, match="epoch 1") as err:
        run_trial(spec, poisoned, seed=0, **FAST)
    assert err.value.epoch == 1 and isinstance(err.value, NasError)
    # the losses are read once per check (not every step), yet the error names the step whose batch held the NaN
    order = torch.randperm(len(tiny.y_train), generator=torch.Generator().manual_seed(0))
    assert err.value.step == int((order == 5).nonzero()) // FAST["batch_size"]
    with pytest.raises(TrialDiverged):
        run_trial(spec, tiny, seed=0, **dict(FAST, lr=1e6, epochs=4))


def test_learns_an_easy_shapes_task():
    data = make_dataset("shapes", seed=1, n_train=256, n_test=128, img_size=16, num_classes=4, position="centred")
    res = run_trial(_spec("test_deit", data), data, seed=0, epochs=6, batch_size=32, lr=3e-3, weight_decay=0.05,
                    warmup_epochs=1, measure={"skip": True})
    assert res.val_acc > 0.6  # chance is 0.25; reaches ~0.9 at this budget
    assert res.metrics[-1]["train_loss"] < 0.7 * res.metrics[0]["train_loss"]


def test_mismatched_spec_and_data_is_a_clear_error(tiny):
    with pytest.raises(NasError, match="with_overrides"):
        run_trial(get_preset("test_deit"), tiny, seed=0, **FAST)
    if not torch.cuda.is_available():
        with pytest.raises(NasError, match="amp=True needs a CUDA device"):
            run_trial(_spec("test_deit", tiny), tiny, seed=0, amp=True, **FAST)


def test_schedule_and_decay_groups():
    assert lr_at(0, lr=1.0, total_steps=10, warmup_steps=2) == 0.5
    assert lr_at(1, lr=1.0, total_steps=10, warmup_steps=2) == 1.0
    assert lr_at(2, lr=1.0, total_steps=10, warmup_steps=2) == 1.0
    assert math.isclose(lr_at(6, lr=1.0, total_steps=10, warmup_steps=2), 0.5)
    assert lr_at(10, lr=1.0, total_steps=10, warmup_steps=2) == 0.0
    model = build_backbone(get_preset("test_vim"))
    decay, no_decay = param_groups(model, 0.05)
    no_ids = {id(p) for p in no_decay["params"]}
    named = dict(model.named_parameters())
    assert id(named["cls_token"]) in no_ids and id(named["pos_embed"]) in no_ids
    assert all(id(p) in no_ids for n, p in named.items() if p.ndim == 1 or n.endswith(("A_log", ".D")))
    assert id(named["tokenizer.proj.weight"]) not in no_ids and decay["weight_decay"] == 0.05


@pytest.mark.parametrize("preset,term", [("test_vim", "selective_scan"), ("test_vmamba", "selective_scan"),
                                         ("test_vil", "mlstm"), ("test_deit", None), ("test_mambaout", None)])
def test_measure_cost(preset, term):
    spec = get_preset(preset)
    cost = measure_cost(spec, 32, 4, "cpu", repeats=2, warmup=1)
    assert cost["params"] == count_parameters(spec)
    assert cost["flops"] > 0 and cost["macs"] == cost["flops"] // 2 and cost["throughput"] > 0
    assert cost["peak_memory_bytes"] is None  # not measured on CPU
    terms = cost["flops_terms"]
    for name in ("selective_scan", "mlstm"):
        assert (terms[name] > 0) == (name == term)
    assert cost["flops"] == sum(terms.values())


def test_scan_term_follows_vmamba_rule_and_kernels_are_not_double_counted():
    spec = get_preset("test_vim")  # 2 blocks, dim 32 → E 64, N 16, 2 paths, 16 patches + 1 class token
    cost = measure_cost(spec, 32, 2, "cpu", repeats=1, warmup=0)
    L, PE, N = 17, 2 * 64, 16
    assert cost["flops_terms"]["selective_scan"] == 2 * 2 * (9 * L * PE * N + L * PE)
    vil = get_preset("test_vil")  # mLSTM cell: S²·E per block, S = 16 (no class token), E = 64, 2 blocks
    cost = measure_cost(vil, 32, 2, "cpu", repeats=1, warmup=0)
    assert cost["flops_terms"]["mlstm"] == 2 * 2 * 16 * 16 * 64
    with FlopCounterMode(display=False) as raw:  # the generic count includes the reference cell's matmuls
        build_backbone(vil)(torch.randn(1, 3, 32, 32))
    assert cost["flops_terms"]["counter"] < raw.get_total_flops()


def test_measure_cost_across_resolutions_scales_with_tokens():
    spec = get_preset("test_vim")
    cost = measure_cost(build_backbone(spec), 32, 2, "cpu", resolutions=[32, 64], repeats=1, warmup=0)
    by = cost["by_resolution"]
    assert by[32]["flops"] == cost["flops"] and by[64]["flops"] > 3 * by[32]["flops"]
    assert by[64]["params"] > by[32]["params"]  # a longer position table


def test_the_store_names_the_physical_gpu_a_trial_ran_on():
    import torch

    from nas.worker import device_label, gpu_label

    assert device_label(torch.device("cpu")) == "cpu"
    # Ray gave this worker host GPUs 2 and 3: its cuda:1 is the host's GPU 3
    assert gpu_label(1, "2,3", "NVIDIA H200", "GPU-1a2b3c4d-5e6f") == "cuda:1 = GPU 3 (NVIDIA H200, GPU-1a2b3c4d)"
    assert gpu_label(0, None, "NVIDIA H200", "") == "cuda:0 = GPU 0 (NVIDIA H200)"
    assert gpu_label(0, "", "X", "abcd") == "cuda:0 = GPU 0 (X, GPU-abcd)"


def test_scan_checkpoints_reach_the_lane_tiles_on_cuda_only(monkeypatch):
    """`train.scan_checkpoints` (the study's memory knob) changes the GPU's lane tile choice while a trial trains on
    CUDA, and nothing on the CPU; the study file refuses values the lane backward cannot tile."""
    from kernels.triton.scan_config import default_config
    from nas.schema import TrainConfig
    from nas.trial import scan_tiles

    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the GPU's choice, asked without a GPU
    default = default_config(16, 384, 2)
    with scan_tiles(8, "cuda"):
        assert default_config(16, 384, 2) == default._replace(steps=8)
    with scan_tiles(8, "cpu"), scan_tiles(None, "cuda"):
        assert default_config(16, 384, 2) == default
    assert default_config(16, 384, 2) == default
    assert TrainConfig(scan_checkpoints=8).scan_checkpoints == 8
    with pytest.raises(ValueError, match="scan_checkpoints"):
        TrainConfig(scan_checkpoints=3)


def test_worker_trains_inside_the_studys_scan_block(tmp_path, monkeypatch):
    """`nas.worker.run_task` (every trial, and the kernel warm-up) runs `run_trial` inside `scan_tiles` with the
    study's `train.scan_checkpoints` and the trial's device."""
    import contextlib

    import nas.trial
    from nas.config import load_study
    from nas.plan import plan_study
    from nas.records import TrialStart
    from nas.worker import run_task

    sf = load_study("studies/cls_token_position.yaml", sets=[f"storage.ray_results={tmp_path}",
                                                              "train.scan_checkpoints=8", "train.device=cpu"])
    spec = plan_study(sf).arms[0].spec
    inside: list = []

    @contextlib.contextmanager
    def recording(checkpoints, device):
        inside.append(("enter", checkpoints, str(device)))
        try:
            yield
        finally:
            inside.append(("exit",))

    class Stop(Exception):
        pass

    def stub(*args, **kwargs):
        inside.append(("train",))
        raise Stop

    monkeypatch.setattr(nas.trial, "scan_tiles", recording)
    monkeypatch.setattr(nas.trial, "run_trial", stub)
    with pytest.raises(Stop):
        run_task(sf.study, TrialStart(number=0, optuna_trial_id=0, key="k", levels={}, params={}, spec_id="",
                                      spec_json=spec.to_json(), seed=0), lambda metrics, folder: None)
    assert inside == [("enter", 8, "cpu"), ("train",), ("exit",)]
