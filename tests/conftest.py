"""The tests' one shared module: the tiny models (session fixtures, trained once), generated texts,
the CLI in a subprocess, the one-line error check, a closed port, and headless Chromium.

    tiny_text / tiny_run / tiny_export   a tiny model trained for real (a few seconds) on a slice of
                                         tiny-shakespeare when the shared copy is present (else a
                                         made-up play holding its 65 characters), and its export
    text_file / trained_run              a made-up play, and a finished 4-epoch `train` run of TINY_ARGS
                                         on it through the CLI (the runs --resume and --force tests copy)
    arch_export(spec) / arch_weights(spec)   an export of random weights (trained for nothing) for
                                         each architecture of ARCH_SPECS, and those weights
    run_cli(...), assert_one_line_error(result, *fragments), closed_port(), chromium_browser()
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ORT_WEB = REPO / "web" / "node_modules" / "onnxruntime-web" / "dist"  # the pinned npm package (`npm ci` in web/)
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


def ctrl_c_works() -> None:
    """preexec_fn for a child that a test interrupts with SIGINT: a job started in the
    background (`cmd &`, as CI may run) inherits SIGINT ignored, and Python then never raises
    KeyboardInterrupt; a terminal's Ctrl-C reaches a program with SIGINT at its default."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(*args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`charrnn-export ARGS...` as a user runs it; stdout and stderr captured as text."""
    return subprocess.run(cli_command(*args), capture_output=True, text=True, encoding="utf-8",
                          env=cli_env(**(env or {})), timeout=timeout, cwd=REPO)


