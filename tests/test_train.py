"""Pretraining loop: a tiny end-to-end run, behaviour that breaks when the loop is broken,
resume (bit for bit), Ctrl-C / SIGTERM / a stop request, divergence, and the run folder's guards."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch

import vicreg_lib.train as train_module
from vicreg_lib.checkpoint import CheckpointError, load_checkpoint
from vicreg_lib.config import TrainConfig
from vicreg_lib.model import build_model
from vicreg_lib.optim import lr_at_step
from vicreg_lib.runstate import RunFolderError, read_metrics, request_stop
from vicreg_lib.train import RunInterrupted, TrainingDiverged, pretrain

EPOCH_KEYS = {"epoch", "step", "loss", "invariance", "variance", "covariance", "std", "effective_rank",
              "train_time_s", "images_per_s", "epoch_time_s", "wall_images_per_s", "lr"}




def tiny(tmp_path, **overrides) -> TrainConfig:
    """64 synthetic images, batch 16 (4 steps per epoch), a width-4 ResNet and a 32-d projector."""
    settings = dict(data="synthetic:64,32", width=4, projector="32-32-32", batch_size=16, epochs=2,
                    eval_every=0, checkpoint_every=1, out_dir=str(tmp_path / "run"), progress=False,
                    device="cpu", seed=0, warmup_epochs=1)
    settings.update(overrides)
    return TrainConfig(**settings)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


def weights_differ(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Parameters only: BatchNorm's running statistics change without any optimizer step."""
    return any(not torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def model_from(state) -> torch.nn.Module:
    model = build_model(**state["arch"])
    model.load_state_dict(state["model"])
    return model


# ----------------------------------------------------------------------------- end to end


def test_tiny_pretrain_writes_metrics_and_checkpoint(tmp_path):
    result = pretrain(tiny(tmp_path, eval_every=1))
    out = tmp_path / "run"
    records = read_metrics(out)
    assert records == result.history
    assert [r["epoch"] for r in records] == [0, 1, 2]  # epoch 0 = the random initialisation
    assert set(records[0]) == {"epoch", "step", "knn_top1", "knn_k", "knn_top1@20"}
    for record in records[1:]:
        assert EPOCH_KEYS | {"knn_top1", "knn_top1@20"} <= set(record)
        assert all(math.isfinite(record[key]) for key in EPOCH_KEYS)
        assert 0.0 <= record["knn_top1"] <= 100.0
        assert record["wall_images_per_s"] <= record["images_per_s"]  # wall clock includes evaluation
    assert records[-1]["step"] == 8
    assert json.loads((out / "config.json").read_text())["width"] == 4
    state = load_checkpoint(out / "checkpoint.pt")
    assert (state["epoch"], state["step"], state["epoch_step"]) == (2, 8, 0)
    assert_same_weights(result.model, model_from(state))
    assert not result.model.training
    assert (os.stat(out / "checkpoint.pt").st_mode & 0o777) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_training_moves_the_weights_and_lowers_the_loss(tmp_path):
    config = tiny(tmp_path, data="synthetic:128,32", batch_size=32, epochs=4, optimizer="adam", lr=3e-3,
                  schedule="constant", checkpoint_every=0)
    torch.manual_seed(config.seed)
    start = build_model(**config.arch())
    result = pretrain(config)
    assert weights_differ(start, result.model)  # an optimizer step that never runs fails here
    losses = [r["loss"] for r in result.history]
    assert losses[-1] < losses[0] - 0.3, losses
    assert result.history[-1]["std"] > result.history[0]["std"]  # the variance term spreads z


@pytest.mark.parametrize("term", ["lam", "mu", "nu"])
def test_each_loss_term_reaches_the_gradient(tmp_path, term):
    """A run with one coefficient at 0 ends elsewhere than the same run with it on."""
    common = dict(epochs=1, max_steps=2, checkpoint_every=0, optimizer="adam", lr=1e-3, schedule="constant")
    with_term = pretrain(tiny(tmp_path / "with", **common)).model
    without = pretrain(tiny(tmp_path / "without", **common, **{term: 0.0})).model
    assert weights_differ(with_term, without)


def test_the_optimizer_uses_the_scheduled_learning_rate(tmp_path, monkeypatch):
    """Record the lr each optimizer step actually ran with; it must be the schedule's."""
    used = []
    real_build = train_module.build_optimizer

    def recording_build(*args, **kwargs):
        optimizer = real_build(*args, **kwargs)
        real_step = optimizer.step

        def step(*a, **k):
            used.append(optimizer.param_groups[0]["lr"])
            return real_step(*a, **k)

        optimizer.step = step
        return optimizer

    monkeypatch.setattr(train_module, "build_optimizer", recording_build)
    config = tiny(tmp_path, epochs=3, optimizer="lars", lr=0.4, warmup_epochs=1, checkpoint_every=0)
    pretrain(config)
    expected = [lr_at_step(step, schedule="warmup_cosine", peak_lr=0.4, total_steps=12, warmup_steps=4,
                           final_ratio=0.001) for step in range(12)]
    assert used == pytest.approx(expected)
    assert len(set(used)) > 6  # the schedule moves


def test_dataloader_pipeline_runs(tmp_path):
    result = pretrain(tiny(tmp_path, pipeline="dataloader", num_workers=0, epochs=1, recipe="blog"))
    assert [r["epoch"] for r in result.history] == [1]
    assert math.isfinite(result.history[0]["loss"])


def test_blog_preset_builds_and_steps(tmp_path):
    config = TrainConfig.from_preset("blog", data="synthetic:64,32", width=4, batch_size=16, max_steps=2,
                                     eval_every=0, out_dir=str(tmp_path / "run"), progress=False, device="cpu")
    result = pretrain(config)
    assert result.model.concat_views and result.model.encoder.conv1.bias is not None
    assert result.history[-1]["step"] == 2


def test_max_steps_stops_inside_an_epoch(tmp_path):
    result = pretrain(tiny(tmp_path, epochs=5, max_steps=6))
    assert [(r["epoch"], r["step"]) for r in result.history] == [(1, 4), (2, 6)]
    assert result.history[-1]["steps"] == 2
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 6


def test_max_steps_ending_exactly_at_an_epoch_end_saves_a_checkpoint(tmp_path):
    """8 steps are one epoch of 128 images at batch 16: the run ends after epoch 1 of 2 and must
    save it even with checkpoint_every=0 (the end-of-run save decides by the epoch planned at start)."""
    config = tiny(tmp_path, data="synthetic:128,32", epochs=2, max_steps=8, checkpoint_every=0)
    result = pretrain(config)
    state = load_checkpoint(result.checkpoint_path)
    assert (state["epoch"], state["step"], state["epoch_step"]) == (1, 8, 0)
    assert [r["epoch"] for r in result.history] == [1]
    resumed = pretrain(tiny(tmp_path, data="synthetic:128,32", epochs=2, max_steps=16, checkpoint_every=0,
                            resume=True))
    assert [(r["epoch"], r["step"]) for r in resumed.history] == [(1, 8), (2, 16)]
    assert load_checkpoint(result.checkpoint_path)["step"] == 16


# ----------------------------------------------------------------------------- resume


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    """Bit for bit: fails if the permutation or augmentation generators are not restored."""
    straight = pretrain(tiny(tmp_path / "a", epochs=4, optimizer="adam", schedule="constant"))
    pretrain(tiny(tmp_path / "b", epochs=2, optimizer="adam", schedule="constant"))
    resumed = pretrain(tiny(tmp_path / "b", epochs=4, optimizer="adam", schedule="constant", resume=True))
    assert_same_weights(straight.model, resumed.model)
    assert [r["epoch"] for r in read_metrics(resumed.out_dir)] == [1, 2, 3, 4]
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]


