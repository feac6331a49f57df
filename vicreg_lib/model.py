"""Backbone, projector ("expander") and the joint-embedding wrapper.

    image x ─ encoder f ─> representation h: (n, 8*width) ─ projector g ─> embedding z: (n, d)

The loss sees z; evaluation (linear probe, k-NN) uses h. The encoder is torchvision's ResNet-18
for 32x32 images: a 3x3 stride-1 stem and no max-pool, so layer4 still sees a 4x4 map, not 1x1;
``width`` scales every stage so that tiny versions train on a CPU. The projector is the official
``main_vicreg.py``'s (ImageNet: ``--mlp 8192-8192-8192``). ``backbone="blog"`` is the blog code's
network: ``resnet18(num_classes=512)`` with a 3x3 ``conv1`` of padding 0 with a bias (30x30 maps),
the fc kept, no zero-init residuals, a biased last projector Linear.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, ResNet


class CifarResNet18(ResNet):
    """x: (n, 3, H, W) -> h: (n, 8*width). At width 64, ``torchvision.models.resnet18()`` with a 3x3
    ``conv1`` and no fc (same parameter names and shapes)."""

    def __init__(self, width: int = 64, zero_init_residual: bool = True, blog_stem: bool = False,
                 stem_padding: int | None = None) -> None:
        # ResNet.__init__ hard-codes 64/128/256/512 channels: set what _make_layer and forward use
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.dilation = 1
        self.groups = 1
        self.base_width = 64  # BasicBlock only accepts the default
        self.inplanes = width
        # full resolution in the stem; the blog's pads by 0 (30x30 maps), solo-learn's by 2 (34x34)
        padding = stem_padding if stem_padding is not None else (0 if blog_stem else 1)
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=padding, bias=blog_stem)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(BasicBlock, width, 2)  # 32x32
        self.layer2 = self._make_layer(BasicBlock, 2 * width, 2, stride=2)  # 16x16
        self.layer3 = self._make_layer(BasicBlock, 4 * width, 2, stride=2)  # 8x8
        self.layer4 = self._make_layer(BasicBlock, 8 * width, 2, stride=2)  # 4x4
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        # the blog keeps torchvision's fc (8w -> 8w)
        self.fc = nn.Linear(8 * width, 8 * width) if blog_stem else nn.Identity()
        self.width = width
        self.out_dim = 8 * width
        # torchvision's initialisation
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # each residual block starts as the identity, as in the official code
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)


def resnet18_cifar(width: int = 64, zero_init_residual: bool = True, blog_stem: bool = False,
                   stem_padding: int | None = None) -> CifarResNet18:
    """x: (n, 3, 32, 32) -> h: (n, 8*width); width 64 is the standard ResNet-18 (11.2M parameters)."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be an integer >= 1 (64 is the standard ResNet-18), got {width!r}")
    return CifarResNet18(width, zero_init_residual=zero_init_residual, blog_stem=blog_stem, stem_padding=stem_padding)


def parse_projector_spec(spec: str) -> list[int]:
    """``"2048-2048-2048"`` -> ``[2048, 2048, 2048]``, the official ``--mlp`` format; the last is d."""
    if not isinstance(spec, str):
        raise ValueError(f"projector spec must be a string like '2048-2048-2048', got {spec!r}")
    parts = spec.strip().split("-")
    if not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise ValueError(
            f"malformed projector spec {spec!r}: expected positive integers joined by '-', "
            "e.g. '2048-2048-2048' (hidden widths, then the output size)"
        )
    return [int(part) for part in parts]


