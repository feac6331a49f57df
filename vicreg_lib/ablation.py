"""Coefficient sweeps: pretrain once per (lam, mu, nu), diagnose collapse, cache every result.

    config = TrainConfig(width=8, projector="512-512-512", batch_size=64, lr=1e-3, epochs=6)
    table = run_ablation([(1, 0, 0), (25, 25, 1)], config, cache_dir="runs/ablation")
    print(table.compare_with_paper())

Each setting is one short pretraining run through ``train.pretrain`` (the config with
lam/mu/nu replaced, its own out_dir), followed by a look at the trained model on the
held-out split:

- the loss terms of the last epoch (from the run's metrics.jsonl),
- the embeddings z (projector output) of the test images: per-dimension std, singular
  values, effective rank and ``diagnostics.collapse_report``'s verdict,
- the representations h (encoder output): weighted kNN and linear-probe top-1 (%),
  trained on the train split, measured on the test split,
- the per-epoch history of the run (std and loss terms over training) for plots.

Every setting's result is one JSON file, written atomically when the setting finishes,
under ``cache_dir/<setting>-<key>/``, where key hashes the config's result-changing
fields (coefficients included; see config.py's ``cache_key`` metadata), the probe
settings and the data's content (``data.fingerprint``: replacing a file at the same path
gives a new key). A second call with the same config loads it; any changed setting gives
a new key and a new run; an interrupted sweep keeps the settings it finished. A setting
whose run diverges is recorded as "diverged" and the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from . import train
from .config import TrainConfig, field_names
from .data import fingerprint, load_dataset, random_subset
from .diagnostics import COLLAPSED, HELDOUT_BATCH_SIZE, collapse_report, heldout_batch, effective_rank, per_dim_std, singular_values
from .evaluate import extract_features, knn_accuracy, linear_probe
from .features import normalize_images
from .files import atomic_write
from .model import build_model, calibrate_batchnorm
from .progress import progress_bar
from .runfolder import read_metrics

__all__ = [
    "PAPER_ABLATION",
    "PAPER_SOURCE",
    "PAPER_CONFIRMED",
    "PAPER_PROVENANCE",
    "AblationTable",
    "run_ablation",
    "evaluate_random_init",
    "parse_grid",
]

Setting = tuple[float, float, float]  # (lam, mu, nu)

PAPER_SOURCE = (
    "Bardes, Ponce & LeCun, VICReg, ICLR 2022 (arXiv:2105.04906), appendix table on the loss "
    "coefficients: ResNet-50, ImageNet, 100 pretraining epochs, linear-evaluation top-1 (%)"
)
# (lam, mu, nu) -> ImageNet linear top-1 (%) after 100 epochs; None: the run collapsed.
# Provenance: only 68.6 for (25, 25, 1) and 57.5 for a setting without the covariance term are
# confirmed by a source at hand (the blog post quotes them); the other rows come from secondary
# sources and were not checked against the paper's table (PAPER_CONFIRMED lists the confirmed rows).
PAPER_ABLATION: dict[Setting, float | None] = {
    (1.0, 0.0, 0.0): None,  # invariance only
    (25.0, 0.0, 1.0): None,  # no variance term
    (1.0, 1.0, 0.0): 57.5,  # no covariance term
    (5.0, 5.0, 1.0): 68.1,
    (25.0, 25.0, 1.0): 68.6,  # the paper's default
    (50.0, 50.0, 1.0): 68.3,
}
PAPER_CONFIRMED: frozenset[Setting] = frozenset({(1.0, 1.0, 0.0), (25.0, 25.0, 1.0)})
PAPER_PROVENANCE = (
    "Only (25, 25, 1) = 68.6 and 57.5 without the covariance term are confirmed by a source at hand "
    "(the blog post); the other rows come from secondary sources and were not checked against the "
    "paper's table."
)

RESULT_NAME = "result.json"
RUN_NAME = "run"
RESULT_FORMAT = 3  # bump when the stored row changes, so old caches are recomputed
CALIBRATION_IMAGES = 4096  # training images whose statistics the untrained network's BatchNorms get
ROW_KEYS = ("lam", "mu", "nu", "verdict", "knn_top1", "linear_top1", "history")  # a usable cached row has these
ROW_NUMBERS = ("lam", "mu", "nu", "loss", "invariance", "variance", "covariance", "std_mean", "effective_rank",
               "knn_top1", "linear_top1")  # numbers where present: the table formats them as numbers


# ----------------------------------------------------------------------------- settings


def _check_setting(setting: Any) -> Setting:
    """(lam, mu, nu) as three finite floats >= 0, or one ValueError saying what is wrong."""
    if isinstance(setting, (str, bytes)) or not isinstance(setting, Iterable):
        raise ValueError(f"a setting must be three numbers (lam, mu, nu), got {setting!r}")
    values = tuple(setting)
    if len(values) != 3:
        raise ValueError(f"a setting must be three numbers (lam, mu, nu), got {len(values)}: {setting!r}")
    for name, value in zip(("lam", "mu", "nu"), values):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r} in setting {setting!r}")
        if value < 0:
            raise ValueError(
                f"{name} = {value!r} in setting {setting!r} is negative; coefficients weight the loss terms "
                f"and must be >= 0 (use 0 to switch a term off)"
            )
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def parse_grid(text: str) -> list[Setting]:
    """"1,0,0;25,0,1" -> [(1.0, 0.0, 0.0), (25.0, 0.0, 1.0)]: settings separated by ';'."""
    settings = []
    for part in text.split(";"):
        if not part.strip():
            continue
        try:
            numbers_ = [float(x) for x in part.split(",")]
        except ValueError:
            raise ValueError(
                f"cannot read setting {part.strip()!r} in grid {text!r}: write each setting as lam,mu,nu "
                f"and separate settings with ';', e.g. \"1,0,0;25,25,1\""
            ) from None
        settings.append(_check_setting(numbers_))
    if not settings:
        raise ValueError(f"grid {text!r} holds no setting; write e.g. \"1,0,0;25,25,1\"")
    return settings


def setting_name(setting: Setting) -> str:
    """(25.0, 25.0, 1.0) -> 'lam25_mu25_nu1' (folder names)."""
    lam, mu, nu = setting
    return f"lam{lam:g}_mu{mu:g}_nu{nu:g}"


def cache_key(config: TrainConfig, probe: dict[str, Any], data_fingerprint: str) -> str:
    """Hash of everything that decides a result: the resolved config's result-changing fields
    (lam/mu/nu included), the probe settings and the data's content. 16 hex digits."""
    resolved = config.resolved().to_dict()
    fields = {name: resolved[name] for name in field_names("cache_key")}
    blob = json.dumps({"config": fields, "probe": probe, "data": data_fingerprint, "format": RESULT_FORMAT},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """$VICREG_RUNS/ablation (default runs/ablation)."""
    return Path(os.environ.get("VICREG_RUNS", "") or "runs") / "ablation"


# ----------------------------------------------------------------------------- one setting


def _load_cached(path: Path, key: str) -> dict[str, Any] | None:
    """The stored row when path holds a complete result with this key, else None."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(payload, dict) or payload.get("key") != key or payload.get("format") != RESULT_FORMAT:
        return None
    row = payload.get("row")
    if not isinstance(row, dict) or not all(name in row for name in ROW_KEYS):
        return None  # valid JSON of the wrong shape: recompute
    numbers = all(isinstance(row.get(name, 0.0), (int, float)) and not isinstance(row.get(name), bool)
                  for name in ROW_NUMBERS)
    if not (numbers and isinstance(row["verdict"], str) and isinstance(row["history"], list)):
        return None  # entries of the wrong type (an edited file) would fail only when the table is printed
    return row


def _evaluate_setting(model, config: TrainConfig, probe: dict[str, Any], device: str) -> dict[str, Any]:
    """Diagnostics of the trained model on the held-out (test) split, and its kNN / linear accuracy."""
    train_images, train_labels, classes = load_dataset(config.data, "train", config.data_root)
    # a seeded random subset of the labelled images, the same for every setting
    train_images, train_labels = random_subset(train_images, train_labels, probe["train_images"], seed=0)
    test_images, test_labels, _ = load_dataset(config.data, "test", config.data_root)
    held_out = heldout_batch(test_images, n=min(HELDOUT_BATCH_SIZE, test_images.shape[0]))
    z = extract_features(model, held_out, device=device, which="embedding")  # (512, d): the same images always
    if not bool(torch.isfinite(z).all()):
        raise train.TrainingDiverged("the trained model's embeddings of the test images are not finite")
    h_train = extract_features(model, train_images, device=device, which="representation")  # (n, D)
    h_test = extract_features(model, test_images, device=device, which="representation")  # (m, D)
    report = collapse_report(z)
    knn = knn_accuracy(h_train, train_labels, h_test, test_labels, k=probe["knn_k"], num_classes=len(classes))
    linear = linear_probe(h_train, train_labels, h_test, test_labels, epochs=probe["probe_epochs"],
                          num_classes=len(classes), device=device, seed=config.seed)
    return {
        "verdict": report["verdict"],
        "report": report,
        "std_mean": per_dim_std(z).mean().item(),
        "std_per_dim": per_dim_std(z).tolist(),  # (d,)
        "effective_rank": effective_rank(z),
        "singular_values": singular_values(z).tolist(),  # (min(m, d),), descending
        "knn_top1": knn[f"knn_top1@{probe['knn_k']}"],
        "linear_top1": linear["top1"],
    }


def _diverged_row(setting: Setting, run_dir: Path, error: Exception, seconds: float) -> dict[str, Any]:
    lam, mu, nu = setting
    nan = math.nan
    return {"lam": lam, "mu": mu, "nu": nu, "verdict": "diverged", "error": str(error),
            "loss": nan, "invariance": nan, "variance": nan, "covariance": nan, "std_mean": nan,
            "std_per_dim": [], "effective_rank": nan, "singular_values": [], "knn_top1": nan, "linear_top1": nan,
            "history": read_metrics(run_dir) if run_dir.is_dir() else [], "train_time_s": seconds, "time_s": seconds}


def _run_setting(setting: Setting, config: TrainConfig, run_dir: Path, probe: dict[str, Any],
                 pretrain: Callable[[TrainConfig], Any]) -> dict[str, Any]:
    """Pretrain with this setting into run_dir, then evaluate: one table row ("diverged" if it did)."""
    lam, mu, nu = setting
    start = time.perf_counter()
    run_config = dataclasses.replace(config, lam=lam, mu=mu, nu=nu, out_dir=str(run_dir),
                                     resume=False, overwrite=True)  # a half-finished run starts afresh
    try:
        result = pretrain(run_config)
        train_time = time.perf_counter() - start
        evaluation = _evaluate_setting(result.model, result.config, probe, result.config.device)
    except train.TrainingDiverged as error:
        return _diverged_row(setting, run_dir, error, time.perf_counter() - start)
    history = read_metrics(result.out_dir)
    last = next((r for r in reversed(history) if "loss" in r), {})
    row: dict[str, Any] = {"lam": lam, "mu": mu, "nu": nu}
    row.update({name: last.get(name, math.nan) for name in ("loss", "invariance", "variance", "covariance")})
    row.update(evaluation)
    row["history"] = history
    row["train_time_s"] = train_time
    row["time_s"] = time.perf_counter() - start
    return row


# ----------------------------------------------------------------------------- the sweep


def run_ablation(
    grid: Sequence[Sequence[float]] | str,
    config: TrainConfig,
    cache_dir: str | os.PathLike | None = None,
    probe_epochs: int = 50,
    probe_train_images: int | None = None,
    progress: bool = True,
    pretrain: Callable[[TrainConfig], Any] | None = None,
) -> AblationTable:
    """One short pretraining run per (lam, mu, nu) in ``grid``, diagnosed and cached.

    grid:         settings [(lam, mu, nu), ...], or a string "1,0,0;25,25,1".
    config:       the TrainConfig every run shares; its lam/mu/nu/out_dir are replaced.
    cache_dir:    results go to cache_dir/<setting>-<key>/result.json and the run's files
                  to .../run/ (default: $VICREG_RUNS/ablation).
    probe_epochs: epochs of the linear probe; the kNN uses config.knn_k neighbours.
    probe_train_images: kNN and probe learn from a seeded random subset of this many
                  train-split images (default: the whole train split); both are
                  measured on the whole test split.
    pretrain:     the training function (default ``train.pretrain``); tests pass a spy.

    Returns an AblationTable with one row per setting, in grid order.
    """
    settings = parse_grid(grid) if isinstance(grid, str) else [_check_setting(s) for s in grid]
    if not settings:
        raise ValueError("grid is empty; pass at least one (lam, mu, nu) setting, e.g. [(25, 25, 1)]")
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    if isinstance(probe_epochs, bool) or not isinstance(probe_epochs, int) or probe_epochs < 1:
        raise ValueError(f"probe_epochs must be an integer >= 1, got {probe_epochs!r}")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    pretrain = pretrain or train.pretrain
    if probe_train_images is not None and (isinstance(probe_train_images, bool) or
                                           not isinstance(probe_train_images, int) or probe_train_images < 1):
        raise ValueError(f"probe_train_images must be an integer >= 1 or None (all), "
                         f"got {probe_train_images!r}")
    probe = {"probe_epochs": probe_epochs, "knn_k": config.knn_k, "train_images": probe_train_images,
             "held_out": "test"}

    start = time.perf_counter()
    data_fingerprint = _data_fingerprint(config)
    rows: list[dict[str, Any]] = []
    with progress_bar(settings, total=len(settings), desc="ablation", disable=not progress) as bar:
        for setting in bar:
            setting_config = dataclasses.replace(config, lam=setting[0], mu=setting[1], nu=setting[2])
            key = cache_key(setting_config, probe, data_fingerprint)
            folder = cache_dir / f"{setting_name(setting)}-{key}"
            bar.set_postfix(setting=setting_name(setting))
            row = _load_cached(folder / RESULT_NAME, key)
            cached = row is not None
            if row is None:
                try:
                    row = _run_setting(setting, setting_config, folder / RUN_NAME, probe, pretrain)
                except KeyboardInterrupt:
                    raise KeyboardInterrupt(
                        f"ablation interrupted in setting {setting_name(setting)}: the {len(rows)} settings "
                        f"before it are cached in {str(cache_dir)!r}; run the same call again to compute the "
                        f"rest (the interrupted setting starts afresh)") from None
                # Written only now, complete: an interruption never leaves a half result behind.
                payload = {"format": RESULT_FORMAT, "key": key, "probe": probe,
                           "config": setting_config.to_dict(), "row": row}
                atomic_write(folder / RESULT_NAME, lambda handle: json.dump(payload, handle), mode="w")
            rows.append({**row, "cached": cached, "folder": str(folder)})
    return AblationTable(rows, elapsed_s=time.perf_counter() - start)


def _data_fingerprint(config: TrainConfig) -> str:
    """A hash of the train and test images and labels the settings will see."""
    resolved = config.resolved()
    train_split = load_dataset(resolved.data, "train", resolved.data_root)
    test_split = load_dataset(resolved.data, "test", resolved.data_root)
    return fingerprint(*train_split[:2], *test_split[:2])


def evaluate_random_init(config: TrainConfig, probe_epochs: int = 50,
                         probe_train_images: int | None = None) -> dict[str, Any]:
    """The same diagnostics and accuracies for the untrained network (config's seed):
    the baseline a useful setting has to beat. Returns a row without loss terms or history."""
    config = config.resolved()
    probe = {"probe_epochs": probe_epochs, "knn_k": config.knn_k, "train_images": probe_train_images,
             "held_out": "test"}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # the initialisation pretrain starts from
        model = build_model(**config.arch())
    # BatchNorm statistics from training images: at their initial values an untrained network's
    # embeddings are ~75x too small and read as collapsed (see diagnostics.py)
    images, labels, _ = load_dataset(config.data, "train", config.data_root)
    images, _ = random_subset(images, labels, min(CALIBRATION_IMAGES, images.shape[0]), seed=0)
    batches = (normalize_images(images[i:i + 256]) for i in range(0, images.shape[0], 256))
    calibrate_batchnorm(torch.nn.Sequential(model.encoder, model.projector), batches)
    return _evaluate_setting(model, config, probe, config.device)


# ----------------------------------------------------------------------------- the table


def _number(digits: int) -> Callable[[Any], str]:
    def fmt(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return f"{value:.{digits}f}"

    return fmt


def _coefficient(value: float) -> str:
    return f"{value:g}"


def _paper(value: Any) -> str:
    if value == "n/a":
        return "-"
    return "collapse" if value is None else f"{value:.1f}"


def _agrees(value: Any) -> str:
    return {True: "yes", False: "NO", None: "-"}[value]


Column = tuple[str, str, Callable[[Any], str]]  # (row key, header, formatter)
COLUMNS: list[Column] = [
    ("lam", "λ", _coefficient),
    ("mu", "μ", _coefficient),
    ("nu", "ν", _coefficient),
    ("loss", "loss", _number(3)),
    ("invariance", "inv", _number(4)),
    ("variance", "var", _number(4)),
    ("covariance", "cov", _number(4)),
    ("std_mean", "mean std", _number(3)),
    ("effective_rank", "eff. rank", _number(1)),
    ("verdict", "verdict", str),
    ("knn_top1", "kNN %", _number(1)),
    ("linear_top1", "linear %", _number(1)),
]
PAPER_COLUMNS: list[Column] = [("paper_top1", "paper top-1 %", _paper), ("agrees", "agrees", _agrees)]
COMPARE_COLUMNS: list[Column] = [
    ("lam", "λ", _coefficient),
    ("mu", "μ", _coefficient),
    ("nu", "ν", _coefficient),
    ("paper_top1", "paper (ImageNet) top-1 %", _paper),
    ("verdict", "ours: verdict", str),
    ("effective_rank", "ours: eff. rank", _number(1)),
    ("knn_top1", "ours: kNN %", _number(1)),
    ("linear_top1", "ours: linear %", _number(1)),
    ("agrees", "collapse agrees", _agrees),
]


def _paper_columns(row: dict[str, Any]) -> dict[str, Any]:
    """The paper's number for this row's setting, and whether our collapse verdict matches it.

    The paper's table writes "collapse" where training failed outright, and an accuracy
    wherever the network learned, so its "collapse" is our "collapsed" verdict. A
    "dimensional collapse" verdict is a network that learned along a few directions only: the
    paper gives such settings a (lower) accuracy, so it counts as not collapsed here,
    and the table still shows the verdict."""
    setting = (row["lam"], row["mu"], row["nu"])
    if setting not in PAPER_ABLATION:
        return {"paper_top1": "n/a", "agrees": None}
    paper_collapsed = PAPER_ABLATION[setting] is None
    return {"paper_top1": PAPER_ABLATION[setting], "agrees": paper_collapsed == (row["verdict"] == COLLAPSED)}


class AblationTable:
    """The rows of a sweep (one dict per setting) and how to print them.

    ``rows``: list of dicts with keys lam, mu, nu, loss, invariance, variance, covariance,
    std_mean, std_per_dim (d,), effective_rank, verdict, report, singular_values,
    knn_top1, linear_top1, history (per-epoch records), train_time_s, time_s, cached,
    folder. ``table[i]`` is row i; ``table[(25, 25, 1)]`` the row of that setting.
    """

    def __init__(self, rows: list[dict[str, Any]], columns: list[Column] | None = None,
                 elapsed_s: float | None = None) -> None:
        self.rows = rows
        self.columns = columns or COLUMNS
        self.elapsed_s = elapsed_s

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __getitem__(self, index: int | Sequence[float]) -> dict[str, Any]:
        if isinstance(index, int):
            return self.rows[index]
        setting = _check_setting(index)
        for row in self.rows:
            if (row["lam"], row["mu"], row["nu"]) == setting:
                return row
        raise KeyError(f"no row for setting {setting}; the table holds {self.settings()}")

    def settings(self) -> list[Setting]:
        return [(row["lam"], row["mu"], row["nu"]) for row in self.rows]

    @property
    def compute_time_s(self) -> float:
        """Seconds the rows took when they were computed (cached ones included)."""
        return sum(row.get("time_s", 0.0) for row in self.rows)

    def with_paper(self) -> AblationTable:
        """All our columns plus the paper's top-1 for the same setting and whether the collapse
        verdicts agree ("-" where the paper has no such setting)."""
        rows = [{**row, **_paper_columns(row)} for row in self.rows]
        return AblationTable(rows, self.columns + PAPER_COLUMNS, self.elapsed_s)

    def compare_with_paper(self) -> AblationTable:
        """The settings the paper reports, side by side: its ImageNet number, our verdict,
        effective rank and accuracies, and whether the collapse verdicts agree."""
        rows = [{**row, **_paper_columns(row)} for row in self.rows
                if (row["lam"], row["mu"], row["nu"]) in PAPER_ABLATION]
        return AblationTable(rows, COMPARE_COLUMNS, self.elapsed_s)

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        headers = [header for _, header, _ in self.columns]
        body = [[fmt(row.get(key)) for key, _, fmt in self.columns] for row in self.rows]
        return headers, body

    def to_markdown(self) -> str:
        headers, body = self._cells()
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def __str__(self) -> str:
        headers, body = self._cells()
        widths = [max(len(cells[i]) for cells in [headers] + body) for i in range(len(headers))]
        lines = ["  ".join(cell.rjust(width) for cell, width in zip(cells, widths))
                 for cells in [headers] + body]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"AblationTable({len(self.rows)} settings: {self.settings()})"

