"""eval/report.py: EvalConfig, the reports of features, an encoder and a checkpoint, the random-init
baseline and the table."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from support import TinyEncoder, gaussian_clusters, random_images

from vicreg_lib.eval import report
from vicreg_lib.eval.features import NonFiniteFeaturesError, extract_features, knn_accuracy
from vicreg_lib.eval.report import EvalConfig, encoder_report, format_table, frozen_feature_report


# ----------------------------------------------------------------------------- format_table


def test_format_table_aligns_metrics_and_baseline():
    results = {
        "checkpoint": "runs/x/checkpoint.pt",
        "num_train": 100,
        "protocols": ["fast", "standard"],
        "probe_epochs": {"fast": 100, "standard": 100},
        "knn_top1@20": 81.234,
        "knn_top1@200": 80.0,
        "linear_fast_top1": 85.0,
        "linear_standard_top1": 86.5,
        "label_1%_top1": 40.5,
        "random_init": {"knn_top1@20": 30.0, "linear_fast_top1": 35.25, "label_1%_top1": 20.0},
    }
    table = format_table(results)
    lines = table.splitlines()
    assert "checkpoint: runs/x/checkpoint.pt" in lines and "num_train: 100" in lines
    assert "protocols: fast, standard" in lines and "probe_epochs: fast 100, standard 100" in lines
    rows = lines[lines.index("") + 1:]
    assert len(rows) == 2 + 5  # header, rule, five metrics
    assert len({len(row) for row in rows}) == 1  # every row has the same width
    assert "random init" in rows[0]
    assert any("k=20)" in row and "81.23" in row and "30.00" in row for row in rows)
    assert any("k=200)" in row and "80.00" in row and row.endswith("-") for row in rows)
    assert any("standard protocol" in row and "top-1" in row and "86.50" in row for row in rows)
    assert any("1% labels" in row and "40.50" in row for row in rows)
    assert "random init" not in format_table({"linear_fast_top1": 85.0})


# ----------------------------------------------------------------------------- frozen_feature_report, encoder_report


def test_frozen_feature_report_has_knn_fast_probe_and_label_fractions():
    train_x, train_y = gaussian_clusters(30, 4, seed=10)
    test_x, test_y = gaussian_clusters(10, 4, seed=10)
    report = frozen_feature_report(train_x, train_y, test_x, test_y, probe_epochs=5, label_fractions=(0.1, 0.5),
                                   device="cpu")
    assert set(report) == {"knn_top1@20", "knn_top1@200", "linear_fast_top1", "linear_fast_top5",
                           "label_10%_top1", "label_50%_top1"}
    assert report["knn_top1@20"] == knn_accuracy(train_x, train_y, test_x, test_y, k=20)["knn_top1@20"]
    assert report["linear_fast_top1"] >= 95.0
    without = frozen_feature_report(train_x, train_y, test_x, test_y, linear=False, label_fractions=(),
                                    knn_k=(5,), device="cpu")
    assert set(without) == {"knn_top1@5"}


def test_encoder_report_runs_the_chosen_protocols(monkeypatch):
    import vicreg_lib.eval.probes as probes

    ran = []
    real = report.linear_eval

    def spy(*args, protocol, **kwargs):
        ran.append((protocol, kwargs["epochs"]))
        return real(*args, protocol=protocol, **kwargs)

    monkeypatch.setattr(report, "linear_eval", spy)
    torch.manual_seed(0)
    images = random_images(24)
    labels = torch.arange(3).repeat(8)
    result = encoder_report(TinyEncoder(), images, labels, images, labels, protocols=("blog", "standard"),
                              probe_epochs=2, label_fractions=(), device="cpu")
    assert ran == [("blog", 2), ("standard", 2)]  # fast runs on the features, not through linear_eval
    assert {"linear_blog_top1", "linear_blog_top5", "linear_standard_top1", "knn_top1@200"} <= set(result)
    assert "linear_fast_top1" not in result and result["feature_dim"] == 8
    assert report.PROTOCOLS is probes.PROTOCOLS


def test_encoder_report_refuses_bad_labels_protocols_and_broken_models():
    images, labels = random_images(6), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="only 2 classes"):
        encoder_report(TinyEncoder(), images, labels, images, labels, num_classes=2, device="cpu")
    with pytest.raises(ValueError, match="unknown linear-evaluation protocol"):
        encoder_report(TinyEncoder(), images, labels, images, labels, protocols=("paper",), device="cpu")
    broken = TinyEncoder()
    nn.init.constant_(broken.conv.weight, float("inf"))
    with pytest.raises(NonFiniteFeaturesError, match="features of the training images"):
        encoder_report(broken, images, labels, images, labels, device="cpu")


# ----------------------------------------------------------------------------- evaluate_checkpoint


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A real checkpoint: one epoch of pretraining a width-4 ResNet-18 on 64 synthetic images."""
    from vicreg_lib.config import TrainConfig
    from vicreg_lib.train import pretrain

    out_dir = tmp_path_factory.mktemp("run")
    config = TrainConfig(
        data="synthetic:64,40", width=4, projector="16-16", batch_size=32, epochs=1, device="cpu",
        eval_every=0, eval_at_start=False, progress=False, out_dir=str(out_dir),
    )
    return pretrain(config).checkpoint_path


