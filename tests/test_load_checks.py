"""Every model and run file is checked when it is loaded: one line naming the file and what to do,
never a traceback from wherever a wrong value is first used.

ONNX metadata (config not an object, a vocabulary with a lone surrogate or a repeated character,
a state width the graph leaves free and the metadata gets wrong), a run's JSON files of the wrong
type, a hand-edited vocab.json (a surrogate; two characters swapped, against --text) and weights
holding NaN or Inf, each made from the tiny fixtures.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_ARGS, assert_one_line_error, run_cli

from charrnn_export import contract
from charrnn_export.errors import ModelError
from charrnn_export.runtimes.onnx import OnnxRuntime


# ---------------------------------------------------------------- ONNX metadata


def edited_model(source: Path, target: Path, free_state: bool = False, **metadata: str) -> Path:
    """A copy of `source` with metadata values replaced (and the state's width left free)."""
    import onnx

    model = onnx.load(str(source))
    for prop in model.metadata_props:
        if prop.key in metadata:
            prop.value = metadata[prop.key]
    if free_state:
        for value in (*model.graph.input, *model.graph.output):
            if value.name in (contract.STATE, contract.STATE_OUT):
                dim = value.type.tensor_type.shape.dim[1]
                dim.ClearField("dim_value")
                dim.dim_param = "units"
    onnx.save(model, str(target))
    return target


def metadata_of(path: Path) -> tuple[list, dict]:
    runtime = OnnxRuntime(path)
    return list(runtime.vocab.chars), dict(runtime.config)


@pytest.mark.parametrize("case, fragment", [
    ("config is an array", "is a JSON array, not an object"),
    ("config is a string", "is a JSON string, not an object"),
    ("rnn_units is text", "rnn_units 'many'"),
    ("vocabulary holds a lone surrogate", "lone surrogate (U+D800)"),
    ("vocabulary repeats a character", "repeats"),
    ("rnn_units disagrees with the architecture", "its metadata: rnn_units is 99 but its architecture is gru("),
    ("state_size disagrees with the architecture", "state_size is 99 but its architecture (gru("),
    # An old-style config (no architecture) that is consistent in itself but not with the graph:
    ("free state width, wrong metadata", "state of width 99 (from its metadata) fails"),
    ("fixed state width, other metadata", "metadata says state_size 99"),
])
def test_wrong_onnx_metadata_is_refused_at_load(tiny_export, tmp_path, case, fragment):
    chars, config = metadata_of(tiny_export / "model.onnx")
    edits, free = {}, False
    if case == "config is an array":
        edits[contract.META_CONFIG] = "[1]"
    elif case == "config is a string":
        edits[contract.META_CONFIG] = '"config"'
    elif case == "rnn_units is text":
        edits[contract.META_CONFIG] = json.dumps({**config, "rnn_units": "many"})
    elif case == "vocabulary holds a lone surrogate":
        edits[contract.META_VOCAB] = json.dumps(chars[:1] + ["\ud800"] + chars[2:])
    elif case == "vocabulary repeats a character":
        edits[contract.META_VOCAB] = json.dumps(chars[:1] + chars[:1] + chars[2:])
    elif case == "rnn_units disagrees with the architecture":
        edits[contract.META_CONFIG] = json.dumps({**config, "rnn_units": 99})
    elif case == "state_size disagrees with the architecture":
        edits[contract.META_CONFIG] = json.dumps({**config, "state_size": 99})
    else:
        old_style = {k: v for k, v in config.items() if k != "architecture"}
        edits[contract.META_CONFIG] = json.dumps({**old_style, "rnn_units": 99, "state_size": 99})
        free = case.startswith("free")
    path = edited_model(tiny_export / "model.onnx", tmp_path / "model.onnx", free, **edits)
    with pytest.raises(ModelError, match="export it again") as error:
        OnnxRuntime(path)
    assert fragment in str(error.value) and str(path) in str(error.value)
    result = run_cli("sample", "--model", path, "--length", "5")
    assert_one_line_error(result, str(path), fragment)


def test_a_free_state_width_with_the_right_metadata_still_loads(tiny_export, tmp_path):
    """The check steps the model once: a state width the metadata gives right is accepted."""
    path = edited_model(tiny_export / "model.onnx", tmp_path / "model.onnx", free_state=True)
    runtime = OnnxRuntime(path)
    assert runtime.state_width_from_metadata and runtime.rnn_units == OnnxRuntime(tiny_export).rnn_units
    logits, state = runtime.step(np.zeros(2, dtype=np.int32), runtime.zero_state(2))
    assert logits.shape == (2, runtime.vocab_size) and state.shape == (2, runtime.rnn_units)


# ---------------------------------------------------------------- run files


def copy_run(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    return run


def rewrite_best(run: Path, meta=None, **weights) -> None:
    path = run / "best.npz"
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    if meta is not None:
        arrays["meta"] = np.array(meta)
    for name, change in weights.items():
        arrays[f"weights/{name}"] = change(arrays[f"weights/{name}"].copy())
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("case, fragment", [
    ("config.json is [1]", "config.json is corrupt (it is a JSON array, not an object)"),
    ("config.json val_fraction is text", "val_fraction is 'a tenth'"),
    ("best.npz meta is [1]", "best.npz is corrupt or not a charrnn-export checkpoint (its meta is a JSON array"),
    ("best.npz metrics is a number", "its meta's 'metrics' is a JSON number, not an object"),
    ("best.npz val_loss is text", "its validation loss is 'low', not a number"),
    ("vocab.json holds a lone surrogate", "vocab.json is not a vocabulary file (id 1 is a lone surrogate"),
    ("vocab.json repeats a character", "vocab.json is not a vocabulary file (the vocabulary repeats"),
])
def test_run_files_of_the_wrong_type_are_refused_by_to_onnx(tiny_run, tmp_path, case, fragment):
    run = copy_run(tiny_run, tmp_path)
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    vocab = json.loads((run / "vocab.json").read_text(encoding="utf-8"))
    if case == "config.json is [1]":
        (run / "config.json").write_text("[1]")
    elif case == "config.json val_fraction is text":
        (run / "config.json").write_text(json.dumps({**config, "val_fraction": "a tenth"}))
    elif case == "best.npz meta is [1]":
        rewrite_best(run, meta="[1]")
    elif case == "best.npz metrics is a number":
        rewrite_best(run, meta=json.dumps({"metrics": 3}))
    elif case == "best.npz val_loss is text":
        rewrite_best(run, meta=json.dumps({"metrics": {"val_loss": "low"}}))
    elif case == "vocab.json holds a lone surrogate":
        (run / "vocab.json").write_text(json.dumps(vocab[:1] + ["\ud800"] + vocab[2:]))  # ASCII: "\\ud800"
    else:
        (run / "vocab.json").write_text(json.dumps(vocab[:1] + vocab[:1] + vocab[2:]))
    out = tmp_path / "export"
    assert_one_line_error(run_cli("to-onnx", "--checkpoint", run, "--out", out), fragment)
    assert not out.exists()


@pytest.mark.parametrize("case", ["config.json is [1]", "metrics.jsonl is not JSON", "metrics.jsonl rows are arrays"])
def test_run_files_of_the_wrong_type_are_refused_by_train_resume(trained_run, tmp_path, text_file, case):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    if case == "config.json is [1]":
        (run / "config.json").write_text("[1]")
    elif case == "metrics.jsonl is not JSON":
        (run / "metrics.jsonl").write_text("{not json\n")
    else:
        (run / "metrics.jsonl").write_text("[1]\n")
    name = case.split()[0]
    result = run_cli("train", "--data", text_file, "--out", run, "--epochs", "5", *TINY_ARGS, "--resume")
    assert_one_line_error(result, f"{run / name} is corrupt", "--force")


def swapped_vocab(run: Path) -> Path:
    vocab = json.loads((run / "vocab.json").read_text(encoding="utf-8"))
    vocab[3], vocab[4] = vocab[4], vocab[3]
    (run / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    return run / "vocab.json"


def test_a_vocab_json_with_two_characters_swapped_is_refused_with_text(tiny_run, tiny_text, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    swapped_vocab(run)
    out = tmp_path / "export"
    result = run_cli("to-onnx", "--checkpoint", run, "--text", tiny_text, "--out", out)
    assert_one_line_error(result, "the vocabulary stored with the checkpoint is not the one --text builds",
                          "the same characters in another order (id 3 is")
    assert not out.exists()


def test_a_vocab_file_with_characters_text_lacks_is_refused(tiny_run, tiny_text, tmp_path):
    """--vocab beside --text: the same set as well as the same order."""
    from charrnn_export.checkpoints import load_any_checkpoint, resolve_vocab
    from charrnn_export.errors import ConfigError

    vocab = json.loads((tiny_run / "vocab.json").read_text(encoding="utf-8"))
    other = tmp_path / "vocab.json"
    other.write_text(json.dumps(vocab[:-1] + ["\u00e9"], ensure_ascii=False), encoding="utf-8")
    loaded = load_any_checkpoint(tiny_run)
    loaded.vocab = None  # as a checkpoint without one (a tutorial's): --vocab is then the vocabulary
    text = tiny_text.read_text(encoding="utf-8")
    with pytest.raises(ConfigError, match="holds 'é' that --text lacks; it lacks .* that --text holds"):
        resolve_vocab(loaded, text, str(other))
    assert resolve_vocab(loaded, text, str(tiny_run / "vocab.json"))[0].chars == tuple(vocab)  # the right one passes


@pytest.mark.parametrize("value, kind", [(np.nan, "NaN"), (np.inf, "Inf")])
def test_weights_holding_nan_are_named_at_export(tiny_run, tmp_path, value, kind):
    run = copy_run(tiny_run, tmp_path)

    def spoil(array):
        array[0, :3] = value
        return array

    rewrite_best(run, **{"layers/0/recurrent_kernel": spoil})  # ModelWeights.named_arrays' names
    out = tmp_path / "export"
    result = run_cli("to-onnx", "--checkpoint", run, "--out", out)
    assert_one_line_error(result, f"the weights hold {kind} in layers/0/recurrent_kernel (3 of",
                          "export an earlier checkpoint")
    assert not out.exists()
