"""VICReg pretraining: the loop, as a short story of named steps (stopping, resuming, divergence: docs/design.md).

    result = pretrain(TrainConfig.from_preset("fast", data="synthetic", width=8, epochs=5))

One step: two augmented views -> encoder + projector -> z1, z2: (n, d) -> loss = lam * s(Z, Z') + mu * v + nu * c
(loss.py) -> one optimizer step. Views come from the ``batched`` pipeline (images on the device, no host copies)
or the blog's ``dataloader`` (per-image ``two_views_transform`` in worker processes).
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .augment import BatchAugment, TransformedImages, get_recipe, two_views_transform
from .checkpoint import (CheckpointError, capture_rng_state, check_resumable, load_checkpoint, restore_rng_state,
                         save_checkpoint)
from .config import TrainConfig
from .data import fingerprint, load_dataset, random_subset
from .eval.diagnostics import HELDOUT_BATCH_SIZE, effective_rank, heldout_batch, per_dim_std
from .eval.features import extract_features, knn_accuracy
from .hardware import DistInfo, gather_with_grad, init_distributed, precision_for
from .loss import LossTerms, VICRegLoss
from .model import VICReg, build_model
from .optim import build_optimizer, current_lr, lr_at_step, plain_state_dict, set_lr
from .runstate import (CHECKPOINT_NAME, STOP_NAME, RunInterrupted, RunLock, StopSignals, append_metrics,
                       check_out_dir, clear_run, read_metrics, rewrite_metrics, write_config)

HUGE_LOSS = 1e6  # a mean loss above this is almost surely a bad setting: warn


def training_step(model: nn.Module, loss_fn: VICRegLoss, optimizer: torch.optim.Optimizer, view1: torch.Tensor,
                  view2: torch.Tensor, lr: float, use_amp: bool = False) -> LossTerms:
    """One VICReg step on view pairs view1, view2: (b, 3, H, W); returns the loss terms. Under DDP the
    loss sees every process's embeddings, so variance and covariance span the global batch (as officially)."""
    set_lr(optimizer, lr)
    with torch.autocast(device_type=view1.device.type, dtype=torch.bfloat16, enabled=use_amp):
        z1, z2 = model(view1, view2)  # (b, d) each
    z1, z2 = gather_with_grad(z1), gather_with_grad(z2)  # (batch_size, d): the global batch
    loss = loss_fn(z1, z2)  # float32 terms
    optimizer.zero_grad(set_to_none=True)
    loss.total.backward()
    optimizer.step()
    return loss


class GraphedStep:
    """``terms = GraphedStep(model, loss_fn, optimizer, use_amp)(view1, view2, lr)``: the step in a CUDA graph
    after WARMUP_STEPS eager ones; lr goes into a 0-d tensor LARS reads; terms live in the graph's buffers until
    the next call. If capture fails, ``why_eager`` says why."""

    WARMUP_STEPS = 3

    def __init__(self, model: nn.Module, loss_fn: VICRegLoss, optimizer: torch.optim.Optimizer, use_amp: bool) -> None:
        self.model, self.loss_fn, self.optimizer, self.use_amp = model, loss_fn, optimizer, use_amp
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.why_eager: str | None = None
        self.lr = torch.zeros((), device=next(model.parameters()).device)

    @property
    def graphed(self) -> bool:
        return self.graph is not None

    def __call__(self, view1: torch.Tensor, view2: torch.Tensor, lr: float) -> LossTerms:
        self.calls += 1
        if self.graph is not None:
            self.static_views[0].copy_(view1)
            self.static_views[1].copy_(view2)
            self.lr.fill_(lr)
            self.graph.replay()
            return self.static_terms
        if self.why_eager is not None or self.calls <= self.WARMUP_STEPS:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                terms = training_step(self.model, self.loss_fn, self.optimizer, view1, view2, lr, self.use_amp)
            torch.cuda.current_stream().wait_stream(side)
            return terms
        return self._capture(view1, view2, lr)

    def _capture(self, view1: torch.Tensor, view2: torch.Tensor, lr: float) -> LossTerms:
        self.static_views = (view1.clone(), view2.clone())
        self.lr.fill_(lr)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                # autocast's weight cache would hold casts made during capture: off inside a graph
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_amp, cache_enabled=False):
                    z1, z2 = self.model(*self.static_views)  # (b, d) each
                self.static_terms = self.loss_fn(z1, z2)
                self.static_terms.total.backward()
                self.optimizer.step()
        except Exception as error:  # noqa: BLE001 - any capture failure falls back to eager steps
            self.why_eager = f"CUDA graph capture failed ({type(error).__name__}: {str(error).splitlines()[0]})"
            warnings.warn(f"{self.why_eager}; training continues without the graph", RuntimeWarning, stacklevel=3)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.zero_grad(set_to_none=True)
            return training_step(self.model, self.loss_fn, self.optimizer, view1, view2, lr, self.use_amp)
        self.graph = graph
        graph.replay()  # capture only records: this runs the step
        return self.static_terms


