"""Coefficient sweeps: pretrain once per (lam, mu, nu), diagnose collapse, cache every result.

    config = TrainConfig(width=8, projector="512-512-512", batch_size=64, lr=1e-3, epochs=6)
    print(run_ablation([(1, 0, 0), (25, 25, 1)], config, cache_dir="runs/ablation").compare_with_paper())

Each result is one JSON file, written atomically when its run ends, in cache_dir/<lamX_muY_nuZ>-<key>/;
the key hashes the config's `cache_key` fields, the probe and the data, so a rerun loads, a change
reruns and an interrupted sweep keeps what it finished. A run that diverges is a "diverged" row.
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
from tqdm.auto import tqdm

from . import train
from .config import TrainConfig, field_names
from .data import fingerprint, load_dataset, random_subset
from .eval.diagnostics import (COLLAPSED, HELDOUT_BATCH_SIZE, collapse_report, effective_rank, heldout_batch,
                               per_dim_std, singular_values)
from .eval.features import check_count, extract_features
from .eval.report import EvalConfig, encoder_report, random_init_model, text_table
from .runstate import atomic_write, read_metrics

__all__ = ["Coefficients", "PAPER_ABLATION", "PAPER_SOURCE", "PAPER_CONFIRMED", "PAPER_PROVENANCE", "AblationTable",
           "run_ablation", "evaluate_random_init", "measure_model", "parse_grid"]

Coefficients = tuple[float, float, float]  # (lam, mu, nu)

PAPER_SOURCE = ("Bardes, Ponce & LeCun, VICReg, ICLR 2022 (arXiv:2105.04906), appendix table on the loss "
                "coefficients: ResNet-50, ImageNet, 100 pretraining epochs, linear-evaluation top-1 (%)")
# (lam, mu, nu) -> ImageNet linear top-1 (%) after 100 epochs; None: the run collapsed.
PAPER_ABLATION: dict[Coefficients, float | None] = {
    (1.0, 0.0, 0.0): None,  # invariance only
    (25.0, 0.0, 1.0): None,  # no variance term
    (1.0, 1.0, 0.0): 57.5,  # no covariance term
    (5.0, 5.0, 1.0): 68.1,
    (25.0, 25.0, 1.0): 68.6,  # the paper's default
    (50.0, 50.0, 1.0): 68.3,
}
PAPER_CONFIRMED: frozenset[Coefficients] = frozenset({(25.0, 25.0, 1.0)})
PAPER_PROVENANCE = ("Only (25, 25, 1) = 68.6 is confirmed by a source at hand (the blog post), which also quotes "
                    "57.5 for a run without the covariance term but not its coefficients; (1, 1, 0) and the other "
                    "rows come from secondary sources and were not checked against the paper's table.")

RESULT_NAME = "result.json"
RUN_NAME = "run"
RESULT_FORMAT = 3  # bump when the stored row changes, so old caches are recomputed
ROW_KEYS = ("lam", "mu", "nu", "verdict", "knn_top1", "linear_top1", "history")  # a usable cached row has these
ROW_NUMBERS = ("lam", "mu", "nu", "loss", "invariance", "variance", "covariance", "std_mean", "effective_rank",
               "knn_top1", "linear_top1")  # numbers where present: the table formats them as numbers


def check_coefficients(value: Any) -> Coefficients:
    values = () if isinstance(value, (str, bytes)) or not isinstance(value, Iterable) else tuple(value)
    if len(values) != 3:
        raise ValueError(f"coefficients must be three numbers (lam, mu, nu), got {value!r}")
    for name, number in zip(("lam", "mu", "nu"), values):
        if isinstance(number, bool) or not isinstance(number, numbers.Real) or not math.isfinite(number):
            raise ValueError(f"{name} must be a finite number, got {number!r} in {value!r}")
        if number < 0:
            raise ValueError(f"{name} = {number!r} in {value!r} is negative; coefficients weight the loss terms "
                             f"and must be >= 0 (use 0 to switch a term off)")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def parse_grid(text: str) -> list[Coefficients]:
    """"1,0,0;25,0,1" -> [(1.0, 0.0, 0.0), (25.0, 0.0, 1.0)]."""
    grid = []
    for part in filter(str.strip, text.split(";")):
        try:
            values = [float(x) for x in part.split(",")]
        except ValueError:
            raise ValueError(f"cannot read {part.strip()!r} in grid {text!r}: write each entry as lam,mu,nu "
                             f"and separate entries with ';', e.g. \"1,0,0;25,25,1\"") from None
        grid.append(check_coefficients(values))
    if not grid:
        raise ValueError(f"grid {text!r} holds no coefficients; write e.g. \"1,0,0;25,25,1\"")
    return grid


def run_name(coefficients: Coefficients) -> str:
    """(25.0, 25.0, 1.0) -> 'lam25_mu25_nu1' (folder names)."""
    return "lam{:g}_mu{:g}_nu{:g}".format(*coefficients)


def cache_key(config: TrainConfig, probe: dict[str, Any], data_fingerprint: str) -> str:
    """16 hex digits of the config's `cache_key` fields, the probe and the data's content."""
    resolved = config.resolved().to_dict()
    fields = {name: resolved[name] for name in field_names("cache_key")}
    blob = json.dumps({"config": fields, "probe": probe, "data": data_fingerprint, "format": RESULT_FORMAT},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _load_cached(path: Path, key: str) -> dict[str, Any] | None:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ours = isinstance(payload, dict) and payload.get("key") == key and payload.get("format") == RESULT_FORMAT
    row = payload.get("row") if ours else None
    if not isinstance(row, dict) or not all(name in row for name in ROW_KEYS):
        return None  # valid JSON of the wrong shape: recompute
    # entries of the wrong type (an edited file) would fail only when the table is printed
    numbers = all(isinstance(row.get(name, 0.0), (int, float)) and not isinstance(row.get(name), bool)
                  for name in ROW_NUMBERS)
    return row if numbers and isinstance(row["verdict"], str) and isinstance(row["history"], list) else None


def measure_model(model, config: TrainConfig, probe: dict[str, Any]) -> dict[str, Any]:
    """Collapse diagnostics of z on the test split's held-out batch; kNN and fast-probe top-1 of h."""
    train_images, train_labels, classes = load_dataset(config.data, "train", config.data_root)
    train_images, train_labels = random_subset(train_images, train_labels, probe["train_images"], seed=0)
    test_images, test_labels, _ = load_dataset(config.data, "test", config.data_root)
    held_out = heldout_batch(test_images, n=min(HELDOUT_BATCH_SIZE, test_images.shape[0]))
    z = extract_features(model, held_out, device=config.device, which="embedding")  # (512, d), the same images
    if not bool(torch.isfinite(z).all()):
        raise train.TrainingDiverged("the trained model's embeddings of the test images are not finite")
    options = EvalConfig(knn_k=probe["knn_k"], probe_epochs=probe["probe_epochs"], label_fractions=(),
                         device=config.device, seed=config.seed)
    accuracy = encoder_report(model.encoder, train_images, train_labels, test_images, test_labels, options,
                              num_classes=len(classes))
    report = collapse_report(z)
    return {"verdict": report["verdict"], "report": report, "std_mean": per_dim_std(z).mean().item(),
            "std_per_dim": per_dim_std(z).tolist(),  # (d,)
            "effective_rank": effective_rank(z), "singular_values": singular_values(z).tolist(),  # descending
            "knn_top1": accuracy[f"knn_top1@{probe['knn_k']}"], "linear_top1": accuracy["linear_fast_top1"]}


