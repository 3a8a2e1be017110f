"""Helpers shared by the data and training tests: generated texts, the CLI in a subprocess, a tiny run."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

# Session fixtures (a tiny trained run and its export) shared by every module, built once.
from tiny import made_up_play as make_text  # noqa: F401 - re-exported for the tests
from tiny import tiny_export, tiny_run, tiny_text  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
ERROR_PREFIX = "charrnn-export: error:"

# A tiny model with enough steps per epoch (about 80) that a kill can land inside an epoch.
TINY_ARGS = ("--embedding-dim", "16", "--rnn-units", "32", "--seq-length", "16", "--batch-size", "8",
             "--learning-rate", "5e-3", "--seed", "7")


def make_chinese_text(chars: int = 2_000, seed: int = 0) -> str:
    """Chinese sentences built from a few phrases with variation, full-width punctuation and newlines."""
    rng = random.Random(seed)
    subjects = ["我们", "他们", "老师", "学生", "朋友", "春天的风"]
    verbs = ["喜欢", "看见", "想起", "写下", "听到"]
    objects = ["山上的花", "河边的树", "一本旧书", "明亮的月光", "远方的城市", "中文的字"]
    parts, length = [], 0
    while length < chars:
        parts.append(f"{rng.choice(subjects)}{rng.choice(verbs)}{rng.choice(objects)}{rng.choice('。，！？')}"
                     + ("\n" if rng.random() < 0.3 else ""))
        length += len(parts[-1])
    return "".join(parts)[:chars]


def cli_env(**extra: str) -> dict:
    """The environment for the CLI: TensorFlow's C++ logging off, UTF-8 pipes."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONIOENCODING": "utf-8", **extra}


def cli_command(*args) -> list[str]:
    return [sys.executable, "-m", "charrnn_export.cli", *map(str, args)]


def run_cli(*args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`charrnn-export ARGS...` as a user runs it; stdout and stderr captured as text."""
    return subprocess.run(cli_command(*args), capture_output=True, text=True, encoding="utf-8",
                          env=cli_env(**(env or {})), timeout=timeout, cwd=REPO)


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "play.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, text_file) -> Path:
    """A finished 4-epoch run of TINY_ARGS on `text_file`. Tests must not change it (copy it first)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    result = run_cli("train", "--data", text_file, "--out", out, "--epochs", "4", *TINY_ARGS)
    assert result.returncode == 0, result.stderr
    return out
