"""One sampler, three runtimes: the same seed gives the same text from onnx, savedmodel and keras;
the int8 model agrees with fp32 on most greedy characters."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from charrnn_export import Generator, contract
from charrnn_export.runtimes import Runtime

START = "ROMEO: "
CASES = {
    "greedy": dict(greedy=True),
    "sampled, temperature 1.0": dict(temperature=1.0, seed=1),
    "sampled, top-k and top-p": dict(temperature=0.8, top_k=10, top_p=0.9, seed=2),
}


@pytest.fixture(scope="module")
def generators(tiny_run, tiny_export):  # noqa: F811 - pytest fixtures
    return {
        "onnx": Generator.load(str(tiny_export / "model.onnx"), runtime="onnx"),
        "savedmodel": Generator.load(str(tiny_export / "saved_model"), runtime="savedmodel"),
        "keras": Generator.load(str(tiny_run), runtime="keras"),  # the trained weights themselves
    }


def first_difference(a: str, b: str) -> str:
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"first difference at character {at}: {a[at:at + 20]!r} vs {b[at:at + 20]!r}"


def test_every_runtime_implements_the_written_interface(generators):
    for name, g in generators.items():
        runtime = g.runtime
        assert isinstance(runtime, Runtime) and runtime.name == name, name
        assert runtime.config["rnn_units"] == runtime.rnn_units and len(runtime.vocab) == runtime.vocab_size, name
        assert runtime.zero_state(3).shape == (3, runtime.rnn_units), name


@pytest.mark.parametrize("case", list(CASES))
def test_500_characters_identical_across_runtimes(generators, case):
    texts = {name: g.generate(START, 500, **CASES[case]) for name, g in generators.items()}
    assert len(texts["onnx"]) == 500
    for name in ("savedmodel", "keras"):
        assert texts[name] == texts["onnx"], f"{name} vs onnx, {case}: {first_difference(texts[name], texts['onnx'])}"


def test_batches_with_different_starts_identical_across_runtimes(generators):
    starts = ["ROMEO: ", "JULIET:\n", "A", "MENENIUS:\n"]
    texts = {name: g.generate_batch(starts, 300, temperature=0.9, seed=3) for name, g in generators.items()}
    assert texts["savedmodel"] == texts["onnx"]
    assert texts["keras"] == texts["onnx"]


def test_step_outputs_agree_within_the_export_tolerance(generators):
    """What makes the texts agree: the runtimes' logits and states are the same numbers."""
    ids = generators["onnx"].vocab.encode(START + generators["onnx"].generate(START, 100, seed=4))
    outputs = {}
    for name, g in generators.items():
        state, logits_seen = g.runtime.zero_state(1), []
        for token in ids:
            logits, state = g.runtime.step(np.array([token], dtype=np.int32), state)
            logits_seen.append(logits)
        outputs[name] = np.concatenate(logits_seen), state
    for name in ("savedmodel", "keras"):
        np.testing.assert_allclose(outputs[name][0], outputs["onnx"][0], atol=contract.DEFAULT_ATOL)
        np.testing.assert_allclose(outputs[name][1], outputs["onnx"][1], atol=contract.DEFAULT_ATOL)


def test_int8_agrees_with_fp32_on_most_greedy_characters(generators, tiny_export):  # noqa: F811
    fp32 = generators["onnx"]
    int8 = Generator.load(str(tiny_export / "model.int8.onnx"), runtime="onnx")
    text = fp32.generate(START, 500, greedy=True)
    # Free-running: each model continues its own text, so one early disagreement can change
    # everything after it; reported, not asserted.
    free = int8.generate(START, 500, greedy=True)
    free_share = float(np.mean([a == b for a, b in zip(text, free)]))
    # Teacher-forced: int8 reads fp32's text; how often is its greedy choice fp32's next character?
    ids = fp32.vocab.encode(START + text)
    state, agree = int8.runtime.zero_state(1), 0
    for t in range(len(ids) - 1):
        logits, state = int8.runtime.step(ids[t:t + 1], state)
        if t >= len(START) - 1:  # a generated position
            agree += int(np.argmax(logits[0]) == ids[t + 1])
    share = agree / len(text)
    print(f"\nint8 vs fp32, 500 greedy characters: {share:.1%} agree teacher-forced, "
          f"{free_share:.1%} free-running")
    assert share >= 0.5


def run_sample_module(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    result = subprocess.run([sys.executable, "-m", "charrnn_export.sample", "-q", *map(str, args)],
                            capture_output=True, text=True, encoding="utf-8", env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def test_the_cli_gives_the_same_text_with_every_runtime(tiny_run, tiny_export):  # noqa: F811
    """Through the CLI as a user runs it; savedmodel given the export directory, keras the run."""
    sampling = ("--length", 300, "--seed", 7, "--num-samples", 2, "--top-k", 20, "--json")
    texts = {}
    for runtime, model in (("onnx", tiny_export / "model.onnx"), ("savedmodel", tiny_export), ("keras", tiny_run)):
        lines = run_sample_module("--runtime", runtime, "--model", model, *sampling).stdout.splitlines()
        texts[runtime] = [json.loads(line)["text"] for line in lines]
    assert len(texts["onnx"]) == 2 and texts["onnx"][0] != texts["onnx"][1]
    assert texts["savedmodel"] == texts["onnx"]
    assert texts["keras"] == texts["onnx"]
