"""Ordinary mistakes from issue 10, each run as a user runs it: one line on stderr, exit status 2,
no traceback, nothing half-made; and Ctrl-C in `sample` keeps the text already made."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ERROR_PREFIX, REPO, TINY_ARGS, assert_one_line_error, cli_command, cli_env, ctrl_c_works, run_cli


@pytest.fixture(scope="module")
def model(tiny_export) -> Path:
    return tiny_export / "model.onnx"


# ---------------------------------------------------------------- seeds, threads, --out


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_train_seed_outside_32_bits(seed, tmp_path, text_file):
    assert_one_line_error(run_cli("train", "--data", text_file, "--out", tmp_path / "run", *TINY_ARGS, "--seed", seed),
                   "--seed must be in [0, 2**32)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_sample_seed_outside_32_bits(seed, model):
    assert_one_line_error(run_cli("sample", "--model", model, "--seed", seed), "--seed must be in [0, 2**32)")


@pytest.mark.parametrize("flags,fragment", [
    (["--seed", "-1"], "--seed must be in [0, 2**32)"),
    (["--seed", str(2**32)], "--seed must be in [0, 2**32)"),
    (["--opset", "99"], "--opset must be between 13 and 18"),
    (["--atol", "nan"], "--atol must be a positive finite number"),
])
def test_to_onnx_numbers_are_checked_before_tensorflow_loads(flags, fragment, tiny_run, tmp_path):
    """A number out of range is one line before TensorFlow is imported (a second or more): the
    child is told to fail if it imports TensorFlow at all."""
    probe = ("import sys, runpy; sys.argv = ['charrnn-export'] + sys.argv[1:]; "
             "sys.modules['tensorflow'] = None; runpy.run_module('charrnn_export.cli', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", probe, "to-onnx", "--checkpoint", str(tiny_run), "--out",
                             str(tmp_path / "export"), *flags], capture_output=True, text=True, env=cli_env(),
                            cwd=REPO, timeout=120)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("flags,fragment", [
    (["--top-k", str(10**20)], "--top-k must be <= 2**31 - 1"),
    (["--length", str(2**63)], "--length must be <= 2**40"),
    (["--num-samples", "100000000"], "--num-samples must be in [1, 1,000,000]"),
    (["--temperature", "1e-38"], "--temperature must be in [1e-06, 1e+30]"),
])
def test_sample_numbers_beyond_their_range(flags, fragment, model):
    assert_one_line_error(run_cli("sample", "--model", model, *flags), fragment)


@pytest.mark.parametrize("threads,fragment", [("100000", "more than the"), ("0", "--threads must be >= 1")])
def test_sample_threads_beyond_the_machine(threads, fragment, model):
    line = assert_one_line_error(run_cli("sample", "--model", model, "--threads", threads), fragment)
    if threads == "100000":
        from charrnn_export.checks import available_cpus

        assert f"{available_cpus()} CPU" in line


def test_sample_out_below_a_file_is_refused_before_generating(model, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep")
    assert_one_line_error(run_cli("sample", "--model", model, "--length", "100000000", "--out", blocker / "out.txt"),
                   str(blocker), "is a file")
    assert blocker.read_text() == "keep"


def test_sample_out_where_nothing_can_be_written_is_refused_before_generating(model):
    # /proc refuses new files whoever asks; --length is far too long to finish if the check came after.
    assert_one_line_error(run_cli("sample", "--model", model, "--length", "100000000", "--out", "/proc/charrnn/out.txt"),
                   "/proc")


@pytest.mark.parametrize("where", ["below a file", "/proc"])
def test_train_out_that_cannot_be_written(where, tmp_path, text_file):
    if where == "below a file":
        (tmp_path / "a-file").write_text("keep")
        out = tmp_path / "a-file" / "run"
    else:
        out = Path("/proc/charrnn-export-test/run")
    assert_one_line_error(run_cli("train", "--data", text_file, "--out", out, *TINY_ARGS), "cannot write")


# ---------------------------------------------------------------- data and models


def test_a_text_of_one_distinct_character(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("a" * 5000)
    for flags in ((), ("--resume",), ("--force",)):
        line = assert_one_line_error(run_cli("train", "--data", text, "--out", tmp_path / "run", *TINY_ARGS, *flags))
        assert "only one distinct character" in line or "holds no run" in line
    assert not (tmp_path / "run").exists()  # nothing left to block the next try


def broken_onnx(tmp_path: Path, model: Path, change: str) -> Path:
    """A copy of the tiny model with NaN output biases, or with a float `token` input."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(model))
    if change == "nan":
        for i, init in enumerate(proto.graph.initializer):
            if init.name == "dense_bias":
                proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(
                    np.full(numpy_helper.to_array(init).shape, np.nan, dtype=np.float32), "dense_bias"))
    else:  # float token: the graph casts it back, so onnxruntime runs it; the contract says int32
        token = next(i for i in proto.graph.input if i.name == "token")
        token.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
        for node in proto.graph.node:
            node.input[:] = ["token_int" if name == "token" else name for name in node.input]
        proto.graph.node.insert(0, helper.make_node("Cast", ["token"], ["token_int"], to=onnx.TensorProto.INT32))
    path = tmp_path / f"{change}.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("greedy", [(), ("--greedy",)], ids=["sampled", "greedy"])