class Projector(nn.Sequential):
    """h: (n, in_dim) -> z: (n, out_dim): (layers-1) x [Linear, BatchNorm1d, ReLU], then a Linear whose
    bias the official code drops and the blog's keeps (``final_bias``); the hidden biases stay, as
    the official code keeps them."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, layers: int = 3, final_bias: bool = False) -> None:
        for name, value in dict(in_dim=in_dim, hidden_dim=hidden_dim, out_dim=out_dim, layers=layers).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        blocks: list[nn.Module] = []
        width = in_dim
        for _ in range(layers - 1):
            blocks += [nn.Linear(width, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
            width = hidden_dim
        blocks.append(nn.Linear(width, out_dim, bias=final_bias))
        super().__init__(*blocks)
        self.in_dim, self.hidden_dim, self.out_dim, self.layers = in_dim, hidden_dim, out_dim, layers

    @classmethod
    def from_spec(cls, in_dim: int, spec: str, final_bias: bool = False) -> Projector:
        """``Projector.from_spec(512, "2048-2048-2048")``; one hidden width, as in all the paper's settings."""
        widths = parse_projector_spec(spec)
        hidden, out_dim = widths[:-1], widths[-1]
        if len(set(hidden)) > 1:
            raise ValueError(
                f"projector spec {spec!r} has different hidden widths {hidden}; "
                "Projector uses one hidden width, e.g. '2048-2048-2048'"
            )
        hidden_dim = hidden[0] if hidden else out_dim
        return cls(in_dim, hidden_dim, out_dim, layers=len(widths), final_bias=final_bias)


class VICReg(nn.Module):
    """Encoder + projector, shared by both branches. ``forward(x1, x2)`` makes one pass per view, as the
    official code: with BatchNorm, one pass over ``cat([x1, x2])`` would normalise each view with
    statistics pooled over both (in train mode, sharing information). ``concat_views=True`` does it."""

    def __init__(self, encoder: nn.Module, projector: Projector, concat_views: bool = False) -> None:
        super().__init__()
        encoder_dim = getattr(encoder, "out_dim", None)
        if encoder_dim is not None and encoder_dim != projector.in_dim:
            raise ValueError(
                f"encoder outputs {encoder_dim} features but the projector expects {projector.in_dim}; "
                f"build the projector with in_dim={encoder_dim}"
            )
        self.encoder, self.projector, self.concat_views = encoder, projector, concat_views
        self.out_dim = projector.out_dim

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        """x: (n, 3, H, W) -> h: (n, encoder.out_dim), the features used for evaluation."""
        return self.encoder(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x: (n, 3, H, W) -> z: (n, projector.out_dim), what the loss sees."""
        return self.projector(self.encoder(x))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x1, x2: (n, 3, H, W) two views of the same n images -> z1, z2: (n, out_dim)."""
        if x1.shape != x2.shape:
            raise ValueError(
                f"the two views must have the same shape, got {tuple(x1.shape)} and {tuple(x2.shape)}"
            )
        if self.concat_views:
            z1, z2 = self.embed(torch.cat([x1, x2])).chunk(2)
            return z1, z2
        return self.embed(x1), self.embed(x2)


BACKBONES = ("cifar", "blog")


def build_model(
    backbone: str = "cifar",
    width: int = 64,
    projector: str = "2048-2048-2048",
    projector_bias: bool = False,
    concat_views: bool = False,
    stem_padding: int | None = None,
    zero_init_residual: bool | None = None,
) -> VICReg:
    """A freshly initialised VICReg network; ``build_model(**checkpoint["arch"])`` rebuilds a stored one.
    stem_padding, zero_init_residual: None keeps the backbone's (cifar: 1 and True; blog: 0 and False)."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}: use one of {', '.join(BACKBONES)}")
    blog = backbone == "blog"
    zero_init = (not blog) if zero_init_residual is None else zero_init_residual
    encoder = resnet18_cifar(width, zero_init_residual=zero_init, blog_stem=blog, stem_padding=stem_padding)
    model = VICReg(encoder, Projector.from_spec(encoder.out_dim, projector, final_bias=projector_bias),
                   concat_views=concat_views)
    # what a checkpoint stores to rebuild it: build_model(**model.arch)
    model.arch = dict(backbone=backbone, width=width, projector=projector, projector_bias=projector_bias,
                      concat_views=concat_views)
    for name, value in (("stem_padding", stem_padding), ("zero_init_residual", zero_init_residual)):
        if value is not None:
            model.arch[name] = value
    return model


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, batches) -> nn.Module:
    """Set every BatchNorm's running statistics to their average over ``batches`` (e.g. normalised
    images (b, 3, H, W)); returns the model in eval mode. An untrained network's initial statistics
    (mean 0, variance 1) leave its embeddings tiny, looking collapsed; with the data's, it is random."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over all batches
    model.train()
    try:
        for batch in batches:
            model(batch)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.eval()
    return model
