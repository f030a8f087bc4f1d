"""The train step (nas/train_step.py): the trial's recipe is unchanged by it on the CPU, and on a GPU a step replayed
from a CUDA graph trains exactly as the eager step does, falls back to eager steps when a model cannot be captured,
and the trial records which ran."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from blocks import build_backbone, get_preset
from nas.data import make_dataset
from nas.trial import lr_at, param_groups, run_trial
from nas.train_step import TrainStep, make_optimizer

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs on the GPU machine)")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _spec(name, data):
    return get_preset(name).with_overrides({"img_size": data.img_size, "num_classes": data.num_classes})


def test_trial_recipe_is_a_plain_adamw_loop_with_the_warmup_cosine_schedule():
    """run_trial on the CPU = AdamW + LambdaLR(warm-up, cosine) + cross-entropy, step for step (bit-identical)."""
    data = make_dataset("shapes", seed=0, n_train=40, n_test=16, img_size=16)  # 40 / 16: a partial last batch
    spec, epochs, bs, lr, wd = _spec("test_vim", data), 2, 16, 2e-3, 0.05
    res = run_trial(spec, data, epochs=epochs, batch_size=bs, lr=lr, weight_decay=wd, warmup_epochs=1, seed=3,
                    measure={"skip": True})
    torch.manual_seed(3)
    gen = torch.Generator().manual_seed(3)
    model = build_backbone(spec)
    steps = 3  # ceil(40 / 16)
    opt = torch.optim.AdamW(param_groups(model, wd), lr=lr, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, lr=1.0, total_steps=epochs * steps,
                                                                    warmup_steps=steps))
    for epoch in range(epochs):
        model.train()
        order, total = torch.randperm(40, generator=gen), 0.0
        for i in range(0, 40, bs):
            idx = order[i:i + bs]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
        assert res.metrics[epoch]["train_loss"] == pytest.approx(total / 40, rel=1e-12, abs=0)
    assert res.metrics[1]["lr"] == pytest.approx(lr * lr_at(steps, lr=1.0, total_steps=6, warmup_steps=3))


def test_set_lr_fills_a_tensor_lr_in_place_and_sets_a_float_one():
    model = nn.Linear(4, 2)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    plain = TrainStep(model, make_optimizer(param_groups(model, 0.1), 1e-3, torch.device("cpu"), False), x, y, 4,
                      amp=False)
    plain.set_lr(5e-4)
    assert all(g["lr"] == 5e-4 for g in plain.opt.param_groups)
    tensor_opt = torch.optim.AdamW(param_groups(model, 0.1), lr=torch.tensor(1e-3))
    held = tensor_opt.param_groups[0]["lr"]
    TrainStep(model, tensor_opt, x, y, 4, amp=False).set_lr(2.5e-4)
    assert tensor_opt.param_groups[0]["lr"] is held and float(held) == pytest.approx(2.5e-4)
    loss = plain(torch.arange(4))
    assert loss.ndim == 0 and not loss.requires_grad and plain.mode == "eager"


def test_a_graph_needs_the_data_on_a_cuda_device():
    model = nn.Linear(4, 2)
    with pytest.raises(ValueError, match="CUDA graph needs the data on a CUDA device"):
        TrainStep(model, torch.optim.AdamW(model.parameters()), torch.randn(8, 4), torch.zeros(8).long(), 4,
                  amp=False, graph=True)


def _two_runs(spec_name: str, steps: int, graph_first: bool = True):
    """The same model, data and batch order trained with graph=True and graph=False (both with the fused, capturable
    AdamW: only the replay differs). Returns [(losses, params, step)] for graph, eager."""
    data = make_dataset("shapes", seed=0, n_train=200, n_test=16, img_size=32, device="cuda")
    spec = _spec(spec_name, data)
    out = []
    for graph in (True, False):
        torch.manual_seed(0)
        model = build_backbone(spec, device="cuda")
        opt = make_optimizer(param_groups(model, 0.05), 1e-3, torch.device("cuda"), graphed=True)
        step = TrainStep(model, opt, data.x_train, data.y_train, 32, amp=True, graph=graph)
        order = torch.randperm(200, generator=torch.Generator().manual_seed(1)).cuda()
        losses = []
        for k in range(steps):
            step.set_lr(1e-3 * (k + 1) / steps)
            idx = order[(k * 32) % 200:(k * 32) % 200 + 32]  # 200 = 6 full batches and one of 8
            losses.append(step(idx).clone())
        torch.cuda.synchronize()
        out.append((torch.stack(losses).cpu(), [p.detach().clone() for p in model.parameters()], step))
    return out


@pytest.mark.gpu
@pytest.mark.gpu_smoke
@gpu
@pytest.mark.parametrize("preset", ["test_vim", "test_vil"])
def test_graph_replay_trains_as_the_eager_step_gpu(preset):
    (lg, pg, sg), (le, pe, se) = _two_runs(preset, steps=14)
    assert sg.mode == "cuda_graph" and sg.fallback is None and se.mode == "eager"
    assert sg._graph is not None  # captured after the warm-up and replayed for the later full batches
    assert torch.isfinite(lg).all()
    torch.testing.assert_close(lg, le, rtol=2e-3, atol=2e-4)  # bf16 autocast; same kernels in both
    for a, b in zip(pg, pe):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-4)


class _HostSync(nn.Module):
    """A model whose forward reads a value on the host (cannot be captured)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x):
        h = self.lin(x.flatten(1))
        if float(h.detach().abs().max()) > 1e9:  # a host read
            h = h * 0
        return h


