"""`charrnn-export train` refuses bad input with one line and exit status 2, and leaves a run alone.

Then the two ways past "this directory holds a run": --force starts over, --resume continues.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import TINY_ARGS, assert_one_line_error, closed_port, run_cli

from charrnn_export.data import check_enough_text, split_train_val
from charrnn_export.vocab import Vocab
from charrnn_export.errors import DataError
from charrnn_export.checkpoints import read_checkpoint
from charrnn_export.train import RunDir, prepare_run_dir


def snapshot(root: Path) -> dict:
    """Every file under `root` with its bytes (directories as None)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def run_dir(trained_run, tmp_path) -> Path:
    """A copy of a finished run, to point --out at."""
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    return out


def bad_data(kind: str, tmp_path: Path, text_file: Path) -> tuple[str, list[str], str]:
    """(--data value, extra args, a fragment the message must contain) for each kind of unusable data."""
    if kind == "missing":
        return str(tmp_path / "nope.txt"), [], "data file not found"
    if kind == "directory":
        return str(tmp_path), [], "is a directory"
    if kind == "unreadable":
        return str(tmp_path / ("x" * 300)), [], "cannot read data file"  # the name is too long to open
    path = tmp_path / f"{kind}.txt"
    if kind == "empty":
        path.write_bytes(b"")
        return str(path), [], "empty"
    if kind == "not-utf8":
        path.write_bytes("caf\u00e9 au lait\n".encode("latin-1") * 200)
        return str(path), [], "not UTF-8"
    if kind == "too-short-for-a-batch":  # 8 x 17 + 16 = 152 training characters are needed; give 151 + 17
        path.write_text(("abcdefghij" * 20)[:168], encoding="utf-8")
        return str(path), ["--val-fraction", "0.1018"], "text too short"
    if kind == "too-short-for-validation":  # 0.1% of 12,000 characters is 12 < one window of 17
        return str(text_file), ["--val-fraction", "0.001"], "text too short"
    if kind == "unreachable-url":
        url = f"http://127.0.0.1:{closed_port()}/shakespeare.txt"
        return url, [], url
    raise AssertionError(kind)


DATA_ERRORS = ["missing", "directory", "unreadable", "empty", "not-utf8", "too-short-for-a-batch",
               "too-short-for-validation", "unreachable-url"]


@pytest.mark.parametrize("flags", [(), ("--force",)], ids=["plain", "force"])
@pytest.mark.parametrize("kind", DATA_ERRORS)
def test_unusable_data_is_one_line_and_leaves_the_run_alone(kind, flags, run_dir, tmp_path, text_file):
    data, extra, fragment = bad_data(kind, tmp_path, text_file)
    before = snapshot(run_dir)
    result = run_cli("train", "--data", data, "--out", run_dir, *TINY_ARGS, *extra, *flags,
                     env={"CHARRNN_EXPORT_CACHE": str(tmp_path / "cache")})
    assert_one_line_error(result, fragment)
    assert snapshot(run_dir) == before


def test_too_short_boundary_is_exact():
    # One character more than "too-short-for-a-batch" (152 + 17) is enough: the check is not too strict.
    text = ("abcdefghij" * 20)[:169]
    ids = Vocab.from_text(text).encode(text)
    train_ids, val_ids = split_train_val(ids, 0.1018)
    check_enough_text(train_ids, val_ids, seq_length=16, batch_size=8)
    assert (len(train_ids), len(val_ids)) == (152, 17)
    with pytest.raises(DataError, match="text too short"):
        check_enough_text(*split_train_val(ids[:-1], 0.1018), seq_length=16, batch_size=8)


@pytest.mark.parametrize("flags", [(), ("--force",)], ids=["plain", "force"])
@pytest.mark.parametrize("option,value", [("--rnn-units", "0"), ("--embedding-dim", "-16"), ("--batch-size", "0"),
                                          ("--seq-length", "-1")])
