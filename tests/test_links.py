"""Nothing is written or deleted through a symbolic link that leads out of an output folder.

files.py's writers take the folder they write in (`root`) and refuse such a link (LinkOutside,
one line); `train`, `to-onnx` and `to-web` check their folder's links before any work, and with
--force too. A link the user names himself (`sample --out LINK`) is his choice and is followed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import TINY_ARGS, assert_one_line_error, run_cli

from charrnn_export.errors import LinkOutside
from charrnn_export.files import atomic_write_bytes, check_no_link_out, make_dirs


def snapshot(root: Path) -> dict:
    """Every path under `root` (links as links) and what a file holds."""
    return {p.relative_to(root).as_posix(): (str(p.readlink()) if p.is_symlink() else
                                             p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def elsewhere(tmp_path: Path) -> Path:
    """A user's folder outside every --out: what a link leads to and nothing may change."""
    folder = tmp_path / "elsewhere"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"another export's model")
    (folder / "sub" / "notes.txt").write_text("precious")
    return folder


# ---------------------------------------------------------------- files.py


@pytest.mark.parametrize("link", ["file", "folder", "dangling"])
def test_a_writer_refuses_a_link_out_of_its_root(tmp_path, link):
    out, outside = tmp_path / "out", elsewhere(tmp_path)
    out.mkdir()
    if link == "file":
        (out / "model.onnx").symlink_to(outside / "model.onnx")
        target = out / "model.onnx"
    elif link == "folder":
        (out / "sub").symlink_to(outside / "sub")
        target = out / "sub" / "notes.txt"
    else:
        (out / "model.onnx").symlink_to(outside / "missing.onnx")
        target = out / "model.onnx"
    before = snapshot(tmp_path)
    with pytest.raises(LinkOutside, match="symbolic link .* outside"):
        atomic_write_bytes(target, b"new", root=out)
    with pytest.raises(LinkOutside):
        make_dirs(target / "deeper", root=out)
    assert snapshot(tmp_path) == before


def test_a_link_that_stays_inside_the_root_is_followed(tmp_path):
    out = tmp_path / "out"
    (out / "real").mkdir(parents=True)
    (out / "alias").symlink_to(out / "real")
    atomic_write_bytes(out / "alias" / "file.txt", b"new", root=out)
    assert (out / "real" / "file.txt").read_bytes() == b"new"


def test_a_root_that_is_itself_a_link_is_the_users_choice(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "out").symlink_to(real)
    atomic_write_bytes(tmp_path / "out" / "file.txt", b"new", root=tmp_path / "out")
    assert (real / "file.txt").read_bytes() == b"new"
    check_no_link_out(tmp_path / "out" / "missing" / "deeper", tmp_path / "out")  # nothing there: no link


# ---------------------------------------------------------------- train


@pytest.mark.parametrize("name", ["checkpoints", "best.npz", "metrics.jsonl"])
def test_train_force_never_writes_through_a_link_out_of_the_run(trained_run, tmp_path, text_file, name):
    run, outside = tmp_path / "run", elsewhere(tmp_path)
    shutil.copytree(trained_run, run)
    linked = outside / "sub" if name == "checkpoints" else outside / "model.onnx"
    if name == "checkpoints":
        shutil.copytree(run / name, linked, dirs_exist_ok=True)
        shutil.rmtree(run / name)
    else:
        (run / name).unlink()
    (run / name).symlink_to(linked)
    before = snapshot(tmp_path)
    result = run_cli("train", "--data", text_file, "--out", run, "--epochs", "1", *TINY_ARGS, "--force")
    assert_one_line_error(result, f"{run / name} is a symbolic link", "outside", "remove the link")
    assert snapshot(tmp_path) == before


def test_train_resume_and_force_together_are_refused(trained_run, tmp_path, text_file):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = snapshot(run)
    result = run_cli("train", "--data", text_file, "--out", run, "--epochs", "5", *TINY_ARGS, "--resume", "--force")
    assert_one_line_error(result, "--resume and --force contradict each other")
    assert snapshot(run) == before


def test_the_train_api_refuses_resume_and_force_together(tmp_path, text_file):
    from charrnn_export.errors import ConfigError
    from charrnn_export.train import TrainConfig, train

    with pytest.raises(ConfigError, match="--resume and --force"):
        train(TrainConfig(data=str(text_file)), tmp_path / "run", resume=True, force=True)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- to-onnx


@pytest.mark.parametrize("name", ["model.onnx", "saved_model", "vocab.json"])
def test_to_onnx_force_never_writes_through_a_link_out_of_the_export(tiny_export, tiny_run, tmp_path, name):
    out, outside = tmp_path / "export", elsewhere(tmp_path)
    shutil.copytree(tiny_export, out)
    if (out / name).is_dir():
        shutil.rmtree(out / name)
        (out / name).symlink_to(outside / "sub")
    else:
        (out / name).unlink()
        (out / name).symlink_to(outside / "model.onnx")
    before = snapshot(tmp_path)
    result = run_cli("to-onnx", "--checkpoint", tiny_run, "--out", out, "--force")
    assert_one_line_error(result, f"{out / name} is a symbolic link", "outside")
    assert snapshot(tmp_path) == before


def test_bench_results_never_go_through_a_link_out_of_out(tmp_path):
    """bench (and the benchmarks' suites) write results with write_results: a `-latest` file in
    --out that is a link to a file elsewhere is refused, and that file is left as it was."""
    from charrnn_export.bench.report import write_results

    out, outside = tmp_path / "results", tmp_path / "elsewhere.json"
    out.mkdir()
    outside.write_text("the user's file\n")
    (out / "engine-latest.json").symlink_to(outside)
    with pytest.raises(LinkOutside):
        write_results({"a": 1}, out, "engine", "# table\n", None)
    assert outside.read_text() == "the user's file\n"
