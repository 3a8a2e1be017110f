"""Checkpoint -> single-step SavedModel -> ONNX (+ int8), parity-checked, written atomically.

    export(checkpoint, out_dir, ...) -> report dict

Read top to bottom, export_locked is the recipe: read_inputs (checkpoint of any architecture,
vocabulary, text; no TensorFlow) -> staging_folder -> build (step_model.py's flat step as
saved_model/ and model.onnx, the int8 model, the decode models) -> validate (parity.py: every
parity check at once, one ParityError listing every failure) -> measure (the report, the
validation loss) -> move_into_place.

out_dir receives model.onnx, saved_model/, vocab.json, export_report.json (and model.int8.onnx),
and `.charrnn-export.json`, the manifest of those files: `--force` replaces exactly them and
never anything else. A folder holding anything the project did not write is refused. One export
at a time writes a folder (it holds the folder's lock, see files.py). Nothing appears in out_dir
until all of it is written and parity has passed: the files are made in a hidden staging
folder inside it, then moved into place, or removed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import contract
from .data import load_text, split_train_val
from .decode import write_decode_models
from .errors import ConfigError, DataError, ModelError, WriteError
from .files import (FolderLock, Manifest, atomic_write_text, check_no_link_out, check_writable_dir, foreign_entries,
                    make_dirs, move_tree, remove_dirs, staging_dir, tree_entries, write_error)
from .checkpoints import LoadedWeights, checkpoint_kind, load_any_checkpoint, non_finite_arrays, resolve_vocab
from .step_model import (DEFAULT_OPSET, MIN_OPSET, build_step_module, convert_to_onnx, name_initializers,
                         quantize_int8, save_saved_model, set_metadata, step_arrays)
from .vocab import Vocab


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


@dataclass
class ExportInputs:
    """What an export is made from, read and checked before TensorFlow is imported."""

    loaded: LoadedWeights
    vocab: Vocab
    vocab_source: str
    config: dict  # vocab_size, embedding_dim, architecture, state_size (+ unk_id; see model_config)
    data_sha256: str | None
    val_loss: float | None  # the run's best validation loss, when a run recorded one
    val_text: str | None  # the held-out end of --text, to measure the exported models on


def export_locked(checkpoint: str, out: Path, earlier: Manifest | None, *, text, vocab_path, atol: float,
                  quantize, opset: int, seed: int) -> dict:
    """export() once `out` is checked and locked: read and check the inputs, then build the
    export in a staging folder inside `out`, check its parity, and move it into place."""
    started = time.perf_counter()
    inputs = read_inputs(checkpoint, text, vocab_path)
    from .tfsetup import import_tensorflow

    import_tensorflow()  # quietly, before tf2onnx, keras or parity import it
    from .parity import validate

    with staging_folder(out) as staging:
        model_proto = build(inputs, staging, opset, quantize)
        figures = validate(inputs.loaded, inputs.vocab, staging, atol=atol, seed=seed, text=inputs.val_text)
        report = measure(inputs, staging, model_proto, figures, opset=opset, atol=atol)
        report["seconds"] = round(time.perf_counter() - started, 2)
        atomic_write_text(staging / "export_report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        move_into_place(staging, out, earlier)
    return report


def read_inputs(checkpoint: str, text: str | None, vocab_path: str | None) -> ExportInputs:
    """The checkpoint, its vocabulary and the text, checked against each other (no TensorFlow
    unless the checkpoint is a TF one)."""
    if checkpoint_kind(checkpoint) != "run" and text is None and vocab_path is None:
        raise ConfigError(
            f"{checkpoint} holds no vocabulary; pass --text FILE (the training text, to rebuild it as the "
            "tutorial did) or --vocab vocab.json"
        )
    loaded = load_any_checkpoint(checkpoint)
    non_finite = non_finite_arrays(loaded.weights)
    if non_finite:
        # Said here: parity would only report that every runtime disagrees with every other.
        raise ModelError(f"{loaded.source}: the weights hold {'; '.join(non_finite)}; the checkpoint is damaged or "
                         "its training diverged: export an earlier checkpoint or train again")
    text_str, text_sha256 = load_text(text, "--text") if text is not None else (None, None)
    run_config = loaded.meta.get("run_config", {})
    data_sha256 = run_config.get("data_sha256")
    if text_sha256 is not None and data_sha256 is not None and text_sha256 != data_sha256:
        raise ConfigError(f"--text {text} is not the text {loaded.source} was trained on (sha256 {text_sha256[:12]}... "
                          f"vs {data_sha256[:12]}...); pass the run's training text or leave --text out")
    vocab, vocab_source, unk = resolve_vocab(loaded, text_str, vocab_path)
    config = loaded.architecture.to_config()
    if unk:
        config["unk_id"] = 0  # never a real character: a sampler should mask it, as the tutorial does
    val_text = None
    if text_str is not None:
        val_text = validation_text(text_str, run_config.get("val_fraction", 0.1))
        unknown = vocab.unknown(val_text)  # fail here, before the export starts
        if unknown:
            raise DataError(f"--text {text} has {len(unknown)} character(s) the checkpoint's vocabulary lacks: "
                            f"{' '.join(repr(c) for c in unknown[:20])}; pass the text the model was trained on")
    return ExportInputs(loaded, vocab, vocab_source, config, data_sha256 or text_sha256,
                        loaded.meta.get("metrics", {}).get("val_loss"), val_text)


@contextmanager
def staging_folder(out: Path):
    """A hidden folder inside `out` to build the export in, removed afterwards whatever happens;
    a write that fails (a full disk, a folder made read-only meanwhile) becomes one line."""
    with staging_dir(out) as staging:
        try:
            yield staging
        except WriteError:
            raise  # already one line naming the file
        except OSError as e:
            raise write_error(out, e) from None
        except Exception as e:
            if "tensorflow" in sys.modules and isinstance(e, sys.modules["tensorflow"].errors.OpError):
                raise write_error(out, OSError(0, first_line(e))) from None  # tf.saved_model.save failing to write
            raise


def build(inputs: ExportInputs, staging: Path, opset: int, quantize) -> object:
    """Every file of the export in `staging`, unchecked: vocab.json, saved_model/, model.onnx with
    its metadata, model.int8.onnx (with --quantize int8), and the decode model of each step
    model. Returns the fp32 ONNX proto."""
    weights, vocab = inputs.loaded.weights, inputs.vocab
    vocab.save(staging / "vocab.json")
    module = build_step_module(weights, vocab, inputs.config, staging / "vocab.json")
    save_saved_model(module, staging / "saved_model")
    model_proto = convert_to_onnx(module, weights.architecture().state_size, opset)
    name_initializers(model_proto, step_arrays(weights))
    metadata = {
        contract.META_VOCAB: vocab.to_json(),
        contract.META_CONFIG: json.dumps(inputs.config),
        contract.META_PRODUCER: f"charrnn-export {contract.VERSION}",
        "source_kind": inputs.loaded.kind,
    }
    if inputs.data_sha256:
        metadata[contract.META_DATA_SHA256] = inputs.data_sha256
    if inputs.val_loss is not None:
        metadata[contract.META_VAL_LOSS] = f"{inputs.val_loss:.6f}"
    set_metadata(model_proto, metadata)
    onnx_path = contract.model_file(staging)
    onnx_path.write_bytes(model_proto.SerializeToString())
    if quantize == "int8":
        quantize_int8(onnx_path, contract.model_file(staging, "int8"))
    write_decode_models(staging)  # sampling in the graph
    return model_proto


def measure(inputs: ExportInputs, staging: Path, model_proto, figures: dict, *, opset: int, atol: float) -> dict:
    """The export report: where it came from, what it is, validate's figures, and the validation
    loss of the fp32 model over the held-out text."""
    from .parity import stream_loss

    loaded, vocab = inputs.loaded, inputs.vocab
    report = {
        "source": loaded.source,
        "source_kind": loaded.kind,
        "source_layout": loaded.layout,
        "vocab_source": inputs.vocab_source,
        "config": inputs.config,
        "architecture": loaded.architecture.describe(),
        "vocab_size": len(vocab),
        "opset": opset,
        "atol": atol,
        "data_sha256": inputs.data_sha256,
        "train_val_loss": inputs.val_loss,
        **figures,
        "onnx_ops": sorted({n.op_type for n in model_proto.graph.node}),
        "versions": library_versions(),
    }
    if inputs.val_text is not None:
        # compare_int8 already measured fp32 over the same text: one pass less on a long text.
        fp32 = ({"loss": report["int8"]["val_loss_fp32"], "bpc": report["int8"]["val_bpc_fp32"]}
                if "int8" in report else stream_loss(contract.model_file(staging), vocab, inputs.val_text))
        # A run held the last val_fraction out of training; the tutorial trained on all of its text.
        report["validation"] = {"chars": len(inputs.val_text), "held_out": loaded.kind == "run", "fp32": fp32}
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
    earlier = (manifest.files | manifest.dirs) if manifest is not None else set()
    check_links(out, earlier | set(EXPORT_NAMES))
    return manifest


# What an export writes at the top of its folder (decode models aside), checked for links early.
EXPORT_NAMES = ("model.onnx", "model.int8.onnx", "saved_model", "vocab.json", "export_report.json")


def check_links(out: Path, names) -> None:
    """Refuse a link in `out` that leads out of it where the export writes or deletes (files.py)."""
    for name in sorted(names):
        check_no_link_out(out / name, out)


def move_into_place(staging: Path, out: Path, earlier: Manifest | None) -> None:
    """Replace the earlier export's files (only those) by the new ones, manifest first.

    The manifest lists old and new names before anything moves, so a kill in between leaves
    nothing that a later --force could not remove; then the old files go, the new ones move in,
    and the manifest is cut down to the new export.
    """
    files, dirs = tree_entries(staging)
    old_files, old_dirs = (earlier.files, earlier.dirs) if earlier is not None else (set(), set())
    check_links(out, files | dirs | old_files | old_dirs)  # before anything moves or is deleted
    Manifest(out, "export", files | old_files, dirs | old_dirs).save()
    if earlier is not None:
        Manifest(out, "export", old_files - files, old_dirs - dirs).remove_files()
        for name in sorted(files & old_files):
            (out / name).unlink(missing_ok=True)
    for child in sorted(staging.iterdir()):
        move_tree(child, out / child.name)
    Manifest(out, "export", files, dirs).save()
