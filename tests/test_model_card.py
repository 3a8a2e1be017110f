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
