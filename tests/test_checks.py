"""checks.py and files.py on their own: argument checks name the argument and raise the project's
errors; the manifest never reaches outside its folder; the folder lock admits one holder."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from charrnn_export import checks
from charrnn_export.errors import (ArgumentTypeError, ArgumentValueError, CharRNNError, ConfigError, FolderInUse,
                                   ModelError, WriteError)
from charrnn_export.files import (LOCK, MANIFEST, FolderLock, Manifest, atomic_write_text, foreign_entries,
                                  write_error)

WRONG_TYPES = [
    (checks.check_length, "10", "length"),
    (checks.check_length, True, "length"),
    (checks.check_length, 2.0, "length"),
    (checks.check_temperature, None, "temperature"),
    (checks.check_temperature, "hot", "temperature"),
    (checks.check_top_k, 2.5, "top_k"),
    (checks.check_top_p, "0.5", "top_p"),
    (checks.check_seed, "abc", "seed"),
    (checks.check_seed, 1.0, "seed"),
    (checks.check_threads, "x", "threads"),
    (checks.check_bool, 1, "greedy"),
    (checks.check_start, b"ROMEO", "start"),
    (checks.check_start, None, "start"),
    (checks.check_starts, "ROMEO", "starts"),
    (checks.check_starts, ["ok", 3], "starts[1]"),
    (checks.check_unknown, None, "unknown"),
    (checks.check_runtime, 3, "runtime"),
    (checks.check_device, None, "device"),
    (checks.check_model_path, 3, "path"),
]


@pytest.mark.parametrize("check,value,name", WRONG_TYPES, ids=[f"{c.__name__}-{v!r}" for c, v, _ in WRONG_TYPES])
def test_a_wrong_type_is_an_argument_type_error_naming_the_argument(check, value, name):
    args = (value, "greedy") if check is checks.check_bool else (value,)
    with pytest.raises(ArgumentTypeError) as caught:
        check(*args)
    assert isinstance(caught.value, TypeError) and isinstance(caught.value, ConfigError)
    assert str(caught.value).startswith(f"{name} must be"), str(caught.value)
    assert "--" not in str(caught.value)  # an API message names the Python argument, never a flag


WRONG_VALUES = [
    (checks.check_length, -1, "length must be >= 0"),
    (checks.check_seed, -1, "seed must be in [0, 2**32)"),
    (checks.check_seed, 2**32, "seed must be in [0, 2**32)"),
    (checks.check_temperature, 0, "temperature must be a positive number"),
    (checks.check_temperature, math.nan, "temperature must be a positive number"),
    (checks.check_temperature, math.inf, "temperature must be a positive number"),
    (checks.check_top_k, 0, "top_k must be >= 1"),
    (checks.check_top_p, 0.0, "top_p must be in (0, 1]"),
    (checks.check_top_p, 1.5, "top_p must be in (0, 1]"),
    (checks.check_threads, -1, "threads must be >= 1"),
    (checks.check_threads, 100_000, "more than the"),
    (checks.check_starts, [], "starts must hold at least one"),
    (checks.check_unknown, "drop", "unknown must be one of error, skip"),
    (checks.check_runtime, "bogus", "runtime must be one of onnx, savedmodel, keras"),
    (checks.check_device, "tpu", "device must be one of cpu, cuda"),
    # Every number is bounded where it enters (issue 18): one message naming the range.
    (checks.check_length, 2**63, "length must be <= 2**40 (in [0, 2**40])"),
    (checks.check_top_k, 10**20, "top_k must be <= 2**31 - 1 (in [1, 2**31 - 1])"),
    (checks.check_temperature, 1e-38, "temperature must be in [1e-06, 1e+30], got 1e-38: below 1e-06"),
    (checks.check_temperature, 1e-40, "ask for greedy decoding instead"),
    (checks.check_temperature, 1e31, "temperature must be in [1e-06, 1e+30]"),
    (checks.check_top_p, -1e-46, "top_p must be in (0, 1]"),
]


@pytest.mark.parametrize("check,value,message", WRONG_VALUES, ids=[f"{c.__name__}-{v!r}" for c, v, _ in WRONG_VALUES])
def test_a_wrong_value_is_an_argument_value_error_naming_the_argument(check, value, message):
    with pytest.raises(ArgumentValueError, match=None) as caught:
        check(value)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, CharRNNError)
    assert message in str(caught.value)


@pytest.mark.parametrize("check,value,message", WRONG_VALUES + [(c, v, "") for c, v, _ in WRONG_TYPES],
                         ids=[f"{c.__name__}-{v!r}" for c, v, _ in WRONG_VALUES + WRONG_TYPES])
def test_an_argument_error_carries_the_argument_name_as_param(check, value, message):
    args = (value, "greedy") if check is checks.check_bool else (value,)
    with pytest.raises(ConfigError) as caught:
        check(*args)
    assert str(caught.value).startswith(caught.value.param), (caught.value.param, str(caught.value))
    with pytest.raises(ConfigError) as caught:
        check(value, "--flag")
    assert caught.value.param.startswith("--flag")  # an element of a list: "--flag[1]"


def test_the_edges_of_every_range_are_accepted():
    assert checks.check_length(2**40) == 2**40 and checks.check_length(0) == 0
    assert checks.check_top_k(2**31 - 1) == 2**31 - 1
    assert checks.check_temperature(1e-6) == 1e-6 and checks.check_temperature(1e30) == 1e30
    assert checks.check_top_p(1e-46) == 1e-46 and checks.check_top_p(1 - 1e-16) == 1 - 1e-16
    assert checks.check_count(5, "--num-samples", 10) == 5


@pytest.mark.parametrize("value", [0, 11, 10**30])
def test_a_count_outside_its_range_names_it(value):
    with pytest.raises(ArgumentValueError, match=r"^--num-samples must be in \[1, 10\]"):
        checks.check_count(value, "--num-samples", 10)


def test_rows_that_cannot_fit_in_memory_are_refused_naming_the_largest_that_fits():
    free = checks.available_memory()
    if free is None:
        pytest.skip("this system does not say how much memory is free")
    assert checks.check_fits_memory(10, 1024, "--num-samples") == 10
    with pytest.raises(ArgumentValueError, match=r"^--num-samples 100,000,000 needs about .* GiB.*use at most") as e:
        checks.check_fits_memory(100_000_000, free, "--num-samples")
    assert e.value.param == "--num-samples"


def test_good_values_come_back_normalised():
    assert checks.check_length(np.int64(5)) == 5 and type(checks.check_length(np.int64(5))) is int
    assert checks.check_seed(None) is None and checks.check_seed(2**32 - 1) == 2**32 - 1
    assert checks.check_temperature(1) == 1.0 and checks.check_top_p(np.float32(0.5)) == 0.5
    assert checks.check_top_k(None) is None and checks.check_threads(None) is None
    assert checks.check_threads(checks.available_cpus()) == checks.available_cpus()
    assert checks.check_bool(np.bool_(True), "greedy") is True
    assert checks.check_starts(("a", "b")) == ["a", "b"]
    assert checks.check_model_path(os.path.join("a", "b")) == os.path.join("a", "b")


def test_the_cli_name_is_used_when_the_cli_passes_it():
    with pytest.raises(ArgumentValueError, match=r"^--threads \d+ is more than the \d+ CPU"):
        checks.check_threads(64 * checks.available_cpus(), "--threads")


def test_threads_above_the_machine_say_how_many_cpus_it_has():
    cpus = checks.available_cpus()
    with pytest.raises(ArgumentValueError, match=f"more than the {cpus} CPU"):
        checks.check_threads(cpus + 1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_logits_are_a_model_error(bad):
    logits = np.zeros((2, 5), dtype=np.float32)
    checks.check_finite_logits(logits)  # finite: nothing
    logits[1, 3] = bad
    with pytest.raises(ModelError, match="invalid logits"):
        checks.check_finite_logits(logits)


# ---------------------------------------------------------------- files.py


def test_manifest_removes_exactly_its_files_and_keeps_a_users(tmp_path):
    manifest = Manifest.create(tmp_path, "export")
    manifest.add("model.onnx", "saved_model/saved_model.pb", dirs=("saved_model",))
    (tmp_path / "model.onnx").write_text("ours")
    (tmp_path / "saved_model").mkdir()
    (tmp_path / "saved_model" / "saved_model.pb").write_text("ours")
    (tmp_path / "saved_model" / "notes.txt").write_text("the user's")
    (tmp_path / "notes.txt").write_text("the user's")
    assert foreign_entries(tmp_path, Manifest.read(tmp_path)) == ["notes.txt"]
    Manifest.read(tmp_path).remove_all()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "notes.txt", "saved_model", "saved_model/notes.txt"]


@pytest.mark.parametrize("entry", ["../outside.txt", "/etc/passwd", "a/../../outside.txt", ""])
def test_a_manifest_naming_anything_outside_its_folder_is_refused(entry, tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (tmp_path / "outside.txt").write_text("keep")
    (folder / MANIFEST).write_text(json.dumps({"tool": "charrnn-export", "kind": "export", "files": [entry]}))
    with pytest.raises(ConfigError, match="damaged"):
        Manifest.read(folder)
    assert (tmp_path / "outside.txt").read_text() == "keep"


def test_a_manifest_entry_through_a_symlinked_folder_is_not_followed(tmp_path):
    folder, elsewhere = tmp_path / "export", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    (elsewhere / "model.onnx").write_text("keep")
    (folder / "sub").symlink_to(elsewhere)
    Manifest(folder, "export", {"sub/model.onnx"}).remove_all()
    assert (elsewhere / "model.onnx").read_text() == "keep"


@pytest.mark.parametrize("content", ["{not json", "[]", '{"tool": "other", "kind": "run"}', "\udcff"])
def test_a_damaged_manifest_is_one_config_error(content, tmp_path):
    (tmp_path / MANIFEST).write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(ConfigError, match="damaged"):
        Manifest.read(tmp_path)


def test_the_lock_admits_one_holder_and_names_its_pid(tmp_path):
    with FolderLock(tmp_path, "--out x"):
        assert (tmp_path / LOCK).read_text() == f"{os.getpid()}\n"
        with pytest.raises(FolderInUse, match=f"pid {os.getpid()}"):
            FolderLock(tmp_path, "--out x").acquire()
    assert not (tmp_path / LOCK).exists()  # released: the file goes with it
    with FolderLock(tmp_path, "--out x"):
        pass


def test_a_killed_holder_never_blocks_the_next(tmp_path):
    code = ("import sys, time\nfrom charrnn_export.files import FolderLock\n"
            f"FolderLock({str(tmp_path)!r}, 'x').acquire()\nprint('held', flush=True)\ntime.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(FolderInUse, match=f"pid {holder.pid}"):
            FolderLock(tmp_path, "x").acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / LOCK).exists()  # a kill leaves the file, but not the lock
    with FolderLock(tmp_path, "x"):
        pass


def test_a_failed_write_is_a_write_error_that_is_also_an_os_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(WriteError) as caught:
        atomic_write_text(blocker / "below" / "out.txt", "text")
    assert isinstance(caught.value, OSError) and "cannot write" in str(caught.value)
    assert blocker.read_text() == "x"
    full = write_error(tmp_path / "x", OSError(28, "No space left on device"))
    assert str(full).startswith(f"cannot write {tmp_path / 'x'}: the disk is full")
