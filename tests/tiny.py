"""Session-wide tiny models for the export, sampler and benchmark tests.

conftest.py imports the fixtures, so every test module shares one trained run and one export.
The model is trained for real (a few seconds) on a slice of tiny-shakespeare when the shared
copy is present, else on a generated play-like text, and exported with int8.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_TEXT = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"

TINY = dict(embedding_dim=16, rnn_units=32, seq_length=32, batch_size=16, epochs=3, learning_rate=1e-2, seed=0)


def made_up_play(chars: int = 12_000, seed: int = 0) -> str:
    """A made-up play: speaker names, lines of common words, blank lines (about 40 distinct characters)."""
    rng = random.Random(seed)
    names = ["ROMEO", "JULIET", "FIRST CITIZEN", "MENENIUS", "KING RICHARD"]
    words = "the and my lord of to I you that is in not with me be your this what so but thou shall".split()
    parts, length = [], 0
    while length < chars:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(4, 12)))
        parts.append(f"{rng.choice(names)}:\n{line.capitalize()}{rng.choice('.,!?;')}\n\n")
        length += len(parts[-1])
    return "".join(parts)[:chars]


# Opens the made-up play so that its vocabulary is the tutorial's 65 characters, as Shakespeare's is.
EVERY_TUTORIAL_CHARACTER = ("CHORUS:\nThe quick brown fox jumps over the lazy dog; ABCDEFGHIJKLMNOPQRSTUVWXYZ, "
                            "3 $ & ' - ! ?.\n\n")


def make_text(chars: int = 30_000, seed: int = 0) -> str:
    """Shakespeare when available (it covers the tutorial's 65 characters), else a made-up play."""
    if SHARED_TEXT.exists():
        return SHARED_TEXT.read_text(encoding="utf-8")[:chars]
    return EVERY_TUTORIAL_CHARACTER + made_up_play(chars - len(EVERY_TUTORIAL_CHARACTER), seed)


@pytest.fixture(scope="session")
def tiny_text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "tiny.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_text) -> Path:
    from charrnn_export.train import TrainConfig, train

    run_dir = tmp_path_factory.mktemp("run") / "run"
    train(TrainConfig(data=str(tiny_text), **TINY), run_dir)
    return run_dir


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_run, tiny_text) -> Path:
    """An export directory: model.onnx, model.int8.onnx, saved_model/, vocab.json, export_report.json."""
    from charrnn_export.export import export

    out = tmp_path_factory.mktemp("export") / "export"
    export(str(tiny_run), str(out), text=str(tiny_text), quantize="int8")
    return out
