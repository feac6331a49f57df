"""TrainConfig: validation derived from field metadata, presets that say what they are, resume rules."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision

from vicreg_lib.config import PRESETS, TrainConfig, field_names, resume_differences
from vicreg_lib.model import build_model


@pytest.mark.parametrize("overrides, message", [
    ({"optimizer": "sgd"}, "unknown optimizer 'sgd'"),
    ({"recipe": "simclr"}, "unknown recipe"),
    ({"pipeline": "ffcv"}, "unknown pipeline"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"amp": "fp8"}, "unknown amp"),
    ({"schedule": "step"}, "unknown schedule"),
    ({"backbone": "resnet50"}, "unknown backbone"),
    ({"loss_convention": "paper"}, "unknown loss_convention"),
    ({"batch_size": 1}, "batch_size must be >= 2"),
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"width": 2.5}, "width must be an integer"),
    ({"lam": -1.0}, "lam must be >= 0"),
    ({"nu": float("nan")}, "nu must be a finite number"),
    ({"lr": 0.0}, "lr must be > 0"),
    ({"projector": "2048-x"}, "malformed projector spec"),
    ({"projector": "64-128-32"}, "different hidden widths"),
    ({"max_steps": 0}, "max_steps must be >= 1"),
    ({"eval_split": "val"}, "unknown eval_split"),
    ({"compile": True}, "compile must be a string"),
    ({"progress": "yes"}, "progress must be True or False"),
    ({"data": ""}, "data is empty"),
    ({"lam": 0, "mu": 0, "nu": 0}, "all 0"),
    ({"resume": True, "overwrite": True}, "contradict"),
])
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**overrides)


def test_defaults_resolve_from_the_environment_and_the_optimizer(monkeypatch):
    monkeypatch.setenv("VICREG_DATA", "synthetic")
    assert TrainConfig().resolved().data == "synthetic"
    assert TrainConfig(optimizer="adam").resolved().lr == 2e-4
    assert TrainConfig(optimizer="lars", batch_size=512).resolved().lr == pytest.approx(0.4)  # 0.2 * 512 / 256


def test_field_sets_come_from_metadata():
    resume_safe = set(field_names("resume_safe"))
    assert {"out_dir", "progress", "eval_every", "device", "compile"} <= resume_safe
    assert not {"lam", "lr", "width", "recipe", "epochs", "seed", "schedule"} & resume_safe
    in_key = set(field_names("cache_key"))
    assert {"lam", "mu", "nu", "width", "data", "epochs", "recipe", "loss_convention"} <= in_key
    assert not {"out_dir", "progress", "resume", "overwrite", "log_every", "checkpoint_every"} & in_key
    assert set(field_names("per_setting")) == {"lam", "mu", "nu", "out_dir", "resume", "overwrite"}


def test_resume_allows_bookkeeping_changes_and_names_the_others():
    stored = TrainConfig(epochs=10).to_dict()
    assert resume_differences(stored, TrainConfig(epochs=10, eval_every=3, out_dir="elsewhere")) == []
    assert resume_differences(stored, TrainConfig(epochs=20)) == ["epochs: checkpoint 10, now 20"]
    constant = TrainConfig(epochs=10, optimizer="adam", schedule="constant")
    assert resume_differences(constant.to_dict(), dataclasses.replace(constant, epochs=20)) == []


def test_presets_say_what_they_are():
    blog = TrainConfig.from_preset("blog")
    assert (blog.preset, blog.backbone, blog.recipe, blog.loss_convention, blog.optimizer, blog.lr, blog.weight_decay,
            blog.schedule, blog.batch_size, blog.epochs) == ("blog", "blog", "blog", "blog", "adam", 2e-4, 1e-6,
                                                            "constant", 256, 500)
    assert blog.projector == "1024-1024-1024-1024" and blog.projector_bias and blog.concat_views
    paper = TrainConfig.from_preset("paper")
    assert (paper.optimizer, paper.lars_eta, paper.weight_decay, paper.warmup_epochs, paper.loss_convention,
            paper.final_lr_ratio) == ("lars", 0.001, 1e-6, 10, "official", 0.001)
    fast = TrainConfig.from_preset("fast", width=16)
    assert (fast.width, fast.recipe, fast.lars_eta, fast.lars_clip, fast.weight_decay) == (16, "fast", 0.02, "trust",
                                                                                           1e-4)
    # solo-learn's mu = 25 on summed variance terms is mu = 50 on the official averaged ones
    assert (fast.mu, fast.loss_convention, fast.lr, fast.compile, fast.cuda_graph) == (50.0, "official", 0.3, "off",
                                                                                      "auto")
    with pytest.raises(ValueError, match="unknown preset 'solo'"):
        TrainConfig.from_preset("solo")
    with pytest.raises(ValueError, match="unknown setting"):
        TrainConfig.from_preset("fast", widht=16)
    assert set(PRESETS) == {"blog", "paper", "fast"}


def test_blog_network_has_the_parameters_of_torchvision_resnet18_built_the_blogs_way():
    """torchvision.models.resnet18(num_classes=512), conv1 -> 3x3 stride 1 padding 0 with bias, no max-pool."""
    reference = torchvision.models.resnet18(num_classes=512)
    reference.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=0, bias=True)
    reference.maxpool = torch.nn.Identity()
    model = build_model(**TrainConfig.from_preset("blog").arch())
    assert sum(p.numel() for p in model.encoder.parameters()) == sum(p.numel() for p in reference.parameters())
    projector = sum(p.numel() for p in model.projector.parameters())
    # 3 x [Linear, BatchNorm] (512 -> 1024, then 1024 -> 1024 twice), then a biased Linear 1024 -> 1024
    hidden = (512 * 1024 + 1024 + 2 * 1024) + 2 * (1024 * 1024 + 1024 + 2 * 1024)
    assert projector == hidden + 1024 * 1024 + 1024
    x = torch.randn(2, 3, 32, 32)
    reference.eval(), model.eval()
    assert model.encoder(x).shape == reference(x).shape == (2, 512)
    # the stem keeps 30x30 maps (padding 0), as the blog's
    assert model.encoder.conv1(x).shape[-1] == 30


def test_a_lars_presets_lr_scales_with_an_overridden_batch_size():
    for name in ("paper", "fast"):
        base = TrainConfig.from_preset(name)
        assert TrainConfig.from_preset(name, batch_size=1024).lr == pytest.approx(base.lr * 4)
        assert TrainConfig.from_preset(name, batch_size=128).lr == pytest.approx(base.lr / 2)
        assert TrainConfig.from_preset(name, batch_size=1024, lr=0.1).lr == 0.1  # an explicit lr wins
    assert TrainConfig.from_preset("blog", batch_size=1024).lr == 2e-4  # the blog's Adam keeps its rate


def test_older_stored_configs_still_read():
    from vicreg_lib.config import resume_differences

    stored = TrainConfig.from_preset("fast").to_dict()
    stored["lars_clip"] = True  # as older versions stored it
    assert TrainConfig.from_dict(stored).lars_clip == "trust"
    assert resume_differences(stored, TrainConfig.from_preset("fast")) == []
    stored["lars_clip"] = False
    assert resume_differences(stored, TrainConfig.from_preset("fast")) == ["lars_clip: checkpoint 'none', now 'trust'"]


def test_a_stored_config_with_the_old_loss_key_reads_as_loss_convention():
    stored = TrainConfig.from_preset("blog").to_dict()
    stored["loss"] = stored.pop("loss_convention")  # as older versions stored it
    assert TrainConfig.from_dict(stored).loss_convention == "blog"
    assert resume_differences(stored, TrainConfig.from_preset("blog")) == []
