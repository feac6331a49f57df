"""Every setting of a pretraining run, its validation, and the named presets.

    config = TrainConfig.from_preset("fast", width=16, epochs=20)

Each field's metadata is what the rest of the package derives its lists from: ``help`` and
``choices`` (the command line), ``minimum`` (``validate``), ``resume_safe`` (may differ on resume:
it does not change what is trained), ``cache_key`` (part of an ablation result's cache key) and
``per_setting`` (set by the ablation runner for each setting, not by its caller). The presets
(``PRESETS``, docs/design.md): blog, paper and fast, each with its provenance beside it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from .augment import RECIPES
from .hardware import DEVICE_CHOICES, check_device_text
from .loss import CONVENTIONS
from .model import BACKBONES, parse_projector_spec
from .optim import LARS_CLIPS, OPTIMIZERS, SCHEDULES, lars_clip_mode

PIPELINES = ("batched", "dataloader")
AMP_MODES = ("auto", "bf16", "off")
SWITCH_MODES = ("auto", "on", "off")
SPLITS = ("train", "test")
MAX_SEED = 2**32 - 1


def _option(default: Any, help: str, *, choices: tuple | None = None, minimum: float | None = None,
            resume_safe: bool = False, cache_key: bool = True, per_setting: bool = False) -> Any:
    """A dataclass field with the metadata described in the module docstring."""
    return field(default=default, metadata={
        "help": help, "choices": choices, "minimum": minimum, "resume_safe": resume_safe,
        "cache_key": cache_key, "per_setting": per_setting})


def _bookkeeping(default: Any, help: str, **kwargs: Any) -> Any:
    """A setting that changes neither what is trained nor its result: safe on resume, not in cache keys."""
    return _option(default, help, resume_safe=True, cache_key=False, **kwargs)


@dataclass
class TrainConfig:
    preset: str | None = _bookkeeping(None, "the preset these settings started from (a label only)")
    # data
    data: str | None = _option(None, "data spec: cifar10, cifar100, npz:PATH, folder:PATH, archive:PATH or "
                                     "synthetic (default: $VICREG_DATA, else cifar10)")
    data_root: str | None = _bookkeeping(None, "where downloads and unpacked archives go "
                                               "(default: $VICREG_DATA_ROOT, else data)")
    max_train_images: int | None = _option(None, "train on a fixed random subset of this many images "
                                                 "(default: all)", minimum=1)
    # model
    backbone: str = _option("cifar", "cifar: ResNet-18 with a 3x3 stem, no fc; blog: the blog code's "
                                     "(stem padding 0 with bias, fc kept)", choices=BACKBONES)
    width: int = _option(64, "ResNet-18 width (64 = the standard 512-d ResNet-18; 8 or 16 for CPU runs)",
                         minimum=1)
    stem_padding: int | None = _option(None, "padding of the 3x3 stem conv (default: the backbone's, cifar 1, "
                                             "blog 0; solo-learn's is 2)", minimum=0)
    zero_init_residual: bool | None = _option(None, "start each residual block as the identity (default: the "
                                                    "backbone's, cifar yes, blog no)")
    projector: str = _option("2048-2048-2048", "projector layer widths, as the official --mlp flag")
    projector_bias: bool = _option(False, "keep the bias of the projector's last Linear (the blog's code)")
    concat_views: bool = _option(False, "one forward pass over both views concatenated (the blog's code) "
                                        "instead of one per view (the official code)")
    # objective
    lam: float = _option(25.0, "invariance coefficient lambda", minimum=0.0, per_setting=True)
    mu: float = _option(25.0, "variance coefficient mu", minimum=0.0, per_setting=True)
    nu: float = _option(1.0, "covariance coefficient nu", minimum=0.0, per_setting=True)
    loss_convention: str = _option("official", "official: variance terms averaged, eps 1e-4; blog: summed, no eps",
                        choices=CONVENTIONS)
    # optimisation
    batch_size: int = _option(256, "global batch size (split over processes when distributed)", minimum=2)
    epochs: int = _option(100, "number of passes over the training images", minimum=1)
    optimizer: str = _option("lars", "adam (the blog's code) or lars (the official code)", choices=OPTIMIZERS)
    lr: float | None = _option(None, "peak learning rate (default: adam 2e-4; lars 0.2 * batch_size / 256)",
                               minimum=0.0)
    weight_decay: float = _option(1e-6, "weight decay", minimum=0.0)
    lars_eta: float = _option(0.001, "LARS trust coefficient (official 0.001; solo-learn's CIFAR 0.02)",
                              minimum=0.0)
    lars_clip: str = _option("none", "LARS rate clipping: none (official), trust (trust ratio capped at 1), "
                                     "solo-learn (the rate capped at the lr, solo-learn's clip_lr)",
                             choices=LARS_CLIPS)
    schedule: str = _option("warmup_cosine", "learning-rate schedule", choices=SCHEDULES)
    warmup_epochs: int = _option(10, "warmup_cosine: linear warmup epochs before the cosine decay",
                                 minimum=0)
    final_lr_ratio: float = _option(0.001, "cosine schedules end at this fraction of the peak lr "
                                           "(official 0.001)", minimum=0.0)
    # input pipeline
    recipe: str = _option("paper", "augmentation recipe", choices=tuple(RECIPES))
    crop_interpolation: str | None = _option(None, "resize of the random crop: bilinear or bicubic (default: the "
                                                   "recipe's)", choices=("bilinear", "bicubic"))
    pipeline: str = _option("batched", "batched: augment whole batches on the device (fast); "
                                       "dataloader: per-image torchvision transforms in workers",
                            choices=PIPELINES)
    num_workers: int = _bookkeeping(2, "dataloader pipeline only: worker processes", minimum=0)
    seed: int = _option(0, "random seed of the model, the batches and the augmentations", minimum=0)
    # hardware
    device: str = _bookkeeping("auto", f"device: {DEVICE_CHOICES}")
    amp: str = _option("auto", "mixed precision: auto = bf16 on CUDA, off on the CPU", choices=AMP_MODES)
    channels_last: str = _option("auto", "channels-last memory format: auto = on for CUDA",
                                 choices=SWITCH_MODES)
    compile: str = _bookkeeping("off", "torch.compile the model: auto = on for CUDA (the first steps "
                                       "are slow)", choices=SWITCH_MODES)
    cuda_graph: str = _bookkeeping("auto", "capture the whole training step in a CUDA graph (no launch overhead): "
                                           "auto = on for CUDA with LARS and the batched pipeline",
                                   choices=SWITCH_MODES)
    # bookkeeping
    out_dir: str = _bookkeeping("runs/vicreg", "folder for config.json, metrics.jsonl and checkpoint.pt",
                                per_setting=True)
    checkpoint_every: int = _bookkeeping(10, "save a checkpoint every N epochs (and always at the end); "
                                             "0: at the end only", minimum=0)
    eval_every: int = _bookkeeping(10, "kNN accuracy every N epochs and at the end; 0: never", minimum=0)
    eval_at_start: bool = _bookkeeping(True, "also evaluate the random initialisation (an epoch-0 record)")
    eval_split: str = _bookkeeping("test", "split whose kNN accuracy is reported", choices=SPLITS)
    knn_k: int = _bookkeeping(200, "neighbours of the kNN classifier (k=20 is reported beside it)",
                              minimum=1)
    max_steps: int | None = _bookkeeping(None, "stop after this many optimizer steps in total", minimum=1)
    log_every: int = _bookkeeping(10, "refresh the progress bar and check the loss every N steps",
                                  minimum=1)
    resume: bool = _bookkeeping(False, "continue the run in out_dir from its checkpoint.pt", per_setting=True)
    overwrite: bool = _bookkeeping(False, "start afresh even if out_dir already holds a run", per_setting=True)
    allow_data_change: bool = _bookkeeping(False, "with resume: continue even though the training images differ "
                                                  "from the checkpoint's")
    progress: bool = _bookkeeping(True, "show a progress bar")

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """The preset called ``name`` (see ``PRESETS``) with ``overrides`` on top."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
        unknown = sorted(set(overrides) - set(field_names()))
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}; see TrainConfig's fields")
        preset = PRESETS[name]
        if "batch_size" in overrides and "lr" not in overrides and preset["optimizer"] == "lars":
            # the official code's and solo-learn's rule: lr = base_lr * batch_size / 256
            overrides["lr"] = preset["lr"] * overrides["batch_size"] / preset["batch_size"]
        return cls(**{**preset, "preset": name, **overrides})

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> TrainConfig:
        """A config stored by this package (config.json, a checkpoint), older versions' keys included."""
        return cls(**upgrade_stored_config(stored))

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting and what to use instead."""
        for spec in dataclasses.fields(self):
            _check_field(spec, getattr(self, spec.name))
        if self.lr == 0:
            raise ValueError("lr must be > 0, got 0; leave it unset for the default")
        if self.data == "":
            raise ValueError("data is empty: give a data spec (cifar10, npz:PATH, folder:PATH, archive:PATH, "
                             "synthetic) or leave it unset for $VICREG_DATA")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite contradict each other: --resume continues the run in out_dir, "
                             "--overwrite deletes it; pass one of them")
        if self.lam == 0 and self.mu == 0 and self.nu == 0:
            raise ValueError("lam, mu and nu are all 0: the loss would be 0 and nothing would train; "
                             "set at least one (the paper's setting is 25, 25, 1)")
        check_device_text(self.device)
        if self.seed > MAX_SEED:
            raise ValueError(f"seed must be <= {MAX_SEED} (2**32 - 1, numpy's largest seed), got {self.seed}")
        if not self.projector.strip().isascii():  # int() would read digits such as '²' and fail obscurely
            raise ValueError(f"projector {self.projector!r} holds characters other than the digits 0-9 and '-'; "
                             f"write it as e.g. '2048-2048-2048'")
        widths = parse_projector_spec(self.projector)  # ValueError for a malformed spec
        if len(set(widths[:-1])) > 1:
            raise ValueError(f"projector {self.projector!r} has different hidden widths {widths[:-1]}; "
                             f"use one hidden width, e.g. '2048-2048-2048'")

    def resolved(self) -> TrainConfig:
        """A copy with the defaults that depend on the environment or other fields filled in."""
        from .data import default_data_spec

        lr = self.lr if self.lr is not None else default_lr(self.optimizer, self.batch_size)
        return dataclasses.replace(self, data=self.data or default_data_spec(), lr=lr)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def arch(self) -> dict[str, Any]:
        """model.build_model's keyword arguments for this run (what a checkpoint stores as ``arch``)."""
        arch = dict(backbone=self.backbone, width=self.width, projector=self.projector,
                    projector_bias=self.projector_bias, concat_views=self.concat_views)
        for name in ("stem_padding", "zero_init_residual"):  # stored only when set: older arches stay equal
            if getattr(self, name) is not None:
                arch[name] = getattr(self, name)
        return arch


