"""Checkpoint -> single-step SavedModel -> ONNX (+ int8), parity-checked, written atomically.

    export(checkpoint, out_dir, ...) -> report dict

The step is built as a flat tf.function from the trained weights rather than from the Keras
GRU layer: tf2onnx turns a Keras 3 GRU into an ONNX Loop that runs about 8x slower, while the
flat graph (Gather of a folded [vocab, 3*units] input table, two MatMuls, the gates) converts
to plain ops that onnxruntime fuses, and that quantize_dynamic can make int8.

out_dir receives model.onnx, saved_model/, vocab.json, export_report.json (and model.int8.onnx).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from . import contract
from .data import Vocab, atomic_write_text, current_umask, load_text, split_train_val
from .errors import ConfigError, DataError, ModelError
from .model import GRUWeights, LoadedWeights, load_any_checkpoint

DEFAULT_OPSET = 18  # the newest opset tf2onnx 1.17 converts to; onnxruntime >= 1.15 runs it


# ---------------------------------------------------------------- the step as a TensorFlow function


def gru_step_arrays(weights: GRUWeights) -> dict[str, np.ndarray]:
    """The four constants of the flat step; the embedding is folded into the input projection."""
    return {
        # Embedding then the input kernel is a fixed map from id to gate inputs: one lookup.
        "input_table": (weights.embedding @ weights.kernel + weights.bias[0]).astype(np.float32),  # (vocab, 3u)
        "recurrent_kernel": weights.recurrent_kernel.astype(np.float32),  # (units, 3u)
        "recurrent_bias": weights.bias[1].astype(np.float32),  # (3u,)
        "dense_kernel": weights.dense_kernel.astype(np.float32),  # (units, vocab)
        "dense_bias": weights.dense_bias.astype(np.float32),  # (vocab,)
    }


def step_signature(rnn_units: int):
    import tensorflow as tf

    return [
        tf.TensorSpec([None], tf.int32, name=contract.TOKEN),
        tf.TensorSpec([None, rnn_units], tf.float32, name=contract.STATE),
    ]


def build_step_module(weights: GRUWeights, vocab: Vocab, config: dict):
    """A tf.Module whose `step` is one GRU step with Keras' reset_after=True equations."""
    import tensorflow as tf

    arrays = gru_step_arrays(weights)

    class CharRNNStep(tf.Module):
        def __init__(self):
            super().__init__(name="charrnn_step")
            self.input_table = tf.Variable(arrays["input_table"], trainable=False, name="input_table")
            self.recurrent_kernel = tf.Variable(arrays["recurrent_kernel"], trainable=False, name="recurrent_kernel")
            self.recurrent_bias = tf.Variable(arrays["recurrent_bias"], trainable=False, name="recurrent_bias")
            self.dense_kernel = tf.Variable(arrays["dense_kernel"], trainable=False, name="dense_kernel")
            self.dense_bias = tf.Variable(arrays["dense_bias"], trainable=False, name="dense_bias")
            self.vocab_json = tf.Variable(vocab.to_json(), trainable=False, name="vocab_json")
            self.config_json = tf.Variable(json.dumps(config), trainable=False, name="config_json")

        @tf.function(input_signature=step_signature(weights.rnn_units))
        def step(self, token, state):
            x = tf.gather(self.input_table, token)  # (batch, 3u)
            h = tf.matmul(state, self.recurrent_kernel) + self.recurrent_bias  # (batch, 3u)
            x_z, x_r, x_h = tf.split(x, 3, axis=1)
            h_z, h_r, h_h = tf.split(h, 3, axis=1)
            z = tf.sigmoid(x_z + h_z)
            r = tf.sigmoid(x_r + h_r)
            candidate = tf.tanh(x_h + r * h_h)
            new_state = z * state + (1.0 - z) * candidate  # (batch, units)
            logits = tf.matmul(new_state, self.dense_kernel) + self.dense_bias  # (batch, vocab)
            return {contract.LOGITS: logits, contract.STATE_OUT: new_state}

    return CharRNNStep()


def save_saved_model(module, path: Path) -> None:
    import tensorflow as tf

    tf.saved_model.save(module, str(path), signatures={contract.SIGNATURE: module.step})


def convert_to_onnx(module, rnn_units: int, opset: int):
    """tf2onnx conversion of the step function; returns an onnx.ModelProto."""
    import tf2onnx

    model_proto, _ = tf2onnx.convert.from_function(
        module.step, input_signature=step_signature(rnn_units), opset=opset
    )
    drop_initializer_inputs(model_proto)
    return model_proto


def drop_initializer_inputs(model_proto) -> None:
    """Weights listed as graph inputs could be overridden at run time, so onnxruntime will not
    constant-fold them and quantize_dynamic will not touch them; keep only the real inputs."""
    initializers = {init.name for init in model_proto.graph.initializer}
    keep = [i for i in model_proto.graph.input if i.name not in initializers]
    del model_proto.graph.input[:]
    model_proto.graph.input.extend(keep)


def set_metadata(model_proto, metadata: dict[str, str]) -> None:
    del model_proto.metadata_props[:]
    for key, value in metadata.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value


