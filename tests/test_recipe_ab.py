"""benchmarks/recipe_ab.py: its smoke runs end to end, its decision rule and its budget plan.

The decision and the plan are tested on hand-made numbers (a fake run in place of pretrain),
so nothing here depends on how fast or how loaded the machine is; the smoke ignores its budget.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vicreg_lib.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"


@pytest.fixture(scope="module")
def ab():
    """The script as a module (benchmarks/ on sys.path for its `import common`)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import recipe_ab

        yield recipe_ab
    finally:
        sys.path.remove(str(BENCHMARKS))


# ----------------------------------------------------------------------------- the decision


def test_a_variant_ahead_by_more_than_the_spread_wins(ab) -> None:
    decision = ab.decide({
        "baseline": [50.0, 51.0],         # spread 1
        "clip_solo_learn": [53.0, 53.5],  # +2.75, spreads 1 and 0.5: wins
        "mu_official": [51.0, 51.8],       # +0.9 < 1: within the spread
        "stem_padding_2": [53.0, 56.0],   # +4.0 > its own spread 3: wins
        "no_zero_init": [50.0, 54.0],     # +1.5 < its spread 4: no
        "bicubic_crop": [47.0, 47.5],     # -3.25: loses
    })
    assert decision["winners"] == ["clip_solo_learn", "stem_padding_2"]
    assert decision["overrides"] == {"lars_clip": "solo-learn", "stem_padding": 2}
    variants = decision["variants"]
    assert variants["clip_solo_learn"]["mean"] == pytest.approx(53.25)
    assert variants["clip_solo_learn"]["spread"] == pytest.approx(0.5)
    assert variants["clip_solo_learn"]["delta"] == pytest.approx(2.75)
    assert variants["mu_official"]["verdict"].startswith("within the spread")
    assert variants["bicubic_crop"]["verdict"].startswith("loses")
    assert variants["baseline"]["delta"] == 0.0 and decision["note"] is None


def test_a_lead_equal_to_the_spread_does_not_win(ab) -> None:
    decision = ab.decide({"baseline": [50.0, 52.0], "mu_official": [53.0, 53.0]})  # +2 == spread 2
    assert decision["winners"] == [] and decision["overrides"] == {}


def test_solo_learn_all_never_becomes_an_override_by_itself(ab) -> None:
    decision = ab.decide({"baseline": [50.0, 50.5], "clip_solo_learn": [50.2, 50.6],
                          "solo_learn_all": [60.0, 60.5]})
    assert decision["winners"] == ["solo_learn_all"]
    assert decision["overrides"] == {}
    assert "no single change" in decision["note"]
    # with a single winner behind it, the merged overrides are the single's and a note says so
    decision = ab.decide({"baseline": [50.0, 50.5], "bicubic_crop": [52.0, 52.2],
                          "solo_learn_all": [60.0, 60.5]})
    assert decision["winners"] == ["bicubic_crop", "solo_learn_all"]
    assert decision["overrides"] == {"crop_interpolation": "bicubic"}
    assert "beats every single winner" in decision["note"]


def test_one_seed_or_a_failed_run_is_not_judged(ab) -> None:
    decision = ab.decide({"baseline": [50.0], "clip_solo_learn": [70.0]})
    verdict = decision["variants"]["clip_solo_learn"]["verdict"]
    assert decision["winners"] == [] and "fewer than 2 seeds" in verdict
    decision = ab.decide({"baseline": [50.0, 50.1], "clip_solo_learn": [70.0, None, 70.2]})
    stats = decision["variants"]["clip_solo_learn"]
    assert decision["winners"] == [] and stats["failed"] == 1 and stats["mean"] == pytest.approx(70.1)
    decision = ab.decide({"baseline": [None, None], "clip_solo_learn": [70.0, 70.2]})
    verdict = decision["variants"]["clip_solo_learn"]["verdict"]
    assert decision["winners"] == [] and "no finished baseline" in verdict


def test_every_variant_and_every_merge_is_a_valid_setting(ab) -> None:
    for name, overrides in ab.VARIANTS.items():
        TrainConfig.from_preset("fast", **overrides)
    everything = ab.decide({name: [50.0, 50.0] if name == "baseline" else [60.0, 60.0]
                            for name in ab.VARIANTS})
    assert set(everything["winners"]) == set(ab.VARIANTS) - {"baseline"}
    merged = {key: value for name, overrides in ab.SINGLE_VARIANTS.items() for key, value in overrides.items()}
    assert everything["overrides"] == merged  # the single winners merged, never solo_learn_all itself
    config = TrainConfig.from_preset("fast", **everything["overrides"])
    assert (config.lars_clip, config.mu, config.stem_padding, config.zero_init_residual,
            config.crop_interpolation) == ("solo-learn", 25.0, 2, False, "bicubic")
    solo = TrainConfig.from_preset("fast", **ab.VARIANTS["solo_learn_all"])  # solo-learn's choices, all five
    assert (solo.lars_clip, solo.mu, solo.stem_padding) == ("solo-learn", 50.0, 2)


# ----------------------------------------------------------------------------- the plan


