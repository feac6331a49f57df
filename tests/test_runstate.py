"""The run folder's lock and its refusal of files vicreg_lib did not write, with real second
processes (a lock is held by a live process or it is not, whatever the .lock file says); atomic
writes; stop requests. Stopping a run by request mid-epoch is in test_train.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vicreg_lib.config import TrainConfig
from vicreg_lib.runstate import RunFolderError, RunLock, read_config, remove_stale_tmp, request_stop
from vicreg_lib.train import pretrain

REPO = Path(__file__).resolve().parents[1]
# takes the lock, says whether it got it, and holds it until its stdin closes (so that
# every contender tries while a winner still holds it, however slowly each one starts)
HOLDER = """
import sys
from vicreg_lib.runstate import RunFolderError, RunLock
try:
    lock = RunLock(sys.argv[1]).acquire()
except RunFolderError as error:
    print("refused", error, flush=True)
    sys.exit(0)
print("won", flush=True)
sys.stdin.read()
lock.release()
"""


def tiny(out_dir: Path, **overrides) -> TrainConfig:
    settings = dict(data="synthetic:32,16", width=4, projector="16-16-16", batch_size=16, epochs=1,
                    eval_every=0, out_dir=str(out_dir), progress=False, device="cpu", optimizer="adam",
                    schedule="constant")
    return TrainConfig(**{**settings, **overrides})


def start_holder(out_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(out_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)


def outcome(process: subprocess.Popen) -> str:
    return process.stdout.readline().split()[0]  # blocks until the process has tried


@pytest.fixture
def holder(tmp_path):
    """A second process holding the lock on tmp_path/run."""
    process = start_holder(tmp_path / "run")
    assert outcome(process) == "won"
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(timeout=60)


def test_a_live_run_in_another_process_is_refused_and_its_temporary_files_are_kept(tmp_path, holder):
    out = tmp_path / "run"
    live_tmp = out / ".checkpoint.pt.live12.tmp"  # the live run is saving right now
    live_tmp.write_bytes(b"half written")
    for overwrite in (False, True):
        with pytest.raises(RunFolderError, match=f"another run \\(process {holder.pid}\\) is writing"):
            pretrain(tiny(out, overwrite=overwrite))
    assert live_tmp.read_bytes() == b"half written"


def test_the_lock_of_a_killed_process_is_taken_over_and_its_leftovers_cleared(tmp_path, holder):
    out = tmp_path / "run"
    leftover = out / ".checkpoint.pt.dead12.tmp"
    leftover.write_bytes(b"half written")
    holder.send_signal(signal.SIGKILL)  # no chance to clean up: the .lock file stays
    holder.wait(timeout=60)
    assert (out / ".lock").exists()
    pretrain(tiny(out))
    assert not leftover.exists() and not (out / ".lock").exists()
    assert (out / "checkpoint.pt").is_file()


@pytest.mark.parametrize("content", ["", "12345"])
def test_an_empty_or_old_style_lock_does_not_block_the_folder(tmp_path, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(content)  # a crash (or a full disk) right after creating it
    pretrain(tiny(out))
    (out / ".lock").write_text(content)
    pretrain(tiny(out, overwrite=True))
    assert (out / "checkpoint.pt").is_file() and not (out / ".lock").exists()


def test_only_one_of_several_processes_taking_over_a_stale_lock_wins(tmp_path):
    for trial in range(3):
        out = tmp_path / f"run{trial}"
        out.mkdir()
        (out / ".lock").write_text("999999999")  # a dead run's lock
        contenders = [start_holder(out) for _ in range(3)]
        try:
            results = [outcome(process) for process in contenders]
        finally:
            for process in contenders:
                process.stdin.close()
                process.wait(timeout=60)
        assert sorted(results) == ["refused", "refused", "won"], results


def test_a_second_run_from_the_same_process_is_refused(tmp_path):
    out = tmp_path / "run"
    with RunLock(out):
        with pytest.raises(RunFolderError, match="this process is already running into"):
            pretrain(tiny(out))
        with pytest.raises(RunFolderError, match="this process is already running into"):
            RunLock(out).acquire()
    pretrain(tiny(out))  # released: the folder is free again


def test_files_vicreg_lib_did_not_write_are_refused_by_name_and_left_alone(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"model": "someone else\'s"}')
    (out / ".lock").write_text("my notes")
    with pytest.raises(RunFolderError, match=r"holds config\.json, \.lock, which vicreg_lib did not write"):
        pretrain(tiny(out))
    assert (out / "config.json").read_text() == '{"model": "someone else\'s"}'
    assert (out / ".lock").read_text() == "my notes"
    with pytest.raises(RunFolderError, match=r"\.lock' was not written by vicreg_lib"):
        RunLock(out).acquire()
    assert (out / ".lock").read_text() == "my notes"


def test_overwrite_refuses_a_foreign_checkpoint_and_metrics(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"weights": torch.zeros(2)}, out / "checkpoint.pt")
    (out / "metrics.jsonl").write_text("step,loss\n1,0.5\n")
    with pytest.raises(RunFolderError, match=r"holds metrics\.jsonl, checkpoint\.pt"):
        pretrain(tiny(out, overwrite=True))
    assert (out / "metrics.jsonl").read_text() == "step,loss\n1,0.5\n"
    assert torch.load(out / "checkpoint.pt")["weights"].shape == (2,)


def test_the_package_s_own_files_are_replaced_and_read_back_as_settings(tmp_path):
    out = tmp_path / "run"
    pretrain(tiny(out))
    assert json.loads((out / "config.json").read_text())["_written_by"] == "vicreg_lib"
    assert TrainConfig(**{**read_config(out), "overwrite": True}).width == 4
    pretrain(tiny(out, overwrite=True))
    legacy = read_config(out)  # an earlier version's config.json: no mark, TrainConfig's keys
    (out / "config.json").write_text(json.dumps(legacy))
    pretrain(tiny(out, overwrite=True))


def test_stale_temporary_files_are_removed(tmp_path):
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"killed mid-save")
    (tmp_path / "keep.txt").write_text("x")
    assert [p.name for p in remove_stale_tmp(tmp_path, "checkpoint.pt")] == [".checkpoint.pt.abc123.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_a_leftover_stop_request_is_removed_when_a_run_starts(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    assert request_stop(out) == out / "STOP"  # asked of a run that had already ended
    result = pretrain(tiny(out, epochs=2))
    assert [r["epoch"] for r in result.history] == [1, 2] and not (out / "STOP").exists()
    with pytest.raises(FileNotFoundError, match="no run folder"):
        request_stop(tmp_path / "elsewhere")


def test_a_stop_file_vicreg_lib_did_not_write_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "STOP").write_text("my notes")
    with pytest.raises(RunFolderError, match=r"holds STOP, which vicreg_lib did not write"):
        pretrain(tiny(out))
    assert (out / "STOP").read_text() == "my notes"
    (out / "STOP").write_text("")  # touch STOP: an empty file is a request too
    pretrain(tiny(out))
    assert not (out / "STOP").exists()
