"""Checkpoint -> single-step SavedModel -> ONNX (+ int8), parity-checked, written atomically.

    export(checkpoint, out_dir, ...) -> report dict

The step is built as a flat tf.function from the trained weights rather than from the Keras
GRU layer: tf2onnx turns a Keras 3 GRU into an ONNX Loop that runs several times slower, while the
flat graph (Gather of a folded [vocab, 3*units] input table, two MatMuls, the gates) converts
to plain ops that onnxruntime fuses, and that can be made int8: the two MatMuls by
quantize_dynamic (MatMulInteger), the input table by quantize_gather_tables (int8 rows).

out_dir receives model.onnx, saved_model/, vocab.json, export_report.json (and model.int8.onnx),
and `.charrnn-export.json`, the manifest of those files: `--force` replaces exactly them and
never anything else. A folder holding anything the project did not write is refused. One export
at a time writes a folder (it holds the folder's lock, see files.py). Nothing appears in out_dir
until all of it is written and parity has passed: the files are made in a hidden staging
folder inside it, then moved into place, or removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import contract
from .data import load_text, split_train_val
from .decode import write_decode_models
from .errors import ConfigError, DataError
from .files import (STAGING_PREFIX, FolderLock, Manifest, atomic_write_text, check_writable_dir, current_umask,
                    foreign_entries, make_dirs, move_tree, remove_dirs, tree_entries, write_error)
from .checkpoints import checkpoint_kind, load_any_checkpoint, resolve_vocab
from .model import GRUWeights
from .vocab import Vocab

DEFAULT_OPSET = 18  # the newest opset tf2onnx 1.17 converts to; onnxruntime >= 1.15 runs it
MIN_OPSET = 13  # the oldest opset tried here (its Split takes `split` as an input); older ones are untested


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


def build_step_module(weights: GRUWeights, vocab: Vocab, config: dict, vocab_file: Path | None = None):
    """A tf.Module whose `step` is one GRU step with Keras' reset_after=True equations.

    The vocabulary travels inside the SavedModel twice: as the `vocab_json` variable (readable
    with TensorFlow alone) and, given `vocab_file`, as the tracked asset assets/vocab.json.
    """
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
            if vocab_file is not None:
                self.vocab_file = tf.saved_model.Asset(str(vocab_file))  # copied to assets/vocab.json

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


def name_initializers(model_proto, arrays: dict[str, np.ndarray]) -> None:
    """Give the weights the names of gru_step_arrays ("recurrent_kernel", ...) instead of tf2onnx's
    "MatMul/ReadVariableOp:0": matched by value, so a wrong match is impossible."""
    from onnx import numpy_helper

    renames = {}
    for init in model_proto.graph.initializer:
        value = numpy_helper.to_array(init)
        for name, array in arrays.items():
            if name not in renames.values() and value.shape == array.shape and np.array_equal(value, array):
                renames[init.name] = name
                init.name = name
                break
    for node in model_proto.graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]


def quantize_int8(fp32_path: Path, int8_path: Path) -> None:
    """Dynamic int8: int8 weights for the recurrent and output MatMuls (MatMulInteger, the state
    quantised per step) and for the input table (int8 rows, one scale per row)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic logs advice to pre-process through the root logger; it does not apply here.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    finally:
        root.setLevel(level)
    model = onnx.load(str(int8_path))
    if quantize_gather_tables(model):
        onnx.save(model, str(int8_path))


