"""`charrnn-export train` through the real CLI: what a run directory holds, determinism, resume after a kill."""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
from pathlib import Path

import numpy as np
from conftest import TINY_ARGS, run_checkpoints, run_cli, run_metrics, train_killed_in_epoch_two

from charrnn_export.vocab import Vocab
from charrnn_export.checkpoints import read_checkpoint, save_checkpoint
from charrnn_export.cells import Architecture, LayerSpec

EPOCHS = 4
LOSSES = ("global_step", "train_loss", "val_loss", "val_bpc")


metrics = run_metrics


def losses(run: Path) -> list[tuple]:
    return [tuple(row[k] for k in ("epoch", *LOSSES)) for row in metrics(run)]


checkpoints = run_checkpoints


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = read_checkpoint(a).weights.named_arrays(), read_checkpoint(b).weights.named_arrays()
    return wa.keys() == wb.keys() and all(np.array_equal(wa[n], wb[n]) for n in wa)


def leftovers(run: Path) -> list[Path]:
    return [p for p in run.rglob("*") if p.name.endswith(".tmp")]


def test_loss_falls_and_the_run_directory_is_complete(trained_run, text_file):
    rows = metrics(trained_run)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and all(r["complete"] for r in rows)
    for r in rows:
        for key in ("train_loss", "val_loss", "val_bpc", "chars_per_sec", "wall_time"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert r["val_bpc"] == r["val_loss"] / math.log(2)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    assert [r["wall_time"] for r in rows] == sorted(r["wall_time"] for r in rows)

    config = json.loads((trained_run / "config.json").read_text(encoding="utf-8"))
    assert (config["cell"], config["layers"], config["state_size"]) == ("gru", 1, 32)  # the defaults: one GRU
    assert (config["embedding_dim"], config["rnn_units"], config["seq_length"], config["batch_size"],
            config["seed"], config["epochs"], config["data"]) == (16, 32, 16, 8, 7, EPOCHS, str(text_file))
    text = text_file.read_text(encoding="utf-8")
    vocab = Vocab.load(trained_run / "vocab.json")
    assert vocab == Vocab.from_text(text) and config["vocab_size"] == len(vocab)

    ckpts = checkpoints(trained_run)
    assert [p.name for p in ckpts] == [f"ckpt-e{r['epoch']:03d}-s{r['global_step']:08d}.npz" for r in rows]
    for path, row in zip(ckpts, rows):
        ckpt = read_checkpoint(path)
        assert ckpt.weights.architecture() == Architecture(len(vocab), 16, (LayerSpec("gru", 32),))
        assert ckpt.meta["architecture"] == config["architecture"]
        assert ckpt.optimizer_state  # resumable: the optimizer's moments are saved too
        assert ckpt.meta["metrics"]["val_loss"] == row["val_loss"]
    best = read_checkpoint(trained_run / "best.npz")
    best_row = min(rows, key=lambda r: r["val_loss"])
    assert best.meta["metrics"]["val_loss"] == best_row["val_loss"]
    assert same_weights(trained_run / "best.npz", ckpts[best_row["epoch"] - 1])
    assert leftovers(trained_run) == []


def test_same_seed_twice_gives_identical_metrics_and_weights(trained_run, text_file, tmp_path):
    out = tmp_path / "again"
    result = run_cli("train", "--data", text_file, "--out", out, "--epochs", EPOCHS, *TINY_ARGS)
    assert result.returncode == 0, result.stderr
    assert losses(out) == losses(trained_run)
    assert all(same_weights(a, b) for a, b in zip(checkpoints(out), checkpoints(trained_run), strict=True))
    # Not a terminal: plain progress lines on stderr, no tqdm bar; the summary on stdout.
    progress = re.findall(r"^epoch (\d)/4 batch (\d+)/(\d+) loss [\d.]+ [\d,]+ chars/s$", result.stderr, re.M)
    assert {int(e) for e, done, total in progress if done == total} == {1, 2, 3, 4} and len(progress) >= 20
    assert "\r" not in result.stderr and "best validation loss" in result.stdout


def test_resume_after_sigkill_repeats_an_uninterrupted_run(trained_run, text_file, tmp_path):
    out = tmp_path / "killed"
    args = ("train", "--data", text_file, "--out", out, "--epochs", EPOCHS, *TINY_ARGS)
    returncode = train_killed_in_epoch_two(out, args[1:], tmp_path / "stderr")
    assert returncode == -signal.SIGKILL, (tmp_path / "stderr").read_text()
    done_at_kill = len(checkpoints(out))
    assert 1 <= done_at_kill < EPOCHS  # killed mid-run, after at least one checkpoint

    result = run_cli(*args, "--resume")
    assert result.returncode == 0, result.stderr
    assert f"resuming {out} from ckpt-e{done_at_kill:03d}" in result.stderr
    assert losses(out) == losses(trained_run)  # exactly, epoch by epoch
    assert [p.name for p in checkpoints(out)] == [p.name for p in checkpoints(trained_run)]
    last, reference = read_checkpoint(checkpoints(out)[-1]), read_checkpoint(checkpoints(trained_run)[-1])
    assert all(np.array_equal(a, b) for a, b in zip(last.optimizer_state, reference.optimizer_state, strict=True))
    assert same_weights(checkpoints(out)[-1], checkpoints(trained_run)[-1])
    assert same_weights(out / "best.npz", trained_run / "best.npz")
    for path in [*checkpoints(out), out / "best.npz"]:
        read_checkpoint(path)  # every file is whole
    assert leftovers(out) == []


def test_resume_catches_up_after_a_kill_between_a_checkpoint_and_its_metrics(trained_run, text_file, tmp_path):
    # The state a kill leaves just after epoch 4's checkpoint was written: best.npz and metrics.jsonl
    # still from epoch 3, and the temporary file of the metrics write it cut short.
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    assert metrics(out)[-1]["val_loss"] == min(r["val_loss"] for r in metrics(out))  # epoch 4 was the best
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text("".join(lines[:3]))
    (out / ".metrics.jsonl.k1ll3d.tmp").write_text(lines[0])
    (out / "checkpoints" / ".ckpt-e005-s00000395.npz.k1ll3d.tmp").write_bytes(b"PK\x03")
    epoch3 = read_checkpoint(checkpoints(out)[2])
    save_checkpoint(out / "best.npz", epoch3.weights, epoch3.meta)

    result = run_cli("train", "--data", text_file, "--out", out, "--epochs", EPOCHS, *TINY_ARGS, "--resume")
    assert result.returncode == 0, result.stderr
    assert (out / "metrics.jsonl").read_bytes() == (trained_run / "metrics.jsonl").read_bytes()
    assert same_weights(out / "best.npz", trained_run / "best.npz")
    assert leftovers(out) == []


def test_max_steps_stops_inside_an_epoch_and_resume_finishes_it_exactly(trained_run, text_file, tmp_path):
    out = tmp_path / "stepped"
    args = ("train", "--data", text_file, "--out", out, "--epochs", 2, *TINY_ARGS)  # --epochs keeps the losses
    steps_per_epoch = metrics(trained_run)[0]["global_step"]
    first = run_cli(*args, "--max-steps", steps_per_epoch + 20)
    assert first.returncode == 0, first.stderr
    assert [r["complete"] for r in metrics(out)] == [True, False]
    assert metrics(out)[-1]["global_step"] == steps_per_epoch + 20
    result = run_cli(*args, "--resume")
    assert result.returncode == 0, result.stderr
    assert losses(out) == losses(trained_run)[:2]
