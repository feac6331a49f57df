"""Pretraining loop: config validation, a tiny end-to-end run, resume, Ctrl-C, NaN stop, schedules."""

from __future__ import annotations

import json
import math

import pytest
import torch

import vicreg_lib.train as train_module
from vicreg_lib.checkpoint import CheckpointError, load_checkpoint
from vicreg_lib.optim import LARS, lr_at_step
from vicreg_lib.train import TrainConfig, TrainingDiverged, pretrain, read_metrics

EPOCH_KEYS = {"epoch", "step", "loss", "invariance", "variance", "covariance", "std", "effective_rank",
              "epoch_time_s", "images_per_s"}


@pytest.fixture(autouse=True)
def one_thread():
    """The test machine's cores are shared: one intra-op thread avoids oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(tmp_path, **overrides) -> TrainConfig:
    """64 synthetic images, batch 16 (4 steps per epoch), a width-4 ResNet and a 32-d projector."""
    settings = dict(data="synthetic:64,32", width=4, projector="32-32-32", batch_size=16, epochs=2,
                    eval_every=0, checkpoint_every=1, out_dir=str(tmp_path / "run"), progress=False,
                    device="cpu", seed=0)
    settings.update(overrides)
    return TrainConfig(**settings)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("overrides, message", [
    ({"optimizer": "sgd"}, "unknown optimizer 'sgd'"),
    ({"recipe": "simclr"}, "unknown recipe"),
    ({"pipeline": "ffcv"}, "unknown pipeline"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"amp": "fp8"}, "unknown amp"),
    ({"batch_size": 1}, "batch_size must be an integer >= 2"),
    ({"epochs": 0}, "epochs must be an integer >= 1"),
    ({"width": 2.5}, "width must be an integer"),
    ({"lam": -1.0}, "lam must be a finite number >= 0"),
    ({"nu": float("nan")}, "nu must be a finite number"),
    ({"lr": 0.0}, "lr must be > 0"),
    ({"projector": "2048-x"}, "malformed projector spec"),
    ({"projector": "64-128-32"}, "different hidden widths"),
    ({"max_steps": 0}, "max_steps must be an integer >= 1"),
    ({"eval_split": "val"}, "unknown eval_split"),
    ({"compile": "yes"}, "compile must be True or False"),
])
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**overrides)


def test_config_defaults_resolve(monkeypatch):
    monkeypatch.setenv("VICREG_DATA", "synthetic")
    adam = TrainConfig().resolved()
    assert (adam.data, adam.lr, adam.weight_decay) == ("synthetic", 2e-4, 1e-6)
    lars = TrainConfig(optimizer="lars", batch_size=512).resolved()
    assert lars.lr == pytest.approx(0.4)  # base lr 0.2 scaled by 512 / 256


# ----------------------------------------------------------------------------- end to end


def test_tiny_pretrain_writes_metrics_and_checkpoint(tmp_path):
    result = pretrain(tiny(tmp_path, eval_every=1))
    out = tmp_path / "run"
    records = read_metrics(out)
    assert records == result.history
    assert [r["epoch"] for r in records] == [0, 1, 2]  # epoch 0 = the random initialisation
    assert set(records[0]) == {"epoch", "step", "knn_top1"}
    for record in records[1:]:
        assert EPOCH_KEYS | {"knn_top1"} <= set(record)
        assert all(math.isfinite(record[key]) for key in EPOCH_KEYS)
        assert 0.0 <= record["knn_top1"] <= 100.0
    assert records[-1]["step"] == 8
    assert json.loads((out / "config.json").read_text())["width"] == 4
    state = load_checkpoint(out / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == (2, 8)
    assert_same_weights(result.model, _model_from(state))
    assert not result.model.training


def _model_from(state):
    model = train_module.build_model(TrainConfig(**state["config"]))
    model.load_state_dict(state["model"])
    return model


def test_dataloader_pipeline_runs(tmp_path):
    result = pretrain(tiny(tmp_path, pipeline="dataloader", num_workers=0, epochs=1, recipe="blog"))
    assert [r["epoch"] for r in result.history] == [1]
    assert math.isfinite(result.history[0]["loss"])


def test_max_steps_stops_inside_an_epoch(tmp_path):
    result = pretrain(tiny(tmp_path, epochs=5, max_steps=6))
    assert [(r["epoch"], r["step"]) for r in result.history] == [(1, 4), (2, 6)]
    assert result.history[-1]["steps"] == 2
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 6


def test_read_metrics_skips_a_half_written_last_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "loss": 2.0}\n{"epoch": 2, "lo')
    assert read_metrics(tmp_path) == [{"epoch": 1, "loss": 2.0}]
    with pytest.raises(FileNotFoundError, match="no run folder"):
        read_metrics(tmp_path / "missing")


def test_refuses_to_overwrite_a_run_without_resume_or_overwrite(tmp_path):
    pretrain(tiny(tmp_path, epochs=1))
    with pytest.raises(ValueError, match="already holds a run"):
        pretrain(tiny(tmp_path, epochs=1))
    result = pretrain(tiny(tmp_path, epochs=1, overwrite=True))
    assert [r["epoch"] for r in read_metrics(result.out_dir)] == [1]


# ----------------------------------------------------------------------------- resume


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    straight = pretrain(tiny(tmp_path / "a", epochs=4))
    pretrain(tiny(tmp_path / "b", epochs=2))
    resumed = pretrain(tiny(tmp_path / "b", epochs=4, resume=True))
    assert_same_weights(straight.model, resumed.model)
    assert [r["epoch"] for r in read_metrics(resumed.out_dir)] == [1, 2, 3, 4]
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]


def test_ctrl_c_saves_last_completed_epoch_and_resume_matches(tmp_path, monkeypatch):
    """LARS with warmup + cosine (the schedule spans all 4 epochs), interrupted in epoch 3."""
    config = dict(epochs=4, optimizer="lars", warmup_epochs=1, pipeline="batched")
    straight = pretrain(tiny(tmp_path / "a", **config))

    real_loss, calls = train_module.vicreg_loss, {"n": 0}

    def interrupting_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:  # step 10 of 16: inside epoch 3
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "vicreg_loss", interrupting_loss)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny(tmp_path / "b", checkpoint_every=0, **config))  # no scheduled checkpoint before the end
    state = load_checkpoint(tmp_path / "b" / "run" / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == (2, 8)
    monkeypatch.setattr(train_module, "vicreg_loss", real_loss)
    resumed = pretrain(tiny(tmp_path / "b", checkpoint_every=0, resume=True, **config))
    assert_same_weights(straight.model, resumed.model)
    assert [r["epoch"] for r in read_metrics(resumed.out_dir)] == [1, 2, 3, 4]


def test_resume_refuses_changed_settings_and_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        pretrain(tiny(tmp_path, resume=True))
    pretrain(tiny(tmp_path, epochs=1))
    with pytest.raises(CheckpointError, match=r"lam: checkpoint 25.0, now 5.0"):
        pretrain(tiny(tmp_path, epochs=2, lam=5.0, resume=True))


def test_resume_truncates_metrics_written_after_the_checkpoint(tmp_path):
    pretrain(tiny(tmp_path, epochs=2, checkpoint_every=1))
    out = tmp_path / "run"
    lines = (out / "metrics.jsonl").read_text().splitlines()
    # pretend the run died after logging epoch 3 but before checkpointing it
    (out / "metrics.jsonl").write_text("\n".join(lines + [json.dumps({"epoch": 3, "loss": 1.0})]) + "\n")
    pretrain(tiny(tmp_path, epochs=3, resume=True))
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2, 3]
    assert "loss" in read_metrics(out)[-1] and read_metrics(out)[-1]["loss"] != 1.0


# ----------------------------------------------------------------------------- divergence


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real_loss, calls = train_module.vicreg_loss, {"n": 0}

    def poisoned_loss(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        if calls["n"] >= 10:  # from step 10 on (epoch 3) the loss is NaN
            return loss._replace(total=loss.total * float("nan"))
        return loss

    monkeypatch.setattr(train_module, "vicreg_loss", poisoned_loss)
    with pytest.raises(TrainingDiverged, match=r"nan in epoch 3.*lower the learning rate"):
        pretrain(tiny(tmp_path, epochs=4))
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [1, 2]


# ----------------------------------------------------------------------------- optim


def test_lars_schedule_warmup_then_cosine_to_a_thousandth():
    kwargs = dict(optimizer="lars", peak_lr=0.4, total_steps=100, warmup_steps=10)
    assert lr_at_step(0, **kwargs) == 0.0
    assert lr_at_step(5, **kwargs) == pytest.approx(0.2)
    assert lr_at_step(10, **kwargs) == pytest.approx(0.4)
    assert lr_at_step(55, **kwargs) == pytest.approx(0.4 * 0.5 + 0.4e-3 * 0.5)
    assert lr_at_step(100, **kwargs) == pytest.approx(0.4e-3)
    assert lr_at_step(77, optimizer="adam", peak_lr=2e-4, total_steps=100, warmup_steps=10) == 2e-4


def test_lars_step_follows_trust_ratio_and_skips_biases():
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    bias = torch.nn.Parameter(torch.tensor([1.0]))
    weight.grad = torch.tensor([[0.0, 2.0]])
    bias.grad = torch.tensor([0.5])
    optimizer = LARS([weight, bias], lr=0.1, weight_decay=0.5, eta=0.001)
    optimizer.step()
    update = torch.tensor([[0.0, 2.0]]) + 0.5 * torch.tensor([[3.0, 4.0]])  # g + wd * w
    trust = 0.001 * 5.0 / update.norm()
    assert torch.allclose(weight, torch.tensor([[3.0, 4.0]]) - 0.1 * trust * update)
    assert torch.allclose(bias, torch.tensor([1.0 - 0.1 * 0.5]))  # plain momentum SGD, no decay
