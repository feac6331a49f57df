"""Tests of the coefficient sweep: real (tiny) pretraining runs, the on-disk cache, the table."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import numpy as np

from vicreg_lib import ablation, train
from vicreg_lib.ablation import PAPER_ABLATION, AblationTable, parse_grid, run_ablation
from vicreg_lib.config import TrainConfig
from vicreg_lib.eval.diagnostics import COLLAPSED, DIMENSIONAL_COLLAPSE, HEALTHY

# width 4 (32-d representation h), projector 48-48-48 (48-d embedding z, so the two cannot be
# confused), 64 synthetic train / 32 test images, batch 32: two steps per run
TINY = TrainConfig(data="synthetic:64,32", width=4, projector="48-48-48", batch_size=32, epochs=1,
                   device="cpu", eval_every=0, progress=False)
EMBEDDING_DIM = 48
GRID = [(1, 0, 0), (25, 25, 1)]


class Spy:
    """Calls the real pretrain and counts; raises instead on call number `fail_on` (1-based)."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[tuple[float, float, float]] = []
        self.seeds: list[int] = []
        self.fail_on = fail_on

    def __call__(self, config: TrainConfig):
        self.calls.append((config.lam, config.mu, config.nu))
        self.seeds.append(config.seed)
        if self.fail_on == len(self.calls):
            raise KeyboardInterrupt("simulated interruption")
        return train.pretrain(config)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny tensors: a second thread only adds synchronisation (7x slower on a busy 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sweep(one_thread, tmp_path_factory):
    cache = tmp_path_factory.mktemp("ablation")
    spy = Spy()
    table = run_ablation(GRID, TINY, cache_dir=cache, probe_epochs=2, progress=False, pretrain=spy)
    return cache, spy, table


def test_each_setting_is_one_run_and_its_row_holds_the_diagnostics(sweep):
    _, spy, table = sweep
    assert spy.calls == [(1.0, 0.0, 0.0), (25.0, 25.0, 1.0)]
    assert table.coefficients() == [(1.0, 0.0, 0.0), (25.0, 25.0, 1.0)]
    for row in table:
        assert not row["cached"]
        # the diagnostics are of the embedding z (48-d), not of the representation h (32-d)
        assert len(row["std_per_dim"]) == EMBEDDING_DIM
        assert row["report"]["d"] == EMBEDDING_DIM
        assert row["std_mean"] == pytest.approx(sum(row["std_per_dim"]) / EMBEDDING_DIM)
        sigma = row["singular_values"]
        assert len(sigma) == min(32, EMBEDDING_DIM) and sigma == sorted(sigma, reverse=True)  # 32 test images
        assert row["verdict"] in (COLLAPSED, DIMENSIONAL_COLLAPSE, HEALTHY)
        assert row["verdict"] == row["report"]["verdict"]
        assert row["effective_rank"] == pytest.approx(row["report"]["effective_rank"])
        assert 0 <= row["knn_top1"] <= 100 and 0 <= row["linear_top1"] <= 100
        assert [r["epoch"] for r in row["history"]] == [1]  # one epoch, read from metrics.jsonl
        assert row["loss"] == pytest.approx(row["history"][-1]["loss"])
    # the loss total is the weighted sum of the terms: (1, 0, 0) is invariance alone
    first = table[(1, 0, 0)]
    assert first["loss"] == pytest.approx(first["invariance"], rel=1e-5)


def test_unchanged_config_loads_from_cache_without_training(sweep):
    cache, first_spy, first = sweep
    spy = Spy()
    again = run_ablation(GRID, TINY, cache_dir=cache, probe_epochs=2, progress=False, pretrain=spy)
    assert spy.calls == []
    assert all(row["cached"] for row in again)
    for old, new in zip(first, again):
        differing = {k for k in old if old[k] != new[k]}
        assert differing == {"cached"} and old.keys() == new.keys()


def test_changed_config_or_probe_reruns(sweep):
    cache, _, _ = sweep
    spy = Spy()
    run_ablation([(25, 25, 1)], dataclasses.replace(TINY, seed=1), cache_dir=cache, probe_epochs=2,
                 progress=False, pretrain=spy)
    assert spy.calls == [(25.0, 25.0, 1.0)]
    spy = Spy()  # a different probe is a different result too
    run_ablation([(1, 0, 0)], TINY, cache_dir=cache, probe_epochs=2, probe_train_images=48, progress=False,
                 pretrain=spy)
    assert spy.calls == [(1.0, 0.0, 0.0)]
    assert len(list(cache.glob("lam1_mu0_nu0_seed0-*/result.json"))) == 2  # the first result is kept
    # out_dir and the progress bar do not change what a run computes: same key
    assert ablation.cache_key(TINY, {}, "data") == ablation.cache_key(
        dataclasses.replace(TINY, out_dir="elsewhere", progress=True), {}, "data")
    assert ablation.cache_key(TINY, {}, "data") != ablation.cache_key(TINY, {}, "other data")


def test_the_cache_key_follows_the_data_content_not_its_path(tmp_path):
    path = tmp_path / "data.npz"

    def write(seed: int) -> None:
        rng = np.random.default_rng(seed)
        np.savez(path, train_images=rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8),
                 train_labels=np.arange(8) % 2, test_images=rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8),
                 test_labels=np.arange(4) % 2)

    config = dataclasses.replace(TINY, data=f"npz:{path}")
    write(0)
    first = ablation._data_fingerprint(config)
    assert ablation._data_fingerprint(config) == first
    write(1)  # the same path, new content
    assert ablation._data_fingerprint(config) != first


