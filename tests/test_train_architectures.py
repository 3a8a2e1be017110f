"""`train --cell gru|lstm|rnn --layers N --rnn-units ...` through the real CLI: every kind and a
stack trains and records its architecture (config.json, every checkpoint), a resume after a kill
repeats an uninterrupted stacked-LSTM run exactly, --resume refuses another architecture, bad
flags are one line, and a config.json from before --cell reads as one GRU.

Tiny models (8-16 units) on a slice of tiny-shakespeare, a few steps each.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from conftest import (assert_one_line_error, run_checkpoints, run_cli, run_metrics, tutorial_text,
                      train_killed_in_epoch_two)

from charrnn_export.cells import Architecture, LayerSpec
from charrnn_export.checkpoints import read_checkpoint
from charrnn_export.errors import ConfigError
from charrnn_export.train import TrainConfig
from charrnn_export.vocab import Vocab

SMALL = ("--embedding-dim", "8", "--seq-length", "16", "--batch-size", "8", "--learning-rate", "5e-3",
         "--seed", "3", "--dropout", "0.1")
SHORT = ("--epochs", "2", "--max-steps", "12")  # two epochs' checkpoints would be slow; 12 steps in one
# (cell flags, the architecture's layers) for each kind and two stacks.
KINDS = {
    "gru": (("--cell", "gru", "--rnn-units", "16"), (LayerSpec("gru", 16),)),
    "lstm": (("--cell", "lstm", "--rnn-units", "16"), (LayerSpec("lstm", 16),)),
    "rnn": (("--cell", "rnn", "--rnn-units", "16"), (LayerSpec("rnn", 16),)),
    "lstm2": (("--cell", "lstm", "--layers", "2", "--rnn-units", "16"), (LayerSpec("lstm", 16),) * 2),
    "gru-16-8": (("--rnn-units", "16,8"), (LayerSpec("gru", 16), LayerSpec("gru", 8))),
}


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("shakespeare") / "slice.txt"
    path.write_text(tutorial_text(12_000), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(shakespeare, tmp_path_factory) -> dict[str, Path]:
    """One short run of each KINDS entry (shared: tests copy a run before changing it)."""
    root = tmp_path_factory.mktemp("kinds")
    out = {}
    for name, (flags, _) in KINDS.items():
        out[name] = root / name
        result = run_cli("train", "--data", shakespeare, "--out", out[name], *SMALL, *SHORT, *flags)
        assert result.returncode == 0, (name, result.stderr)
    return out


def config_of(run: Path) -> dict:
    return json.loads((run / "config.json").read_text(encoding="utf-8"))


metrics, checkpoints = run_metrics, run_checkpoints


@pytest.mark.parametrize("name", list(KINDS))
def test_each_kind_trains_and_records_its_architecture(name, runs, shakespeare):
    run, (_, layers) = runs[name], KINDS[name]
    vocab = Vocab.load(run / "vocab.json")
    expected = Architecture(len(vocab), 8, layers)
    config = config_of(run)
    assert (config["cell"], config["layers"]) == (layers[0].kind, len(layers))
    units = [layer.units for layer in layers]
    assert config["rnn_units"] == (units[0] if len(set(units)) == 1 else units)
    assert config["architecture"] == expected.to_json() and config["state_size"] == expected.state_size
    assert Architecture.from_config(config) == expected  # what export reads from the run
    rows = metrics(run)
    assert rows and all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in rows)
    for path in [*checkpoints(run), run / "best.npz"]:
        ckpt = read_checkpoint(path)
        assert ckpt.weights.architecture() == expected, path
        assert ckpt.meta["architecture"] == expected.to_json()
        assert ckpt.optimizer_state or path.name == "best.npz"
    # The LSTM's state is h and c: twice its units wide; the others' is their units.
    assert expected.state_size == sum(2 * u if layers[0].kind == "lstm" else u for u in units)


def test_resume_after_sigkill_repeats_an_uninterrupted_lstm_stack(shakespeare, tmp_path):
    args = ("--data", shakespeare, *SMALL, "--cell", "lstm", "--layers", "2", "--rnn-units", "8", "--epochs", "3")
    reference = tmp_path / "uninterrupted"
    result = run_cli("train", "--out", reference, *args)
    assert result.returncode == 0, result.stderr

    out = tmp_path / "killed"
    returncode = train_killed_in_epoch_two(out, args, tmp_path / "stderr")
    assert returncode == -signal.SIGKILL, (tmp_path / "stderr").read_text()
    assert 1 <= len(checkpoints(out)) < 3

    result = run_cli("train", "--out", out, *args, "--resume")
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr
    keys = ("epoch", "global_step", "train_loss", "val_loss")
    assert [[r[k] for k in keys] for r in metrics(out)] == [[r[k] for k in keys] for r in metrics(reference)]
    assert [p.name for p in checkpoints(out)] == [p.name for p in checkpoints(reference)]
    for got_path, want_path in ((checkpoints(out)[-1], checkpoints(reference)[-1]), (out / "best.npz",
                                                                                     reference / "best.npz")):
        got, want = read_checkpoint(got_path), read_checkpoint(want_path)
        assert got.weights.architecture() == want.weights.architecture()
        got_arrays, want_arrays = got.weights.named_arrays(), want.weights.named_arrays()
        assert got_arrays.keys() == want_arrays.keys()
        assert all(np.array_equal(got_arrays[k], want_arrays[k]) for k in got_arrays), got_path
        assert all(np.array_equal(a, b) for a, b in zip(got.optimizer_state, want.optimizer_state, strict=True))


@pytest.mark.parametrize("change,fragment", [
    (("--cell", "gru", "--layers", "2", "--rnn-units", "16"), "cell: 'lstm' -> 'gru'"),
    (("--cell", "lstm", "--layers", "3", "--rnn-units", "16"), "layers: 2 -> 3"),
    (("--cell", "lstm", "--rnn-units", "16,8"), "rnn_units: 16 -> [16, 8]"),
    (("--cell", "lstm", "--layers", "2", "--rnn-units", "8"), "rnn_units: 16 -> 8"),
])
def test_resume_refuses_another_architecture(change, fragment, runs, shakespeare, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["lstm2"], run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = run_cli("train", "--data", shakespeare, "--out", run, *SMALL, *SHORT, *change, "--resume")
    assert_one_line_error(result, "different config", fragment, "the run's model is lstm(16) x2", "--force")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_resume_accepts_the_same_architecture_spelled_another_way(runs, shakespeare, tmp_path):
    # --rnn-units 16,16 is --rnn-units 16 --layers 2: the same model, so the same run.
    run = tmp_path / "run"
    shutil.copytree(runs["lstm2"], run)
    result = run_cli("train", "--data", shakespeare, "--out", run, *SMALL, "--epochs", "2", "--max-steps", "14",
                     "--cell", "lstm", "--rnn-units", "16,16", "--resume")
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr and metrics(run)[-1]["global_step"] == 14


@pytest.mark.parametrize("flags,fragment", [
    (("--layers", "0"), "--layers must be positive, got 0"),
    (("--cell", "foo"), "--cell must be one of gru, lstm, rnn, got 'foo'"),
    (("--rnn-units", "8,8", "--layers", "3"), "--rnn-units 8,8 gives 2 layers' units but --layers is 3"),
    (("--rnn-units", "8,0"), "--rnn-units must be positive, got 0"),
    (("--rnn-units", "8,x"), "--rnn-units must be a whole number or a comma list of them, one per layer (512 or "
                              "512,256), got '8,x'"),
])
def test_bad_architecture_flags_are_one_line(flags, fragment, shakespeare, tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "--data", shakespeare, "--out", out, *SMALL, *flags)
    assert_one_line_error(result, fragment)
    assert not out.exists()


def test_the_python_api_names_the_flag():
    for kwargs, fragment in [({"cell": "lstmx"}, "--cell must be one of gru, lstm, rnn"),
                             ({"layers": -1}, "--layers must be positive"),
                             ({"rnn_units": (8, 8), "layers": 3}, "--layers is 3"),
                             ({"rnn_units": (8, 2.5)}, "--rnn-units must be a whole number")]:
        with pytest.raises(ConfigError, match=fragment):
            TrainConfig(**kwargs).validate()
    stacked = TrainConfig(cell="rnn", rnn_units=[32, 16], embedding_dim=8)
    assert (stacked.layers, stacked.rnn_units, stacked.to_dict()["rnn_units"]) == (2, (32, 16), [32, 16])
    assert (TrainConfig().layer_count, TrainConfig().to_dict()["layers"]) == (1, 1)
    assert stacked.architecture(10).describe() == "rnn(32) -> rnn(16)"
    assert TrainConfig(rnn_units=(16, 16)).to_dict()["rnn_units"] == 16  # one spelling per model


def test_a_config_from_before_architectures_resumes_as_one_gru(runs, shakespeare, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["gru"], run)
    config = config_of(run)
    old = {k: v for k, v in config.items() if k not in ("cell", "layers", "architecture", "state_size")}
    (run / "config.json").write_text(json.dumps({**old, "rnn_type": "gru"}, indent=2) + "\n", encoding="utf-8")
    result = run_cli("train", "--data", shakespeare, "--out", run, *SMALL, "--epochs", "2", "--max-steps", "14",
                     "--rnn-units", "16", "--resume")
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr and metrics(run)[-1]["global_step"] == 14
    assert config_of(run)["cell"] == "gru" and config_of(run)["architecture"] == config["architecture"]
    refused = run_cli("train", "--data", shakespeare, "--out", tmp_path / "run", *SMALL, *SHORT, "--cell", "lstm",
                      "--rnn-units", "16", "--resume")
    assert_one_line_error(refused, "cell: 'gru' -> 'lstm'")
