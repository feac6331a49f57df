"""monitor.py: the command line reproduces the config; watching reads metrics.jsonl, draws it and reports failures."""
from __future__ import annotations

import dataclasses
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from support import RECORDS
from vicreg_lib.cli import build_parser, config_from_args
from vicreg_lib.tutorial.monitor import launch, pretrain_command, watch_run
from vicreg_lib.config import TrainConfig


def _config_from_command(command: list[str]) -> TrainConfig:
    return config_from_args(build_parser().parse_args(command[3:]))  # drop "python -m vicreg_lib"


def test_pretrain_command_parses_back_to_the_same_config():
    config = TrainConfig(data="synthetic", width=8, projector="64-64", epochs=3, optimizer="lars",
                         max_train_images=100, compile="on", progress=False, out_dir="runs/x")
    command = pretrain_command(config, python="python")
    assert command[:4] == ["python", "-m", "vicreg_lib", "pretrain"]
    assert "--no-progress" in command and command[command.index("--compile") + 1] == "on"
    assert "--batch-size" not in command  # defaults are left out
    assert _config_from_command(command) == config
    resumed = pretrain_command(config, python="python", resume=True)
    assert _config_from_command(resumed) == dataclasses.replace(config, resume=True)


def test_pretrain_command_of_a_preset_parses_back_to_the_same_config():
    config = TrainConfig.from_preset("blog", epochs=2, out_dir="runs/blog_try")
    command = pretrain_command(config, python="python")
    assert command[command.index("--preset") + 1] == "blog"
    assert _config_from_command(command) == config


def _write_metrics(path, records):
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))




def test_watch_run_returns_the_records_once_the_process_ends(tmp_path):
    _write_metrics(tmp_path / "run", RECORDS)
    process = launch([sys.executable, "-c", "pass"], tmp_path / "log.txt")
    opened_before = set(plt.get_fignums())
    records = watch_run(tmp_path / "run", process, total_epochs=2, every_s=0.1, timeout_s=30)
    assert records == RECORDS
    assert process.returncode == 0
    assert set(plt.get_fignums()) == opened_before  # the live figure is closed, not drawn a second time


def test_watch_run_reports_a_failed_run_with_its_log(tmp_path):
    log = tmp_path / "log.txt"
    command = [sys.executable, "-c", "import sys; print('boom: bad setting'); sys.exit(3)"]
    process = launch(command, log)
    with pytest.raises(RuntimeError, match="(?s)exited with code 3.*boom: bad setting"):
        watch_run(tmp_path / "missing", process, every_s=0.1, timeout_s=30, log_path=log)
    plt.close("all")


def test_watch_run_stops_watching_at_the_timeout_but_not_the_run(tmp_path):
    process = launch([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "log.txt")
    try:
        watch_run(tmp_path, process, every_s=0.1, timeout_s=0.3)
        assert process.poll() is None  # still running
    finally:
        process.kill()
        process.wait()
