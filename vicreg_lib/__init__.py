"""vicreg_lib: VICReg (Bardes, Ponce & LeCun, ICLR 2022) on CIFAR-10, small enough to read.

The public names of every module (see docs/design.md). Optional packages (umap-learn,
matplotlib, ipywidgets) are imported inside the functions that need them, so importing
the package needs only torch, torchvision, numpy and tqdm.
"""

from __future__ import annotations

from .ablation import PAPER_ABLATION, run_ablation
from .augment import RECIPES, BatchAugment, two_views_transform
from .checkpoint import CheckpointError, load_checkpoint, load_pretrained, save_checkpoint
from .data import CIFAR10_MEAN, CIFAR10_STD, DataSpecError, default_data_spec, load_dataset, random_subset
from .eval.diagnostics import (
    collapse_report,
    correlation_matrix,
    covariance_matrix,
    effective_rank,
    per_dim_std,
    singular_values,
)
from .hardware import gather_with_grad, init_distributed, is_main_process
from .eval.features import extract_features, knn_accuracy
from .eval.probes import label_efficiency, linear_probe
from .eval.report import EvalConfig, evaluate_checkpoint
from .config import PRESETS, TrainConfig
from .loss import LossTerms, VICRegLoss, covariance_loss, invariance_loss, variance_loss, vicreg_loss
from .tutorial.embedding_maps import nearest_neighbors, umap_2d
from .model import VICReg, Projector, build_model, parse_projector_spec, resnet18_cifar
from .tutorial.monitor import launch, pretrain_command, watch_run
from .tutorial.notebook_env import notebook_settings
from .eval.supervised import train_supervised
from .runstate import RunInterrupted, read_config, read_metrics, request_stop
from .train import PretrainResult, TrainingDiverged, pretrain, training_step

__version__ = "0.1.0"

__all__ = [
    "BatchAugment", "build_model", "CheckpointError", "CIFAR10_MEAN", "CIFAR10_STD", "collapse_report",
    "correlation_matrix", "covariance_loss", "covariance_matrix", "DataSpecError", "default_data_spec",
    "effective_rank", "EvalConfig", "evaluate_checkpoint", "extract_features", "gather_with_grad", "init_distributed",
    "invariance_loss", "is_main_process", "knn_accuracy", "label_efficiency", "launch", "linear_probe",
    "load_checkpoint", "load_dataset", "load_pretrained", "LossTerms", "nearest_neighbors",
    "notebook_settings", "PAPER_ABLATION", "parse_projector_spec", "per_dim_std", "PRESETS", "pretrain",
    "pretrain_command", "PretrainResult", "Projector", "random_subset", "read_config",
    "read_metrics", "RECIPES", "request_stop", "resnet18_cifar", "run_ablation", "RunInterrupted", "save_checkpoint",
    "singular_values", "train_supervised", "TrainConfig", "training_step", "TrainingDiverged",
    "two_views_transform", "umap_2d", "variance_loss", "VICReg", "vicreg_loss", "VICRegLoss", "watch_run",
]
