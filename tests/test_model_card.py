"""benchmarks/model_card.py's rebuild command: the `train` line it prints trains the same model.

The printed command is parsed by the real `charrnn-export` parser and the config it builds is
compared with the one the card was written from, for the tutorial's GRU and for other
architectures (a per-layer --rnn-units list, --cell, --layers).
"""

from __future__ import annotations

import shlex

import pytest

from benchmarks.model_card import train_command
from charrnn_export.cli import build_parser
from charrnn_export.train import TrainConfig

CONFIGS = {
    "the tutorial's gru": TrainConfig(),
    "lstm 16,8": TrainConfig(cell="lstm", rnn_units=[16, 8]),
    "rnn x2": TrainConfig(cell="rnn", rnn_units=64, layers=2, dropout=0.1),
    "gru x3": TrainConfig(layers=3, rnn_units=32, embedding_dim=16),
}


def config_of_command(command: str) -> TrainConfig:
    args = build_parser().parse_args(shlex.split(command)[1:])
    return TrainConfig(data=args.data, embedding_dim=args.embedding_dim, rnn_units=args.rnn_units, cell=args.cell,
                       layers=args.layers, dropout=args.dropout)


@pytest.mark.parametrize("name", CONFIGS)
def test_the_rebuild_command_trains_the_same_architecture(name):
    config = CONFIGS[name].to_dict()
    command = train_command(config, "data.txt")
    rebuilt = config_of_command(command)
    assert rebuilt.architecture(65) == CONFIGS[name].architecture(65), command
    assert rebuilt.to_dict()["rnn_units"] == config["rnn_units"]


def test_the_rebuild_command_spells_architectures_as_the_flags_do():
    assert "--rnn-units 16,8 --cell lstm" in train_command(CONFIGS["lstm 16,8"].to_dict(), "d")
    assert "--layers" not in train_command(CONFIGS["lstm 16,8"].to_dict(), "d")  # the list says how many
    assert "--cell rnn --layers 2" in train_command(CONFIGS["rnn x2"].to_dict(), "d")
    tutorial = train_command(CONFIGS["the tutorial's gru"].to_dict(), "d")
    assert "--cell" not in tutorial and "--layers" not in tutorial and "--rnn-units" not in tutorial


# ---------------------------------------------------------------- --rebuild


def test_rebuild_reexports_a_model_from_its_own_weights_with_its_metadata(tiny_export, tiny_text, tmp_path):
    """rebuild_models on a copy of an export: the four model files replaced, the metadata as it
    was, the rebuilt step equal to the one it replaces and to its SavedModel, the int8 model's
    MatMuls int8 and its table fp32."""
    import shutil

    import onnx

    from benchmarks.model_card import MODEL_FILES, rebuild_models
    from charrnn_export import contract

    shipped = tmp_path / "artifacts"
    shipped.mkdir()
    for name in MODEL_FILES:
        shutil.copyfile(tiny_export / name, shipped / name)
    before = {name: onnx.load(str(shipped / name)) for name in MODEL_FILES}
    figures = rebuild_models(shipped, tiny_text)
    for name in MODEL_FILES:
        after = onnx.load(str(shipped / name))
        assert {p.key: p.value for p in after.metadata_props} == {p.key: p.value for p in before[name].metadata_props}
    assert sorted(p.name for p in shipped.iterdir()) == sorted(MODEL_FILES)  # the staging folder is gone
    for pair in ("savedmodel_vs_onnx", "shipped_onnx_vs_onnx"):
        assert figures["parity"][pair]["logits"] <= contract.DEFAULT_ATOL, figures["parity"]
    assert all(t.startswith("input_table") for t in figures["int8"]["matmuls"]["float_tables"]) and figures["int8"]["matmuls"]["MatMul"] == 0
    assert figures["greedy_vs_shipped"]["model.onnx"]["first_difference"] is None
    assert all(result["mismatched_ids"] == 0 for result in figures["decode"].values())


def test_rebuild_refuses_a_text_the_model_was_not_trained_on(tmp_path):
    """Through the command: one line naming --text, exit 2, and the shipped files untouched."""
    import hashlib
    import subprocess
    import sys

    from benchmarks.model_card import ARTIFACTS, MODEL_FILES, REPO

    wrong = tmp_path / "other.txt"
    wrong.write_text("Not the plays.\n" * 20, encoding="utf-8")
    digests = {name: hashlib.sha256((ARTIFACTS / name).read_bytes()).hexdigest() for name in MODEL_FILES}
    result = subprocess.run([sys.executable, "-m", "benchmarks.model_card", "--rebuild", "--text", str(wrong),
                             "--out", str(tmp_path / "card.md")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--text" in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert digests == {name: hashlib.sha256((ARTIFACTS / name).read_bytes()).hexdigest() for name in MODEL_FILES}
    assert not (tmp_path / "card.md").exists()