def _host_sync_losses(graph: bool) -> tuple[list[float], TrainStep, list]:
    """Four epochs of eight batches of the host-reading model, as a graphed (falling back) or an eager step."""
    torch.manual_seed(0)
    data = make_dataset("shapes", seed=0, n_train=256, n_test=16, img_size=32, device="cuda")
    model = _HostSync().cuda()
    opt = make_optimizer(param_groups(model, 0.05), 1e-3, torch.device("cuda"), graphed=graph)
    step = TrainStep(model, opt, data.x_train, data.y_train, 32, amp=True, graph=graph)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses = [float(step(torch.arange(k * 32, k * 32 + 32, device="cuda"))) for _ in range(4) for k in range(8)]
    return losses, step, caught


@pytest.mark.gpu
@gpu
def test_a_model_that_cannot_be_captured_trains_eagerly_and_says_why_gpu():
    losses, step, caught = _host_sync_losses(graph=True)
    assert step.mode == "eager" and step.fallback and any("CUDA graph" in str(w.message) for w in caught)
    assert "captur" in step.fallback.lower()  # the host read's error ("...when stream is capturing"), not a later one
    # the aborted capture left the device's random numbers and streams usable (a model built on the GPU draws them)
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    assert torch.isfinite(torch.rand(8, device="cuda")).all() and build_backbone(
        get_preset("test_vim"), device="cuda") is not None
    reference, plain, _ = _host_sync_losses(graph=False)
    assert plain.mode == "eager" and plain.fallback is None
    # the aborted capture leaves nothing behind: the run goes on as a plain eager run (fused vs foreach AdamW)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(reference), rtol=2e-2, atol=2e-2)
    assert sum(losses[-8:]) < 0.8 * sum(losses[:8])  # and it learns


@pytest.mark.gpu
@gpu
def test_the_trial_records_the_graphed_step_gpu():
    data = make_dataset("shapes", seed=0, n_train=256, n_test=64, img_size=32, device="cuda")
    res = run_trial(_spec("test_vim", data), data, epochs=2, batch_size=32, lr=1e-3, weight_decay=0.05,
                    warmup_epochs=0.5, seed=0, device="cuda", measure={"skip": True})
    assert res.kernel_paths["train_step"] == "cuda_graph" and "graph_fallback" not in res.extra
    off = run_trial(_spec("test_vim", data), data, epochs=2, batch_size=32, lr=1e-3, weight_decay=0.05,
                    warmup_epochs=0.5, seed=0, device="cuda", measure={"skip": True}, cuda_graph=False)
    assert off.kernel_paths["train_step"] == "eager"
    assert abs(res.metrics[-1]["train_loss"] - off.metrics[-1]["train_loss"]) < 0.05  # fused vs foreach AdamW
