"""Backbone, projector ("expander") and the joint-embedding wrapper.

    image x ─ encoder f ─> representation h: (n, 8*width) ─ projector g ─> embedding z: (n, d)

The loss is applied to z; h is what evaluation (linear probe, k-NN) uses.

The encoder is torchvision's ResNet-18 adapted to 32x32 CIFAR images the usual
way: a 3x3 stride-1 first convolution instead of 7x7 stride 2, and no max-pool,
so layer4 still sees a 4x4 map instead of 1x1. ``width`` scales every stage
(width, 2w, 4w, 8w) so that tiny versions train on a CPU.

The projector follows the official ``main_vicreg.py``: (layers-1) x [Linear,
BatchNorm1d, ReLU] then a final Linear without bias; the official ImageNet
setting is ``--mlp 8192-8192-8192``.

``backbone="blog"`` builds the network of the blog post's code (augustwester/vicreg):
``torchvision.models.resnet18(num_classes=512)`` with a 3x3 stride-1 ``conv1`` with
padding 0 and a bias (30x30 maps), no max-pool, the fc layer kept (h is a 512 -> 512
Linear output), no zero-init of the residual BatchNorms; its projector ends in a biased Linear.

``build_model(**arch)`` rebuilds any model from the ``arch`` dict a checkpoint stores.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, ResNet


class CifarResNet18(ResNet):
    """torchvision ResNet-18 with a 3x3 stride-1 stem, no max-pool and no fc.

    x: (n, 3, H, W) -> h: (n, 8*width). At width 64 this is exactly
    ``torchvision.models.resnet18()`` with ``conv1`` swapped for a 3x3 conv
    and ``fc`` removed (same parameter names and shapes).
    """

    def __init__(self, width: int = 64, zero_init_residual: bool = True, blog_stem: bool = False,
                 stem_padding: int | None = None) -> None:
        # ResNet.__init__ hard-codes 64/128/256/512 channels, so set up the
        # attributes its _make_layer and forward rely on ourselves.
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.dilation = 1
        self.groups = 1
        self.base_width = 64  # BasicBlock only accepts the default
        self.inplanes = width

        # 32x32 images: keep full resolution in the stem (no 7x7/2 conv, no max-pool). The blog's
        # stem has padding 0 and a bias (30x30 maps after it); solo-learn pads by 2 (34x34).
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
        # forward() returns the pooled representation; the blog keeps torchvision's fc (8w -> 8w)
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
        # Each residual block starts as the identity; the official VICReg code
        # builds its ResNets with zero_init_residual=True too.
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)


def resnet18_cifar(width: int = 64, zero_init_residual: bool = True, blog_stem: bool = False,
                   stem_padding: int | None = None) -> CifarResNet18:
    """ResNet-18 for 32x32 images; x: (n, 3, 32, 32) -> h: (n, 8*width).

    ``width=64`` is the standard 512-d ResNet-18 (11.2M parameters);
    16 or 32 are small enough to train on a CPU. The size of h is ``model.out_dim``.
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be an integer >= 1 (64 is the standard ResNet-18), got {width!r}")
    return CifarResNet18(width, zero_init_residual=zero_init_residual, blog_stem=blog_stem, stem_padding=stem_padding)


def parse_projector_spec(spec: str) -> list[int]:
    """``"2048-2048-2048"`` -> ``[2048, 2048, 2048]``: the widths of the projector's Linear layers.

    Same format as the official code's ``--mlp`` flag; the last number is the
    embedding size d.
    """
    if not isinstance(spec, str):
        raise ValueError(f"projector spec must be a string like '2048-2048-2048', got {spec!r}")
    parts = spec.strip().split("-")
    if not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise ValueError(
            f"malformed projector spec {spec!r}: expected positive integers joined by '-', "
            "e.g. '2048-2048-2048' (hidden widths, then the output size)"
        )
    return [int(part) for part in parts]


def _check_dim(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


class Projector(nn.Sequential):
    """MLP from representation h: (n, in_dim) to embedding z: (n, out_dim).

    (layers-1) x [Linear, BatchNorm1d, ReLU], then Linear(bias=False) to out_dim
    (the official code drops that bias, the blog's code keeps it: ``final_bias``; BatchNorm
    makes the hidden biases redundant too, but they are kept as the official code keeps them).
    ``layers=1`` is a single Linear.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, layers: int = 3, final_bias: bool = False) -> None:
        _check_dim(in_dim, "in_dim")
        _check_dim(hidden_dim, "hidden_dim")
        _check_dim(out_dim, "out_dim")
        _check_dim(layers, "layers")
        blocks: list[nn.Module] = []
        width = in_dim
        for _ in range(layers - 1):
            blocks += [nn.Linear(width, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
            width = hidden_dim
        blocks.append(nn.Linear(width, out_dim, bias=final_bias))
        super().__init__(*blocks)
        self.in_dim = in_dim
        self.hidden_dim = hidden_dim
        self.out_dim = out_dim
        self.layers = layers

    @classmethod
    def from_spec(cls, in_dim: int, spec: str, final_bias: bool = False) -> Projector:
        """Build from an official-style spec: ``Projector.from_spec(512, "2048-2048-2048")``.

        All hidden widths must be equal (as in every setting of the paper).
        """
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
    """Encoder + projector, shared by both branches (a siamese joint-embedding net).

    ``forward(x1, x2)`` runs the two views through the network in two separate
    passes, as the official code does. With BatchNorm this matters: a joint
    pass over ``cat([x1, x2])`` would normalise each view with statistics
    pooled over both views, a different (and in train mode, slightly
    information-sharing) computation from the one the paper's results come
    from. ``concat_views=True`` does the single, faster pass anyway.
    """

    def __init__(self, encoder: nn.Module, projector: Projector, concat_views: bool = False) -> None:
        super().__init__()
        encoder_dim = getattr(encoder, "out_dim", None)
        if encoder_dim is not None and encoder_dim != projector.in_dim:
            raise ValueError(
                f"encoder outputs {encoder_dim} features but the projector expects {projector.in_dim}; "
                f"build the projector with in_dim={encoder_dim}"
            )
        self.encoder = encoder
        self.projector = projector
        self.concat_views = concat_views
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

    backbone "cifar": ``resnet18_cifar(width)`` (3x3 stem, zero-init residuals, no fc);
    "blog": the blog code's ResNet-18 (stem padding 0 with bias, fc kept, no zero-init).
    projector: the official ``--mlp`` spec; projector_bias keeps the final Linear's bias (blog).
    concat_views: one forward pass over both views (blog) instead of two (official).
    stem_padding, zero_init_residual: None keeps the backbone's (cifar: 1 and True; blog: 0 and False).
    """
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
    """Set every BatchNorm's running statistics to their average over ``batches`` (inputs the model
    takes, e.g. normalised images (b, 3, H, W)); returns the model in eval mode.

    An untrained network in eval mode still holds BatchNorm's initial statistics (mean 0,
    variance 1), which pass its activations through unnormalised: its embeddings come out
    tiny and look collapsed. Measured with statistics of the data, it is what it is: random.
    """
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