def test_evaluate_checkpoint_end_to_end(tiny_checkpoint):
    from vicreg_lib.checkpoint import load_pretrained
    from vicreg_lib.data import load_dataset
    from vicreg_lib.model import build_model

    results = report.evaluate_checkpoint(
        tiny_checkpoint, device="cpu", batch_size=16, probe_epochs=3, random_init_baseline=True,
    )
    metrics = ["knn_top1@20", "knn_top1@200", "linear_fast_top1", "linear_fast_top5", "label_1%_top1",
               "label_10%_top1"]
    assert results["data"] == "synthetic:64,40"  # the spec the run was trained on
    assert (results["num_train"], results["num_test"], results["feature_dim"]) == (64, 40, 32)
    assert results["protocols"] == ["fast"] and results["probe_epochs"] == {"fast": 3}
    for key in metrics:
        assert 0.0 <= results[key] <= 100.0 and 0.0 <= results["random_init"][key] <= 100.0
    assert results["linear_fast_top5"] >= results["linear_fast_top1"]

    # the table's kNN figures are those of the checkpoint's own frozen representations...
    model, _ = load_pretrained(tiny_checkpoint)
    train_images, train_labels, _ = load_dataset("synthetic:64,40", "train")
    test_images, test_labels, _ = load_dataset("synthetic:64,40", "test")

    def knn_of(encoder):
        return knn_accuracy(
            extract_features(encoder, train_images, device="cpu"), train_labels,
            extract_features(encoder, test_images, device="cpu"), test_labels, k=(20, 200), num_classes=10,
        )

    assert {k: results[k] for k in ("knn_top1@20", "knn_top1@200")} == knn_of(model.encoder)
    # ...and the baseline's those of the same architecture freshly built (seeded) by build_model,
    # with BatchNorm statistics from the training images (not their initial values)
    from vicreg_lib.eval.features import normalize_images
    from vicreg_lib.model import calibrate_batchnorm

    torch.manual_seed(0)
    fresh = calibrate_batchnorm(build_model(**model.arch).encoder, [normalize_images(train_images)])
    assert {k: results["random_init"][k] for k in ("knn_top1@20", "knn_top1@200")} == knn_of(fresh)
    table = format_table(results)
    assert "random init" in table and "kNN top-1 (k=200)" in table and "10% labels" in table


def test_evaluate_checkpoint_chooses_protocols_subsets_and_other_data(tiny_checkpoint):
    config = EvalConfig(data="synthetic:50,20", device="cpu", protocols=("blog",), probe_epochs=1,
                        max_train_images=30, label_fractions=())
    results = report.evaluate_checkpoint(tiny_checkpoint, config)
    assert (results["num_train"], results["num_test"]) == (30, 20)
    assert "random_init" not in results and "linear_fast_top1" not in results
    assert 0.0 <= results["linear_blog_top1"] <= results["linear_blog_top5"] <= 100.0
    assert results["probe_epochs"] == {"blog": 1}


def test_evaluate_checkpoint_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="no checkpoint"):  # CheckpointError is a ValueError
        report.evaluate_checkpoint(tmp_path / "missing.pt", device="cpu")
    with pytest.raises(ValueError, match="max_train_images"):
        report.evaluate_checkpoint(tiny_checkpoint, device="cpu", max_train_images=0)
    with pytest.raises(ValueError, match="unknown linear-evaluation protocol"):
        report.evaluate_checkpoint(tiny_checkpoint, device="cpu", protocols=("fast", "paper"))
    with pytest.raises(ValueError, match="probe_epochs"):
        report.evaluate_checkpoint(tiny_checkpoint, device="cpu", probe_epochs=0)