def assert_one_line_error(result, *fragments: str) -> str:
    """A command that failed as a user should see it: exit 2, one `charrnn-export: error:` line on
    stderr holding every fragment, no traceback, nothing on stdout. Returns the line."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX + " "), result.stderr
    assert result.stdout == "", result.stdout
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def closed_port() -> int:
    """A local port that nothing listens on (it was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing(reason: str):
    """Skip for want of a test tool; fail on CI, which installs every one."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; .ci/run installs it, so CI must have it")
    pytest.skip(reason)


@contextmanager
def chromium_browser():
    """Headless Chromium (the system's, charrnn_export/web/browser.py) driven by Playwright."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright package is not installed (pip install '.[test]')")
    from charrnn_export.web.browser import find_chromium, launch

    if find_chromium() is None:
        missing("no Chromium: apt-get install chromium-headless-shell (or chromium)")
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            yield browser
        finally:
            browser.close()


# ---------------------------------------------------------------- texts and tiny models

TINY = dict(embedding_dim=16, rnn_units=32, seq_length=32, batch_size=16, epochs=3, learning_rate=1e-2, seed=0)


def make_text(chars: int = 12_000, seed: int = 0) -> str:
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


def tutorial_text(chars: int = 30_000, seed: int = 0) -> str:
    """Shakespeare when available (it covers the tutorial's 65 characters), else a made-up play."""
    if SHAKESPEARE.exists():
        return SHAKESPEARE.read_text(encoding="utf-8")[:chars]
    return EVERY_TUTORIAL_CHARACTER + make_text(chars - len(EVERY_TUTORIAL_CHARACTER), seed)


@pytest.fixture(scope="session")
def tiny_text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "tiny.txt"
    path.write_text(tutorial_text(), encoding="utf-8")
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


# ---------------------------------------------------------------- every architecture, untrained

# The contract's specs (issue 19): each cell kind, a GRU with reset_after=False, a stack of one
# kind, and a stack of every kind.
ARCH_SPECS = {
    "gru": (("gru", 32, {}),),
    "gru_reset_before": (("gru", 32, {"reset_after": False}),),
    "lstm": (("lstm", 32, {}),),
    "rnn": (("rnn", 32, {}),),
    "lstm2": (("lstm", 24, {}), ("lstm", 24, {})),
    "mixed": (("lstm", 24, {}), ("gru", 16, {}), ("rnn", 16, {})),
}
ARCH_EMBEDDING_DIM = 16


def arch_of(spec: str, vocab_size: int):
    from charrnn_export.cells import Architecture, LayerSpec

    return Architecture(vocab_size, ARCH_EMBEDDING_DIM,
                        tuple(LayerSpec(kind, units, options) for kind, units, options in ARCH_SPECS[spec]))


def random_model_weights(architecture, seed: int = 0, scale: float = 0.3):
    """Seeded random weights of every array's shape for `architecture`, through cells' own shapes."""
    import numpy as np

    from charrnn_export.cells.weights import random_weights

    rng = np.random.default_rng(seed)

    def draw(shape, role, fan_in):
        array = rng.normal(0, scale, shape)
        if role == "recurrent_kernel":
            # Spectral radius below 1, as training leaves one: a chaotic random one would blow
            # float32's rounding up over a long sequence, and parity would measure that.
            return array * (0.6 / scale / np.sqrt(fan_in))
        return array * 4 if role == "dense_kernel" else array

    return random_weights(architecture, draw)


def write_random_run(run_dir: Path, weights, vocab) -> Path:
    """A run folder as `train` leaves one (best.npz, vocab.json, config.json), of `weights`."""
    import json

    from charrnn_export.checkpoints import save_checkpoint

    run_dir.mkdir(parents=True)
    vocab.save(run_dir / "vocab.json")
    config = {"seed": 0, "val_fraction": 0.1, "architecture": weights.architecture().to_json()}
    (run_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
    save_checkpoint(run_dir / "best.npz", weights, {"config": config, "metrics": {}})
    return run_dir


@pytest.fixture(scope="session")
def arch_weights(text_file):
    """arch_weights(spec) -> the ModelWeights of arch_export(spec)'s model (seeded by the spec)."""
    from charrnn_export.vocab import Vocab

    vocab = Vocab(tuple(sorted(set(text_file.read_text(encoding="utf-8")))))
    cache = {}

    def weights(spec: str):
        if spec not in cache:
            cache[spec] = random_model_weights(arch_of(spec, len(vocab)), seed=sorted(ARCH_SPECS).index(spec))
        return cache[spec], vocab

    return weights


@pytest.fixture(scope="session")
def arch_export(tmp_path_factory, text_file, arch_weights):
    """arch_export(spec) -> an export folder (model.onnx, model.int8.onnx, decode models,
    saved_model/, export_report.json) of random weights for ARCH_SPECS[spec], exported by
    export() from a run folder holding them, with text_file as --text; made once per session."""
    from charrnn_export.export import export

    cache = {}

    def exported(spec: str) -> Path:
        if spec not in cache:
            weights, vocab = arch_weights(spec)
            root = tmp_path_factory.mktemp(f"arch-{spec}")
            run_dir = write_random_run(root / "run", weights, vocab)
            export(str(run_dir), str(root / "export"), text=str(text_file), quantize="int8")
            cache[spec] = root / "export"
        return cache[spec]

    return exported


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for a test module's pages (the local onnxruntime-web is needed)."""
    if not ORT_WEB.is_dir():
        missing("no local onnxruntime-web: run `npm ci` in web/")
    with chromium_browser() as opened:
        yield opened


def run_metrics(run: Path) -> list[dict]:
    """A run folder's metrics.jsonl rows."""
    import json

    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def run_checkpoints(run: Path) -> list[Path]:
    return sorted((run / "checkpoints").glob("ckpt-*.npz"))


def train_killed_in_epoch_two(out: Path, args, stderr_path: Path) -> int:
    """`charrnn-export train --out OUT ARGS`, SIGKILLed right after epoch 1's last write (its
    metrics row), so inside epoch 2; returns its exit status (-SIGKILL when it was killed)."""
    import signal
    import time

    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(cli_command("train", "--out", out, *args), stdout=subprocess.DEVNULL, stderr=err,
                                env=cli_env())
        try:
            while proc.poll() is None and not ((out / "metrics.jsonl").exists() and run_metrics(out)):
                time.sleep(0.005)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
    return proc.returncode
