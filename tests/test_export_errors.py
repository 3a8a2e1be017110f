"""`charrnn-export to-onnx` failures, run as a user runs them: one line on stderr starting
"charrnn-export: error:", exit status 2, no traceback, and nothing written (no --out, no
staging directory, no probe file) beside the export.

The checkpoints here are made in a second (random weights saved in each format): what is
tested is what the exporter does with them, not training.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ERROR_PREFIX, assert_one_line_error, run_cli

# Keras warns about its own internals (numpy 2 copy semantics) and about fit() on a Dataset.
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:`shuffle=True` was passed:UserWarning")]

VOCAB = sorted(set("First Citizen:\nBefore we proceed any further, hear me speak.\n"))


def to_onnx(*args: str) -> subprocess.CompletedProcess:
    return run_cli("to-onnx", *args)


def run_main(capfd, *args: str) -> subprocess.CompletedProcess:
    """The CLI's main() in this process: for errors found only after reading a TF checkpoint,
    where a fresh process would spend most of its time importing TensorFlow. capfd sees file
    descriptors 1 and 2, so TensorFlow's C++ log lines would show here too."""
    from charrnn_export.cli import main

    capfd.readouterr()
    status = main(["to-onnx", *map(str, args)])
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(args, status, out, err)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def random_weights(vocab_size: int, embedding_dim: int = 8, units: int = 16, seed: int = 0):
    from charrnn_export.cells import Architecture, LayerSpec
    from conftest import random_model_weights

    return random_model_weights(Architecture(vocab_size, embedding_dim, (LayerSpec("gru", units),)), seed)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One of each accepted kind, vocabulary of len(VOCAB): a run directory (laid out as `train`
    writes it), a Keras 3 .weights.h5, and a tutorial TF checkpoint directory."""
    import tf_keras

    from charrnn_export.vocab import Vocab
    from charrnn_export.checkpoints import save_checkpoint
    from charrnn_export.cells.keras_model import build_keras_model, set_keras_weights

    root = tmp_path_factory.mktemp("checkpoints")
    weights = random_weights(len(VOCAB))
    run = root / "run"
    run.mkdir()
    save_checkpoint(run / "best.npz", weights, {"metrics": {"val_loss": 3.0}})
    Vocab(tuple(VOCAB)).save(run / "vocab.json")
    (run / "config.json").write_text(json.dumps({"vocab_size": len(VOCAB), "val_fraction": 0.1}))

    h5 = root / "model.weights.h5"
    model = build_keras_model(weights.architecture())
    set_keras_weights(model, weights)
    model.save_weights(str(h5))

    tutorial = tf_keras.Sequential([
        tf_keras.layers.Embedding(len(VOCAB), 8, batch_input_shape=[4, None]),
        tf_keras.layers.GRU(16, return_sequences=True, stateful=True, recurrent_initializer='glorot_uniform'),
        tf_keras.layers.Dense(len(VOCAB)),
    ])
    tutorial.save_weights(str(root / "training_checkpoints" / "ckpt_1"))
    text = root / "text.txt"
    text.write_text("".join(VOCAB) * 20, encoding="utf-8")
    return {"run": run, "h5": h5, "tutorial": root / "training_checkpoints", "text": text, "root": root}


@pytest.fixture
def workdir(tmp_path) -> Path:
    """An empty folder for --out's parent: after a failure it must still be empty."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- not a checkpoint


@pytest.mark.parametrize("kind", ["missing path", "text file", "empty directory", "directory of other files"])
def test_a_path_that_is_no_checkpoint(kind, checkpoints, workdir, tmp_path):
    path = {"missing path": tmp_path / "nope",
            "text file": checkpoints["text"],
            "empty directory": tmp_path / "empty",
            "directory of other files": tmp_path / "other"}[kind]
    if kind == "empty directory":
        path.mkdir()
    if kind == "directory of other files":
        path.mkdir()
        (path / "notes.txt").write_text("hello")
    line = assert_one_line_error(to_onnx("--checkpoint", path, "--out", workdir / "export"), str(path))
    assert "run directory" in line and ".weights.h5" in line  # says what is accepted
    assert listing(workdir) == []


