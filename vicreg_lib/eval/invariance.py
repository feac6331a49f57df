"""What the features keep of the augmentations: linear probes that read an augmentation's parameter
(crop area, flip, grayscale, hue shift) back from the frozen features of augmented views.

    views, params = probe_views(images, generator=torch.Generator().manual_seed(0))
    scores = augmentation_probe({"VICReg": model, "random init": random_model}, train_images, test_images)
    # {"crop area": {"VICReg h": 0.6, "VICReg z": 0.2, ...}, "flip": {...}, "grayscale": {...}, "hue": {...}}

A score of 0 means the probe recovers nothing of the parameter, 1 that it recovers it exactly: R^2 for the
continuous parameters (crop area, hue shift), informedness (2 x balanced accuracy - 1) for the yes/no ones
(flip, grayscale). A feature that ignores a parameter (is invariant to it) scores about 0.
"""
from __future__ import annotations

import numpy as np
import torch

from ..augment import BatchAugment, ViewRecipe
from .features import check_images, extract_features, frozen

__all__ = ["PROBE_VIEW", "PROBED", "probe_views", "probe_parameter", "augmentation_probe", "describe_probe"]

# The `fast` recipe's crop (area 0.2-1 of the image), flip and hue range (ColorJitter's 0.1: a shift of up to a
# tenth of a turn), each drawn independently on every view. Brightness, contrast, saturation, blur and solarize
# are left out so that only the probed parameters vary; grayscale with p 0.5 balances its two classes.
PROBE_VIEW = ViewRecipe(crop_scale=(0.2, 1.0), flip_p=0.5, jitter=(0.0, 0.0, 0.0, 0.1), jitter_p=1.0, gray_p=0.5)
# parameter -> (kind, which views it is read on); a grayscale view has no hue left to read
PROBED = {"crop area": ("continuous", "all"), "flip": ("binary", "all"),
          "grayscale": ("binary", "all"), "hue": ("continuous", "colour")}


def probe_views(images: torch.Tensor, view: ViewRecipe = PROBE_VIEW, generator: torch.Generator | None = None,
                batch_size: int = 1024) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One augmented view of each uint8 image (n, 3, H, W) -> normalised float views (n, 3, H, W) and the
    parameters drawn for them: {"crop area": (n,) fraction of the image kept, "flip": (n,) bool,
    "grayscale": (n,) bool, "hue": (n,) hue shift in turns (0 where the jitter was not applied)}."""
    check_images(images)
    augment = BatchAugment((view, view))
    views, params = [], []
    for start in range(0, len(images), batch_size):
        # BatchAugment draws two views per image; the first is used, its parameters come from the same draw
        first, _, (drawn, _) = augment(images[start:start + batch_size], generator, return_params=True)
        views.append(first)
        params.append({"crop area": drawn["crop_area"], "flip": drawn["flipped"], "grayscale": drawn["gray"],
                       "hue": torch.where(drawn["jittered"], drawn["jitter_factors"][:, 3], 0.0)})
    return torch.cat(views), {key: torch.cat([p[key] for p in params]) for key in params[0]}


def probe_parameter(train_features: torch.Tensor, train_target: torch.Tensor, test_features: torch.Tensor,
                    test_target: torch.Tensor, kind: str) -> float:
    """A linear probe of one parameter: features (n, d) / (m, d), targets (n,) / (m,) -> test score.

    Features are standardised with the training rows' mean and std; ridge regression (its penalty chosen by
    leave-one-out on the training rows) predicts a continuous target, scored by R^2, or a yes/no target as
    +-1, scored by informedness 2 x balanced accuracy - 1. 0: nothing recovered (or worse, below 0), 1: all."""
    try:  # scikit-learn is an optional dependency (the notebooks' extra)
        from sklearn.linear_model import RidgeClassifierCV, RidgeCV
        from sklearn.metrics import balanced_accuracy_score, r2_score
        from sklearn.preprocessing import StandardScaler
    except ImportError as error:
        raise ImportError("probe_parameter needs scikit-learn: pip install scikit-learn") from error

    if kind not in ("continuous", "binary"):
        raise ValueError(f"kind must be 'continuous' or 'binary', got {kind!r}")
    if train_features.ndim != 2 or test_features.shape[1:] != train_features.shape[1:]:
        raise ValueError(f"features must be (n, d) and (m, d) with the same d, got {tuple(train_features.shape)} "
                         f"and {tuple(test_features.shape)}")
    if train_target.shape != (len(train_features),) or test_target.shape != (len(test_features),):
        raise ValueError(f"targets must be (n,) and (m,) for features of {len(train_features)} and "
                         f"{len(test_features)} rows, got {tuple(train_target.shape)} and {tuple(test_target.shape)}")
    scaler = StandardScaler().fit(train_features.double().numpy())
    x_train, x_test = (scaler.transform(f.double().numpy()) for f in (train_features, test_features))
    y_train, y_test = train_target.double().numpy(), test_target.double().numpy()
    alphas = np.logspace(-2, 5, 8)
    if kind == "continuous":
        return float(r2_score(y_test, RidgeCV(alphas=alphas).fit(x_train, y_train).predict(x_test)))
    if len(np.unique(y_train)) < 2 or len(np.unique(y_test)) < 2:
        raise ValueError("a yes/no target needs both values among the training and the test views; use more views")
    predicted = RidgeClassifierCV(alphas=alphas).fit(x_train, y_train).predict(x_test)
    return float(2 * balanced_accuracy_score(y_test, predicted) - 1)


def _h_and_z(model: torch.nn.Module, views: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised views (n, 3, H, W) -> h (n, D) and z = projector(h) (n, E), both in eval mode on the CPU."""
    h = extract_features(model, views, batch_size=batch_size, device="cpu")
    with frozen(model.projector, torch.device("cpu")), torch.inference_mode():
        z = torch.cat([model.projector(h[i:i + batch_size]) for i in range(0, len(h), batch_size)])
    return h, z.clone()