def upgrade_stored_config(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config's dict with older versions' keys and values read as today's (``loss`` is now
    ``loss_convention``; lars_clip was a bool)."""
    stored = dict(stored)
    if "loss" in stored and "loss_convention" not in stored:  # renamed: it holds a convention's name
        stored["loss_convention"] = stored.pop("loss")
    if isinstance(stored.get("lars_clip"), bool):
        stored["lars_clip"] = lars_clip_mode(stored["lars_clip"])
    return stored


def default_lr(optimizer: str, batch_size: int) -> float:
    """Adam: 2e-4 (the blog's code). LARS: base lr 0.2 scaled by batch_size / 256 (the official code)."""
    return 2e-4 if optimizer == "adam" else 0.2 * batch_size / 256


# ----------------------------------------------------------------------------- field metadata


def field_names(flag: str | None = None, value: bool = True) -> tuple[str, ...]:
    """TrainConfig's field names, all or those whose metadata ``flag`` equals ``value``."""
    return tuple(spec.name for spec in dataclasses.fields(TrainConfig)
                 if flag is None or spec.metadata[flag] == value)


def field_type(spec: dataclasses.Field) -> tuple[type, bool]:
    """(the field's value type, whether None is allowed), from its annotation."""
    hint = typing.get_type_hints(TrainConfig)[spec.name]
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        return next(arg for arg in args if arg is not type(None)), True
    return hint, False


def _check_field(spec: dataclasses.Field, value: Any) -> None:
    kind, nullable = field_type(spec)
    name, meta = spec.name, spec.metadata
    if value is None:
        if nullable:
            return
        raise ValueError(f"{name} must not be None; its default is {spec.default!r}")
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    elif not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")
    if meta["minimum"] is not None and value < meta["minimum"]:
        raise ValueError(f"{name} must be >= {meta['minimum']:g}, got {value!r}")
    if meta["choices"] is not None and value not in meta["choices"]:
        raise ValueError(f"unknown {name} {value!r}: use one of {', '.join(meta['choices'])}")


def resume_differences(stored: dict[str, Any], current: TrainConfig) -> list[str]:
    """The settings that differ between a checkpoint's config and ``current`` and may not.

    Settings marked resume_safe may change. ``epochs`` may change only with the constant
    schedule: a cosine schedule is laid out over all epochs, so changing their number would
    make the learning rate jump back up (start a new run, or finish this one and fine-tune).
    """
    now, stored = current.to_dict(), upgrade_stored_config(stored)
    allowed = set(field_names("resume_safe"))
    if now.get("schedule") == "constant":
        allowed.add("epochs")
    return [f"{name}: checkpoint {stored.get(name)!r}, now {now[name]!r}"
            for name in now if name not in allowed and stored.get(name) != now[name]]


# ----------------------------------------------------------------------------- presets

PRESETS: dict[str, dict[str, Any]] = {
    # The blog post's code exactly (reference-recipes.md): resnet18(num_classes=512), 3x3 stem (padding
    # 0, bias), fc kept; a 1024-wide projector ending in a biased Linear; one pass over both views; one
    # augmentation for both; summed variance terms, no eps; Adam 2e-4 constant, wd 1e-6; 500 epochs.
    "blog": dict(
        backbone="blog", width=64, projector="1024-1024-1024-1024", projector_bias=True, concat_views=True,
        recipe="blog", loss_convention="blog", optimizer="adam", lr=2e-4, weight_decay=1e-6, schedule="constant",
        warmup_epochs=0, batch_size=256, epochs=500,
    ),
    # The official code's conventions (main_vicreg.py) adapted to CIFAR-10 on one GPU:
    # - ResNet-18 with a 3x3 stem, no max-pool, for ResNet-50 (its stem would shrink 32x32 to 1x1);
    # - projector 2048-2048-2048: 4x the 512-d representation, as 8192 is 4x ResNet-50's 2048;
    # - batch 256 for 2048, with the official rule lr = 0.2 * batch / 256;
    # - augmentations at 32 px: crop scale 0.2-1 (not 0.08-1), bilinear, blur kernel 3;
    # - kept: LARS (eta 0.001, wd 1e-6, biases and norms excluded), 10 warmup epochs, cosine to 0.001
    #   of the peak, averaged variance terms with eps 1e-4, 25/25/1, 100 epochs (the script's default).
    "paper": dict(
        backbone="cifar", width=64, projector="2048-2048-2048", projector_bias=False, concat_views=False,
        recipe="paper", loss_convention="official", optimizer="lars", lr=0.2, weight_decay=1e-6, lars_eta=0.001,
        lars_clip="none", schedule="warmup_cosine", warmup_epochs=10, final_lr_ratio=0.001,
        batch_size=256, epochs=100,
    ),
    # Ours, for the most accuracy per GPU-minute: solo-learn's CIFAR-10 VICReg settings
    # (scripts/pretrain/cifar/vicreg.yaml at 9187ea3) where they measured better. Taken as they are:
    # the same augmentation for both views, no blur, solarize 0.1 (recipe "fast"); LARS eta 0.02,
    # lr 0.3 x batch/256, weight decay 1e-4, biases and norms excluded; 2048-2048-2048 projector.
    # mu = 50 with the official averaged variance terms is solo-learn's mu = 25 with its summed ones.
    # Where we differ, measured by benchmarks/recipe_ab.py (H200, width 16, 2 seeds, kNN k=200 on all
    # 10,000 test images; docs/benchmarks.md):
    # - lars_clip "trust" (the trust ratio capped at 1), not solo-learn's rate capped at the lr:
    #   solo-learn's rule scored 2.6 points lower, beyond the seeds' spread;
    # - stem padding 1, zero-init residuals, bilinear crops: solo-learn's padding 2, no zero-init and
    #   bicubic were within the seeds' spread (-0.8, +1.0, +0.4 points): the official choices stay;
    # - 2 warmup epochs (solo-learn: 10 of 1,000; runs here are short);
    # - bf16, channels-last and the CUDA-graphed step on a GPU; torch.compile off: inside the graph
    #   it gained 5% a step (H200) for about 40 s of compiling, a loss for runs under ~15 minutes.
    "fast": dict(
        backbone="cifar", width=64, projector="2048-2048-2048", projector_bias=False, concat_views=False,
        recipe="fast", loss_convention="official", mu=50.0, optimizer="lars", lr=0.3, weight_decay=1e-4,
        lars_eta=0.02, lars_clip="trust", schedule="warmup_cosine", warmup_epochs=2, final_lr_ratio=0.001,
        batch_size=256, epochs=100, compile="off",
    ),
}