def test_a_model_with_nan_logits_stops_with_a_message(greedy, model, tmp_path):
    # -q: without the log on stderr the error is the only line (the log lines come before it otherwise)
    assert_one_line_error(run_cli("sample", "-q", "--model", broken_onnx(tmp_path, model, "nan"), "--length", "20",
                           *greedy), "NaN")


def test_a_step_model_whose_token_is_float(model, tmp_path):
    assert_one_line_error(run_cli("sample", "--model", broken_onnx(tmp_path, model, "float"), "--length", "20"),
                   "token")


def test_a_saved_model_whose_vocabulary_is_smaller_than_its_logits(tiny_export, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(tiny_export / "saved_model", export / "saved_model")
    vocab_file = export / "saved_model" / "assets" / "vocab.json"
    vocab_file.write_text(json.dumps(json.loads(vocab_file.read_text())[:-3]))
    assert_one_line_error(run_cli("sample", "--runtime", "savedmodel", "--model", export, "--length", "20"),
                   "logits but", "characters")


def test_a_checkpoint_holding_python_objects_names_no_numpy_advice(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    with np.load(trained_run / "best.npz") as npz:  # the real checkpoint, one weight made of Python objects
        arrays = {name: npz[name] for name in npz.files}
    weight = next(name for name in arrays if name.startswith("weights/"))
    arrays[weight] = np.array([{"a": 1}], dtype=object)
    np.savez(run / "best.npz", **arrays)
    line = assert_one_line_error(run_cli("to-onnx", "--checkpoint", run, "--out", tmp_path / "export"), "corrupt")
    assert "allow_pickle" not in line and "Python objects" in line


# ---------------------------------------------------------------- messages name flags the command has


def test_to_onnx_names_text_not_data(trained_run, tmp_path):
    line = assert_one_line_error(run_cli("to-onnx", "--checkpoint", trained_run, "--out", tmp_path / "e",
                                  "--text", tmp_path / "missing.txt"), "--text")
    assert "--data" not in line


def test_to_onnx_unknown_text_characters_name_no_sampling_flag(trained_run, tmp_path, text_file):
    text = tmp_path / "other.txt"
    text.write_text(text_file.read_text() + "€€€")
    # A text other than the run's is refused first (by its sha256): use the weights without the run's meta.
    from charrnn_export.checkpoints import read_checkpoint, save_checkpoint

    bare = tmp_path / "bare"
    save_checkpoint(bare / "w.npz", read_checkpoint(trained_run / "best.npz").weights, {})
    line = assert_one_line_error(run_cli("to-onnx", "--checkpoint", bare / "w.npz", "--vocab", trained_run / "vocab.json",
                                  "--text", text, "--out", tmp_path / "e"), "'€'")
    assert "--unknown" not in line


def test_the_vocabulary_message_reads_as_english(trained_run, tmp_path):
    vocab = tmp_path / "short.json"
    vocab.write_text(json.dumps(list("abc")))
    bare = tmp_path / "w.npz"
    shutil.copy(trained_run / "best.npz", bare)
    line = assert_one_line_error(run_cli("to-onnx", "--checkpoint", bare, "--vocab", vocab, "--out", tmp_path / "e"),
                          "from --vocab")
    assert "from stored" not in line


# ---------------------------------------------------------------- Ctrl-C keeps the text


def interrupted_sample(model, *args) -> tuple[subprocess.CompletedProcess, str]:
    """Start a sample far too long to finish, send SIGINT once it is generating, return what it left."""
    process = subprocess.Popen(cli_command("sample", "--model", model, "--start", "ROMEO:", "--length", "100000000",
                                           "--seed", "1", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=cli_env(), cwd=REPO, preexec_fn=ctrl_c_works)
    lines = []
    try:
        while not lines or not lines[-1].startswith("generating"):
            lines.append(process.stderr.readline())
            assert lines[-1], "".join(lines)
        import time

        time.sleep(1.0)  # let some characters be made (the test does not depend on how many)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:  # a failed test must not leave a sample of 10**8 characters running
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, "".join(lines) + stderr), stderr


@pytest.mark.parametrize("flags", [(), ("--stream",), ("--num-samples", "2")], ids=["plain", "stream", "batch"])
def test_ctrl_c_prints_the_text_made_so_far(flags, model):
    result, after = interrupted_sample(model, *flags)
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    assert after.splitlines()[-1].startswith(f"{ERROR_PREFIX} interrupted after")
    assert result.stdout.startswith("ROMEO:") and len(result.stdout) > len("ROMEO:\n")


def test_ctrl_c_writes_the_text_made_so_far_to_out(model, tmp_path):
    out = tmp_path / "out.txt"
    result, after = interrupted_sample(model, "--out", out)
    assert result.returncode == 130, result.stderr
    assert f"written to {out}" in after
    text = out.read_text(encoding="utf-8")
    assert text.startswith("ROMEO:") and len(text) > len("ROMEO:\n") and result.stdout == ""