def test_the_cache_key_follows_a_replaced_archive_of_the_same_name_size_and_mtime(tmp_path):
    """The archive's unpacked copy is keyed by its bytes, so the ablation's data hash sees the new images."""
    import os

    from support import bmp_archive

    archive = tmp_path / "images.tar"

    def write(colour) -> None:  # BMPs have a fixed size: every colour gives an archive of the same size
        bmp_archive(archive, colour)

    config = dataclasses.replace(TINY, data=f"archive:{archive}", data_root=str(tmp_path / "root"))
    write((200, 0, 0))
    first, before = ablation._data_fingerprint(config), os.stat(archive)
    write((0, 0, 200))
    os.utime(archive, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(archive).st_size == before.st_size
    assert ablation._data_fingerprint(config) != first


def test_a_cached_result_of_the_wrong_shape_is_recomputed(sweep, tmp_path):
    cache, _, _ = sweep
    path = next(cache.glob("lam1_mu0_nu0_seed0-*/result.json"))
    key = path.parent.name.split("-")[1]
    payload = json.loads(path.read_text())
    wrong_types = [{**payload, "row": {**payload["row"], name: value}}
                   for name, value in (("knn_top1", "high"), ("lam", [1]), ("verdict", 3), ("history", "none"))]
    for broken in ([1, 2], {**payload, "row": [1, 2]}, {**payload, "row": {"lam": 1.0}}, *wrong_types):
        wrong = tmp_path / "result.json"
        wrong.write_text(json.dumps(broken))
        assert ablation._load_cached(wrong, key) is None


def test_interrupted_sweep_keeps_finished_settings(tmp_path):
    grid = [(5, 5, 1), (50, 50, 1)]
    with pytest.raises(KeyboardInterrupt):
        run_ablation(grid, TINY, cache_dir=tmp_path, probe_epochs=2, progress=False, pretrain=Spy(fail_on=2))
    results = sorted(tmp_path.glob("*/result.json"))
    assert [p.parent.name.split("-")[0] for p in results] == ["lam5_mu5_nu1_seed0"]
    assert json.loads(results[0].read_text())["row"]["lam"] == 5.0
    assert not list(tmp_path.glob("*/.result.json.*"))  # no temporary file left behind
    spy = Spy()
    table = run_ablation(grid, TINY, cache_dir=tmp_path, probe_epochs=2, progress=False, pretrain=spy)
    assert spy.calls == [(50.0, 50.0, 1.0)]
    assert [row["cached"] for row in table] == [True, False]


def test_damaged_result_file_is_recomputed(sweep, tmp_path):
    cache, _, table = sweep
    path = next(cache.glob("lam1_mu0_nu0_seed0-*/result.json"))
    copy = tmp_path / path.parent.name / path.name
    copy.parent.mkdir()
    copy.write_text(path.read_text()[:50])  # truncated, as after a crash mid-write without os.replace
    assert ablation._load_cached(copy, path.parent.name.split("-")[1]) is None
    assert ablation._load_cached(path, "0" * 16) is None  # a file whose key differs is not used
    assert ablation._load_cached(path, path.parent.name.split("-")[1]) is not None


@pytest.mark.parametrize("grid, message", [
    ([(1, -1, 0)], "mu = -1"),
    ([(1, 0)], "three numbers"),
    ([(1, 0, float("nan"))], "nu must be a finite number"),
    ("1,0,0;25,x,1", "lam,mu,nu"),
    ("25,25,-1", "nu = -1.0"),
    ([], "grid is empty"),
    ([(1, 1, 1)], "probe_train_images must be"),
    (";", "holds no coefficients"),
])
def test_bad_settings_fail_before_any_training(grid, message, tmp_path):
    spy = Spy()
    with pytest.raises(ValueError, match=message):
        run_ablation(grid, TINY, cache_dir=tmp_path, progress=False, pretrain=spy,
                     probe_train_images=0 if message.startswith("probe") else None)
    assert spy.calls == []


def test_parse_grid():
    assert parse_grid("1,0,0; 25,25,1;") == [(1.0, 0.0, 0.0), (25.0, 25.0, 1.0)]


def _row(setting, verdict, linear):
    lam, mu, nu = setting
    return {"lam": float(lam), "mu": float(mu), "nu": float(nu), "loss": 1.0, "invariance": 0.1,
            "variance": 0.2, "covariance": 0.3, "std_mean": 0.5, "effective_rank": 7.0, "verdict": verdict,
            "knn_top1": linear - 1, "linear_top1": linear}


def test_table_renders_with_the_papers_numbers():
    table = AblationTable([_row((1, 0, 0), COLLAPSED, 11.0), _row((1, 1, 0), HEALTHY, 30.0),
                           _row((25, 5, 1), HEALTHY, 40.0)])
    plain = str(table)
    assert "verdict" in plain and COLLAPSED in plain and "40.0" in plain
    assert "68.6" not in plain  # our own table has no paper column
    with_paper = table.with_paper().to_markdown()
    lines = with_paper.splitlines()
    assert lines[0].startswith("| λ | μ | ν |") and "paper top-1 %" in lines[0]
    assert len(lines) == 2 + 3
    assert "| collapse | yes |" in lines[2]  # (1,0,0): paper collapse, ours collapsed
    assert f"| {PAPER_ABLATION[(1.0, 1.0, 0.0)]:.1f} | yes |" in lines[3]
    assert lines[4].endswith("| - | - |")  # (25, 5, 1) is not in the paper
    compared = table.compare_with_paper()
    assert compared.coefficients() == [(1.0, 0.0, 0.0), (1.0, 1.0, 0.0)]
    assert table._repr_markdown_() == table.to_markdown()
    # a disagreement is shown, not hidden
    disagree = AblationTable([_row((25, 0, 1), "ok", 20.0)]).compare_with_paper().to_markdown()
    assert "collapse" in disagree and disagree.splitlines()[-1].endswith("| NO |")
    assert table[(25, 5, 1)]["linear_top1"] == 40.0
    with pytest.raises(KeyError, match="no row for"):
        table[(2, 2, 2)]


def test_paper_table_is_the_papers():
    assert PAPER_ABLATION[(25.0, 25.0, 1.0)] == 68.6
    assert [s for s, top1 in PAPER_ABLATION.items() if top1 is None] == [(1.0, 0.0, 0.0), (25.0, 0.0, 1.0)]
    assert "ImageNet" in ablation.PAPER_SOURCE and "100" in ablation.PAPER_SOURCE


def test_plots_draw_one_line_per_setting(sweep):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, _, table = sweep
    fig, axes = plt.subplots(1, 4)
    from vicreg_lib.tutorial import plotting

    plotting.plot_ablation_std_history(table, axes[0])
    plotting.plot_ablation_std_per_dim(table, axes[1])
    plotting.plot_ablation_spectra(table, axes[2])
    plotting.plot_ablation_accuracy(table, axes[3], baseline={"linear_top1": 12.5})
    assert len(axes[2].get_lines()) == len(table)
    assert axes[3].get_lines()[0].get_ydata()[0] == 12.5  # the random-init line
    assert len(axes[3].patches) == 2 * len(table)
    spectrum = axes[2].get_lines()[0].get_ydata()
    assert spectrum[0] == pytest.approx(1.0) and all(math.isfinite(v) for v in spectrum)
    plt.close(fig)


def test_cli_ablate_tiny_run_prints_the_table_beside_the_papers(tmp_path, capsys):
    from vicreg_lib.cli import main

    argv = ["ablate", "--grid", "25,0,1", "--cache-dir", str(tmp_path), "--probe-epochs", "2",
            "--data", "synthetic:64,32", "--width", "4", "--projector", "48-48-48", "--batch-size", "32",
            "--epochs", "1", "--device", "cpu", "--eval-every", "0", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    header, _, row = out.splitlines()[:3]
    assert "verdict" in header and "paper top-1 %" in header
    assert row.split()[:3] == ["25", "0", "1"] and "collapse" in row
    assert "1 settings" in out and "0 from the cache" in out
    assert len(list(tmp_path.glob("lam25_mu0_nu1_seed0-*/result.json"))) == 1
    assert main(argv) == 0  # the second time it comes from the cache
    assert "1 from the cache" in capsys.readouterr().out


def test_cli_ablate_bad_grid_is_one_clear_error(capsys):
    from vicreg_lib.cli import main

    assert main(["ablate", "--grid", "1,-2,0"]) == 2
    err = capsys.readouterr().err
    assert "mu = -2" in err and "usage:" not in err


def test_an_interrupted_sweep_says_how_to_continue_without_resume(tmp_path):
    with pytest.raises(KeyboardInterrupt) as stopped:
        run_ablation([(5, 5, 1), (50, 50, 1)], TINY, cache_dir=tmp_path, probe_epochs=2, progress=False,
                     pretrain=Spy(fail_on=2))
    assert "run the same call again" in str(stopped.value) and "--resume" not in str(stopped.value)


def test_random_init_baseline_is_the_untrained_network(one_thread):
    first = ablation.evaluate_random_init(TINY, probe_epochs=2)
    again = ablation.evaluate_random_init(TINY, probe_epochs=2)
    assert first == again  # seeded: the same initialisation every time
    assert len(first["std_per_dim"]) == EMBEDDING_DIM and first["verdict"] in (COLLAPSED, DIMENSIONAL_COLLAPSE,
                                                                              HEALTHY)
    other_seed = ablation.evaluate_random_init(dataclasses.replace(TINY, seed=5), probe_epochs=2)
    assert other_seed["std_per_dim"] != first["std_per_dim"]
    assert (first["seed"], other_seed["seed"]) == (0, 5)


def test_paper_collapse_means_a_complete_verdict():
    # the paper writes "collapse" where training failed and a number where it learned:
    # a dimensional collapse learned (along few directions), so it agrees with a number
    rows = [_row((1, 1, 0), DIMENSIONAL_COLLAPSE, 30.0), _row((25, 0, 1), DIMENSIONAL_COLLAPSE, 20.0),
            _row((25, 0, 1), COLLAPSED, 20.0)]
    lines = [AblationTable([row]).compare_with_paper().to_markdown().splitlines()[-1] for row in rows]
    assert lines[0].endswith("| yes |")
    assert lines[1].endswith("| NO |")
    assert lines[2].endswith("| yes |")


def test_the_untrained_baseline_is_measured_with_batchnorm_statistics_of_the_data(one_thread, monkeypatch):
    """At BatchNorm's initial statistics an untrained network's embeddings read as collapsed."""
    from vicreg_lib.eval import report

    calibrated = ablation.evaluate_random_init(TINY, probe_epochs=2)
    monkeypatch.setattr(report, "calibrate_batchnorm", lambda model, batches: model.eval())  # skip the calibration
    raw = ablation.evaluate_random_init(TINY, probe_epochs=2)
    assert calibrated["report"]["rms_std"] > 5 * raw["report"]["rms_std"]
    assert calibrated["verdict"] != COLLAPSED


# ---- seeds ----------------------------------------------------------------------------------


def test_each_seed_is_its_own_run_and_its_own_cached_result(one_thread, tmp_path):
    spy = Spy()
    table = run_ablation([(25, 25, 1)], TINY, cache_dir=tmp_path, probe_epochs=2, progress=False, pretrain=spy,
                         seeds=[3, 4])
    assert spy.seeds == [3, 4] and [row["seed"] for row in table] == [3, 4]
    first, second = table.runs((25, 25, 1))
    # the seed reaches the training: other weights, other batches, other embeddings
    assert first["loss"] != second["loss"] and first["std_per_dim"] != second["std_per_dim"]
    assert sorted(p.parent.name.split("-")[0] for p in tmp_path.glob("*/result.json")) == [
        "lam25_mu25_nu1_seed3", "lam25_mu25_nu1_seed4"]
    spy = Spy()  # the same seed again: loaded, not trained, and the very same numbers
    again = run_ablation([(25, 25, 1)], TINY, cache_dir=tmp_path, probe_epochs=2, progress=False, pretrain=spy,
                         seeds=[4])
    assert spy.calls == [] and again[0]["cached"]
    assert {k: v for k, v in again[0].items() if k != "cached"} == {k: v for k, v in second.items() if k != "cached"}
    with pytest.raises(KeyError, match="2 runs"):
        table[(25, 25, 1)]  # ambiguous with two seeds: the error names runs() and summary()
    assert table.settings() == [(25.0, 25.0, 1.0)] and len(table.summary()) == 1


def test_without_seeds_the_config_seed_is_the_one_run(one_thread, tmp_path):
    spy = Spy()
    table = run_ablation([(1, 0, 0)], dataclasses.replace(TINY, seed=7), cache_dir=tmp_path, probe_epochs=2,
                         progress=False, pretrain=spy)
    assert spy.seeds == [7] and table[(1, 0, 0)]["seed"] == 7


@pytest.mark.parametrize("seeds, message", [([], "non-empty"), ([0, 0], "repeat"), ([-1], ">= 0"),
                                            (["0"], "integers"), (1, "list of integers")])
def test_bad_seeds_fail_before_any_training(seeds, message, tmp_path):
    spy = Spy()
    with pytest.raises(ValueError, match=message):
        run_ablation([(1, 0, 0)], TINY, cache_dir=tmp_path, progress=False, pretrain=spy, seeds=seeds)
    assert spy.calls == []


def _seed_row(setting, seed, verdict, rms_std, linear, rank=50.0):
    lam, mu, nu = setting
    return {"lam": lam, "mu": mu, "nu": nu, "seed": seed, "verdict": verdict, "linear_top1": linear,
            "knn_top1": linear - 1, "effective_rank": rank,
            "report": {"rms_std": rms_std, "thresholds": {"std_threshold": 0.05}}}


def test_summary_gives_each_setting_its_mean_range_and_verdict_over_the_seeds():
    rows = [_seed_row((25, 25, 1), 0, HEALTHY, 0.30, 34.0), _seed_row((25, 25, 1), 1, HEALTHY, 0.34, 36.0),
            _seed_row((25, 5, 1), 0, HEALTHY, 0.10, 30.0), _seed_row((25, 5, 1), 1, COLLAPSED, 0.04, 28.0)]
    summary = AblationTable(rows).summary()
    default, weak = summary[(25, 25, 1)], summary[(25, 5, 1)]
    assert default["seeds"] == [0, 1] and default["verdict"] == HEALTHY and not default["near_collapse"]
    assert default["linear_top1"]["mean"] == pytest.approx(35.0)
    assert (default["linear_top1"]["min"], default["linear_top1"]["max"]) == (34.0, 36.0)
    assert default["rms_std"]["values"] == [0.30, 0.34]
    assert weak["verdict"] == f"mixed: {HEALTHY} 1, {COLLAPSED} 1" and weak["near_collapse"]
    near = AblationTable([_seed_row((25, 5, 1), 0, HEALTHY, 0.10, 30.0)]).summary()[(25, 5, 1)]
    assert near["verdict"] == HEALTHY and near["near_collapse"]  # 0.10 < 3 x 0.05
    assert "34.0 to 36.0" in str(summary) and "mixed" in summary.to_markdown()
    compared = summary.compare_with_paper()  # beside the paper: (25, 25, 1) learned, so did every seed
    assert compared[(25, 25, 1)]["agrees"] is True and compared.settings() == [(25.0, 25.0, 1.0)]
    assert "paper (ImageNet) top-1 %" in str(compared) and "34.0 to 36.0" in str(compared)
    mixed = AblationTable([_seed_row((1, 0, 0), 0, COLLAPSED, 0.01, 20.0),
                           _seed_row((1, 0, 0), 1, HEALTHY, 0.2, 25.0)]).summary().compare_with_paper()
    assert mixed[(1, 0, 0)]["agrees"] == "1 of 2 seeds" and "| 1 of 2 seeds |" in mixed.to_markdown()


def test_compare_settings_claims_a_ranking_only_beyond_the_seed_spread():
    a = [_seed_row((5, 5, 1), s, HEALTHY, 0.3, v) for s, v in ((0, 35.0), (1, 37.0))]
    b = [_seed_row((25, 25, 1), s, HEALTHY, 0.3, v) for s, v in ((0, 34.0), (1, 36.0))]
    c = [_seed_row((1, 1, 0), s, DIMENSIONAL_COLLAPSE, 0.8, v) for s, v in ((0, 31.0), (1, 32.5))]
    summary = AblationTable(a + b + c).summary()
    overlapping = ablation.compare_settings(summary[(25, 25, 1)], summary[(5, 5, 1)])
    assert overlapping["separated"] is False and overlapping["gap"] == pytest.approx(1.0)
    assert overlapping["sentence"].startswith("(5, 5, 1) and (25, 25, 1) differ by less than their seed spread")
    apart = ablation.compare_settings(summary[(1, 1, 0)], summary[(25, 25, 1)])
    assert apart["separated"] is True and apart["higher"]["lam"] == 25.0
    assert "(25, 25, 1) ahead by 3.2" in apart["sentence"] and "seeds 31.0 to 32.5" in apart["sentence"]
    untrained = ablation.summarise_runs([{"seed": s, "verdict": HEALTHY, "linear_top1": v, "report": {}}
                                          for s, v in ((0, 26.0), (1, 27.0))], name="untrained")
    assert untrained["seeds"] == [0, 1] and untrained["linear_top1"]["max"] == 27.0
    assert ablation.compare_settings(untrained, summary[(1, 1, 0)])["sentence"].startswith(
        "(1, 1, 0) and untrained differ in linear accuracy by more than their seed spread")
    single = AblationTable([a[0], b[0]]).summary()
    assert ablation.compare_settings(single[(5, 5, 1)], single[(25, 25, 1)])["separated"] is None