@pytest.mark.parametrize("signum, at_step", [(signal.SIGINT, 10), (signal.SIGTERM, 6), (signal.SIGTERM, 8)])
def test_a_signal_saves_mid_epoch_and_resume_matches(tmp_path, monkeypatch, signum, at_step):
    """LARS with warmup + cosine over 4 epochs; the signal arrives during a step (mid-epoch at 10 and 6,
    at an epoch's end at 8); nothing is lost and the resumed run equals the straight one."""
    config = dict(epochs=4, optimizer="lars", checkpoint_every=0)
    straight = pretrain(tiny(tmp_path / "a", **config))
    real_step, calls = train_module.training_step, {"n": 0}

    def signalling_step(*args, **kwargs):
        calls["n"] += 1
        loss = real_step(*args, **kwargs)
        if calls["n"] == at_step:
            os.kill(os.getpid(), signum)
        return loss

    monkeypatch.setattr(train_module, "training_step", signalling_step)
    with pytest.raises(RunInterrupted, match="--resume") as stopped:
        pretrain(tiny(tmp_path / "b", **config))
    assert stopped.value.signum == signum
    state = load_checkpoint(tmp_path / "b" / "run" / "checkpoint.pt")
    assert state["step"] == at_step
    monkeypatch.setattr(train_module, "training_step", real_step)
    resumed = pretrain(tiny(tmp_path / "b", resume=True, **config))
    assert_same_weights(straight.model, resumed.model)
    assert [r["epoch"] for r in read_metrics(resumed.out_dir)] == [1, 2, 3, 4]
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in straight.history])
    resumed_epoch = next((r for r in resumed.history if "resumed_at_step" in r), None)
    if at_step % 4:  # stopped mid-epoch: that epoch's speed counts only the steps taken after the resume
        assert resumed_epoch["resumed_at_step"] == at_step % 4
        timed = 4 - at_step % 4
        assert resumed_epoch["images_per_s"] == pytest.approx(timed * 16 / resumed_epoch["train_time_s"])
    else:
        assert resumed_epoch is None