def graph_refusal(config: TrainConfig, device: torch.device, distributed: bool) -> str | None:
    """Why the run's step is not captured in a CUDA graph (None: it is)."""
    if config.cuda_graph == "off":
        return "cuda_graph is off"
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device" if config.cuda_graph == "on" else "not on CUDA"
    if distributed:
        return "not under DDP (its gradient hooks talk to other processes)"
    if config.optimizer != "lars":
        return "the graphed step needs LARS (it reads a tensor learning rate)"
    if config.pipeline != "batched":
        return "the dataloader pipeline feeds the step from the host"
    return None


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite; nothing non-finite was saved."""


@dataclass
class PretrainResult:
    """The trained model (on the training device, eval mode), one record per epoch, the run's files."""

    model: VICReg
    history: list[dict[str, Any]]
    out_dir: Path
    checkpoint_path: Path
    config: TrainConfig


@dataclass
class Run:
    """Everything the loop works with, and where the run stands (epoch, step, this epoch's loss sums)."""

    config: TrainConfig
    dist: DistInfo
    out_dir: Path
    train_images: torch.Tensor  # uint8 (N, 3, H, W), on the device for the batched pipeline
    train_labels: torch.Tensor
    eval_images: torch.Tensor | None
    eval_labels: torch.Tensor | None
    num_classes: int
    model: VICReg
    train_model: nn.Module  # model, or its DDP / compiled wrapper
    optimizer: torch.optim.Optimizer
    loss_fn: VICRegLoss
    augment: BatchAugment
    perm_generator: torch.Generator  # the same on every rank
    augment_generator: torch.Generator  # one per rank
    use_amp: bool
    channels_last: bool
    steps_per_epoch: int
    data_fingerprint: str  # of the training images and labels: a resume on other data is refused
    graphed_step: GraphedStep | None = None  # the step in a CUDA graph (None: training_step, eagerly)
    epoch: int = 0  # the epoch in progress, or the last completed one when epoch_step == 0
    step: int = 0  # optimizer steps taken
    epoch_step: int = 0  # steps taken in the epoch in progress
    epoch_step_start: int = 0  # epoch_step when this process began the epoch (> 0 after a mid-epoch resume)
    epoch_sums: torch.Tensor | None = None  # (4,) total, invariance, variance, covariance sums
    epoch_perm_state: torch.Tensor | None = None  # perm_generator before this epoch's permutation
    history: list[dict[str, Any]] = field(default_factory=list)
    warned_huge_loss: bool = False
    last_epoch: int = 0  # the epoch this invocation ends with, fixed when it starts (plan_last_epoch)
    saved_step: int | None = None  # run.step when checkpoint.pt was last written or read

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME


def plan_last_epoch(run: Run) -> int:
    """The last epoch of this call (max_steps may end it early); fixed before training: it sets the last save."""
    if run.config.max_steps is None:
        return run.config.epochs
    completed = run.epoch - (run.epoch_step > 0)  # epochs finished before the one in progress
    remaining = max(run.config.max_steps - run.step, 0) + run.epoch_step  # counted from that epoch's start
    return min(run.config.epochs, completed + math.ceil(remaining / run.steps_per_epoch))


