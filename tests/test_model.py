from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

from vicreg_lib.model import Projector, VICReg, parse_projector_spec, resnet18_cifar


def _images(n: int = 2, seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- encoder ----------------------------------------------------------------


@pytest.mark.parametrize("width", [8, 16, 64])
def test_encoder_output_shape(width: int) -> None:
    torch.manual_seed(0)
    model = resnet18_cifar(width).eval()
    with torch.no_grad():
        h = model(_images(2))
    assert model.out_dim == 8 * width
    assert h.shape == (2, 8 * width)


def test_stem_is_3x3_stride_1_without_maxpool() -> None:
    model = resnet18_cifar(8).eval()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    seen = {}
    model.layer1.register_forward_hook(lambda m, i, o: seen.__setitem__("layer1", o.shape))
    model.layer4.register_forward_hook(lambda m, i, o: seen.__setitem__("layer4", o.shape))
    with torch.no_grad():
        model(_images(2))
    assert seen["layer1"] == (2, 8, 32, 32)  # full resolution after the stem
    assert seen["layer4"] == (2, 64, 4, 4)  # three stride-2 stages: 32 -> 4


def test_width_64_matches_torchvision_resnet18_with_cifar_stem() -> None:
    reference = torchvision.models.resnet18()
    reference.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    reference.fc = nn.Identity()
    model = resnet18_cifar(64)
    assert _count(model) == _count(reference)
    # same parameter names and shapes: torchvision weights load strictly
    model.load_state_dict(reference.state_dict(), strict=True)


def test_width_scales_every_stage() -> None:
    model = resnet18_cifar(16)
    assert model.conv1.out_channels == 16
    stage_widths = [getattr(model, f"layer{i}")[-1].conv2.out_channels for i in range(1, 5)]
    assert stage_widths == [16, 32, 64, 128]


def test_zero_init_residual_starts_blocks_as_identity() -> None:
    model = resnet18_cifar(8)
    assert all(block.bn2.weight.abs().sum() == 0 for block in model.layer1)
    plain = resnet18_cifar(8, zero_init_residual=False)
    assert all(block.bn2.weight.abs().sum() > 0 for block in plain.layer1)


@pytest.mark.parametrize("width", [0, -4, 2.5, True])
def test_bad_width_raises(width: object) -> None:
    with pytest.raises(ValueError, match="width"):
        resnet18_cifar(width)  # type: ignore[arg-type]


# ---- projector --------------------------------------------------------------


def test_parse_projector_spec() -> None:
    assert parse_projector_spec("2048-2048-2048") == [2048, 2048, 2048]
    assert parse_projector_spec("128") == [128]


@pytest.mark.parametrize("spec", ["", "2048--2048", "2048-abc", "2048-0", "-5", "8.5-8", None])
def test_malformed_projector_spec_raises(spec: object) -> None:
    with pytest.raises(ValueError, match="spec"):
        parse_projector_spec(spec)  # type: ignore[arg-type]


def test_projector_layer_structure() -> None:
    projector = Projector(32, 64, 16, layers=3)
    kinds = [type(m) for m in projector]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    linears = [m for m in projector if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 64), (64, 64), (64, 16)]
    assert linears[-1].bias is None  # official code: last layer without bias
    assert projector(torch.randn(4, 32)).shape == (4, 16)


def test_single_layer_projector_is_one_linear() -> None:
    projector = Projector(32, 64, 16, layers=1)
    assert len(projector) == 1 and isinstance(projector[0], nn.Linear)
    assert (projector[0].in_features, projector[0].out_features) == (32, 16)


def test_projector_from_spec() -> None:
    projector = Projector.from_spec(512, "2048-2048-1024")
    sizes = (projector.in_dim, projector.hidden_dim, projector.out_dim, projector.layers)
    assert sizes == (512, 2048, 1024, 3)
    linears = [m for m in projector if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [2048, 2048, 1024]
    assert len(Projector.from_spec(64, "32")) == 1
    with pytest.raises(ValueError, match="hidden width"):
        Projector.from_spec(64, "128-256-32")


@pytest.mark.parametrize(
    "kwargs", [dict(in_dim=0), dict(hidden_dim=-1), dict(out_dim=0), dict(layers=0), dict(in_dim=2.5)]
)
def test_bad_projector_dims_raise(kwargs: dict) -> None:
    args = dict(in_dim=8, hidden_dim=8, out_dim=8, layers=2) | kwargs
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        Projector(**args)


# ---- joint embedding --------------------------------------------------------


def _tiny_vicreg(concat_views: bool = False) -> VICReg:
    torch.manual_seed(0)
    encoder = resnet18_cifar(4)
    return VICReg(encoder, Projector(encoder.out_dim, 32, 24, layers=2), concat_views=concat_views)


def test_vicreg_forward_shapes_and_gradients_reach_encoder() -> None:
    model = _tiny_vicreg()
    z1, z2 = model(_images(4, seed=1, size=16), _images(4, seed=2, size=16))
    assert z1.shape == (4, 24) and z2.shape == (4, 24)
    assert model.out_dim == 24
    (z1 - z2).pow(2).mean().backward()
    assert model.encoder.conv1.weight.grad is not None
    assert model.encoder.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.projector.parameters())


def test_representation_and_embed() -> None:
    model = _tiny_vicreg().eval()
    x = _images(3, size=16)
    with torch.no_grad():
        h = model.representation(x)
        z = model.embed(x)
    assert h.shape == (3, 32)
    assert z.shape == (3, 24)
    torch.testing.assert_close(model.projector(h), z)


def test_separate_passes_keep_batchnorm_statistics_per_view() -> None:
    x1, x2 = _images(4, seed=3, size=16), 5.0 + _images(4, seed=4, size=16)  # very different view statistics
    separate, joint = _tiny_vicreg(False).train(), _tiny_vicreg(True).train()
    joint.load_state_dict(separate.state_dict())
    z1_sep, _ = separate(x1, x2)
    z1_joint, _ = joint(x1, x2)
    # train mode: separate passes normalise view 1 with view-1 statistics only,
    # so z1 does not depend on x2; the joint pass mixes in x2's statistics
    torch.testing.assert_close(z1_sep, separate.embed(x1))
    assert not torch.allclose(z1_sep, z1_joint, atol=1e-4)
    # eval mode (running statistics, here the same in both): identical computation
    joint.load_state_dict(separate.state_dict())
    separate.eval(), joint.eval()
    with torch.no_grad():
        a, b = separate(x1, x2), joint(x1, x2)
    torch.testing.assert_close(a, b)


def test_vicreg_rejects_mismatched_parts_and_views() -> None:
    encoder = resnet18_cifar(4)
    with pytest.raises(ValueError, match="in_dim=32"):
        VICReg(encoder, Projector(16, 16, 16))
    model = _tiny_vicreg()
    with pytest.raises(ValueError, match="same shape"):
        model(_images(2, size=16), _images(3, size=16))


def test_calibrate_batchnorm_sets_running_statistics_from_the_data():
    from vicreg_lib.model import calibrate_batchnorm

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    batches = [torch.randn(64, 4) * 5 + 2 for _ in range(4)]
    calibrate_batchnorm(net, batches)
    with torch.no_grad():
        hidden = torch.cat([net[0](b) for b in batches])
    assert not net.training
    assert torch.allclose(net[1].running_mean, hidden.mean(0), atol=1e-4)
    assert torch.allclose(net[1].running_var, hidden.var(0), rtol=0.05)  # average of per-batch unbiased vars
    assert net[1].momentum == 0.1  # restored