def test_a_stop_request_saves_mid_epoch_and_resume_matches(tmp_path, monkeypatch):
    """request_stop writes out_dir/STOP (for Windows and notebooks, where signals do not reach a run); the
    loop reads it every log_every steps and acts as on Ctrl-C. Asked during step 9 with log_every 2, the run
    stops after step 10, mid-epoch, removes the file, and resumes bit for bit."""
    config = dict(epochs=4, optimizer="lars", checkpoint_every=0, log_every=2)
    straight = pretrain(tiny(tmp_path / "a", **config))
    real_step, calls, out = train_module.training_step, {"n": 0}, tmp_path / "b" / "run"

    def requesting_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:
            request_stop(out)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "training_step", requesting_step)
    with pytest.raises(RunInterrupted, match=r"^a stop was requested \(STOP in the run folder\): saved the run "
                                             r"after step 2 of epoch 3 .*--resume") as stopped:
        pretrain(tiny(tmp_path / "b", **config))
    assert stopped.value.signum == signal.SIGINT and calls["n"] == 10
    assert not (out / "STOP").exists()
    state = load_checkpoint(out / "checkpoint.pt")
    assert (state["step"], state["epoch"], state["epoch_step"]) == (10, 3, 2)
    monkeypatch.setattr(train_module, "training_step", real_step)
    resumed = pretrain(tiny(tmp_path / "b", resume=True, **config))
    assert_same_weights(straight.model, resumed.model)
    assert [r["epoch"] for r in read_metrics(resumed.out_dir)] == [1, 2, 3, 4]
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in straight.history])


def test_resume_refuses_changed_settings_and_missing_checkpoint(tmp_path):
    with pytest.raises(RunFolderError, match="nothing to resume"):
        pretrain(tiny(tmp_path, resume=True))
    pretrain(tiny(tmp_path, epochs=1))
    with pytest.raises(CheckpointError, match=r"lam: checkpoint 25.0, now 5.0"):
        pretrain(tiny(tmp_path, epochs=1, lam=5.0, resume=True))
    # a cosine schedule is laid out over all epochs: changing them is refused, naming the setting
    with pytest.raises(CheckpointError, match=r"epochs: checkpoint 1, now 3"):
        pretrain(tiny(tmp_path, epochs=3, resume=True))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["epochs"] == 1  # left as it was


def write_images(path, seed: int) -> str:
    """An npz of 64 train and 16 test 8x8 images; another seed gives other images under the same path."""
    import numpy as np

    rng = np.random.default_rng(seed)
    np.savez(path, train_images=rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8),
             train_labels=np.arange(64) % 4, test_images=rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8),
             test_labels=np.arange(16) % 4)
    return f"npz:{path}"


