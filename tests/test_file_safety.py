"""Nothing the user owns is ever deleted or mixed with a run, and one writer per folder.

`train` and `to-onnx` as a user runs them: --force removes exactly what the manifest lists, a
folder that is not ours is refused with or without --force (the current folder included), a
second writer gets one line naming the first one's pid, and a failure (a diverging first epoch,
a full disk) leaves no folder that blocks the next try.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ERROR_PREFIX, REPO, TINY_ARGS, assert_one_line_error, cli_env, run_cli

from charrnn_export.files import LOCK, MANIFEST, FolderLock


def snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def error_after_progress(result, *fragments: str) -> str:
    """A failure during training: its progress lines on stderr, then one error line, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1 and result.stderr.splitlines()[-1] == errors[0], result.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


DIVERGING = ["--learning-rate", "1e30", "--weight-decay", "0.5"]  # NaN loss within the first steps


def users_folder(tmp_path: Path) -> Path:
    """A folder of a user's work: another tool's config.json and checkpoints/, notes, a subfolder."""
    work = tmp_path / "work"
    (work / "checkpoints").mkdir(parents=True)
    (work / "config.json").write_text('{"tool": "another"}')
    (work / "checkpoints" / "ckpt-e001-s00000001.npz").write_bytes(b"another tool's weights")
    (work / "model.onnx").write_bytes(b"the user's other model")
    (work / "notes.txt").write_text("precious")
    return work


# ---------------------------------------------------------------- foreign folders


@pytest.mark.parametrize("flags", [(), ("--force",), ("--resume",)], ids=["plain", "force", "resume"])
def test_train_never_writes_into_a_folder_that_is_not_a_run_of_ours(flags, tmp_path, text_file):
    work = users_folder(tmp_path)
    before = snapshot(work)
    result = run_cli("train", "--data", text_file, "--out", work, *TINY_ARGS, "--epochs", "1", *flags)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert snapshot(work) == before


@pytest.mark.parametrize("flags", [(), ("--force",)], ids=["plain", "force"])
def test_to_onnx_into_the_current_folder_of_a_users_files_is_refused(flags, tmp_path, tiny_run):
    work = users_folder(tmp_path)
    before = snapshot(work)
    result = subprocess.run([sys.executable, "-m", "charrnn_export.cli", "to-onnx", "--checkpoint", str(tiny_run),
                             "--out", ".", *flags], capture_output=True, text=True, cwd=work, env=cli_env(
                                 PYTHONPATH=str(REPO)), timeout=300)
    assert_one_line_error(result, "did not write", "notes.txt", "even with --force")
    assert snapshot(work) == before


def test_train_force_removes_only_what_the_run_wrote(trained_run, tmp_path, text_file):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "notes.txt").write_text("the user's notes about this run")
    (run / "checkpoints" / "keep.npz").write_bytes(b"the user's own file among ours")
    old = json.loads((run / MANIFEST).read_text())
    assert {"config.json", "vocab.json", "best.npz", "metrics.jsonl"} <= set(old["files"])
    result = run_cli("train", "--data", text_file, "--out", run, *TINY_ARGS, "--epochs", "1", "--force")
    assert result.returncode == 0, result.stderr
    assert (run / "notes.txt").read_text() == "the user's notes about this run"
    assert (run / "checkpoints" / "keep.npz").read_bytes() == b"the user's own file among ours"
    ours = sorted(p.name for p in (run / "checkpoints").glob("ckpt-*.npz"))
    assert len(ours) == 1  # the old run's four are gone, the new run's one is there
    assert set(json.loads((run / MANIFEST).read_text())["files"]) >= {f"checkpoints/{ours[0]}", "best.npz"}


