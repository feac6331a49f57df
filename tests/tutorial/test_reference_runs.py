import hashlib
import shlex

import pytest

from vicreg_lib.cli import build_parser, config_from_args
from vicreg_lib.tutorial import reference_runs as rr


def test_the_reference_command_is_a_valid_pretrain_command_for_the_run_it_describes():
    run = rr.reference_run()
    words = shlex.split(run.command)
    assert words[:3] == ["python", "-m", "vicreg_lib"]
    args = build_parser().parse_args(words[3:])
    config = config_from_args(args)
    assert (config.epochs, config.batch_size, config.width, config.mu) == (run.epochs, run.batch_size, 64, 50.0)


def test_the_knn_curve_runs_forward_in_time_and_ends_at_the_final_epoch():
    run = rr.reference_run()
    minutes = [point[0] for point in run.knn_curve]
    epochs = [point[1] for point in run.knn_curve]
    assert minutes == sorted(minutes) and epochs == sorted(epochs)
    assert epochs[-1] == run.epochs
    assert run.final_knn_top1 == run.knn_curve[-1][2]
    assert run.command in run.describe()


def test_equal_compute_picks_the_full_label_run_closest_to_the_vicreg_training_time():
    seconds = rr.reference_run().train_minutes * 60
    chosen = rr.equal_compute_supervised()
    assert chosen["fraction"] == 1.0
    others = [r for r in rr.supervised_reference() if r["fraction"] == 1.0]
    assert all(abs(chosen["budget_s"] - seconds) <= abs(r["budget_s"] - seconds) for r in others)
    assert abs(chosen["budget_s"] - seconds) < 0.05 * seconds  # the stored run is at equal compute


def test_weights_sha256_of_a_folder_of_parts_is_that_of_the_joined_file(tmp_path):
    blob = bytes(range(256)) * 5000
    (tmp_path / "whole.pt").write_bytes(blob)
    parts = tmp_path / "parts"
    parts.mkdir()
    cuts = [0, 1000, 300_000, len(blob)]
    for i in range(3):  # written out of order; part 10 would sort before part 2 as text
        (parts / f"model.part{i + 1}of3.pt").write_bytes(blob[cuts[i]:cuts[i + 1]])
    expected = hashlib.sha256(blob).hexdigest()
    assert rr.weights_sha256(tmp_path / "whole.pt") == expected
    assert rr.weights_sha256(parts) == expected
    with pytest.raises(FileNotFoundError, match="weight parts"):
        rr.weights_sha256(tmp_path / "parts" / "..")  # a folder with no parts


def test_quoted_results_name_their_sources():
    for row in rr.quoted_results():
        assert row["source"].startswith("https://") and row["epochs"] > 0 and 0 < row["top1"] < 100