def quantize_int8(fp32_path: Path, int8_path: Path) -> None:
    """Dynamic int8: the input table (Gather), recurrent and output MatMuls get int8 weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic logs advice to pre-process through the root logger; it does not apply here.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gather"])
    finally:
        root.setLevel(level)


# ---------------------------------------------------------------- vocabulary for the checkpoint


def resolve_vocab(loaded: LoadedWeights, text_path: str | None, vocab_path: str | None) -> Vocab:
    if vocab_path is not None:
        vocab = Vocab.load(vocab_path)
    elif loaded.vocab is not None:
        vocab = loaded.vocab
    elif text_path is not None:
        vocab = Vocab.from_text(load_text(text_path)[0])
    else:
        raise ConfigError(
            f"{loaded.source} holds no vocabulary; pass --text FILE (the training text, to rebuild it as "
            "the tutorial did) or --vocab vocab.json"
        )
    if len(vocab) != loaded.weights.vocab_size:
        raise ModelError(
            f"the checkpoint's embedding has {loaded.weights.vocab_size} rows but the vocabulary has "
            f"{len(vocab)} characters; pass the text or vocab.json the model was trained with"
        )
    return vocab


# ---------------------------------------------------------------- export


def export(
    checkpoint: str,
    out_dir: str,
    text: str | None = None,
    vocab_path: str | None = None,
    atol: float = contract.DEFAULT_ATOL,
    quantize: str | None = None,
    opset: int | None = None,
    force: bool = False,
    seed: int = 0,
) -> dict:
    """Export `checkpoint` into `out_dir`; raises ParityError (and writes nothing) above `atol`."""
    opset = DEFAULT_OPSET if opset is None else opset
    if not 7 <= opset <= DEFAULT_OPSET:
        raise ConfigError(f"--opset must be between 7 and {DEFAULT_OPSET} (tf2onnx's newest), got {opset}")
    if quantize not in (None, "int8"):
        raise ConfigError(f"--quantize takes int8, got {quantize}")
    if not atol > 0:
        raise ConfigError(f"--atol must be positive, got {atol}")
    out = Path(out_dir)
    check_out_dir(out, force)

    started = time.perf_counter()
    loaded = load_any_checkpoint(checkpoint)
    weights = loaded.weights
    vocab = resolve_vocab(loaded, text, vocab_path)
    config = {**weights.config(), "rnn_type": contract.RNN_TYPE, "reset_after": True}
    run_config = loaded.meta.get("run_config", {})
    data_sha256 = run_config.get("data_sha256")
    val_loss = loaded.meta.get("metrics", {}).get("val_loss")
    val_text = validation_text(text, run_config.get("val_fraction", 0.1)) if text else None

    from . import validate

    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.chmod(staging, 0o777 & ~current_umask())
    try:
        module = build_step_module(weights, vocab, config)
        save_saved_model(module, staging / "saved_model")
        model_proto = convert_to_onnx(module, weights.rnn_units, opset)
        metadata = {
            contract.META_VOCAB: vocab.to_json(),
            contract.META_CONFIG: json.dumps(config),
            contract.META_PRODUCER: "charrnn-export",
            "source_kind": loaded.kind,
        }
        if data_sha256:
            metadata[contract.META_DATA_SHA256] = data_sha256
        if val_loss is not None:
            metadata[contract.META_VAL_LOSS] = f"{val_loss:.6f}"
        set_metadata(model_proto, metadata)
        onnx_path = staging / "model.onnx"
        # Files below go into the staging directory, which is renamed into place as a whole.
        onnx_path.write_bytes(model_proto.SerializeToString())
        vocab.save(staging / "vocab.json")
        (staging / "saved_model" / "assets").mkdir(exist_ok=True)
        vocab.save(staging / "saved_model" / "assets" / "vocab.json")

        parity = validate.check_parity(loaded, vocab, staging / "saved_model", onnx_path, atol=atol, seed=seed)
        report = {
            "source": loaded.source,
            "source_kind": loaded.kind,
            "config": config,
            "vocab_size": len(vocab),
            "opset": opset,
            "atol": atol,
            "data_sha256": data_sha256,
            "train_val_loss": val_loss,
            "parity": parity,
            "onnx_ops": sorted({n.op_type for n in model_proto.graph.node}),
        }
        if val_text is not None:
            report["validation"] = {"chars": len(val_text),
                                    "fp32": validate.stream_loss(onnx_path, vocab, val_text)}
        if quantize == "int8":
            int8_path = staging / "model.int8.onnx"
            quantize_int8(onnx_path, int8_path)
            report["int8"] = validate.compare_int8(onnx_path, int8_path, vocab, val_text, seed=seed)
        report["seconds"] = round(time.perf_counter() - started, 2)
        atomic_write_text(staging / "export_report.json", json.dumps(report, indent=2) + "\n")
        move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def validation_text(text_path: str, val_fraction: float) -> str:
    text = load_text(text_path)[0]
    ids = np.arange(len(text))
    _, val_ids = split_train_val(ids, val_fraction)
    return text[int(val_ids[0]):] if len(val_ids) else ""


def check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a directory")
    if out.exists() and any(out.iterdir()) and not force:
        raise ConfigError(f"--out {out} is not empty; pass --force to replace it or choose another directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out.parent, prefix=".probe.", delete=True)
        probe.close()
    except OSError as e:
        raise ConfigError(f"cannot write to {out.parent} ({e.strerror}); choose a writable --out") from None


def move_into_place(staging: Path, out: Path) -> None:
    """Swap the finished export in; an old export is removed only once the new one is in place."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{int(time.time() * 1000)}")
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
