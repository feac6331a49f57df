"""Checkpoints: atomic writes, clear errors for missing / corrupt / foreign / mismatched files."""

from __future__ import annotations

import pytest
import torch

from vicreg_lib.checkpoint import CheckpointError, load_checkpoint, load_pretrained, save_checkpoint
from vicreg_lib.config import TrainConfig
from vicreg_lib.train import pretrain


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory):
    """A real checkpoint from a one-epoch run of a tiny model."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared cores: avoid oversubscription stalls
    out = tmp_path_factory.mktemp("ckpt") / "run"
    config = TrainConfig(data="synthetic:64,32", width=4, projector="32-32-32", batch_size=16, epochs=1,
                         eval_every=0, out_dir=str(out), progress=False, device="cpu")
    pretrain(config)
    torch.set_num_threads(threads)
    return out / "checkpoint.pt"


def test_load_pretrained_rebuilds_model_and_config(checkpoint_path):
    model, config = load_pretrained(checkpoint_path)
    state = load_checkpoint(checkpoint_path)
    assert (config["width"], config["projector"], config["data"]) == (4, "32-32-32", "synthetic:64,32")
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["model"][key]), key
    with torch.no_grad():
        z = model.embed(torch.randn(3, 3, 32, 32))
    assert z.shape == (3, 32)
    assert state["arch"] == {"backbone": "cifar", "width": 4, "projector": "32-32-32", "projector_bias": False,
                             "concat_views": False}
    assert model.arch == state["arch"]
    assert set(state["rng"]) >= {"torch", "numpy", "python", "permutation", "augment"}


def test_checkpoint_loads_without_unpickling_code(checkpoint_path):
    state = torch.load(checkpoint_path, weights_only=True)  # plain data only
    assert state["format"] == "vicreg_lib.checkpoint"


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is a folder.*checkpoint.pt"):
        load_checkpoint(tmp_path)


def test_truncated_checkpoint(checkpoint_path, tmp_path):
    data = checkpoint_path.read_bytes()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(broken)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_pretrained(garbage)


def test_foreign_torch_file(tmp_path):
    foreign = tmp_path / "resnet.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match="not a vicreg_lib checkpoint"):
        load_checkpoint(foreign)


def test_newer_format_version_is_refused(checkpoint_path, tmp_path):
    state = load_checkpoint(checkpoint_path)
    state["format_version"] = 99
    future = tmp_path / "future.pt"
    torch.save(state, future)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(future)


def test_architecture_mismatch(checkpoint_path, tmp_path):
    state = load_checkpoint(checkpoint_path)
    state["arch"]["width"] = 8  # weights are width 4
    mismatched = tmp_path / "mismatched.pt"
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "format_version")}, mismatched)
    with pytest.raises(CheckpointError, match=r"do not fit the architecture.*'width': 8"):
        load_pretrained(mismatched)


def test_non_finite_weights_are_never_saved_and_never_evaluated(checkpoint_path, tmp_path):
    state = load_checkpoint(checkpoint_path)
    state["model"]["encoder.conv1.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"not saving.*encoder.conv1.weight"):
        save_checkpoint({k: v for k, v in state.items() if k not in ("format", "format_version")},
                        tmp_path / "nan.pt")
    torch.save(state, tmp_path / "nan.pt")  # written by other means: loading for use refuses it
    with pytest.raises(CheckpointError, match=r"diverged run: 1 tensor.*encoder.conv1.weight"):
        load_pretrained(tmp_path / "nan.pt")


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"epoch": 1, "step": 4, "arch": {}, "config": {}, "model": {}}, path)
    assert load_checkpoint(path)["epoch"] == 1

    def failing_save(obj, handle):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2, "step": 8, "arch": {}, "config": {}, "model": {}}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left


# ----------------------------------------------------------------------------- untrusted checkpoints


def edited(checkpoint_path, tmp_path, **changes):
    """The real checkpoint with some entries replaced, written with torch.save (as other code would)."""
    state = load_checkpoint(checkpoint_path)
    state.update(changes)
    torch.save(state, tmp_path / "edited.pt")
    return tmp_path / "edited.pt"


@pytest.mark.parametrize("changes, message", [
    ({"config": 3}, r"config is int 3, expected a dict"),
    ({"config": "width=4"}, r"config is str 'width=4', expected a dict"),
    ({"arch": [4]}, r"arch is list \[4\], expected a dict"),
    ({"epoch": "1"}, r"epoch is str '1', expected an integer >= 0"),
    ({"model": {"encoder.conv1.weight": "weights"}}, r"model entries \['encoder.conv1.weight'\] are not tensors"),
])
def test_entries_of_the_wrong_type_are_one_line_errors(checkpoint_path, tmp_path, changes, message):
    path = edited(checkpoint_path, tmp_path, **changes)
    with pytest.raises(CheckpointError, match=message) as info:
        load_pretrained(path)
    assert "\n" not in str(info.value)


def test_an_arch_naming_a_huge_network_is_refused_before_it_is_built(checkpoint_path, tmp_path):
    """Width 600 is about 1e9 parameters (4 GB): the peak memory shows whether it was built."""
    import resource

    state = load_checkpoint(checkpoint_path)
    path = edited(checkpoint_path, tmp_path, arch={**state["arch"], "width": 600})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(CheckpointError, match=r"do not fit the architecture.*'width': 600.*encoder\.conv1\.weight is "
                                              r"\(4, 3, 3, 3\), the architecture needs \(600, 3, 3, 3\)"):
        load_pretrained(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1024**2  # less than 1 GiB more
    for bad in ({"backbone": "vgg"}, {"width": 10**12}, {"width": -3}):  # unknown, too big even for shapes, < 1
        with pytest.raises(CheckpointError, match=r"cannot be built") as info:
            load_pretrained(edited(checkpoint_path, tmp_path, arch={**state["arch"], **bad}))
        assert "\n" not in str(info.value)


def test_a_checkpoint_without_optimizer_or_random_states_cannot_be_resumed(checkpoint_path, tmp_path):
    import shutil

    from vicreg_lib.cli import main

    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(checkpoint_path, out / "checkpoint.pt")
    state = {k: v for k, v in load_checkpoint(checkpoint_path).items() if k not in ("optimizer", "rng")}
    torch.save(state, out / "checkpoint.pt")
    config = TrainConfig(**{**load_checkpoint(checkpoint_path)["config"], "out_dir": str(out), "resume": True,
                            "epochs": 2})
    with pytest.raises(CheckpointError, match=r"lacks optimizer, rng, which a resumed run needs"):
        pretrain(config)
    load_pretrained(out / "checkpoint.pt")  # it can still be evaluated
    assert main(["pretrain", "--data", "synthetic:64,32", "--width", "4", "--projector", "32-32-32",
                 "--batch-size", "16", "--device", "cpu", "--no-progress", "--eval-every", "0", "--epochs", "1",
                 "--out-dir", str(out), "--resume"]) == 2


def test_resuming_from_non_finite_weights_is_refused_before_training(checkpoint_path, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    state = load_checkpoint(checkpoint_path)
    state["model"]["projector.0.weight"][0, 0] = float("nan")
    torch.save(state, out / "checkpoint.pt")  # written by other means than save_checkpoint
    (out / "metrics.jsonl").write_text('{"epoch": 1, "loss": 20.0}\n')
    config = TrainConfig(**{**state["config"], "out_dir": str(out), "resume": True, "epochs": 2})
    with pytest.raises(CheckpointError, match=r"cannot resume .*1 tensor\(s\) hold NaN or inf: model\.projector"):
        pretrain(config)
    assert (out / "metrics.jsonl").read_text() == '{"epoch": 1, "loss": 20.0}\n'  # no NaN epoch trained


def test_a_checkpoint_in_parts_with_non_finite_weights_is_refused(tmp_path):
    """A checkpoint cut into parts loads through load_pretrained, which refuses NaN or inf there too."""
    from vicreg_lib.model import build_model

    model = build_model(width=4, projector="32-32-32")
    with torch.no_grad():
        model.encoder.conv1.weight[0, 0, 0, 0] = float("inf")
    torch.save({"format": "vicreg_lib.checkpoint", "format_version": 2, "arch": model.arch, "config": {},
                "model": model.state_dict()}, tmp_path / "whole.pt")  # written by other means than save_checkpoint
    blob = (tmp_path / "whole.pt").read_bytes()
    (tmp_path / "whole.pt").unlink()
    half = len(blob) // 2
    (tmp_path / "model.part1of2.pt").write_bytes(blob[:half])
    (tmp_path / "model.part2of2.pt").write_bytes(blob[half:])
    with pytest.raises(CheckpointError, match=r"diverged run: 1 tensor\(s\) hold NaN or inf: encoder\.conv1\.weight"):
        load_pretrained(tmp_path)