def _run_one(coefficients: Coefficients, config: TrainConfig, run_dir: Path, probe: dict[str, Any],
             pretrain: Callable[[TrainConfig], Any]) -> dict[str, Any]:
    start = time.perf_counter()
    run_config = dataclasses.replace(config, out_dir=str(run_dir), resume=False,
                                     overwrite=True)  # a half-finished run starts afresh
    try:
        result = pretrain(run_config)
        train_time = time.perf_counter() - start
        measured = measure_model(result.model, result.config, probe)
    except train.TrainingDiverged as error:
        seconds = time.perf_counter() - start
        return {**dict(zip(("lam", "mu", "nu"), coefficients)), **dict.fromkeys(ROW_NUMBERS[3:], math.nan),
                "verdict": "diverged", "error": str(error), "std_per_dim": [], "singular_values": [],
                "history": read_metrics(run_dir) if run_dir.is_dir() else [], "train_time_s": seconds,
                "time_s": seconds}
    history = read_metrics(result.out_dir)
    last = next((r for r in reversed(history) if "loss" in r), {})
    return {**dict(zip(("lam", "mu", "nu"), coefficients)),
            **{name: last.get(name, math.nan) for name in ("loss", "invariance", "variance", "covariance")},
            **measured, "history": history, "train_time_s": train_time, "time_s": time.perf_counter() - start}