def test_to_onnx_never_writes_into_a_run_folder(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = snapshot(run)
    result = run_cli("to-onnx", "--checkpoint", run, "--out", run, "--force")
    assert_one_line_error(result, "holds a charrnn-export run, not an export")
    assert snapshot(run) == before


# ---------------------------------------------------------------- one writer per folder


def test_a_second_train_on_a_locked_folder_names_the_holder(trained_run, tmp_path, text_file):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = snapshot(run)
    with FolderLock(run, "test"):  # this process plays the first `train`
        for flags in ((), ("--resume",), ("--force",)):
            result = run_cli("train", "--data", text_file, "--out", run, *TINY_ARGS, "--epochs", "5", *flags)
            assert_one_line_error(result, "in use by another charrnn-export process", "pid ")
            assert str(__import__("os").getpid()) in result.stderr
        result = run_cli("to-onnx", "--checkpoint", trained_run, "--out", run, "--force")
        # to-onnx sees the run's manifest first: it would never write there anyway.
        assert_one_line_error(result, "not an export")
    assert snapshot(run) == {**before, LOCK: (run / LOCK).read_bytes()} if (run / LOCK).exists() else before


def test_a_second_to_onnx_on_a_locked_folder_names_the_holder(tiny_run, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    with FolderLock(out, "test"):
        result = run_cli("to-onnx", "--checkpoint", tiny_run, "--out", out)
        assert_one_line_error(result, "in use by another charrnn-export process", f"pid {__import__('os').getpid()}")
    assert sorted(p.name for p in out.iterdir()) == []


def test_two_trainings_at_once_one_refused_and_the_run_is_whole(tmp_path, text_file):
    """Really concurrent: the first holds the lock while it trains; the second, with other
    settings, is refused and the folder ends with one run's config, checkpoints and metrics."""
    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "charrnn_export.cli", "train", "--data", str(text_file), "--out", str(out),
         *TINY_ARGS, "--epochs", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
        cwd=REPO)
    try:
        line = first.stderr.readline()  # "training ...": it holds the lock by now
        assert line.startswith("training"), line + first.stderr.read()
        other = [a if a != "32" else "24" for a in TINY_ARGS]
        second = run_cli("train", "--data", text_file, "--out", out, *other, "--epochs", "1", "--force")
        assert_one_line_error(second, "in use", f"pid {first.pid}")
    finally:
        first.stderr.read()
        assert first.wait(timeout=300) == 0
    assert json.loads((out / "config.json").read_text())["rnn_units"] == 32
    assert len(list((out / "checkpoints").glob("ckpt-*.npz"))) == 2
    assert not (out / LOCK).exists()


# ---------------------------------------------------------------- failures leave nothing


def test_a_first_epoch_that_diverges_leaves_no_folder(tmp_path, text_file):
    out = tmp_path / "runs" / "diverged"
    result = run_cli("train", "--data", text_file, "--out", out, *TINY_ARGS, *DIVERGING, "--epochs", "1")
    error_after_progress(result, "diverged")
    assert not (tmp_path / "runs").exists()
    # ... so the next try, with a sane rate, needs no --force.
    result = run_cli("train", "--data", text_file, "--out", out, *TINY_ARGS, "--epochs", "1")
    assert result.returncode == 0, result.stderr


def test_a_first_epoch_that_diverges_in_an_existing_empty_folder_leaves_it_empty(tmp_path, text_file):
    out = tmp_path / "run"
    out.mkdir()
    result = run_cli("train", "--data", text_file, "--out", out, *TINY_ARGS, *DIVERGING, "--epochs", "1")
    error_after_progress(result, "diverged")
    assert list(out.iterdir()) == []


def in_a_small_disk(tmp_path: Path, size: str, *cli_args) -> subprocess.CompletedProcess:
    """Run the CLI with --out on a fresh tmpfs of `size` (a real ENOSPC), then list what is on it."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare to mount a small tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    command = (f'mount -t tmpfs -o size={size} tmpfs "{disk}" || exit 77; '
               f'"{sys.executable}" -m charrnn_export.cli "$@"; status=$?; '
               f'find "{disk}" -mindepth 1 >&2; exit $status')
    result = subprocess.run(["unshare", "-rm", "sh", "-c", command, "sh", *map(str, cli_args)],
                            capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=300)
    if result.returncode == 77:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    return result


def test_a_full_disk_while_training_is_one_line_and_leaves_nothing(tmp_path, text_file):
    result = in_a_small_disk(tmp_path, "24k", "train", "--data", text_file, "--out", tmp_path / "disk" / "run",
                             *TINY_ARGS, "--epochs", "1")
    # stderr: progress, the error line, then `find`'s listing of the disk: nothing, so the error is last.
    error_after_progress(result, "the disk is full", "ckpt-e001")


def test_a_full_disk_in_the_first_epoch_leaves_the_folder_as_it_was(tmp_path, text_file):
    result = in_a_small_disk(tmp_path, "24k", "train", "--data", text_file, "--out", tmp_path / "disk",
                             *TINY_ARGS, "--epochs", "1")
    error_after_progress(result, "the disk is full")  # and `find` printed nothing: the disk is empty


def test_a_full_disk_while_exporting_is_one_line_and_leaves_nothing(tmp_path, tiny_run):
    result = in_a_small_disk(tmp_path, "64k", "to-onnx", "--checkpoint", tiny_run, "--out",
                             tmp_path / "disk" / "export")
    assert_one_line_error(result, "the disk is full")
