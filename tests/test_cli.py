"""Command line: generated options, argparse errors, a tiny pretrain and evaluate."""

from __future__ import annotations

import dataclasses
import runpy
import sys

import pytest
import torch

from vicreg_lib.cli import SUBCOMMANDS, main
from vicreg_lib.config import PRESETS, TrainConfig
from vicreg_lib.runstate import read_config, read_metrics

TINY = ["--data", "synthetic:64,32", "--width", "4", "--projector", "32-32-32", "--batch-size", "16",
        "--device", "cpu", "--no-progress"]




def test_pretrain_help_lists_every_config_field_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for config_field in dataclasses.fields(TrainConfig):
        assert "--" + config_field.name.replace("_", "-") in text
    assert "--batch-size BATCH_SIZE global batch size" in text
    assert "(default: 256)" in text and "(default: 2048-2048-2048)" in text
    assert "--optimizer {adam,lars}" in text
    assert "--resume, --no-resume" in text


@pytest.mark.parametrize("argv, message", [
    (["pretrain", "--batch-sise", "8"], "unrecognized arguments: --batch-sise"),
    (["pretrain", "--optimizer", "sgd"], "invalid choice: 'sgd'"),
    (["pretrain", "--epochs", "ten"], "invalid int value: 'ten'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["pretrain", "--preset", "solo"], "invalid choice: 'solo'"),
])
def test_bad_options_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["pretrain", "--batch-size", "1"], "batch_size must be >= 2"),
    (["pretrain", "--projector", "2048-"], "malformed projector spec"),
    (["pretrain", "--projector", "16-\u00b2"], "projector '16-\u00b2' holds characters other than the digits"),
    (["pretrain", "--seed", str(2**64)], f"seed must be <= {2**32 - 1}"),
    (["pretrain", "--resume", "--overwrite"], "resume and overwrite contradict"),
    (["pretrain", "--data", ""], "data is empty"),
    (["pretrain", "--lam", "0", "--mu", "0", "--nu", "0"], "all 0"),
    (["pretrain", "--device", "gpu"], "unknown device 'gpu'"),
    (["evaluate", "missing.pt", "--device", "gpu"], "unknown device 'gpu'"),
])
def test_runtime_errors_are_one_line_without_the_usage_text(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "usage:" not in err
    assert err.strip().count("\n") == 0


def test_out_dir_problems_are_found_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out_dir, message in ((a_file, "is a file"), (a_file / "run", "lies under the file")):
        assert main(["pretrain", *TINY, "--epochs", "1", "--out-dir", str(out_dir)]) == 2
        assert message in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')  # metrics without a checkpoint are a run too
    assert main(["pretrain", *TINY, "--epochs", "1", "--out-dir", str(run)]) == 2
    assert "already holds a run (metrics.jsonl)" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == '{"epoch": 1}\n'


def test_presets_fill_in_and_options_override(tmp_path, capsys):
    help_text = _help(capsys, ["pretrain", "--help"])
    for name in PRESETS:
        assert f"{name}:" in help_text
    out = tmp_path / "run"
    argv = ["pretrain", "--preset", "blog", *TINY, "--max-steps", "1", "--eval-every", "0", "--out-dir", str(out)]
    assert main(argv) == 0
    stored = TrainConfig.from_dict({**read_config(out), "overwrite": False})
    assert (stored.preset, stored.backbone, stored.loss_convention, stored.optimizer, stored.width) == ("blog", "blog", "blog",
                                                                                             "adam", 4)


def _help(capsys, argv) -> str:
    with pytest.raises(SystemExit):
        main(argv)
    return capsys.readouterr().out


def test_pretrain_then_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", *TINY, "--epochs", "1", "--eval-every", "1", "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "finished epoch 1" in printed and str(out / "checkpoint.pt") in printed
    assert [r["epoch"] for r in read_metrics(out)] == [0, 1]

    assert main(["evaluate", str(out / "checkpoint.pt"), "--probe-epochs", "2", "--no-progress",
                 "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "kNN top-1" in table and "linear top-1" in table


def test_the_printed_checkpoint_exists_when_max_steps_ends_an_epoch(tmp_path, capsys):
    """--epochs 2 --max-steps 8 where 8 steps are exactly one epoch (128 images, batch 16)."""
    out = tmp_path / "run"
    argv = ["pretrain", *TINY, "--data", "synthetic:128,32", "--epochs", "2", "--max-steps", "8",
            "--checkpoint-every", "0", "--eval-every", "0", "--out-dir", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"checkpoint: {out / 'checkpoint.pt'}" in printed and (out / "checkpoint.pt").is_file()
    assert main(["evaluate", str(out / "checkpoint.pt"), "--data", "synthetic:128,32", "--probe-epochs", "1",
                 "--no-progress", "--device", "cpu"]) == 0


def test_evaluate_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "missing.pt")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_cpu_hint_for_a_full_width_network(tmp_path, capsys):
    # --epochs 1 --max-steps 1 on 32 images keeps the width-64 run to one step
    argv = ["pretrain", "--data", "synthetic:32,8", "--projector", "16-16", "--batch-size", "16", "--device", "cpu",
            "--epochs", "1", "--max-steps", "1", "--eval-every", "0", "--no-progress", "--out-dir", str(tmp_path)]
    assert main(argv) == 0
    assert "--width 16" in capsys.readouterr().err


def test_subcommands_are_pluggable_pairs():
    for name, (help_text, add_arguments, run) in SUBCOMMANDS.items():
        assert help_text and callable(add_arguments) and callable(run), name


def test_python_dash_m_entry_point(monkeypatch, capsys):
    """``python -m vicreg_lib`` runs vicreg_lib/__main__.py (run in-process: a subprocess re-imports torch)."""
    monkeypatch.setattr(sys, "argv", ["python -m vicreg_lib", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("vicreg_lib", run_name="__main__")
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "pretrain" in printed and "evaluate" in printed


def test_ablate_rejects_the_options_it_sets_per_setting(capsys):
    # lam/mu/nu and the run folder come from --grid and --cache-dir; accepting and ignoring them would mislead
    for option in (["--lam", "3"], ["--out-dir", "elsewhere"], ["--resume"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["ablate", *option])
        assert exit_info.value.code == 2
        assert "unrecognized arguments" in capsys.readouterr().err


def test_a_diverged_setting_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    """lr 1e4 makes every setting diverge: each is a 'diverged' row, not a traceback."""
    argv = ["ablate", "--grid", "25,25,1;5,5,1", *TINY, "--epochs", "1", "--lr", "1e4", "--log-every", "1",
            "--cache-dir", str(tmp_path), "--probe-epochs", "1", "--eval-every", "0"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("diverged") >= 2


def test_evaluate_runs_the_protocols_asked_for(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", *TINY, "--epochs", "1", "--eval-every", "0", "--out-dir", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out / "checkpoint.pt"), "--protocol", "fast", "--protocol", "blog",
                 "--probe-epochs", "1", "--no-progress", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "blog" in table and "fast" in table
