"""`train --strategy mirrored|multi-worker`: the same training as one process, chief-only writes,
a dead worker stops the others with one line, and --resume restarts every worker from the chief.

Real TensorFlow, real worker processes on 127.0.0.1 (free ports); every process a test starts is
stopped by its pid before the test ends. A tiny model (16/32 units) for 3 short epochs, so the
module costs about a minute on 2 cores. Dropout and gradient clipping are on, since both are where
a split batch could quietly differ from one process (the mask, the norm).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ERROR_PREFIX, cli_command, cli_env, make_text, run_cli

from charrnn_export.distribute import local_tf_configs
from charrnn_export.checkpoints import read_checkpoint

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                                reason="TensorFlow is not installed (the train extra)")

EPOCHS = 3
# Global batch 8 over 2 replicas; about 30 steps an epoch on the 5,000-character text.
ARGS = ("--epochs", EPOCHS, "--embedding-dim", "16", "--rnn-units", "32", "--seq-length", "16", "--batch-size", "8",
        "--learning-rate", "5e-3", "--seed", "7", "--dropout", "0.2", "--clip-norm", "0.5")
TOLERANCE = 1e-5
# Two workers on a 2-core machine: one intra-op thread each, or they fight over the cores.
WORKER_ENV = {"TF_NUM_INTRAOP_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("distribute") / "play.txt"
    path.write_text(make_text(5_000), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one-process") / "run"
    result = run_cli("train", "--data", data, "--out", out, *ARGS)
    assert result.returncode == 0, result.stderr
    return out


def checkpoints(run: Path) -> list[Path]:
    return sorted((run / "checkpoints").glob("ckpt-*.npz"))


def assert_same_training(run: Path, reference: Path) -> None:
    """Same checkpoints, final weights and optimizer state within TOLERANCE, the same losses."""
    assert [p.name for p in checkpoints(run)] == [p.name for p in checkpoints(reference)]
    last, expected = read_checkpoint(checkpoints(run)[-1]), read_checkpoint(checkpoints(reference)[-1])
    arrays, expected_arrays = last.weights.named_arrays(), expected.weights.named_arrays()
    assert arrays.keys() == expected_arrays.keys()
    for name in arrays:
        np.testing.assert_allclose(arrays[name], expected_arrays[name], rtol=0, atol=TOLERANCE, err_msg=name)
    for got, want in zip(last.optimizer_state, expected.optimizer_state, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    reference_rows = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in rows] == [r["global_step"] for r in reference_rows]
    np.testing.assert_allclose([r["train_loss"] for r in rows], [r["train_loss"] for r in reference_rows], atol=1e-5)
    np.testing.assert_allclose([r["val_loss"] for r in rows], [r["val_loss"] for r in reference_rows], atol=1e-5)


class Workers:
    """Worker processes of one multi-worker run on 127.0.0.1; stop() kills what is still running."""

    def __init__(self, tmp_path: Path, data: Path, outs: list[Path], *extra):
        self.procs, self.logs = [], []
        for index, (tf_config, out) in enumerate(zip(local_tf_configs(len(outs)), outs)):
            log = tmp_path / f"worker{index}-{time.monotonic_ns()}.stderr"
            self.logs.append(log)
            with open(log, "wb") as err:
                self.procs.append(subprocess.Popen(
                    cli_command("train", "--data", data, "--out", out, *ARGS, "--strategy", "multi-worker", *extra),
                    stdout=subprocess.DEVNULL, stderr=err, env=cli_env(TF_CONFIG=tf_config, **WORKER_ENV)))

    def wait(self, timeout: float = 240) -> list[int]:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        return [proc.returncode for proc in self.procs]

    def stderr(self, index: int) -> str:
        return self.logs[index].read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_two_workers_on_localhost_train_the_weights_of_one_process(data, one_process, tmp_path):
    chief, other = tmp_path / "chief", tmp_path / "other"
    workers = Workers(tmp_path, data, [chief, other])
    try:
        assert workers.wait() == [0, 0], workers.stderr(0) + workers.stderr(1)
    finally:
        workers.stop()
    assert_same_training(chief, one_process)
    assert not other.exists()  # only the chief writes: the other worker's --out is never made
    assert "--strategy multi-worker, 2 replicas" in workers.stderr(0)
    assert "epoch 3/3" in workers.stderr(0) and "epoch" not in workers.stderr(1)  # progress from the chief only


def test_mirrored_on_two_cpu_devices_trains_the_weights_of_one_process(data, one_process, tmp_path):
    out = tmp_path / "mirrored"
    result = run_cli("train", "--data", data, "--out", out, *ARGS, "--strategy", "mirrored", "--cpu-replicas", "2")
    assert result.returncode == 0, result.stderr
    assert "--strategy mirrored, 2 replicas" in result.stderr
    assert_same_training(out, one_process)


def test_mirrored_trains_a_stacked_lstm_as_one_process(data, tmp_path):
    # The one forward pass (forward.py) under both: dropout after the embedding and between the layers.
    stacked = (*ARGS, "--cell", "lstm", "--layers", "2", "--rnn-units", "16")
    reference, out = tmp_path / "one", tmp_path / "mirrored"
    result = run_cli("train", "--data", data, "--out", reference, *stacked)
    assert result.returncode == 0, result.stderr
    result = run_cli("train", "--data", data, "--out", out, *stacked, "--strategy", "mirrored", "--cpu-replicas", "2")
    assert result.returncode == 0, result.stderr
    assert read_checkpoint(checkpoints(out)[-1]).weights.architecture().describe() == "lstm(16) x2"
    assert_same_training(out, reference)


def test_a_killed_worker_stops_the_chief_with_one_line_and_resume_finishes_the_run(data, one_process, tmp_path):
    chief, other = tmp_path / "chief", tmp_path / "other"
    workers = Workers(tmp_path, data, [chief, other], "--worker-timeout", "8")
    try:
        # Kill worker 1 once the chief has written epoch 1's checkpoint: the chief is then waiting on it.
        while workers.procs[0].poll() is None and not checkpoints(chief):
            time.sleep(0.005)
        os.kill(workers.procs[1].pid, signal.SIGKILL)
        workers.procs[0].wait(timeout=120)  # the 8 s timeout, plus a slow machine's margin
    finally:
        workers.stop()
    assert workers.procs[0].returncode == 2, workers.stderr(0)
    lines = workers.stderr(0).strip().splitlines()
    assert lines[-1].startswith(f"{ERROR_PREFIX} a worker stopped answering at step "), lines[-3:]
    assert "--worker-timeout is 8 s" in lines[-1] and "--resume" in lines[-1]
    assert "Traceback" not in workers.stderr(0)
    done_at_kill = len(checkpoints(chief))
    assert 1 <= done_at_kill < EPOCHS

    resumed = Workers(tmp_path, data, [chief, other], "--resume")
    try:
        assert resumed.wait() == [0, 0], resumed.stderr(0) + resumed.stderr(1)
    finally:
        resumed.stop()
    assert f"resuming {chief} from ckpt-e{done_at_kill:03d}" in resumed.stderr(0)
    assert_same_training(chief, one_process)  # the worker restarted from the chief's checkpoint
    assert not other.exists()


def test_bad_distribution_flags_fail_with_one_line(data, tmp_path):
    cases = [
        ((), {"TF_CONFIG": ""}, "multi-worker needs TF_CONFIG"),
        ((), {"TF_CONFIG": '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "ps", "index": 0}}'},
         "only chief and worker tasks"),
        (("--cpu-replicas", "2"), {"TF_CONFIG": ""}, "--cpu-replicas needs --strategy mirrored"),
    ]
    for extra, env, message in cases:
        result = run_cli("train", "--data", data, "--out", tmp_path / "bad", *ARGS, "--strategy", "multi-worker",
                         *extra, env=env)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith(ERROR_PREFIX) and message in result.stderr, result.stderr
    uneven = run_cli("train", "--data", data, "--out", tmp_path / "uneven", *ARGS, "--strategy", "mirrored",
                     "--cpu-replicas", "3")
    assert uneven.returncode == 2, uneven.stderr
    assert uneven.stderr.strip().splitlines()[-1] == (f"{ERROR_PREFIX} --batch-size 8 does not split evenly over "
                                                      "3 replicas; use a multiple of 3")
    assert not (tmp_path / "bad").exists()
