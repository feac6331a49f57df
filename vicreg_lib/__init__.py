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
from .diagnostics import (
    collapse_report,
    correlation_matrix,
    covariance_matrix,
    effective_rank,
    per_dim_std,
    singular_values,
)
from .distributed import gather_with_grad, init_distributed, is_main_process
from .evaluate import evaluate_checkpoint, extract_features, knn_accuracy, label_efficiency, linear_probe
from .config import PRESETS, TrainConfig
from .loss import LossTerms, VICRegLoss, covariance_loss, invariance_loss, variance_loss, vicreg_loss
from .embedding_maps import nearest_neighbors, umap_2d
from .model import VICReg, Projector, build_model, parse_projector_spec, resnet18_cifar
from .monitor import launch, pretrain_command, watch_run
from .settings import notebook_settings
from .progress import progress_bar
from .supervised import train_supervised
from .runfolder import read_config, read_metrics
from .train import PretrainResult, RunInterrupted, TrainingDiverged, pretrain, training_step

__version__ = "0.1.0"

__all__ = [
    "BatchAugment", "CIFAR10_MEAN", "CIFAR10_STD", "CheckpointError", "DataSpecError", "PAPER_ABLATION",
    "PretrainResult", "Projector", "RECIPES", "TrainConfig", "TrainingDiverged", "VICReg", "VICRegLoss",
    "collapse_report", "correlation_matrix", "covariance_loss", "covariance_matrix", "default_data_spec",
    "effective_rank", "evaluate_checkpoint", "extract_features", "gather_with_grad", "init_distributed",
    "invariance_loss", "is_main_process", "knn_accuracy", "label_efficiency", "linear_probe",
    "load_checkpoint", "load_dataset", "load_pretrained", "parse_projector_spec", "per_dim_std", "pretrain",
    "progress_bar", "read_metrics", "resnet18_cifar", "run_ablation", "save_checkpoint", "singular_values",
    "two_views_transform", "variance_loss", "vicreg_loss",
    "random_subset", "LossTerms", "PRESETS", "build_model", "read_config", "RunInterrupted", "training_step", "launch", "plot_metrics", "pretrain_command", "watch_run", "show_image_grid", "to_display", "train_supervised",
    "nearest_neighbors", "plot_embedding_scatter", "plot_retrieval", "plot_thumbnails", "umap_2d",
]
