"""Coefficient sweeps: pretrain once per (lam, mu, nu) and seed, diagnose collapse, cache every result.

    config = TrainConfig(width=8, projector="512-512-512", batch_size=64, lr=1e-3, epochs=6)
    table = run_ablation([(1, 0, 0), (25, 25, 1)], config, cache_dir="runs/ablation", seeds=[0, 1])
    print(table.compare_with_paper()); print(table.summary())  # per run; per setting over the seeds

Each result is one JSON file, written atomically when its run ends, in cache_dir/<lamX_muY_nuZ>_seedS-<key>/;
the key hashes the config's `cache_key` fields (the seed among them), the probe and the data, so a rerun
loads, a change reruns and an interrupted sweep keeps what it finished. A run that diverges is a "diverged" row.
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
           "run_ablation", "evaluate_random_init", "measure_model", "parse_grid", "summarise_runs", "summarise_seeds",
           "compare_settings"]

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
RESULT_FORMAT = 4  # bump when the stored row changes, so old caches are recomputed
ROW_KEYS = ("lam", "mu", "nu", "seed", "verdict", "knn_top1", "linear_top1", "history")  # a usable cached row has these
ROW_NUMBERS = ("lam", "mu", "nu", "seed", "loss", "invariance", "variance", "covariance", "std_mean", "effective_rank",
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


def run_name(coefficients: Coefficients, seed: int | None = None) -> str:
    """(25.0, 25.0, 1.0) -> 'lam25_mu25_nu1'; with seed 2 -> 'lam25_mu25_nu1_seed2' (folder names)."""
    name = "lam{:g}_mu{:g}_nu{:g}".format(*coefficients)
    return name if seed is None else f"{name}_seed{seed}"


def check_seeds(seeds: Any, default: int) -> list[int]:
    """None -> [default]; otherwise distinct ints >= 0, e.g. (0, 1, 2)."""
    if seeds is None:
        return [default]
    values = [] if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable) else list(seeds)
    if not values or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0 for s in values):
        raise ValueError(f"seeds must be a non-empty list of integers >= 0, e.g. [0, 1, 2], got {seeds!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"seeds {seeds!r} repeat a seed: the same seed gives the same run; pass distinct seeds")
    return [int(s) for s in values]


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
        return {**dict(zip(("lam", "mu", "nu"), coefficients)), **dict.fromkeys(ROW_NUMBERS[4:], math.nan),
                "seed": config.seed,
                "verdict": "diverged", "error": str(error), "std_per_dim": [], "singular_values": [],
                "history": read_metrics(run_dir) if run_dir.is_dir() else [], "train_time_s": seconds,
                "time_s": seconds}
    history = read_metrics(result.out_dir)
    last = next((r for r in reversed(history) if "loss" in r), {})
    return {**dict(zip(("lam", "mu", "nu"), coefficients)), "seed": config.seed,
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
                 pretrain: Callable[[TrainConfig], Any] | None = None,
                 seeds: Sequence[int] | None = None) -> AblationTable:
    """One measured, cached run per (lam, mu, nu) of `grid` (or "1,0,0;25,25,1") and per seed of `seeds`
    (None: config.seed alone), in grid order, seeds inner; cache_dir default $VICREG_RUNS/ablation;
    probe_train_images: a subset for kNN and probe (None: all; the same images for every seed)."""
    grid = parse_grid(grid) if isinstance(grid, str) else [check_coefficients(c) for c in grid]
    if not grid:
        raise ValueError("grid is empty; pass at least one (lam, mu, nu), e.g. [(25, 25, 1)]")
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    seeds = check_seeds(seeds, config.seed)
    probe = _probe(config, probe_epochs, probe_train_images)
    runs = os.environ.get("VICREG_RUNS") or "runs"
    cache_dir = Path(cache_dir) if cache_dir is not None else Path(runs) / "ablation"
    start, data_fingerprint, rows = time.perf_counter(), _data_fingerprint(config), []
    runs_to_do = [(coefficients, seed) for coefficients in grid for seed in seeds]
    with tqdm(runs_to_do, total=len(runs_to_do), desc="ablation", disable=not progress) as bar:
        for coefficients, seed in bar:
            run_config = dataclasses.replace(config, seed=seed, **dict(zip(("lam", "mu", "nu"), coefficients)))
            key = cache_key(run_config, probe, data_fingerprint)
            folder = cache_dir / f"{run_name(coefficients, seed)}-{key}"
            bar.set_postfix(run=run_name(coefficients, seed))
            row = _load_cached(folder / RESULT_NAME, key)
            cached = row is not None
            if not cached:
                try:
                    row = _run_one(coefficients, run_config, folder / RUN_NAME, probe, pretrain or train.pretrain)
                except KeyboardInterrupt:
                    raise KeyboardInterrupt(
                        f"ablation interrupted in {run_name(coefficients, seed)}: the {len(rows)} runs before it are "
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
    """`measure_model` of `random_init_model` seeded by config.seed (and that "seed"): the baseline a run
    has to beat."""
    config = config.resolved()
    probe = _probe(config, probe_epochs, probe_train_images)
    train_images = load_dataset(config.data, "train", config.data_root)[0]
    model = random_init_model(config.arch(), train_images, config.seed)
    return {**measure_model(model, config, probe), "seed": config.seed}


def _number(digits: int) -> Callable[[Any], str]:
    return lambda value: ("-" if value is None or (isinstance(value, float) and math.isnan(value))
                          else f"{value:.{digits}f}")


def _paper(value: Any) -> str:
    return "-" if value == "n/a" else "collapse" if value is None else f"{value:.1f}"


def _agrees(value: bool | str | None) -> str:
    return value if isinstance(value, str) else {True: "yes", False: "NO", None: "-"}[value]


Column = tuple[str, str, Callable[[Any], str]]  # (row key, header, formatter)
_COEFFICIENTS: list[Column] = [("lam", "λ", "{:g}".format), ("mu", "μ", "{:g}".format), ("nu", "ν", "{:g}".format)]
COLUMNS: list[Column] = _COEFFICIENTS + [
    ("loss", "loss", _number(3)), ("invariance", "inv", _number(4)), ("variance", "var", _number(4)),
    ("covariance", "cov", _number(4)), ("std_mean", "mean std", _number(3)),
    ("effective_rank", "eff. rank", _number(1)), ("verdict", "verdict", str), ("knn_top1", "kNN %", _number(1)),
    ("linear_top1", "linear %", _number(1)),
]
def _range(digits: int) -> Callable[[Any], str]:
    def show(spread: dict[str, Any]) -> str:
        if math.isnan(spread["mean"]):
            return "-"
        if spread["min"] == spread["max"]:
            return f"{spread['mean']:.{digits}f}"
        return f"{spread['mean']:.{digits}f} ({spread['min']:.{digits}f} to {spread['max']:.{digits}f})"
    return show


SUMMARY_COLUMNS: list[Column] = _COEFFICIENTS + [
    ("seeds", "seeds", lambda seeds: ", ".join(str(s) for s in seeds)), ("verdict", "verdict", str),
    ("rms_std", "rms std: mean (min to max)", _range(3)), ("effective_rank", "eff. rank", _range(1)),
    ("knn_top1", "kNN %", _range(1)), ("linear_top1", "linear %", _range(1)),
]
SUMMARY_COMPARE_COLUMNS: list[Column] = _COEFFICIENTS + [
    ("paper_top1", "paper (ImageNet) top-1 %", _paper), ("seeds", "seeds", SUMMARY_COLUMNS[3][2]),
    ("verdict", "ours: verdict", str), ("rms_std", "ours: rms std", _range(3)),
    ("effective_rank", "ours: eff. rank", _range(1)), ("linear_top1", "ours: linear %", _range(1)),
    ("agrees", "collapse agrees", _agrees),
]
PAPER_COLUMNS: list[Column] = [("paper_top1", "paper top-1 %", _paper), ("agrees", "agrees", _agrees)]
COMPARE_COLUMNS: list[Column] = _COEFFICIENTS + [
    ("paper_top1", "paper (ImageNet) top-1 %", _paper), ("verdict", "ours: verdict", str),
    ("effective_rank", "ours: eff. rank", _number(1)), ("knn_top1", "ours: kNN %", _number(1)),
    ("linear_top1", "ours: linear %", _number(1)), ("agrees", "collapse agrees", _agrees),
]


SPREAD_KEYS = ("rms_std", "effective_rank", "knn_top1", "linear_top1")  # summarised over the seeds
SPREAD_LABELS = {"rms_std": ("rms std", 3, ""), "effective_rank": ("effective rank", 1, ""),
                 "knn_top1": ("kNN accuracy", 1, " %"), "linear_top1": ("linear accuracy", 1, " %")}
NEAR_COLLAPSE = 3.0  # a verdict other than collapsed whose smallest rms std is below 3x the threshold is "near"


def _spread(values: list[float]) -> dict[str, Any]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return {"mean": math.nan, "min": math.nan, "max": math.nan, "values": values}
    return {"mean": sum(finite) / len(finite), "min": min(finite), "max": max(finite), "values": values}


def _verdict_over_seeds(verdicts: list[str]) -> str:
    """"healthy" when every seed says so, else "mixed: healthy 2, collapsed 1" (most frequent first)."""
    if len(set(verdicts)) == 1:
        return verdicts[0]
    counts = sorted({v: verdicts.count(v) for v in verdicts}.items(), key=lambda item: -item[1])
    return "mixed: " + ", ".join(f"{verdict} {count}" for verdict, count in counts)


def summarise_runs(runs: Sequence[dict[str, Any]], name: str | None = None) -> dict[str, Any]:
    """Runs of one setting (rows of `run_ablation`, or `evaluate_random_init` results, one per seed) as one
    row: seeds, verdicts, the verdict over the seeds, {mean, min, max, values} of each of SPREAD_KEYS, and
    near_collapse: not collapsed, yet some seed's rms std is below NEAR_COLLAPSE times the collapse
    threshold. name: what `setting_name` calls the row (default: its (lam, mu, nu))."""
    if not runs:
        raise ValueError("summarise_runs needs at least one run")
    reports = [run.get("report") or {} for run in runs]
    values = {key: [float(report.get(key, math.nan)) if key == "rms_std" else float(run.get(key, math.nan))
                    for run, report in zip(runs, reports)] for key in SPREAD_KEYS}
    verdict = _verdict_over_seeds([run["verdict"] for run in runs])
    threshold = next((r["thresholds"]["std_threshold"] for r in reports if "thresholds" in r), math.nan)
    smallest = _spread(values["rms_std"])["min"]
    row = {"seeds": [run.get("seed") for run in runs], "verdicts": [run["verdict"] for run in runs],
           "verdict": verdict, "std_threshold": threshold,
           "near_collapse": verdict != COLLAPSED and smallest < NEAR_COLLAPSE * threshold,
           **{key: _spread(values[key]) for key in SPREAD_KEYS}}
    return {"name": name, **row} if name is not None else row


def summarise_seeds(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """`summarise_runs` of each (lam, mu, nu), in first-seen order, with its lam, mu and nu."""
    groups: dict[Coefficients, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["lam"], row["mu"], row["nu"]), []).append(row)
    return [{"lam": lam, "mu": mu, "nu": nu, **summarise_runs(runs)} for (lam, mu, nu), runs in groups.items()]


def setting_name(row: dict[str, Any]) -> str:
    """"(25, 25, 1)", or the row's "name" (e.g. "untrained")."""
    return row["name"] if "name" in row else f"({row['lam']:g}, {row['mu']:g}, {row['nu']:g})"


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def compare_settings(first: dict[str, Any], second: dict[str, Any], key: str = "linear_top1") -> dict[str, Any]:
    """Two `summarise_seeds` rows on `key`: separated (True) only when their seed ranges [min, max] do not
    overlap, None with a single seed (no spread to judge by); sentence says which, from the numbers."""
    label, digits, unit = SPREAD_LABELS[key]
    a, b = sorted((first, second), key=lambda row: -row[key]["mean"])  # a: the larger mean

    def shown(row):
        low, high = row[key]["min"], row[key]["max"]
        return f"{setting_name(row)} {row[key]['mean']:.{digits}f}{unit} (seeds {low:.{digits}f} to {high:.{digits}f})"

    gap = a[key]["mean"] - b[key]["mean"]
    if min(len(a["seeds"]), len(b["seeds"])) < 2:
        separated, verb = None, f"differ by {gap:.{digits}f} in {label}, with one seed: no spread to judge by"
    elif a[key]["min"] > b[key]["max"]:
        separated, verb = True, (f"differ in {label} by more than their seed spread, {setting_name(a)} ahead "
                                 f"by {gap:.{digits}f}")
    else:
        separated, verb = False, f"differ by less than their seed spread in {label}"
    return {"separated": separated, "gap": gap, "higher": a, "lower": b,
            "sentence": _capitalised(f"{setting_name(a)} and {setting_name(b)} {verb}: {shown(a)}, {shown(b)}.")}