def test_resume_refuses_training_data_whose_contents_changed(tmp_path):
    spec = write_images(tmp_path / "images.npz", seed=0)
    pretrain(tiny(tmp_path, data=spec, epochs=1, optimizer="adam", schedule="constant"))
    stored = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["data_fingerprint"]
    write_images(tmp_path / "images.npz", seed=1)  # the same spec, other contents
    with pytest.raises(CheckpointError, match=r"training data of .*images\.npz' differ.*--allow-data-change"):
        pretrain(tiny(tmp_path, data=spec, epochs=2, optimizer="adam", schedule="constant", resume=True))
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 4  # untouched
    result = pretrain(tiny(tmp_path, data=spec, epochs=2, optimizer="adam", schedule="constant", resume=True,
                           allow_data_change=True))
    assert result.history[-1]["epoch"] == 2
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["data_fingerprint"] != stored


def test_an_empty_evaluation_split_is_refused_before_training(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "no_test.npz", train_images=rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8),
             train_labels=np.arange(64) % 4, test_images=np.zeros((0, 8, 8, 3), dtype=np.uint8),
             test_labels=np.zeros(0, dtype=np.int64))
    with pytest.warns(UserWarning, match="split 'test' holds no images"):
        with pytest.raises(ValueError, match=r"the test split of 'npz:.*no_test\.npz' holds no images.*--eval-every 0"):
            pretrain(tiny(tmp_path, data=f"npz:{tmp_path / 'no_test.npz'}", eval_every=1))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    pretrain(tiny(tmp_path, data=f"npz:{tmp_path / 'no_test.npz'}", epochs=1, eval_every=0))


def test_constant_schedule_may_extend_its_epochs(tmp_path):
    pretrain(tiny(tmp_path, epochs=1, optimizer="adam", schedule="constant"))
    result = pretrain(tiny(tmp_path, epochs=2, optimizer="adam", schedule="constant", resume=True))
    assert [r["epoch"] for r in result.history] == [1, 2]


def test_resume_truncates_metrics_written_after_the_checkpoint(tmp_path):
    pretrain(tiny(tmp_path, epochs=2, optimizer="adam", schedule="constant"))
    out = tmp_path / "run"
    lines = (out / "metrics.jsonl").read_text().splitlines()
    # pretend the run died after logging epoch 3 but before checkpointing it
    (out / "metrics.jsonl").write_text("\n".join(lines + [json.dumps({"epoch": 3, "loss": 1.0})]) + "\n")
    pretrain(tiny(tmp_path, epochs=3, optimizer="adam", schedule="constant", resume=True))
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2, 3]
    assert read_metrics(out)[-1]["loss"] != 1.0


# ----------------------------------------------------------------------------- divergence


def _poison_after(monkeypatch, n: int, what: str) -> None:
    real_step, calls = train_module.training_step, {"n": 0}

    def poisoned(model, loss_fn, optimizer, *args, **kwargs):
        calls["n"] += 1
        loss = real_step(model, loss_fn, optimizer, *args, **kwargs)
        if calls["n"] >= n:
            if what == "loss":
                return loss._replace(total=loss.total * float("nan"))
            with torch.no_grad():  # the step wrote NaN weights, although the loss was finite
                next(model.parameters()).fill_(float("nan"))
        return loss

    monkeypatch.setattr(train_module, "training_step", poisoned)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    _poison_after(monkeypatch, 10, "loss")  # epoch 3
    with pytest.raises(TrainingDiverged, match=r"nan in epoch 3.*lower the learning rate.*holds finite weights"):
        pretrain(tiny(tmp_path, epochs=4))
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["epoch"] == 2
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [1, 2]


def test_nan_weights_after_the_last_step_of_an_epoch_are_never_saved(tmp_path, monkeypatch):
    _poison_after(monkeypatch, 8, "weights")  # the last step of epoch 2, before its checkpoint
    with pytest.raises(TrainingDiverged):
        pretrain(tiny(tmp_path, epochs=4))
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [1]  # no record from the broken model


def test_divergence_before_any_checkpoint_says_so(tmp_path, monkeypatch):
    _poison_after(monkeypatch, 1, "loss")
    with pytest.raises(TrainingDiverged, match="no checkpoint was saved"):
        pretrain(tiny(tmp_path, epochs=2))