def test_choose_epochs_fits_every_run_in_what_is_left(ab) -> None:
    plan = ab.choose_epochs(left_s=1000.0, runs=14, epoch_s=5.0, fixed_s=10.0)
    assert plan["epochs"] == 12 and plan["fits"]  # 14 * (10 + 12 * 5) = 980 <= 1000 < 14 * 75
    assert ab.choose_epochs(left_s=10.0, runs=14, epoch_s=5.0, fixed_s=10.0)["epochs"] == 1  # at least one
    assert [ab.warmup_for(e) for e in (1, 2, 9, 10, 50)] == [0, 1, 1, 2, 2]


class FakeClock:
    """time.perf_counter for the script: it moves only when a fake run says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def fake_runs(ab, monkeypatch, wall_s: float, train_s: float) -> list[tuple[str, int, int]]:
    """run_one replaced by an instant run that takes wall_s on a fake clock; returns the calls made."""
    clock, calls = FakeClock(), []

    def run_one(variant, seed, epochs, plan, out_dir):
        calls.append((variant, seed, epochs))
        clock.now += wall_s
        return {"variant": variant, "seed": seed, "overrides": {}, "epochs": epochs, "knn_top1": 50.0 + seed,
                "knn_top1@20": 50.0, "wall_s": wall_s, "train_time_s": train_s, "steps": 10,
                "graphed": False, "graph_note": "not on CUDA"}

    monkeypatch.setattr(ab, "run_one", run_one)
    monkeypatch.setattr(ab, "time", clock)
    return calls


def test_the_budget_sets_the_epochs_and_skips_what_does_not_fit(ab, tmp_path, monkeypatch) -> None:
    # the timing run: 10 s an epoch and 2 s fixed; 2 variants x 2 seeds in the 988 s left -> 24 epochs
    calls = fake_runs(ab, monkeypatch, wall_s=12.0, train_s=10.0)
    result = ab.run_recipe_ab("synthetic", None, "cpu", 1000.0, tmp_path, variants=["mu_official"])
    assert calls[0] == ("baseline", 0, 1) and result["epochs"] == 24
    assert calls[1:] == [("baseline", 0, 24), ("mu_official", 0, 24),
                         ("baseline", 1, 24), ("mu_official", 1, 24)]
    assert not result["estimate"]["timing_run_kept"] and len(result["runs"]) == 4
    # one epoch fits only: the timing run is kept as the baseline's first seed, not run again ...
    calls = fake_runs(ab, monkeypatch, wall_s=12.0, train_s=10.0)
    result = ab.run_recipe_ab("synthetic", None, "cpu", 30.0, tmp_path, variants=["mu_official"])
    assert result["epochs"] == 1 and calls == [("baseline", 0, 1), ("mu_official", 0, 1)]
    # ... and a run whose predicted end passes the budget is skipped, not started
    assert len(result["runs"]) == 2 and [(s["variant"], s["seed"]) for s in result["skipped"]] == [
        ("baseline", 1), ("mu_official", 1)]
    assert json.loads((tmp_path / "ab.json").read_text())["skipped"] == result["skipped"]
    # the smoke runs everything whatever the clock says
    calls = fake_runs(ab, monkeypatch, wall_s=1e6, train_s=1.0)
    result = ab.run_recipe_ab(None, None, "cpu", 1.0, tmp_path, smoke=True)
    assert len(calls) == len(ab.VARIANTS) and result["skipped"] == []


@pytest.mark.parametrize(("argv", "message"), [
    (["--budget-s", "0"], "'0' is not a positive number of seconds"),
    (["--data", "synthetic", "--archive", "x.tar.gz"], "give --data or --archive, not both"),
    (["--variants", "bigger_batch"], "invalid choice: 'bigger_batch'"),
])
def test_bad_options_give_one_clear_error(ab, argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        ab.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


# ----------------------------------------------------------------------------- the smoke


def test_recipe_ab_smoke(tmp_path: Path) -> None:
    out = tmp_path / "out"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(BENCHMARKS / "recipe_ab.py"), "--smoke", "--device", "cpu",
                           "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    print(f"recipe_ab.py --smoke took {time.perf_counter() - started:.0f} s")
    assert done.returncode == 0, f"recipe_ab.py --smoke failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result = json.loads((out / "ab.json").read_text())  # strict JSON: json.loads refuses nothing here
    assert result["status"] == "complete" and result["settings"]["smoke"] is True
    names = list(result["variants"])
    assert names[0] == "baseline" and len(names) == 7
    seeds = result["settings"]["seeds"]
    assert sorted((r["variant"], r["seed"]) for r in result["runs"]) == sorted(
        (name, seed) for name in names for seed in seeds)
    for run in result["runs"]:
        assert 0 <= run["knn_top1"] <= 100 and run["epochs"] == result["epochs"] == 1
        assert run["steps"] > 0 and run["graphed"] is False and math.isfinite(run["train_time_s"])
        assert (out / f"{run['variant']}-seed{run['seed']}" / "metrics.jsonl").is_file()
        assert not (out / f"{run['variant']}-seed{run['seed']}" / "checkpoint.pt").exists()
    assert result["skipped"] == [] and isinstance(result["winners"], list)
    TrainConfig.from_preset("fast", **result["overrides"])
    lines = done.stdout.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("-") and "-+-" in line)
    assert "variant" in lines[rule - 1] and "verdict" in lines[rule - 1]