def _paper_columns(row: dict[str, Any]) -> dict[str, Any]:
    """The paper's number and whether our verdict agrees: its "collapse" is only our "collapsed" (a
    dimensional collapse still learned, which the paper reports as a lower accuracy). A summary row over
    seeds agrees when every seed does, and says "k of n seeds" when only some do."""
    coefficients = (row["lam"], row["mu"], row["nu"])
    if coefficients not in PAPER_ABLATION:
        return {"paper_top1": "n/a", "agrees": None}
    paper_collapsed = PAPER_ABLATION[coefficients] is None
    each = [paper_collapsed == (verdict == COLLAPSED) for verdict in row.get("verdicts", [row["verdict"]])]
    agrees = all(each) if all(each) or not any(each) else f"{sum(each)} of {len(each)} seeds"
    return {"paper_top1": PAPER_ABLATION[coefficients], "agrees": agrees}


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
        """The i-th row, or the one row of a (lam, mu, nu); with several seeds use runs() or summary()."""
        if isinstance(index, int):
            return self.rows[index]
        runs = self.runs(index)
        if len(runs) > 1:
            raise KeyError(f"{check_coefficients(index)} has {len(runs)} runs (seeds "
                           f"{[row.get('seed') for row in runs]}); use table.runs(setting) for each run or "
                           "table.summary()[setting] for the setting over its seeds")
        return runs[0]

    def runs(self, setting: Sequence[float]) -> list[dict[str, Any]]:
        """Every row of one (lam, mu, nu), one per seed."""
        wanted = check_coefficients(setting)
        runs = [row for row in self.rows if (row["lam"], row["mu"], row["nu"]) == wanted]
        if not runs:
            raise KeyError(f"no row for {wanted}; the table holds {self.settings()}")
        return runs

    def coefficients(self) -> list[Coefficients]:
        return [(row["lam"], row["mu"], row["nu"]) for row in self.rows]

    def settings(self) -> list[Coefficients]:
        """The distinct (lam, mu, nu), in order."""
        return list(dict.fromkeys(self.coefficients()))

    def summary(self) -> AblationTable:
        """One row per setting over its seeds (`summarise_seeds`): verdict, mean and range of each number."""
        return AblationTable(summarise_seeds(self.rows), SUMMARY_COLUMNS, self.elapsed_s)

    def with_paper(self) -> AblationTable:
        """Our columns plus the paper's top-1 and whether the collapse verdicts agree."""
        rows = [{**row, **_paper_columns(row)} for row in self.rows]
        return AblationTable(rows, self.columns + PAPER_COLUMNS, self.elapsed_s)

    def compare_with_paper(self) -> AblationTable:
        """The runs (or, on a summary(), the settings) the paper reports, beside its ImageNet number."""
        rows = [{**row, **_paper_columns(row)} for row in self.rows
                if (row["lam"], row["mu"], row["nu"]) in PAPER_ABLATION]
        columns = SUMMARY_COMPARE_COLUMNS if self.columns is SUMMARY_COLUMNS else COMPARE_COLUMNS
        return AblationTable(rows, columns, self.elapsed_s)

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