def augmentation_probe(models: dict[str, torch.nn.Module], train_images: torch.Tensor, test_images: torch.Tensor,
                       view: ViewRecipe = PROBE_VIEW, seed: int = 0,
                       batch_size: int = 256) -> dict[str, dict[str, float]]:
    """How much of each augmentation parameter (PROBED) a linear probe reads from each model's h and z.

    One view of every training and test image (uint8 (n, 3, H, W)) with known parameters (`probe_views`);
    probes fit on the training views, scored on the test views (`probe_parameter`). Returns
    {parameter: {"NAME h": score, "NAME z": score for each NAME in models}}."""
    if not models:
        raise ValueError("models is empty: pass e.g. {'VICReg': model, 'random init': random_model}")
    generator = torch.Generator().manual_seed(seed)
    (train_views, train_params), (test_views, test_params) = (
        probe_views(images, view, generator) for images in (train_images, test_images))
    colour_train, colour_test = ~train_params["grayscale"], ~test_params["grayscale"]
    scores: dict[str, dict[str, float]] = {parameter: {} for parameter in PROBED}
    for name, model in models.items():
        features = zip(_h_and_z(model, train_views, batch_size), _h_and_z(model, test_views, batch_size))
        for which, (train_features, test_features) in zip(("h", "z"), features):
            for parameter, (kind, rows) in PROBED.items():
                keep_train = colour_train if rows == "colour" else slice(None)
                keep_test = colour_test if rows == "colour" else slice(None)
                scores[parameter][f"{name} {which}"] = probe_parameter(
                    train_features[keep_train], train_params[parameter][keep_train],
                    test_features[keep_test], test_params[parameter][keep_test], kind)
    return scores


def _listed(items: list[str]) -> str:
    return ", ".join(items[:-1]) + f" and {items[-1]}" if len(items) > 1 else items[0]


def describe_probe(scores: dict[str, dict[str, float]], model: str = "VICReg", untrained: str = "random init",
                   margin: float = 0.1) -> str:
    """augmentation_probe's scores in sentences: what the model's z keeps compared with its h, its h compared
    with the untrained network's h, and which parameters no feature set recovers. Differences within
    ``margin`` count as "about as much"."""
    def compare(first: str, second: str) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {"less": [], "more": [], "about as much": []}
        for parameter, row in scores.items():
            a, b = row[first], row[second]
            key = "less" if a < b - margin else "more" if a > b + margin else "about as much"
            groups[key].append(f"{parameter} ({round(a, 2) + 0.0:.2f} vs {round(b, 2) + 0.0:.2f})")
        return groups

    sentences = []
    for first, second in ((f"{model} z", f"{model} h"), (f"{model} h", f"{untrained} h")):
        missing = [name for name in (first, second) for row in scores.values() if name not in row]
        if missing:
            raise ValueError(f"scores have no {missing[0]!r}: pass the names given to augmentation_probe")
        parts = [f"{how} of {_listed(items)}" for how, items in compare(first, second).items() if items]
        sentences.append(f"Compared with {second}, {first} keeps {_listed(parts)}.")
    unread = [parameter for parameter, row in scores.items() if max(row.values()) < margin]
    if unread:
        sentences.append(f"No feature set recovers {_listed(unread)} (every score below {margin:g}).")
    return " ".join(sentences)