def test_a_tutorial_checkpoint_file_naming_a_missing_checkpoint(checkpoints, workdir, tmp_path):
    ckpt = copy_tree(checkpoints["tutorial"], tmp_path / "ckpts")
    (ckpt / "checkpoint").write_text('model_checkpoint_path: "ckpt_9"\nall_model_checkpoint_paths: "ckpt_9"\n')
    assert_one_line_error(to_onnx("--checkpoint", ckpt, "--out", workdir / "export", "--vocab",
                                  checkpoints["run"] / "vocab.json"), "ckpt_9", "ckpt_1")
    assert listing(workdir) == []


# ---------------------------------------------------------------- shapes vs vocabulary


@pytest.mark.parametrize("case", ["h5 + --vocab too short", "tutorial + --vocab too long",
                                  "tutorial + --text of another text", "run whose vocab.json lost a character"])
def test_a_vocabulary_that_does_not_fit_the_checkpoint(case, checkpoints, workdir, tmp_path, capfd):
    wrong_vocab = tmp_path / "vocab.json"
    other_text = tmp_path / "other.txt"
    other_text.write_text("abc def\n" * 50, encoding="utf-8")
    if case == "h5 + --vocab too short":
        wrong_vocab.write_text(json.dumps(VOCAB[:-3]))
        args = ["--checkpoint", checkpoints["h5"], "--vocab", wrong_vocab]
    elif case == "tutorial + --vocab too long":
        wrong_vocab.write_text(json.dumps(VOCAB + ["Z", "Q"]))
        args = ["--checkpoint", checkpoints["tutorial"], "--vocab", wrong_vocab]
    elif case == "tutorial + --text of another text":
        args = ["--checkpoint", checkpoints["tutorial"] / "ckpt_1", "--text", other_text]
    else:
        run = copy_tree(checkpoints["run"], tmp_path / "run")
        (run / "vocab.json").write_text(json.dumps(VOCAB[1:]))
        args = ["--checkpoint", run]
    runner = to_onnx if case.startswith(("h5", "run")) else functools.partial(run_main, capfd)
    line = assert_one_line_error(runner(*args, "--out", workdir / "export"), f"{len(VOCAB)} rows")
    assert "vocab" in line
    assert listing(workdir) == []


def test_a_tutorial_checkpoint_without_text_or_vocab(checkpoints, workdir):
    assert_one_line_error(to_onnx("--checkpoint", checkpoints["tutorial"], "--out", workdir / "export"),
                          "--text", "--vocab")
    assert listing(workdir) == []