# ----------------------------------------------------------------------------- EvalConfig, the random-init baseline


def test_eval_config_takes_single_values_and_refuses_bad_ones():
    config = EvalConfig(protocols="blog", knn_k=5, label_fractions=0.5)
    assert (config.protocols, config.knn_k, config.label_fractions) == (("blog",), (5,), (0.5,))
    assert config.epochs_of("blog") == 50 and EvalConfig(probe_epochs=3).epochs_of("standard") == 3
    for bad, message in ((dict(protocols=("paper",)), "unknown linear-evaluation protocol"),
                         (dict(probe_epochs=0), "probe_epochs"), (dict(max_train_images=0), "max_train_images"),
                         (dict(label_fractions=(0.1, 2.0)), "fractions")):
        with pytest.raises(ValueError, match=message):
            EvalConfig(**bad)


def test_random_init_model_is_seeded_and_calibrated_on_a_random_subset_of_the_images(monkeypatch):
    from vicreg_lib.eval.features import normalize_images
    from vicreg_lib.model import build_model, calibrate_batchnorm

    monkeypatch.setattr(report, "CALIBRATION_IMAGES", 8)
    # stored class by class: 8 dark images, then 8 bright ones; the first 8 alone would be all dark
    images = torch.cat([random_images(8, seed=1) // 4, 192 + random_images(8, seed=2) // 4])
    arch = build_model(width=2, projector="8-8").arch
    model = report.random_init_model(arch, images, seed=3)
    again = report.random_init_model(arch, images, seed=3)
    other = report.random_init_model(arch, images, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert not torch.equal(model.encoder.conv1.weight, other.encoder.conv1.weight)
    assert not model.training

    keep = torch.randperm(16, generator=torch.Generator().manual_seed(0))[:8].sort().values
    torch.manual_seed(3)
    reference = build_model(**arch)
    calibrate_batchnorm(nn.Sequential(reference.encoder, reference.projector), [normalize_images(images[keep])])
    for ours, theirs in zip(model.modules(), reference.modules()):
        if isinstance(ours, nn.modules.batchnorm._BatchNorm):  # the projector's BatchNorm1d included
            torch.testing.assert_close(ours.running_mean, theirs.running_mean)
            torch.testing.assert_close(ours.running_var, theirs.running_var)
    first_eight = report.random_init_model(arch, images[:8], seed=3)
    assert not torch.allclose(model.encoder.bn1.running_mean, first_eight.encoder.bn1.running_mean)


def test_evaluate_writes_where_the_user_says_never_where_the_checkpoint_says(tiny_checkpoint, tmp_path, monkeypatch):
    import tarfile

    from PIL import Image

    for split in ("train", "test"):
        for name, colour in (("a", (200, 0, 0)), ("b", (0, 0, 200))):
            for index in range(4):
                (tmp_path / "tree" / split / name).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (32, 32), colour).save(tmp_path / "tree" / split / name / f"{index}.png")
    with tarfile.open(tmp_path / "images.tgz", "w:gz") as bundle:
        bundle.add(tmp_path / "tree" / "train", "train")
        bundle.add(tmp_path / "tree" / "test", "test")
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["config"].update(data=f"archive:{tmp_path / 'images.tgz'}", data_root=str(tmp_path / "theirs"))
    torch.save(state, tmp_path / "foreign.pt")
    monkeypatch.setenv("VICREG_DATA_ROOT", str(tmp_path / "mine"))
    results = report.evaluate_checkpoint(tmp_path / "foreign.pt", device="cpu", probe_epochs=1, label_fractions=())
    assert results["num_train"] == 8
    assert not (tmp_path / "theirs").exists() and any((tmp_path / "mine").iterdir())


def test_a_checkpoint_whose_data_setting_is_not_a_spec_is_a_clear_error(tiny_checkpoint, tmp_path):
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["config"]["data"] = 5
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match=r"its config's data is 5, not a data spec; pass .* \(--data\)"):
        report.evaluate_checkpoint(tmp_path / "odd.pt", device="cpu")
    results = report.evaluate_checkpoint(tmp_path / "odd.pt", data="synthetic:64,40", device="cpu",
                                         probe_epochs=1, label_fractions=())
    assert results["num_train"] == 64