def test_a_huge_loss_warns(tmp_path):
    with pytest.warns(RuntimeWarning, match="far above its usual range"):
        try:
            pretrain(tiny(tmp_path, epochs=1, lam=1e30, log_every=1, optimizer="adam", schedule="constant"))
        except TrainingDiverged:
            pass


# ----------------------------------------------------------------------------- nothing lost


def test_an_error_during_evaluation_does_not_lose_the_epoch(tmp_path, monkeypatch):
    def failing_knn(run):
        raise RuntimeError("kNN failed")

    monkeypatch.setattr(train_module, "evaluate_knn", failing_knn)
    with pytest.raises(RuntimeError, match="kNN failed"):
        pretrain(tiny(tmp_path, epochs=2, eval_every=1, eval_at_start=False, checkpoint_every=0))
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1


FULL_DISK = """
import resource, signal, sys
from vicreg_lib.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
sys.exit(main(sys.argv[2:]))
"""


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path):
    """A real short write: the checkpoint's file may grow to half its size only (ulimit -f). torch.save
    then fails with a RuntimeError, which must read as one line saying the old checkpoint is intact."""
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "run"
    # a projector of 1 MiB weights: the write that crosses the limit is one of torch.save's own large writes
    argv = ["pretrain", "--data", "synthetic:64,32", "--width", "4", "--projector", "512-512", "--batch-size", "16",
            "--device", "cpu", "--no-progress", "--optimizer", "adam", "--schedule", "constant", "--eval-every", "0",
            "--out-dir", str(out)]
    from vicreg_lib.cli import main

    assert main([*argv, "--epochs", "1"]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", FULL_DISK, str(len(before) // 2), *argv, "--epochs", "2", "--resume"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr, done.stderr
    assert "could not write" in done.stderr and "the previous checkpoint is intact" in done.stderr
    assert (out / "checkpoint.pt").read_bytes() == before
    assert not list(out.glob(".*.tmp"))


SLOW_LOADING = """
import sys, time
import vicreg_lib.train as train
from vicreg_lib.cli import main

def slow_load(*args, **kwargs):  # data that takes ten minutes to load (a big archive on a slow disk)
    print("loading", flush=True)
    time.sleep(600)
    raise AssertionError("the signal did not stop the loading")

train.load_dataset = slow_load
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_data_loads_stops_at_once_and_saves_nothing(tmp_path, signum):
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    argv = ["pretrain", "--data", "synthetic:64,32", "--width", "4", "--projector", "32-32-32", "--batch-size", "16",
            "--device", "cpu", "--no-progress", "--eval-every", "0", "--epochs", "1", "--out-dir", str(out)]
    process = subprocess.Popen([sys.executable, "-c", SLOW_LOADING, *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    assert process.stdout.readline().strip() == "loading"
    process.send_signal(signum)
    _, err = process.communicate(timeout=300)  # only a guard against a hang: the sleep alone lasts 600 s
    assert process.returncode == 128 + signum, err
    assert f"{signal.Signals(signum).name} before training began: nothing was saved" in err
    assert not (out / "checkpoint.pt").exists() and not (out / "metrics.jsonl").exists()
    assert not (out / ".lock").exists()


def test_a_killed_saves_temporary_file_is_removed_at_the_next_start(tmp_path):
    pretrain(tiny(tmp_path, epochs=1, optimizer="adam", schedule="constant"))
    stale = tmp_path / "run" / ".checkpoint.pt.x1y2z3.tmp"  # what kill -9 during a save leaves
    stale.write_bytes(b"half a checkpoint")
    pretrain(tiny(tmp_path, epochs=2, optimizer="adam", schedule="constant", resume=True))
    assert not stale.exists()


def test_a_read_only_out_dir_is_refused_before_loading_data(tmp_path, monkeypatch):
    import vicreg_lib.runstate as runstate_module

    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded before the out_dir was checked")

    monkeypatch.setattr(train_module, "load_dataset", no_data)
    monkeypatch.setattr(runstate_module.os, "access", lambda path, mode: False)  # as for a read-only folder
    with pytest.raises(RunFolderError, match="permission denied"):
        pretrain(tiny(tmp_path, epochs=1))