def _probe(config: TrainConfig, probe_epochs: int, probe_train_images: int | None) -> dict[str, Any]:
    check_count(probe_epochs, "probe_epochs")
    check_count(probe_train_images, "probe_train_images", none="all")
    return {"probe_epochs": probe_epochs, "knn_k": config.knn_k, "train_images": probe_train_images,
            "held_out": "test"}


def run_ablation(grid: Sequence[Sequence[float]] | str, config: TrainConfig,
                 cache_dir: str | os.PathLike | None = None, probe_epochs: int = 50,
                 probe_train_images: int | None = None, progress: bool = True,
                 pretrain: Callable[[TrainConfig], Any] | None = None) -> AblationTable:
    """One measured, cached run per (lam, mu, nu) of `grid` (or "1,0,0;25,25,1"), in grid order; cache_dir
    default $VICREG_RUNS/ablation; probe_train_images: a seeded subset for kNN and probe (None: all)."""
    grid = parse_grid(grid) if isinstance(grid, str) else [check_coefficients(c) for c in grid]
    if not grid:
        raise ValueError("grid is empty; pass at least one (lam, mu, nu), e.g. [(25, 25, 1)]")
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    probe = _probe(config, probe_epochs, probe_train_images)
    runs = os.environ.get("VICREG_RUNS") or "runs"
    cache_dir = Path(cache_dir) if cache_dir is not None else Path(runs) / "ablation"
    start, data_fingerprint, rows = time.perf_counter(), _data_fingerprint(config), []
    with tqdm(grid, total=len(grid), desc="ablation", disable=not progress) as bar:
        for coefficients in bar:
            run_config = dataclasses.replace(config, **dict(zip(("lam", "mu", "nu"), coefficients)))
            key = cache_key(run_config, probe, data_fingerprint)
            folder = cache_dir / f"{run_name(coefficients)}-{key}"
            bar.set_postfix(run=run_name(coefficients))
            row = _load_cached(folder / RESULT_NAME, key)
            cached = row is not None
            if not cached:
                try:
                    row = _run_one(coefficients, run_config, folder / RUN_NAME, probe, pretrain or train.pretrain)
                except KeyboardInterrupt:
                    raise KeyboardInterrupt(
                        f"ablation interrupted in {run_name(coefficients)}: the {len(rows)} runs before it are "
                        f"cached in {str(cache_dir)!r}; run the same call again to compute the rest (the "
                        "interrupted one starts afresh)") from None
                # written only now, complete: an interruption never leaves a half result behind
                payload = {"format": RESULT_FORMAT, "key": key, "probe": probe, "config": run_config.to_dict(),
                           "row": row}
                atomic_write(folder / RESULT_NAME, lambda handle: json.dump(payload, handle), mode="w")
            rows.append({**row, "cached": cached, "folder": str(folder)})
    return AblationTable(rows, elapsed_s=time.perf_counter() - start)


def _data_fingerprint(config: TrainConfig) -> str:
    resolved = config.resolved()
    train_split = load_dataset(resolved.data, "train", resolved.data_root)
    test_split = load_dataset(resolved.data, "test", resolved.data_root)
    return fingerprint(*train_split[:2], *test_split[:2])


def evaluate_random_init(config: TrainConfig, probe_epochs: int = 50,
                         probe_train_images: int | None = None) -> dict[str, Any]:
    """`measure_model` of `random_init_model` seeded by config.seed: the baseline a run has to beat."""
    config = config.resolved()
    probe = _probe(config, probe_epochs, probe_train_images)
    train_images = load_dataset(config.data, "train", config.data_root)[0]
    return measure_model(random_init_model(config.arch(), train_images, config.seed), config, probe)