def test_non_positive_sizes_are_one_line_and_leave_the_run_alone(option, value, flags, run_dir, text_file):
    before = snapshot(run_dir)
    result = run_cli("train", "--data", text_file, "--out", run_dir, *TINY_ARGS, option, value, *flags)
    assert_one_line_error(result, f"{option} must be positive, got {value}")
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("flags", [(), ("--resume",)], ids=["plain", "resume"])
def test_a_run_with_another_config_is_not_overwritten(flags, run_dir, text_file):
    before = snapshot(run_dir)
    args = [a if a != "32" else "24" for a in TINY_ARGS]  # --rnn-units 24
    result = run_cli("train", "--data", text_file, "--out", run_dir, *args, "--epochs", "4", *flags)
    assert_one_line_error(result, str(run_dir), "different config", "rnn_units: 32 -> 24", "--force")
    assert snapshot(run_dir) == before


def test_the_same_run_again_needs_resume_or_force(run_dir, text_file):
    before = snapshot(run_dir)
    result = run_cli("train", "--data", text_file, "--out", run_dir, *TINY_ARGS, "--epochs", "4")
    assert_one_line_error(result, "already holds this run", "--resume", "--force")
    assert snapshot(run_dir) == before


def test_resume_without_a_run_is_one_line_and_creates_nothing(tmp_path, text_file):
    missing = tmp_path / "missing"
    result = run_cli("train", "--data", text_file, "--out", missing, *TINY_ARGS, "--resume")
    assert_one_line_error(result, str(missing), "holds no run")
    assert not missing.exists()

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a run\n")
    before = snapshot(other)
    result = run_cli("train", "--data", text_file, "--out", other, *TINY_ARGS, "--resume")
    assert_one_line_error(result, "holds no run")
    assert snapshot(other) == before


def test_out_that_is_a_file_is_one_line(tmp_path, text_file):
    out = tmp_path / "file"
    out.write_text("precious\n")
    result = run_cli("train", "--data", text_file, "--out", out, *TINY_ARGS)
    assert_one_line_error(result, "is a file")
    assert out.read_text() == "precious\n"


def test_corrupt_config_needs_force(run_dir, text_file):
    (run_dir / "config.json").write_text("{not json")
    before = snapshot(run_dir)
    result = run_cli("train", "--data", text_file, "--out", run_dir, *TINY_ARGS, "--epochs", "1", "--resume")
    assert_one_line_error(result, "corrupt", "--force")
    assert snapshot(run_dir) == before
    # ... and --force, which the message asks for, gets past it (test_force_starts_over shows the rest).
    assert prepare_run_dir(RunDir(run_dir), {}, resume=False, force=True) is False


def test_force_starts_over(run_dir, text_file):
    args = [a if a != "32" else "24" for a in TINY_ARGS]  # --rnn-units 24
    result = run_cli("train", "--data", text_file, "--out", run_dir, *args, "--epochs", "1", "--force")
    assert result.returncode == 0, result.stderr
    assert json.loads((run_dir / "config.json").read_text())["rnn_units"] == 24
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]
    ckpts = sorted((run_dir / "checkpoints").iterdir())
    assert len(ckpts) == 1 and read_checkpoint(ckpts[0]).weights.layers[0].spec.units == 24  # the old run's are gone
    assert read_checkpoint(run_dir / "best.npz").weights.layers[0].spec.units == 24


def test_resume_with_the_same_config_continues(run_dir, trained_run, text_file):
    old = snapshot(run_dir / "checkpoints")
    result = run_cli("train", "--data", text_file, "--out", run_dir, *TINY_ARGS, "--epochs", "5", "--resume")
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr and "epoch 5/5" in result.stderr and "epoch 1/5" not in result.stderr
    lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert "".join(lines[:4]) == (trained_run / "metrics.jsonl").read_text()  # the first four epochs kept
    assert json.loads(lines[4])["epoch"] == 5 and len(lines) == 5
    new = snapshot(run_dir / "checkpoints")
    assert {k: v for k, v in new.items() if k in old} == old and len(new) == 5
