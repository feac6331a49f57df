"""The pretrained model a notebook evaluates, and where it came from, in one call:

    found = notebook_model(settings)        # VICREG_RUN, else notebook 04's run, else a tiny stand-in
    model = found.model; print(found.describe())

VICREG_RUN may name a run folder (config.json, metrics.jsonl, checkpoint.pt), a checkpoint file, or a folder
of weight parts (PREFIX.part1ofN.pt ..., as a GPU run stores its weights). Weights whose sha256 is the GPU
reference run's (tutorial.reference_runs) are described by that run's record: GPU, preset, epochs, minutes
and the command that repeats it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ..checkpoint import load_pretrained
from ..config import TrainConfig
from ..runstate import read_metrics
from .notebook_env import NotebookSettings
from .plotting import knn_by_minutes
from .reference_runs import ReferenceRun, reference_run, weights_sha256

__all__ = ["NotebookModel", "notebook_model", "knn_curve_of"]


@dataclass
class NotebookModel:
    model: nn.Module  # a VICReg model in eval mode, float32, on the CPU
    kind: str  # "reference" (the GPU reference run's weights), "run" (a run folder or checkpoint), "stand-in"
    where: str  # the run's folder or file, as the notebook shows it (relative to the checkout)
    config: dict = field(default_factory=dict)  # the run's settings ({} when only its weights are there)
    metrics: list[dict] = field(default_factory=list)  # its per-epoch records, oldest first
    reference: ReferenceRun | None = None

    @property
    def knn_curve(self) -> list[tuple[float, int, float]]:
        """(minutes, epoch, kNN top-1 %) along the run: the reference's record or the run's metrics."""
        if self.reference is not None:
            return [tuple(point) for point in self.reference.knn_curve]
        return knn_curve_of(self.metrics)

    def describe(self) -> str:
        if self.kind == "reference":
            return f"The GPU reference model ({self.where}). {self.reference.describe()}"
        arch = getattr(self.model, "arch", {})
        shape = (f"a width-{arch.get('width', '?')} ResNet-18 ({self.model.encoder.out_dim}-d representation h, "
                 f"projector {arch.get('projector', '?')}: {self.model.out_dim}-d embedding z)")
        if not self.config:
            return f"Weights from {self.where}: {shape}; the run's settings were not stored beside them."
        epochs = max((r["epoch"] for r in self.metrics), default="?")
        minutes = sum(r.get("epoch_time_s", 0.0) for r in self.metrics) / 60
        curve = self.knn_curve
        text = (f"{'A tiny stand-in' if self.kind == 'stand-in' else 'The run'} in {self.where}: "
                f"the `{self.config.get('preset')}` preset, {shape}, pretrained on `{self.config.get('device')}` "
                f"for {epochs} of {self.config.get('epochs')} epochs at batch {self.config.get('batch_size')}, "
                f"{minutes:.1f} minutes of training")
        if curve:
            text += f"; its last kNN accuracy during training: {curve[-1][2]:.1f}% (epoch {curve[-1][1]})"
        return text + "."


def knn_curve_of(records: list[dict]) -> list[tuple[float, int, float]]:
    """(minutes, epoch, kNN top-1 %) of a run's per-epoch records (read_metrics): plotting.knn_by_minutes,
    which also counts the steps of an epoch interrupted and resumed."""
    return knn_by_minutes(records)


def _shown(path: Path, settings: NotebookSettings) -> str:
    base = settings.checkout or Path.cwd()
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.name


def _has_parts(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.part*of*.pt"))


def notebook_model(settings: NotebookSettings, stand_in_seed: int = 0) -> NotebookModel:
    """The model named by VICREG_RUN, else notebook 04's run, else a tiny stand-in pretrained now (seconds) so
    that every cell runs; the stand-in's numbers mean little and its description says so."""
    run = settings.run or settings.output_dir_of("04_pretraining")
    if run.is_dir() and not (run / "checkpoint.pt").exists() and _has_parts(run):
        model, config = load_pretrained(run)
        reference = reference_run()
        if weights_sha256(run) == reference.weights_sha256:
            return NotebookModel(model, "reference", _shown(run, settings), config, reference=reference)
        return NotebookModel(model, "run", _shown(run, settings), config)
    checkpoint = run / "checkpoint.pt" if run.is_dir() else run
    kind = "run"
    if not checkpoint.exists():
        if settings.run is not None:
            raise FileNotFoundError(f"VICREG_RUN names {run}, which holds no checkpoint.pt and no weight parts "
                                    "(PREFIX.part1ofN.pt ...): name a run folder, a checkpoint file or a folder "
                                    "of weight parts")
        from ..train import pretrain  # imported here: most notebooks never pretrain a stand-in

        stand_in = TrainConfig.from_preset(
            "fast", data=settings.data, data_root=str(settings.data_root), width=4, projector="64-64-64",
            batch_size=64, epochs=2, max_train_images=512, eval_every=0, progress=False, overwrite=True,
            device=settings.device, out_dir=str(settings.output_dir / "stand_in"), seed=stand_in_seed)
        checkpoint, kind = pretrain(stand_in).checkpoint_path, "stand-in"
    model, config = load_pretrained(checkpoint)
    metrics = read_metrics(checkpoint.parent) if (checkpoint.parent / "metrics.jsonl").exists() else []
    return NotebookModel(model, kind, _shown(checkpoint.parent, settings), config, metrics)