def _load_data(config: TrainConfig, device: torch.device):
    train_images, train_labels, classes = load_dataset(config.data, "train", config.data_root)
    train_images, train_labels = random_subset(train_images, train_labels, config.max_train_images, config.seed)
    if train_images.shape[0] < config.batch_size:
        raise ValueError(f"only {train_images.shape[0]} training images for batch_size {config.batch_size}; "
                         f"lower batch_size or use more images")
    if config.pipeline == "batched":
        train_images = train_images.to(device)
    eval_images = eval_labels = None
    if config.eval_every:
        eval_images, eval_labels, _ = load_dataset(config.data, config.eval_split, config.data_root)
        if eval_images.shape[0] == 0:  # found now, not at the first evaluation
            raise ValueError(f"the {config.eval_split} split of {config.data!r} holds no images to measure kNN "
                             f"accuracy on; add some, or pass --eval-every 0 (eval_every=0)")
        eval_images = eval_images.to(device)
    return train_images, train_labels, eval_images, eval_labels, len(classes)


def prepare_run(config: TrainConfig, dist: DistInfo, out_dir: Path) -> Run:
    """Load the data, build the network, its optimizer, the loss and the seeded generators."""
    device = dist.device
    train_images, train_labels, eval_images, eval_labels, num_classes = _load_data(config, device)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    model = build_model(**config.arch()).to(device)
    use_amp, channels_last = precision_for(device, config.amp, config.channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if dist.enabled and device.type == "cuda":
        # as officially: BatchNorm statistics over the global batch (CUDA-only: CPU processes keep their own)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, config.optimizer, config.lr, config.weight_decay,
                                eta=config.lars_eta, clip=config.lars_clip)
    train_model: nn.Module = model
    if dist.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile == "on" or (config.compile == "auto" and device.type == "cuda"):
        train_model = torch.compile(train_model)
    refusal = graph_refusal(config, device, dist.enabled)
    if config.cuda_graph == "on" and refusal is not None:
        raise ValueError(f"cuda_graph is on but {refusal}; use cuda_graph auto or off")
    loss_fn = VICRegLoss(config.lam, config.mu, config.nu, convention=config.loss_convention)
    return Run(
        config=config, dist=dist, out_dir=out_dir, train_images=train_images, train_labels=train_labels,
        eval_images=eval_images, eval_labels=eval_labels, num_classes=num_classes, model=model,
        train_model=train_model, optimizer=optimizer, loss_fn=loss_fn,
        graphed_step=GraphedStep(train_model, loss_fn, optimizer, use_amp) if refusal is None else None,
        augment=BatchAugment(get_recipe(config.recipe, config.crop_interpolation)).to(device),
        perm_generator=torch.Generator().manual_seed(config.seed),
        augment_generator=torch.Generator(device=device).manual_seed(config.seed + 1 + dist.rank),
        use_amp=use_amp, channels_last=channels_last,
        steps_per_epoch=train_images.shape[0] // config.batch_size,
        data_fingerprint=fingerprint(train_images, train_labels),
    )


def restore(run: Run) -> None:
    """Continue from out_dir/checkpoint.pt: weights, optimizer, random states, position, metrics."""
    path = run.checkpoint_path
    state = load_checkpoint(path, map_location="cpu")
    check_resumable(state, path, run.config, run.data_fingerprint, run.device.type)
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.epoch, run.step, run.epoch_step = state["epoch"], state["step"], state.get("epoch_step", 0)
    run.saved_step = run.step
    if run.epoch_step:
        run.epoch_sums = state["epoch_sums"].to(run.device)
    restore_rng_state(rng := state["rng"])
    run.perm_generator.set_state(rng["permutation"])
    if len(rng["augment"]) == run.dist.world_size:
        run.augment_generator.set_state(rng["augment"][run.dist.rank])
    if run.dist.is_main:
        run.history = [r for r in read_metrics(run.out_dir) if r.get("epoch", 0) <= run.epoch - (run.epoch_step > 0)]
        rewrite_metrics(run.out_dir, run.history)  # drop records after the checkpoint: no duplicates