def _number(digits: int) -> Callable[[Any], str]:
    return lambda value: ("-" if value is None or (isinstance(value, float) and math.isnan(value))
                          else f"{value:.{digits}f}")


def _paper(value: Any) -> str:
    return "-" if value == "n/a" else "collapse" if value is None else f"{value:.1f}"


_agrees = {True: "yes", False: "NO", None: "-"}.__getitem__


Column = tuple[str, str, Callable[[Any], str]]  # (row key, header, formatter)
_COEFFICIENTS: list[Column] = [("lam", "λ", "{:g}".format), ("mu", "μ", "{:g}".format), ("nu", "ν", "{:g}".format)]
COLUMNS: list[Column] = _COEFFICIENTS + [
    ("loss", "loss", _number(3)), ("invariance", "inv", _number(4)), ("variance", "var", _number(4)),
    ("covariance", "cov", _number(4)), ("std_mean", "mean std", _number(3)),
    ("effective_rank", "eff. rank", _number(1)), ("verdict", "verdict", str), ("knn_top1", "kNN %", _number(1)),
    ("linear_top1", "linear %", _number(1)),
]
PAPER_COLUMNS: list[Column] = [("paper_top1", "paper top-1 %", _paper), ("agrees", "agrees", _agrees)]
COMPARE_COLUMNS: list[Column] = _COEFFICIENTS + [
    ("paper_top1", "paper (ImageNet) top-1 %", _paper), ("verdict", "ours: verdict", str),
    ("effective_rank", "ours: eff. rank", _number(1)), ("knn_top1", "ours: kNN %", _number(1)),
    ("linear_top1", "ours: linear %", _number(1)), ("agrees", "collapse agrees", _agrees),
]


def _paper_columns(row: dict[str, Any]) -> dict[str, Any]:
    """The paper's number and whether our verdict agrees: its "collapse" is only our "collapsed" (a
    dimensional collapse still learned, which the paper reports as a lower accuracy)."""
    coefficients = (row["lam"], row["mu"], row["nu"])
    if coefficients not in PAPER_ABLATION:
        return {"paper_top1": "n/a", "agrees": None}
    paper_collapsed = PAPER_ABLATION[coefficients] is None
    return {"paper_top1": PAPER_ABLATION[coefficients], "agrees": paper_collapsed == (row["verdict"] == COLLAPSED)}


class AblationTable:
    """A sweep's rows (`_run_one`'s, plus cached and folder): table[i] or table[(25, 25, 1)]."""

    def __init__(self, rows: list[dict[str, Any]], columns: list[Column] | None = None,
                 elapsed_s: float | None = None) -> None:
        self.rows, self.columns, self.elapsed_s = rows, columns or COLUMNS, elapsed_s

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __getitem__(self, index: int | Sequence[float]) -> dict[str, Any]:
        if isinstance(index, int):
            return self.rows[index]
        wanted = check_coefficients(index)
        for row in self.rows:
            if (row["lam"], row["mu"], row["nu"]) == wanted:
                return row
        raise KeyError(f"no row for {wanted}; the table holds {self.coefficients()}")

    def coefficients(self) -> list[Coefficients]:
        return [(row["lam"], row["mu"], row["nu"]) for row in self.rows]

    def with_paper(self) -> AblationTable:
        """Our columns plus the paper's top-1 and whether the collapse verdicts agree."""
        rows = [{**row, **_paper_columns(row)} for row in self.rows]
        return AblationTable(rows, self.columns + PAPER_COLUMNS, self.elapsed_s)

    def compare_with_paper(self) -> AblationTable:
        """The runs the paper reports, side by side with its ImageNet number."""
        rows = [{**row, **_paper_columns(row)} for row in self.rows
                if (row["lam"], row["mu"], row["nu"]) in PAPER_ABLATION]
        return AblationTable(rows, COMPARE_COLUMNS, self.elapsed_s)

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        return ([header for _, header, _ in self.columns],
                [[fmt(row.get(key)) for key, _, fmt in self.columns] for row in self.rows])

    def to_markdown(self) -> str:
        headers, body = self._cells()
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])

    _repr_markdown_ = to_markdown

    def __str__(self) -> str:
        return text_table(*self._cells())

    def __repr__(self) -> str:
        return f"AblationTable({len(self.rows)} runs: {self.coefficients()})"