def quantize_gather_tables(model) -> int:
    """Replace each Gather from a float matrix initializer by Gather from int8 rows times the row's scale.

    quantize_dynamic would store the table as uint8 with one scale for all of it (it treats a
    Gather's input as an activation); symmetric int8 with a scale per row is as small and
    keeps rows with small values precise. Returns how many tables were replaced.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    nodes, replaced = [], []
    for node in graph.node:
        init = initializers.get(node.input[0]) if node.op_type == "Gather" else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if (init is None or init.data_type != onnx.TensorProto.FLOAT or len(init.dims) != 2 or axis != 0
                or uses[init.name] != 1):
            nodes.append(node)
            continue
        table = numpy_helper.to_array(init).astype(np.float32)  # (rows, width)
        scale = np.abs(table).max(axis=1, keepdims=True) / 127.0  # (rows, 1)
        scale[scale == 0] = 1.0
        quantized = np.clip(np.round(table / scale), -127, 127).astype(np.int8)
        name, out = init.name, node.output[0]
        graph.initializer.extend([numpy_helper.from_array(quantized, f"{name}_int8"),
                                  numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale")])
        nodes.extend([
            helper.make_node("Gather", [f"{name}_int8", node.input[1]], [f"{out}_int8"], name=f"{node.name}_int8"),
            helper.make_node("Gather", [f"{name}_scale", node.input[1]], [f"{out}_scale"], name=f"{node.name}_scale"),
            helper.make_node("Cast", [f"{out}_int8"], [f"{out}_cast"], to=onnx.TensorProto.FLOAT,
                             name=f"{node.name}_cast"),
            helper.make_node("Mul", [f"{out}_cast", f"{out}_scale"], [out], name=f"{node.name}_dequantize"),
        ])
        replaced.append(name)
    if replaced:
        del graph.node[:]
        graph.node.extend(nodes)
        keep = [init for init in graph.initializer if init.name not in replaced]
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return len(replaced)


# ---------------------------------------------------------------- vocabulary for the checkpoint

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
    """Export `checkpoint` into `out_dir`; raises ParityError (and writes nothing) above `atol`.

    Everything that can be checked without TensorFlow (options, --out, the checkpoint's kind and
    shapes, the vocabulary, the text) is checked first, so that those errors come fast.
    """
    opset = DEFAULT_OPSET if opset is None else opset
    if not MIN_OPSET <= opset <= DEFAULT_OPSET:
        raise ConfigError(f"--opset must be between {MIN_OPSET} and {DEFAULT_OPSET} (tf2onnx's newest), got {opset}")
    if quantize not in (None, "int8"):
        raise ConfigError(f"--quantize takes int8, got {quantize}")
    if not atol > 0:
        raise ConfigError(f"--atol must be positive, got {atol}")
    out = Path(os.path.abspath(out_dir))  # "." and "x/.." get a real name for messages
    check_out_dir(out, force)

    created = make_dirs(out)
    try:
        with FolderLock(out, f"--out {out}"):
            earlier = check_out_dir(out, force)  # again, now that no other export can write it
            return export_locked(checkpoint, out, earlier, text=text, vocab_path=vocab_path, atol=atol,
                                 quantize=quantize, opset=opset, seed=seed)
    finally:
        remove_dirs(created)  # only while empty: a failed export into a new folder leaves no folder


def export_locked(checkpoint: str, out: Path, earlier: Manifest | None, *, text, vocab_path, atol: float,
                  quantize, opset: int, seed: int) -> dict:
    """export() once `out` is checked and locked: read and check the inputs, then build the
    export in a staging folder inside `out`, check its parity, and move it into place."""
    started = time.perf_counter()
    if checkpoint_kind(checkpoint) != "run" and text is None and vocab_path is None:
        raise ConfigError(
            f"{checkpoint} holds no vocabulary; pass --text FILE (the training text, to rebuild it as the "
            "tutorial did) or --vocab vocab.json"
        )
    loaded = load_any_checkpoint(checkpoint)
    weights = loaded.weights
    text_str, text_sha256 = load_text(text, "--text") if text is not None else (None, None)
    vocab, vocab_source, unk = resolve_vocab(loaded, text_str, vocab_path)
    config = {**weights.config(), "rnn_type": contract.RNN_TYPE, "reset_after": True}
    if unk:
        config["unk_id"] = 0  # never a real character: a sampler should mask it, as the tutorial does
    run_config = loaded.meta.get("run_config", {})
    data_sha256 = run_config.get("data_sha256")
    if text_sha256 is not None and data_sha256 is not None and text_sha256 != data_sha256:
        raise ConfigError(f"--text {text} is not the text {loaded.source} was trained on (sha256 {text_sha256[:12]}... "
                          f"vs {data_sha256[:12]}...); pass the run's training text or leave --text out")
    data_sha256 = data_sha256 or text_sha256
    val_loss = loaded.meta.get("metrics", {}).get("val_loss")
    val_text = None
    if text_str is not None:
        val_text = validation_text(text_str, run_config.get("val_fraction", 0.1))
        unknown = vocab.unknown(val_text)  # fail here, before the export starts
        if unknown:
            raise DataError(f"--text {text} has {len(unknown)} character(s) the checkpoint's vocabulary lacks: "
                            f"{' '.join(repr(c) for c in unknown[:20])}; pass the text the model was trained on")

    from .tfsetup import import_tensorflow

    import_tensorflow()  # quietly, before tf2onnx, keras or parity import it
    from .parity import check_parity, compare_int8, stream_loss

    weights = loaded.weights
    for stale in out.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed export (ours by name, and we hold the lock)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    os.chmod(staging, 0o777 & ~current_umask())
    try:
        # Files go into the staging directory, which is renamed into place as a whole.
        vocab.save(staging / "vocab.json")
        module = build_step_module(weights, vocab, config, staging / "vocab.json")
        save_saved_model(module, staging / "saved_model")
        model_proto = convert_to_onnx(module, weights.rnn_units, opset)
        name_initializers(model_proto, gru_step_arrays(weights))
        metadata = {
            contract.META_VOCAB: vocab.to_json(),
            contract.META_CONFIG: json.dumps(config),
            contract.META_PRODUCER: f"charrnn-export {contract.VERSION}",
            "source_kind": loaded.kind,
        }
        if data_sha256:
            metadata[contract.META_DATA_SHA256] = data_sha256
        if val_loss is not None:
            metadata[contract.META_VAL_LOSS] = f"{val_loss:.6f}"
        set_metadata(model_proto, metadata)
        onnx_path = staging / "model.onnx"
        onnx_path.write_bytes(model_proto.SerializeToString())

        parity = check_parity(loaded, vocab, staging / "saved_model", onnx_path, atol=atol, seed=seed)
        report = {
            "source": loaded.source,
            "source_kind": loaded.kind,
            "source_layout": loaded.layout,
            "vocab_source": vocab_source,
            "config": config,
            "vocab_size": len(vocab),
            "opset": opset,
            "atol": atol,
            "data_sha256": data_sha256,
            "train_val_loss": val_loss,
            "parity": parity,
            "onnx_ops": sorted({n.op_type for n in model_proto.graph.node}),
            "versions": library_versions(),
        }
        if quantize == "int8":
            int8_path = staging / "model.int8.onnx"
            quantize_int8(onnx_path, int8_path)
            report["int8"] = compare_int8(onnx_path, int8_path, vocab, val_text, seed=seed)
        report["decode"] = write_decode_models(staging, seed=seed)  # sampling in the graph; parity checked
        if val_text is not None:
            # compare_int8 already measured fp32 over the same text: one pass less on a long text.
            fp32 = ({"loss": report["int8"]["val_loss_fp32"], "bpc": report["int8"]["val_bpc_fp32"]}
                    if "int8" in report else stream_loss(onnx_path, vocab, val_text))
            # A run held the last val_fraction out of training; the tutorial trained on all of its text.
            report["validation"] = {"chars": len(val_text), "held_out": loaded.kind == "run", "fp32": fp32}
        report["seconds"] = round(time.perf_counter() - started, 2)
        atomic_write_text(staging / "export_report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        move_into_place(staging, out, earlier)
    except OSError as e:  # a full disk, a folder made read-only meanwhile: one line, nothing left
        raise write_error(out, e) from None
    except Exception as e:
        if "tensorflow" in sys.modules and isinstance(e, sys.modules["tensorflow"].errors.OpError):
            raise write_error(out, OSError(0, first_line(e))) from None  # tf.saved_model.save failing to write
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def validation_text(text: str, val_fraction: float) -> str:
    """The last `val_fraction` of `text`, cut where training cuts it."""
    ids = np.arange(len(text))
    _, val_ids = split_train_val(ids, val_fraction)
    return text[int(val_ids[0]):] if len(val_ids) else ""


def check_out_dir(out: Path, force: bool) -> Manifest | None:
    """Fail now, before any work, unless `out` can be written; creates nothing. Returns the manifest
    of the earlier export that --force will replace (None when there is none)."""
    check_writable_dir(out, f"--out {out}")
    manifest = Manifest.read(out) if out.is_dir() else None
    if manifest is not None and manifest.kind != "export":
        raise ConfigError(f"--out {out} holds a charrnn-export {manifest.kind}, not an export; choose another --out")
    # In a folder of ours, a user's files beside the export are left alone; in any other
    # non-empty folder nothing is written, since nothing there could be told apart from ours.
    foreign = foreign_entries(out, manifest) if manifest is None else []
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ConfigError(f"--out {out} holds files charrnn-export did not write ({shown}); it never writes among "
                          "them nor deletes them, even with --force: choose an empty or new directory")
    if manifest is not None and manifest.files and not force:
        raise ConfigError(f"--out {out} holds an earlier export; pass --force to replace it or choose another directory")
    return manifest


def move_into_place(staging: Path, out: Path, earlier: Manifest | None) -> None:
    """Replace the earlier export's files (only those) by the new ones, manifest first.

    The manifest lists old and new names before anything moves, so a kill in between leaves
    nothing that a later --force could not remove; then the old files go, the new ones move in,
    and the manifest is cut down to the new export.
    """
    files, dirs = tree_entries(staging)
    old_files, old_dirs = (earlier.files, earlier.dirs) if earlier is not None else (set(), set())
    Manifest(out, "export", files | old_files, dirs | old_dirs).save()
    if earlier is not None:
        Manifest(out, "export", old_files - files, old_dirs - dirs).remove_files()
        for name in sorted(files & old_files):
            (out / name).unlink(missing_ok=True)
    for child in sorted(staging.iterdir()):
        move_tree(child, out / child.name)
    Manifest(out, "export", files, dirs).save()