def _rank_batches(perm: torch.Tensor, batch_size: int, dist_info: DistInfo) -> list[torch.Tensor]:
    """N // batch_size index tensors (full global batches of perm: (N,)), this rank's slice of each."""
    local = batch_size // dist_info.world_size
    start = dist_info.rank * local
    return [perm[i * batch_size + start: i * batch_size + start + local] for i in range(perm.shape[0] // batch_size)]


def _views(run: Run, batches: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if run.config.pipeline == "batched":
        yield from (run.augment(run.train_images[index], generator=run.augment_generator) for index in batches)
        return
    if not batches:
        return
    loader = torch.utils.data.DataLoader(
        TransformedImages(run.train_images,
                          two_views_transform(get_recipe(run.config.recipe, run.config.crop_interpolation))),
        batch_size=batches[0].shape[0], sampler=torch.cat(batches).tolist(), num_workers=run.config.num_workers,
        pin_memory=run.device.type == "cuda", drop_last=True, generator=run.perm_generator)
    for view1, view2 in loader:
        yield view1.to(run.device, non_blocking=True), view2.to(run.device, non_blocking=True)


def _diverged(run: Run, what: str) -> TrainingDiverged:
    saved = (f"the last checkpoint ({str(run.checkpoint_path)!r}) holds finite weights" if run.checkpoint_path.exists()
             else "no checkpoint was saved")
    return TrainingDiverged(
        f"{what} in epoch {run.epoch} by optimizer step {run.step} "
        f"(lr {current_lr(run.optimizer):.3g}); lower the learning rate (--lr) or check lam/mu/nu "
        f"(now {run.config.lam}/{run.config.mu}/{run.config.nu}); {saved}")


def _check_in(run: Run, stop: StopSignals, bar) -> None:
    """Every log_every steps: stop on a non-finite loss, warn on a huge one, look for a STOP file (as Ctrl-C;
    under DDP every process must stop after the same step: one all-reduce)."""
    means = (run.epoch_sums / run.epoch_step).tolist()  # waits for the device: only every log_every steps
    if not all(math.isfinite(v) for v in means):
        raise _diverged(run, f"the loss became {means[0]}")
    if means[0] > HUGE_LOSS and not run.warned_huge_loss:
        run.warned_huge_loss = True
        warnings.warn(f"the loss is {means[0]:.3g} in epoch {run.epoch}: far above its usual range (about 1-100); "
                      f"check lam/mu/nu and the learning rate", RuntimeWarning, stacklevel=2)
    bar.set_postfix(epoch=run.epoch, loss=f"{means[0]:.3f}", inv=f"{means[1]:.4f}", var=f"{means[2]:.4f}",
                    cov=f"{means[3]:.4f}")
    found = stop.file_requested()
    if run.dist.enabled:
        flag = torch.tensor([float(found)], device=run.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        found = bool(flag.item())
    if found and not stop.requested:
        stop.request(signal.SIGINT, f"a stop was requested ({STOP_NAME} in the run folder)")


def train_one_epoch(run: Run, stop: StopSignals, bar) -> bool:
    """Train the epoch in progress from run.epoch_step; on a stop, True when steps were left untrained."""
    config = run.config
    run.epoch_step_start = run.epoch_step
    run.perm_generator.set_state(run.epoch_perm_state)
    perm = torch.randperm(run.train_images.shape[0], generator=run.perm_generator)  # the same on every rank
    if config.pipeline == "batched":
        perm = perm.to(run.device)  # one copy per epoch, then batches index on the device
    batches = _rank_batches(perm, config.batch_size, run.dist)[run.epoch_step:]
    if config.max_steps is not None:
        batches = batches[: max(config.max_steps - run.step, 0)]
    if run.epoch_sums is None:
        run.epoch_sums = torch.zeros(4, device=run.device)
    schedule = dict(schedule=config.schedule, peak_lr=config.lr, total_steps=config.epochs * run.steps_per_epoch,
                    warmup_steps=config.warmup_epochs * run.steps_per_epoch, final_ratio=config.final_lr_ratio)
    for index, (view1, view2) in enumerate(_views(run, batches)):
        if run.channels_last:
            view1, view2 = (v.contiguous(memory_format=torch.channels_last) for v in (view1, view2))
        lr = lr_at_step(run.step, **schedule)
        loss = (run.graphed_step(view1, view2, lr) if run.graphed_step is not None else
                training_step(run.train_model, run.loss_fn, run.optimizer, view1, view2, lr, run.use_amp))
        run.step += 1
        run.epoch_step += 1
        run.epoch_sums += torch.stack([loss.total, loss.invariance, loss.variance, loss.covariance]).detach()
        bar.update(1)
        if run.epoch_step % config.log_every == 0 or index == len(batches) - 1:
            _check_in(run, stop, bar)
        if stop.requested:
            return index < len(batches) - 1
    return False


@torch.no_grad()
def _heldout_spread(run: Run) -> dict[str, float]:
    images = run.eval_images if run.eval_images is not None else run.train_images
    batch = heldout_batch(images, n=min(HELDOUT_BATCH_SIZE, images.shape[0]))
    z = extract_features(run.model, batch, device=run.device, which="embedding")  # (512, d), eval mode
    if not bool(torch.isfinite(z).all()):  # finite weights can still overflow to inf activations
        raise _diverged(run, "the embeddings became non-finite")
    return {"std": per_dim_std(z).mean().item(), "effective_rank": float(effective_rank(z))}


def epoch_record(run: Run, train_time: float) -> dict[str, Any]:
    """The epoch's line of metrics.jsonl: loss terms, embedding spread, learning rate, speed."""
    totals = (run.epoch_sums / max(run.epoch_step, 1)).tolist()
    record = {"epoch": run.epoch, "step": run.step, "loss": totals[0], "invariance": totals[1],
              "variance": totals[2], "covariance": totals[3], **_heldout_spread(run),
              "lr": current_lr(run.optimizer), "train_time_s": train_time,
              "images_per_s": (run.epoch_step - run.epoch_step_start) * run.config.batch_size / train_time}
    if run.epoch_step < run.steps_per_epoch:
        record["steps"] = run.epoch_step  # a max_steps run stopped inside this epoch
    if run.epoch_step_start:
        record["resumed_at_step"] = run.epoch_step_start  # the speeds count only the steps after it
    return record


def evaluate_knn(run: Run) -> dict[str, float]:
    """Weighted kNN top-1 (%) of the representations h, train -> eval split, at k = knn_k and at k = 20."""
    device, k = run.device, run.config.knn_k
    train_features = extract_features(run.model.encoder, run.train_images, device=device).to(device)
    eval_features = extract_features(run.model.encoder, run.eval_images, device=device).to(device)
    result = knn_accuracy(train_features, run.train_labels.to(device), eval_features,  # one matmul per test batch
                          run.eval_labels.to(device), k=(k, 20), num_classes=run.num_classes)
    return {"knn_top1": result[f"knn_top1@{k}"], "knn_k": k, "knn_top1@20": result["knn_top1@20"]}


def save_state(run: Run) -> None:
    """Write what a resume needs to out_dir/checkpoint.pt (main process; atomic). Non-finite: TrainingDiverged."""
    augment_states: list[Any] = [run.augment_generator.get_state()]  # every rank's, in rank order
    if run.dist.enabled:  # a collective: every rank takes part
        augment_states = [None] * run.dist.world_size
        torch.distributed.all_gather_object(augment_states, run.augment_generator.get_state())
    if not run.dist.is_main:
        run.saved_step = run.step  # every rank must agree on whether a final save is due
        return
    mid_epoch = run.epoch_step > 0
    rng = {**capture_rng_state(), "augment": augment_states,
           "permutation": run.epoch_perm_state if mid_epoch else run.perm_generator.get_state()}
    state = {"arch": run.config.arch(), "config": run.config.to_dict(), "model": run.model.state_dict(),
             "optimizer": plain_state_dict(run.optimizer), "epoch": run.epoch, "step": run.step,
             "epoch_step": run.epoch_step, "device_type": run.device.type, "rng": rng,
             "data_fingerprint": run.data_fingerprint}
    if mid_epoch:
        state["epoch_sums"] = run.epoch_sums
    try:
        save_checkpoint(state, run.checkpoint_path)
        run.saved_step = run.step
    except CheckpointError as error:
        raise TrainingDiverged(f"{error}; lower the learning rate (--lr) or check lam/mu/nu") from None
    except OSError as error:
        kept = "the previous checkpoint is intact" if run.checkpoint_path.exists() else "no checkpoint was written"
        message = (f"could not write {str(run.checkpoint_path)!r} ({error.strerror or error}); {kept}. "
                   f"Free some disk space and resume")
        raise (OSError(error.errno, message) if error.errno else OSError(message)) from error


def _stopped(run: Run, stop: StopSignals) -> RunInterrupted:
    where = f"after step {run.epoch_step} of epoch {run.epoch}" if run.epoch_step else f"after epoch {run.epoch}"
    return RunInterrupted(f"{stop.reason}: saved the run {where} to {str(run.checkpoint_path)!r}; continue it with "
                          f"--resume (resume=True) and the same settings", stop.signum)


def _start(config: TrainConfig) -> tuple[TrainConfig, DistInfo, Path]:
    config = config.resolved()
    dist = init_distributed(config.device)
    if config.batch_size % dist.world_size:
        raise ValueError(f"batch_size {config.batch_size} is the global batch and must divide evenly over "
                         f"{dist.world_size} processes; use a multiple of {dist.world_size}")
    out_dir = check_out_dir(config.out_dir, config.resume, config.overwrite) if dist.is_main else Path(config.out_dir)
    return config, dist, out_dir


def _begin(run: Run) -> None:
    if run.config.resume:
        restore(run)
    elif run.dist.is_main:
        clear_run(run.out_dir)
    # restore() left the generator where this epoch's permutation starts (mid-epoch) or at its current state
    run.epoch_perm_state = run.perm_generator.get_state()
    if not run.dist.is_main:
        return
    write_config(run.out_dir, run.config.to_dict())
    if run.config.eval_every and run.config.eval_at_start and run.epoch == 0 and not run.history:
        run.history.append({"epoch": 0, "step": 0, **evaluate_knn(run)})
        append_metrics(run.out_dir, run.history[-1])


def _finish_epoch(run: Run, train_time: float, wall_start: float) -> None:
    """Check the weights, record, save (before evaluating, so an error there loses nothing), evaluate, log."""
    config, is_last = run.config, run.epoch == run.last_epoch
    tensors = [t for t in run.model.state_dict().values() if t.is_floating_point()]
    if not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):  # one device sync
        raise _diverged(run, "the weights became non-finite")
    record = epoch_record(run, train_time)
    steps = run.epoch_step - run.epoch_step_start  # the steps this process took (and timed)
    run.epoch_step, run.epoch_sums = 0, None
    run.epoch_perm_state = run.perm_generator.get_state()
    saved = is_last or bool(config.checkpoint_every and run.epoch % config.checkpoint_every == 0)
    if saved:
        save_state(run)
    if run.dist.is_main and config.eval_every and (run.epoch % config.eval_every == 0 or is_last):
        try:
            record.update(evaluate_knn(run))
        except BaseException:
            if not saved:
                save_state(run)
            raise
    record["epoch_time_s"] = time.perf_counter() - wall_start
    record["wall_images_per_s"] = steps * config.batch_size / record["epoch_time_s"]
    if run.dist.is_main:
        run.history.append(record)
        append_metrics(run.out_dir, record)


def pretrain(config: TrainConfig) -> PretrainResult:
    """``result = pretrain(config)``: the model and per-epoch history. Ctrl-C, SIGTERM or ``request_stop`` save and
    raise RunInterrupted (continue with ``resume=True``); a NaN/inf loss or weight raises TrainingDiverged."""
    config, dist, out_dir = _start(config)
    lock = RunLock(out_dir) if dist.is_main else contextlib.nullcontext()
    with lock, StopSignals(out_dir / STOP_NAME if dist.is_main else None) as stop:
        run = prepare_run(config, dist, out_dir)
        _begin(run)
        run.last_epoch = plan_last_epoch(run)
        first = run.epoch + 1 if run.epoch_step == 0 else run.epoch
        bar = tqdm(total=max((run.last_epoch - first + 1) * run.steps_per_epoch - run.epoch_step, 0),
                   desc="pretrain", disable=not (config.progress and dist.is_main))
        run.model.train()
        stop.armed = True
        try:
            for epoch in range(first, run.last_epoch + 1):
                wall_start = time.perf_counter()
                run.epoch = epoch
                if not train_one_epoch(run, stop, bar):  # not stopped mid-epoch
                    _finish_epoch(run, time.perf_counter() - wall_start, wall_start)
                    run.model.train()
                if stop.requested:
                    save_state(run)
                    raise _stopped(run, stop)
            if run.saved_step != run.step:  # however the loop ended, its end is on disk
                save_state(run)
        finally:
            bar.close()
    run.model.eval()
    return PretrainResult(model=run.model, history=run.history, out_dir=out_dir,
                          checkpoint_path=run.checkpoint_path, config=config)
