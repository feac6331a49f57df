"""VICReg pretraining: one config dataclass and one loop.

    result = pretrain(TrainConfig(data="synthetic", width=16, epochs=5))
    result.history[-1]["knn_top1"]

Each step: two augmented views of a batch -> encoder + projector -> z1, z2: (n, d)
-> loss = lam * s(Z, Z') + mu * v + nu * c (loss.py) -> one optimizer step.

Two input pipelines give the views:

- ``batched`` (default, fast): the training images live on the training device as one
  uint8 tensor; every step indexes a batch of a random permutation and ``BatchAugment``
  makes both views there. No DataLoader, no worker processes, no host-to-device copies.
- ``dataloader``: the blog post's way, a torch DataLoader applying the per-image
  torchvision transform ``two_views_transform`` in ``num_workers`` processes.

All randomness comes from seeded generators whose states go into the checkpoint, so a
resumed run continues exactly where the interrupted one stopped. A run writes
``config.json``, ``metrics.jsonl`` (one line per epoch) and ``checkpoint.pt`` into
``out_dir`` (see docs/design.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from .augment import BatchAugment, two_views_transform
from .checkpoint import (
    CheckpointError,
    atomic_write,
    capture_rng_state,
    cpu_copy,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .data import default_data_spec, load_dataset, random_subset
from .diagnostics import effective_rank, per_dim_std
from .distributed import DistInfo, gather_with_grad, init_distributed
from .evaluate import extract_features, knn_accuracy
from .loss import vicreg_loss
from .model import VICReg, Projector, parse_projector_spec, resnet18_cifar
from .optim import OPTIMIZERS, build_optimizer, default_lr, default_weight_decay, lr_at_step, set_lr
from .progress import progress_bar

RECIPE_NAMES = ("blog", "paper")
PIPELINES = ("batched", "dataloader")
AMP_MODES = ("auto", "bf16", "off")
CHANNELS_LAST_MODES = ("auto", "on", "off")
SPLITS = ("train", "test")
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.json"


def _option(default: Any, help: str, choices: tuple | None = None) -> Any:
    """A dataclass field whose help text (and choices) the command line shows."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    """Every setting of a pretraining run; each has a default and a help text (shown by the CLI)."""

    # data
    data: str | None = _option(None, "data spec: cifar10, cifar100, npz:PATH, folder:PATH or synthetic "
                                     "(default: $VICREG_DATA, else cifar10)")
    data_root: str | None = _option(None, "where torchvision downloads go (default: $VICREG_DATA_ROOT, else data)")
    eval_split: str = _option("test", "split whose kNN accuracy is reported", SPLITS)
    max_train_images: int | None = _option(None, "train on a fixed random subset of this many images "
                                                 "(default: all; small values make CPU runs quick)")
    # model
    width: int = _option(64, "ResNet-18 width (64 = standard 512-d ResNet-18; 16 or 8 for CPU runs)")
    projector: str = _option("2048-2048-2048", "projector layer widths, as the official --mlp flag")
    # optimisation
    batch_size: int = _option(256, "global batch size (split over processes when distributed)")
    epochs: int = _option(100, "number of passes over the training images")
    optimizer: str = _option("adam", "adam (the blog post) or lars (the official code)", OPTIMIZERS)
    lr: float | None = _option(None, "learning rate (default: adam 2e-4; lars 0.2 * batch_size / 256)")
    weight_decay: float | None = _option(None, "weight decay (default: 1e-6)")
    warmup_epochs: int = _option(10, "lars only: linear warmup epochs before the cosine decay")
    lam: float = _option(25.0, "invariance coefficient lambda")
    mu: float = _option(25.0, "variance coefficient mu")
    nu: float = _option(1.0, "covariance coefficient nu")
    # input pipeline
    recipe: str = _option("paper", "augmentation recipe", RECIPE_NAMES)
    pipeline: str = _option("batched", "batched: augment whole batches on the device (fast); "
                                       "dataloader: per-image torchvision transforms in workers", PIPELINES)
    num_workers: int = _option(2, "dataloader pipeline only: worker processes")
    seed: int = _option(0, "random seed of the model, the batches and the augmentations")
    # hardware
    device: str = _option("auto", "auto, cpu, cuda or cuda:N")
    amp: str = _option("auto", "mixed precision: auto = bf16 on CUDA, off on CPU", AMP_MODES)
    channels_last: str = _option("auto", "channels-last memory format: auto = on for CUDA", CHANNELS_LAST_MODES)
    compile: bool = _option(False, "torch.compile the model (CUDA; the first steps are slow)")
    # bookkeeping
    out_dir: str = _option("runs/vicreg", "folder for config.json, metrics.jsonl and checkpoint.pt")
    checkpoint_every: int = _option(10, "save a checkpoint every N epochs (and always at the end); 0: end only")
    eval_every: int = _option(10, "kNN accuracy every N epochs and at the end; 0 disables evaluation")
    eval_at_start: bool = _option(True, "also evaluate the random initialisation (an epoch-0 record)")
    knn_k: int = _option(20, "neighbours of the kNN classifier")
    max_steps: int | None = _option(None, "stop after this many optimizer steps in total (for speed tests)")
    log_every: int = _option(10, "refresh the progress bar and check the loss is finite every N steps")
    resume: bool = _option(False, "continue the run in out_dir from its checkpoint.pt")
    overwrite: bool = _option(False, "start afresh even if out_dir already holds a checkpoint")
    progress: bool = _option(True, "show a progress bar")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting and what to use instead."""
        for name in ("width", "batch_size", "epochs", "knn_k", "log_every"):
            _check_int(self, name, minimum=2 if name == "batch_size" else 1)
        for name in ("warmup_epochs", "num_workers", "checkpoint_every", "eval_every", "seed"):
            _check_int(self, name, minimum=0)
        for name in ("max_train_images", "max_steps"):
            if getattr(self, name) is not None:
                _check_int(self, name, minimum=1)
        for name, choices in (("optimizer", OPTIMIZERS), ("recipe", RECIPE_NAMES), ("pipeline", PIPELINES),
                              ("amp", AMP_MODES), ("channels_last", CHANNELS_LAST_MODES), ("eval_split", SPLITS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}: use one of {', '.join(choices)}")
        for name in ("lam", "mu", "nu"):
            _check_number(self, name, minimum=0.0)
        if self.lr is not None:
            _check_number(self, "lr", minimum=0.0)
            if self.lr == 0:
                raise ValueError("lr must be > 0, got 0; leave it unset for the default")
        if self.weight_decay is not None:
            _check_number(self, "weight_decay", minimum=0.0)
        if not isinstance(self.device, str) or not _DEVICE_PATTERN.match(self.device):
            raise ValueError(f"unknown device {self.device!r}: use auto, cpu, cuda or cuda:N")
        widths = parse_projector_spec(self.projector)  # ValueError for a malformed spec
        if len(set(widths[:-1])) > 1:
            raise ValueError(f"projector {self.projector!r} has different hidden widths {widths[:-1]}; "
                             f"use one hidden width, e.g. '2048-2048-2048'")
        for name in ("compile", "eval_at_start", "resume", "overwrite", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("data", "data_root"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string or None, got {getattr(self, name)!r}")

    def resolved(self) -> TrainConfig:
        """A copy with the defaults that depend on the environment or other fields filled in."""
        return dataclasses.replace(
            self,
            data=self.data or default_data_spec(),
            lr=self.lr if self.lr is not None else default_lr(self.optimizer, self.batch_size),
            weight_decay=self.weight_decay if self.weight_decay is not None else default_weight_decay(self.optimizer),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_int(config: TrainConfig, name: str, minimum: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_number(config: TrainConfig, name: str, minimum: float) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")


# Settings a resumed run may change: they do not alter what the network computes.
RESUMABLE_CHANGES = frozenset({
    "epochs", "progress", "resume", "overwrite", "eval_every", "eval_at_start", "eval_split", "knn_k",
    "checkpoint_every", "max_steps", "log_every", "num_workers", "compile", "data_root", "out_dir", "device",
})


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


@dataclass
class PretrainResult:
    """What ``pretrain`` returns: the trained model (on the training device, eval mode),
    one dict per epoch, and where the run's files are."""

    model: VICReg
    history: list[dict[str, Any]]
    out_dir: Path
    checkpoint_path: Path
    config: TrainConfig


def build_model(config: TrainConfig) -> VICReg:
    """ResNet-18 (config.width) + projector (config.projector), freshly initialised."""
    encoder = resnet18_cifar(config.width)
    projector = Projector.from_spec(encoder.out_dim, config.projector)
    return VICReg(encoder, projector)


# ----------------------------------------------------------------------------- metrics.jsonl


def read_metrics(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-epoch records of a run, oldest first; a half-written last line is skipped.

    Safe to call while the run is going (live plots). An existing out_dir without
    metrics yet gives [].
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"no run folder {str(out_dir)!r}; pass the out_dir of a pretraining run")
    path = out_dir / METRICS_NAME
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    records = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if index == len(lines) - 1:  # the writer is mid-line
                break
            raise ValueError(f"{str(path)!r} line {index + 1} is not JSON; the file is damaged") from None
    return records


def _append_metrics(out_dir: Path, record: dict[str, Any]) -> None:
    with open(out_dir / METRICS_NAME, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


def _rewrite_metrics(out_dir: Path, records: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(record) + "\n" for record in records)
    atomic_write(out_dir / METRICS_NAME, lambda handle: handle.write(text), mode="w")


# ----------------------------------------------------------------------------- input pipelines


class _TwoViewDataset(torch.utils.data.Dataset):
    """images: uint8 (N, 3, H, W); item i -> (view1, view2), each float (3, H, W)."""

    def __init__(self, images: torch.Tensor, transform) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[index])


def _rank_batches(perm: torch.Tensor, batch_size: int, dist_info: DistInfo) -> list[torch.Tensor]:
    """Split a permutation (N,) into full global batches; keep this rank's slice of each.

    Returns steps = N // batch_size index tensors of batch_size / world_size entries (drop_last).
    """
    local = batch_size // dist_info.world_size
    steps = perm.shape[0] // batch_size
    start = dist_info.rank * local
    return [perm[i * batch_size + start: i * batch_size + start + local] for i in range(steps)]


def _batched_views(images: torch.Tensor, batches: list[torch.Tensor], augment: BatchAugment,
                   generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Fast path: index the on-device uint8 images and augment whole batches there."""
    for index in batches:
        yield augment(images[index], generator=generator)


def _dataloader_views(images: torch.Tensor, batches: list[torch.Tensor], config: TrainConfig,
                      generator: torch.Generator, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The blog post's path: a DataLoader applying the per-image transform in worker processes.

    Its sampler is this epoch's permutation (this rank's slices, in order), so both
    pipelines visit the same images in the same batches. Worker seeds come from ``generator``.
    """
    if not batches:
        return
    dataset = _TwoViewDataset(images, two_views_transform(config.recipe))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batches[0].shape[0],
        sampler=torch.cat(batches).tolist(),
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        generator=generator,
    )
    for view1, view2 in loader:
        yield view1.to(device, non_blocking=True), view2.to(device, non_blocking=True)


# ----------------------------------------------------------------------------- checkpoint state


def _gather_generator_states(generator: torch.Generator, dist_info: DistInfo) -> list[torch.Tensor]:
    """Every rank's augmentation-generator state (rank order), so each can be restored."""
    state = generator.get_state()
    if not dist_info.enabled:
        return [state]
    states: list[Any] = [None] * dist_info.world_size
    torch.distributed.all_gather_object(states, state)
    return states


def _training_state(model: VICReg, optimizer: torch.optim.Optimizer, config: TrainConfig, epoch: int, step: int,
                    perm_generator: torch.Generator, augment_states: list[torch.Tensor], device: torch.device,
                    schedule: dict[str, Any]) -> dict[str, Any]:
    """A CPU snapshot of everything a resumed run needs (see checkpoint.py)."""
    rng = capture_rng_state()
    rng["permutation"] = perm_generator.get_state()
    rng["augment"] = augment_states
    return cpu_copy({
        "arch": {
            "backbone": "resnet18_cifar",
            "width": config.width,
            "projector": config.projector,
            "representation_dim": model.encoder.out_dim,
            "embedding_dim": model.out_dim,
        },
        "config": config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule,
        "epoch": epoch,
        "step": step,
        "device_type": device.type,
        "rng": rng,
    })


def _check_resumable(stored: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """Refuse to resume when a setting that changes the training itself differs."""
    current = config.to_dict()
    differences = [
        f"{name}: checkpoint {stored.get(name)!r}, now {current[name]!r}"
        for name in current
        if name not in RESUMABLE_CHANGES and stored.get(name) != current[name]
    ]
    if differences:
        raise CheckpointError(
            f"cannot resume {str(path)!r} with different settings ({'; '.join(differences)}); "
            f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change. Use the run's settings "
            f"(see {CONFIG_NAME} in its folder) or a new out_dir"
        )


# ----------------------------------------------------------------------------- the loop


def _evaluate_knn(model: VICReg, train_images: torch.Tensor, train_labels: torch.Tensor,
                  eval_images: torch.Tensor, eval_labels: torch.Tensor, k: int, num_classes: int,
                  device: torch.device) -> float:
    """Weighted kNN top-1 (%) of the encoder's representations h: train images -> eval split."""
    train_features = extract_features(model.encoder, train_images, device=device)
    eval_features = extract_features(model.encoder, eval_images, device=device)
    result = knn_accuracy(train_features, train_labels, eval_features, eval_labels, k=k, num_classes=num_classes)
    return result[f"knn_top1@{k}"]


def _resolve_precision(config: TrainConfig, device: torch.device) -> tuple[bool, bool]:
    """(use bf16 autocast, use channels-last) for this device."""
    use_amp = config.amp == "bf16" or (config.amp == "auto" and device.type == "cuda")
    channels_last = config.channels_last == "on" or (config.channels_last == "auto" and device.type == "cuda")
    return use_amp, channels_last


def _slow_cpu_hint(config: TrainConfig, device: torch.device) -> str | None:
    if device.type == "cpu" and config.width >= 32:
        return (f"training a width-{config.width} ResNet-18 on the CPU will be slow; for a quick run try "
                f"--width 16 --projector 512-512-512 --max-train-images 5000")
    return None


def pretrain(config: TrainConfig) -> PretrainResult:
    """Pretrain a VICReg model as ``config`` says; returns the model and the per-epoch history.

    Ctrl-C saves the state after the last *completed* epoch to out_dir/checkpoint.pt (the
    partial epoch is discarded) and re-raises; continue with ``resume=True``. A NaN/inf
    loss raises TrainingDiverged and leaves the last checkpoint as it was.
    """
    config = config.resolved()
    dist_info = init_distributed(config.device)
    device, is_main = dist_info.device, dist_info.is_main
    if config.batch_size % dist_info.world_size:
        raise ValueError(f"batch_size {config.batch_size} is the global batch and must divide evenly over "
                         f"{dist_info.world_size} processes; use a multiple of {dist_info.world_size}")
    out_dir = Path(config.out_dir)
    checkpoint_path = out_dir / CHECKPOINT_NAME

    # ---- resume or start afresh
    resume_state = None
    if config.resume:
        if not checkpoint_path.exists():
            raise CheckpointError(f"nothing to resume: {str(checkpoint_path)!r} does not exist; "
                                  f"drop resume / --resume to start a new run there")
        resume_state = load_checkpoint(checkpoint_path, map_location="cpu")
        _check_resumable(resume_state["config"], config, checkpoint_path)
        if resume_state.get("device_type") != device.type:
            raise CheckpointError(f"{str(checkpoint_path)!r} was trained on {resume_state.get('device_type')}; "
                                  f"resume it on the same kind of device (--device "
                                  f"{resume_state.get('device_type')})")
    elif checkpoint_path.exists() and not config.overwrite:
        raise ValueError(f"{str(out_dir)!r} already holds a run ({CHECKPOINT_NAME}); continue it with "
                         f"resume=True (--resume), start afresh with overwrite=True (--overwrite), "
                         f"or choose another out_dir")

    # ---- data: the training images as one uint8 tensor on the training device
    train_images, train_labels, classes = load_dataset(config.data, "train", config.data_root)
    train_images, train_labels = random_subset(train_images, train_labels, config.max_train_images, config.seed)
    num_images = train_images.shape[0]
    steps_per_epoch = num_images // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"only {num_images} training images for batch_size {config.batch_size}; "
                         f"lower batch_size or use more images")
    if config.pipeline == "batched":
        train_images = train_images.to(device)
    eval_images = eval_labels = None
    if config.eval_every:
        eval_images, eval_labels, _ = load_dataset(config.data, config.eval_split, config.data_root)
        eval_images = eval_images.to(device)

    # ---- model, optimizer and the random generators
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    model = build_model(config).to(device)
    use_amp, channels_last = _resolve_precision(config, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if dist_info.enabled and device.type == "cuda":
        # As the official code: BatchNorm statistics over the global batch (SyncBatchNorm is
        # CUDA-only in torch; CPU processes keep per-process statistics). The state dict keys
        # stay the same, so checkpoints load into a plain model.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, config.optimizer, config.lr, config.weight_decay)
    perm_generator = torch.Generator().manual_seed(config.seed)  # the same on every rank
    augment_generator = torch.Generator(device=device).manual_seed(config.seed + 1 + dist_info.rank)
    total_steps = config.epochs * steps_per_epoch
    schedule = {"optimizer": config.optimizer, "peak_lr": config.lr, "total_steps": total_steps,
                "warmup_steps": config.warmup_epochs * steps_per_epoch}
    start_epoch, step = 0, 0
    history: list[dict[str, Any]] = []
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        start_epoch, step = resume_state["epoch"], resume_state["step"]
        rng = resume_state["rng"]
        restore_rng_state(rng)
        perm_generator.set_state(rng["permutation"])
        if len(rng["augment"]) == dist_info.world_size:
            augment_generator.set_state(rng["augment"][dist_info.rank])
        if is_main:
            history = [r for r in read_metrics(out_dir) if r.get("epoch", 0) <= start_epoch]
            _rewrite_metrics(out_dir, history)  # drop epochs after the checkpoint: no duplicates
    elif is_main:  # a new run: nothing of an earlier one may survive in out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / METRICS_NAME).unlink(missing_ok=True)
        checkpoint_path.unlink(missing_ok=True)
    if is_main:
        (out_dir / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    train_model: nn.Module = model
    if dist_info.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        train_model = torch.compile(train_model)
    augment = BatchAugment(config.recipe).to(device)

    def evaluate() -> float:
        return _evaluate_knn(model, train_images, train_labels, eval_images, eval_labels,
                             config.knn_k, len(classes), device)

    if is_main and config.eval_every and config.eval_at_start and start_epoch == 0 and not history:
        record = {"epoch": 0, "step": 0, "knn_top1": evaluate()}
        history.append(record)
        _append_metrics(out_dir, record)

    # The last completed epoch's state: saved on schedule, and on Ctrl-C.
    snapshot = _training_state(model, optimizer, config, start_epoch, step, perm_generator,
                               _gather_generator_states(augment_generator, dist_info), device, schedule)
    last_epoch = config.epochs
    if config.max_steps is not None:
        last_epoch = min(last_epoch, start_epoch + math.ceil(max(config.max_steps - step, 0) / steps_per_epoch))
    total_bar_steps = max(last_epoch - start_epoch, 0) * steps_per_epoch
    if config.max_steps is not None:
        total_bar_steps = min(total_bar_steps, max(config.max_steps - step, 0))
    bar = progress_bar(total=total_bar_steps, desc="pretrain",
                       disable=not (config.progress and is_main))
    model.train()
    epoch = start_epoch
    try:
        for epoch in range(start_epoch + 1, last_epoch + 1):
            # ---- one epoch
            epoch_start = time.perf_counter()
            perm = torch.randperm(num_images, generator=perm_generator)  # (N,), the same on every rank
            if config.pipeline == "batched":
                perm = perm.to(device)  # one copy per epoch, then batches index on the device
            batches = _rank_batches(perm, config.batch_size, dist_info)
            if config.max_steps is not None:
                batches = batches[: max(config.max_steps - step, 0)]
            if config.pipeline == "batched":
                views = _batched_views(train_images, batches, augment, augment_generator)
            else:
                views = _dataloader_views(train_images, batches, config, perm_generator, device)
            sums = torch.zeros(4, device=device)  # total, invariance, variance, covariance
            first_step, epoch_steps = step, 0
            for view1, view2 in views:
                if channels_last:
                    view1 = view1.contiguous(memory_format=torch.channels_last)
                    view2 = view2.contiguous(memory_format=torch.channels_last)
                set_lr(optimizer, lr_at_step(step, **schedule))
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                    z1, z2 = train_model(view1, view2)  # (b, d) each
                z1, z2 = gather_with_grad(z1), gather_with_grad(z2)  # (batch_size, d): the global batch
                loss = vicreg_loss(z1, z2, config.lam, config.mu, config.nu)  # float32 terms
                optimizer.zero_grad(set_to_none=True)
                loss.total.backward()
                optimizer.step()
                step += 1
                epoch_steps += 1
                sums += torch.stack([loss.total, loss.invariance, loss.variance, loss.covariance]).detach()
                bar.update(1)
                if epoch_steps % config.log_every == 0 or epoch_steps == len(batches):
                    means = (sums / epoch_steps).tolist()  # waits for the device: only every log_every steps
                    if not all(math.isfinite(v) for v in means):
                        raise TrainingDiverged(
                            f"the loss became {means[0]} in epoch {epoch}, between optimizer steps {first_step} "
                            f"and {step} (lr {optimizer.param_groups[0]['lr']:.3g}); lower the learning rate "
                            f"(--lr) or check lam/mu/nu (now {config.lam}/{config.mu}/{config.nu}). "
                            f"The last good checkpoint ({str(checkpoint_path)!r}) was left untouched")
                    bar.set_postfix(epoch=epoch, loss=f"{means[0]:.3f}", inv=f"{means[1]:.4f}",
                                    var=f"{means[2]:.4f}", cov=f"{means[3]:.4f}")
            train_time = time.perf_counter() - epoch_start

            # ---- the epoch's record: loss terms, collapse diagnostics, speed, kNN
            totals = (sums / max(epoch_steps, 1)).tolist()
            with torch.no_grad():
                z_last = z1.detach().float()  # the last global batch's embeddings (n, d)
                record = {
                    "epoch": epoch,
                    "step": step,
                    "loss": totals[0],
                    "invariance": totals[1],
                    "variance": totals[2],
                    "covariance": totals[3],
                    "std": per_dim_std(z_last).mean().item(),
                    "effective_rank": float(effective_rank(z_last)),
                    "lr": optimizer.param_groups[0]["lr"],
                    "epoch_time_s": train_time,
                    "images_per_s": epoch_steps * config.batch_size / train_time,
                }
            if epoch_steps < steps_per_epoch:
                record["steps"] = epoch_steps  # a max_steps run stopped inside this epoch
            is_last = epoch == last_epoch
            if is_main and config.eval_every and (epoch % config.eval_every == 0 or is_last):
                record["knn_top1"] = evaluate()
            if is_main:
                history.append(record)
                _append_metrics(out_dir, record)
                bar.set_postfix(epoch=epoch, loss=f"{totals[0]:.3f}", std=f"{record['std']:.3f}",
                                **({"knn": f"{record['knn_top1']:.1f}"} if "knn_top1" in record else {}))
            augment_states = _gather_generator_states(augment_generator, dist_info)
            snapshot = _training_state(model, optimizer, config, epoch, step, perm_generator, augment_states,
                                       device, schedule) if is_main else None
            if is_main and (is_last or (config.checkpoint_every and epoch % config.checkpoint_every == 0)):
                save_checkpoint(snapshot, checkpoint_path)
    except KeyboardInterrupt:
        bar.close()
        if is_main and snapshot is not None:
            save_checkpoint(snapshot, checkpoint_path)
            print(f"\ninterrupted during epoch {epoch}: saved the state after epoch {snapshot['epoch']} to "
                  f"{str(checkpoint_path)!r} (the unfinished epoch is discarded); continue with --resume "
                  f"(resume=True) and the same settings", file=sys.stderr)
        raise
    bar.close()
    model.eval()
    return PretrainResult(model=model, history=history, out_dir=out_dir, checkpoint_path=checkpoint_path,
                          config=config)
