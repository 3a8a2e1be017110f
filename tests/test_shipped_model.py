"""The model shipped in artifacts/ (and carried by `pip install .`): intact, the tutorial's
vocabulary, and it writes Shakespeare-like text with the sampler's defaults."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from charrnn_export import Generator
from charrnn_export.generate import shipped_model_path

# The tutorial's vocabulary for tiny-shakespeare: sorted(set(text)).
TUTORIAL_VOCAB = sorted(set("\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_shipped_model_loads_with_the_tutorial_vocabulary(which):
    path = shipped_model_path(which)
    assert path.is_file(), f"{path} is missing: the package must ship it"
    generator = Generator.load(which, runtime="onnx")
    assert list(generator.vocab.chars) == TUTORIAL_VOCAB
    assert len(generator.vocab) == 65
    assert generator.vocab.index["\n"] == 0 and generator.vocab.index["A"] == 13
    config = generator.runtime.config
    assert (config["embedding_dim"], config["rnn_units"], config["vocab_size"]) == (256, 1024, 65)


def test_shipped_model_metadata_names_its_data_and_loss():
    import onnxruntime as ort

    session = ort.InferenceSession(str(shipped_model_path("fp32")), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["data_sha256"] == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    assert 1.0 < float(meta["val_loss"]) < 1.6
    assert json.loads(meta["vocab"]) == TUTORIAL_VOCAB


def test_shipped_vocab_json_matches_the_model():
    vocab_file = shipped_model_path("fp32").parent / "vocab.json"
    assert json.loads(vocab_file.read_text(encoding="utf-8")) == TUTORIAL_VOCAB


def test_fixed_seed_gives_in_vocabulary_shakespeare_like_text():
    generator = Generator.load(runtime="onnx")
    text = generator.generate("ROMEO:", 600, temperature=0.8, seed=3)
    again = generator.generate("ROMEO:", 600, temperature=0.8, seed=3)
    assert text == again
    assert set(text) <= set(TUTORIAL_VOCAB)
    # A trained model writes words and lines, and speaker names in capitals followed by a colon.
    assert text.count(" ") > 50 and text.count("\n") > 5
    assert any(line.isupper() and line.endswith(":") for line in text.splitlines())


def test_int8_agrees_with_fp32_on_most_greedy_characters():
    fp32, int8 = Generator.load("fp32"), Generator.load("int8")
    text = fp32.generate("ROMEO:", 300, greedy=True)
    ids = fp32.vocab.encode("ROMEO:" + text)
    state32, state8 = fp32.runtime.zero_state(1), int8.runtime.zero_state(1)
    agree = 0
    for t in range(len(ids) - 1):  # both read the same text; compare their next-character choices
        logits32, state32 = fp32.runtime.step(ids[t : t + 1], state32)
        logits8, state8 = int8.runtime.step(ids[t : t + 1], state8)
        agree += int(np.argmax(logits32) == np.argmax(logits8))
    assert agree / (len(ids) - 1) > 0.9


def test_quick_start_command_prints_generated_text():
    result = subprocess.run(
        [sys.executable, "-m", "charrnn_export.sample", "--runtime", "onnx", "--start", "ROMEO:",
         "--length", "200", "--seed", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ROMEO:")
    assert len(result.stdout) >= 200


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_the_shipped_decode_models_give_the_host_samplers_text(which):
    """decode.onnx / decode.int8.onnx ship beside the step models and sample the same ids."""
    host = Generator.load(which, sampler="host")
    graph = Generator.load(which, sampler="graph")
    for kwargs in (dict(temperature=0.8, seed=1), dict(top_k=5, top_p=0.9, seed=2), dict(greedy=True)):
        assert graph.generate("ROMEO:", 300, **kwargs) == host.generate("ROMEO:", 300, **kwargs)