def test_text_that_is_not_the_runs_training_text(checkpoints, workdir, tmp_path):
    run = copy_tree(checkpoints["run"], tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data_sha256": "0" * 64}))
    assert_one_line_error(to_onnx("--checkpoint", run, "--out", workdir / "export", "--text", checkpoints["text"]),
                          "is not the text")
    assert listing(workdir) == []


# ---------------------------------------------------------------- --out


def test_out_under_a_regular_file(checkpoints, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert_one_line_error(to_onnx("--checkpoint", checkpoints["run"], "--out", blocker / "sub" / "export"),
                          str(blocker))
    assert listing(tmp_path) == ["a-file"] and blocker.read_text() == "not a directory"


def test_out_that_is_a_regular_file(checkpoints, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    assert_one_line_error(to_onnx("--checkpoint", checkpoints["run"], "--out", blocker, "--force"), str(blocker))
    assert blocker.read_text() == "keep me"


def test_out_where_even_root_cannot_write(checkpoints):
    # /proc refuses new files whoever asks, so this fails for root too (unlike chmod 0o555).
    assert_one_line_error(to_onnx("--checkpoint", checkpoints["run"], "--out", "/proc/charrnn-export-test/export"),
                          "/proc")


def test_out_that_is_not_empty_without_force(checkpoints, workdir):
    out = workdir / "export"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    # Not even --force writes among a user's files: the message says to choose another folder.
    for flags in ([], ["--force"]):
        assert_one_line_error(to_onnx("--checkpoint", checkpoints["run"], "--out", out, *flags),
                              "did not write (keep.txt)", "choose an empty or new directory")
        assert listing(workdir) == ["export"] and listing(out) == ["keep.txt"]


# ---------------------------------------------------------------- corrupt checkpoints


@pytest.mark.parametrize("damage", ["truncated best.npz", "garbage best.npz", "best.npz missing a weight",
                                    "truncated .npz file", "truncated .weights.h5", "garbage .weights.h5",
                                    "truncated TF checkpoint data", "garbage TF checkpoint index"])
def test_a_corrupt_checkpoint(damage, checkpoints, workdir, tmp_path, capfd):
    vocab = checkpoints["run"] / "vocab.json"
    extra = ["--vocab", vocab]
    if "best.npz" in damage:
        target = copy_tree(checkpoints["run"], tmp_path / "run")
        best = target / "best.npz"
        if damage == "truncated best.npz":
            best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
        elif damage == "garbage best.npz":
            best.write_bytes(os.urandom(4096))
        else:
            with np.load(best) as npz:
                arrays = {k: npz[k] for k in npz.files if k != "weights/layers/0/recurrent_kernel"}
            with open(best, "wb") as f:
                np.savez(f, **arrays)
        extra = []
    elif damage == "truncated .npz file":
        target = tmp_path / "weights.npz"
        data = (checkpoints["run"] / "best.npz").read_bytes()
        target.write_bytes(data[: len(data) - 100])
    elif damage.endswith(".weights.h5"):
        target = tmp_path / "model.weights.h5"
        data = checkpoints["h5"].read_bytes()
        target.write_bytes(data[: len(data) // 3] if damage.startswith("truncated") else os.urandom(len(data)))
    else:
        target = copy_tree(checkpoints["tutorial"], tmp_path / "training_checkpoints")
        name = "ckpt_1.data-00000-of-00001" if "data" in damage else "ckpt_1.index"
        size = (target / name).stat().st_size
        (target / name).write_bytes((target / name).read_bytes()[: size // 2] if "truncated" in damage
                                    else os.urandom(size))
    # One TF case runs as a user runs it; the other in this process, where TensorFlow is loaded.
    runner = functools.partial(run_main, capfd) if damage == "truncated TF checkpoint data" else to_onnx
    line = assert_one_line_error(runner("--checkpoint", target, "--out", workdir / "export", *extra))
    assert "corrupt" in line or "truncated" in line or "missing" in line.lower(), line
    assert listing(workdir) == []


# ---------------------------------------------------------------- options and parity


def test_an_opset_tf2onnx_cannot_write(checkpoints, workdir):
    assert_one_line_error(to_onnx("--checkpoint", checkpoints["run"], "--out", workdir / "export", "--opset", "99"),
                          "--opset")
    assert listing(workdir) == []


def test_parity_beyond_atol_fails_with_the_figures_and_writes_nothing(checkpoints, workdir):
    line = assert_one_line_error(to_onnx("--checkpoint", checkpoints["run"], "--out", workdir / "export",
                                         "--atol", "1e-12", "--quantize", "int8"), "parity", "atol 1e-12")
    assert "keras_vs_onnx logits max abs diff" in line
    assert listing(workdir) == []  # no export, no .export.* staging directory, no probe


def test_errors_found_before_tensorflow_do_not_import_it(checkpoints, workdir):
    """Options, --out, the checkpoint's kind and its vocabulary are checked before TensorFlow loads."""
    code = ("import sys\nfrom charrnn_export.cli import main\n"
            f"rc = main(['to-onnx', '--checkpoint', {str(checkpoints['h5'])!r}, '--out', {str(workdir / 'x')!r}])\n"
            "print(rc, 'tensorflow' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.split() == ["2", "False"], result.stderr
    assert result.stderr.startswith(ERROR_PREFIX) and "--text" in result.stderr
