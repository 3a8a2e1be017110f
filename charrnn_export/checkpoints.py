"""Checkpoints of every kind, and the vocabulary that goes with one.

    save_checkpoint / read_checkpoint   this project's .npz checkpoints (ModelWeights of any
                                        architecture + optimizer + meta with the architecture)
    load_any_checkpoint(path)           a run directory, a tutorial TF checkpoint, a .weights.h5 or
                                        .keras -> LoadedWeights(.weights: cells.ModelWeights)
    checkpoint_kind(path)               "run", "keras-h5" or "tutorial-tf", from the path alone
    resolve_vocab(loaded, text, vocab_path) -> (Vocab, where it came from, whether id 0 is [UNK])

numpy only, except h5py for .h5 files and TensorFlow (imported quietly, tfsetup.py) for the
tutorial's TF checkpoints.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError, ModelError
from .files import atomic_write_bytes
from .cells import Architecture, LayerSpec, LayerWeights, ModelWeights, get_kind
from .cells.registry import KINDS
from .cells.variables import weights_from_variables
from .vocab import Vocab, read_vocab_file, with_unknown_slot


# ---------------------------------------------------------------- this project's checkpoints


def save_checkpoint(path, weights: ModelWeights, meta: dict, optimizer_state: list[np.ndarray] | None = None,
                    root=None) -> None:
    """One .npz holding the weights (ModelWeights.named_arrays, any architecture), optionally the
    optimizer's variables, and a JSON meta recording the architecture; atomic (`root`: the run
    folder, which no link on the way may lead out of)."""
    weights = as_model_weights(weights)
    arrays = {f"weights/{name}": np.asarray(a) for name, a in weights.named_arrays().items()}
    for i, a in enumerate(optimizer_state or []):
        arrays[f"optimizer/{i:04d}"] = np.asarray(a)
    meta = {**meta, "architecture": weights.architecture().to_json()}
    arrays["meta"] = np.array(json.dumps(meta))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue(), root)


def as_model_weights(weights) -> ModelWeights:
    if isinstance(weights, ModelWeights):
        return weights
    raise TypeError(f"save_checkpoint: weights must be ModelWeights, not {type(weights).__name__}")


# A checkpoint written before architectures holds one GRU's six arrays under these names.
OLD_GRU_ARRAYS = ("embedding", "kernel", "recurrent_kernel", "bias", "dense_kernel", "dense_bias")


@dataclass
class Checkpoint:
    weights: ModelWeights
    meta: dict
    optimizer_state: list[np.ndarray] = field(default_factory=list)


def read_checkpoint(path) -> Checkpoint:
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            arrays = {k[len("weights/"):]: npz[k] for k in npz.files if k.startswith("weights/")}
            optimizer = [npz[k] for k in sorted(k for k in npz.files if k.startswith("optimizer/"))]
    except FileNotFoundError:
        raise ModelError(f"checkpoint not found: {path}") from None
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
        # numpy's own words would advise allow_pickle=True: loading pickles runs code from the file.
        reason = "it holds Python objects, not arrays" if "allow_pickle" in str(e) else str(e)
        raise ModelError(f"checkpoint {path} is corrupt or not a charrnn-export checkpoint ({reason})") from None
    meta = check_meta(meta, path)
    return Checkpoint(checkpoint_weights(arrays, meta, str(path)), meta, optimizer)


def checkpoint_weights(arrays: dict[str, np.ndarray], meta: dict, source: str) -> ModelWeights:
    """A run checkpoint's weights: named by ModelWeights.named_arrays with the architecture in the
    meta, or (a checkpoint from before architectures) the six arrays of one GRU, read as gru x1."""
    if "architecture" in meta:
        architecture = Architecture.from_json(meta["architecture"], f"checkpoint {source}")
        return ModelWeights.from_named_arrays(architecture, arrays, f"checkpoint {source}")
    missing = [name for name in OLD_GRU_ARRAYS if name not in arrays]
    if missing:
        raise ModelError(f"checkpoint {source} is corrupt or not a charrnn-export checkpoint "
                         f"(no weight {missing[0]!r} and no architecture in its meta)")
    old = dict(zip(OLD_GRU_ARRAYS, (arrays[name] for name in OLD_GRU_ARRAYS)))
    spec_options = get_kind("gru").options_from_bias(int(old["recurrent_kernel"].shape[0]), tuple(old["bias"].shape))
    units = int(old["recurrent_kernel"].shape[0]) if old["recurrent_kernel"].ndim == 2 else 0
    if spec_options is None or units < 1:
        raise ModelError(f"checkpoint {source}: its GRU's bias has shape {tuple(old['bias'].shape)} and recurrent "
                         f"kernel {tuple(old['recurrent_kernel'].shape)}, which fit no GRU")
    layer = LayerWeights(LayerSpec("gru", units, spec_options), old["kernel"], old["recurrent_kernel"], old["bias"])
    return ModelWeights(old["embedding"], (layer,), old["dense_kernel"], old["dense_bias"]).check(source)


def check_meta(meta, path) -> dict:
    """A checkpoint's meta as `train` writes it: an object whose config, metrics and position are
    objects and whose validation loss is a number; anything else is a damaged file, said here
    rather than as an AttributeError wherever it is first used."""
    problem = None
    if not isinstance(meta, dict):
        problem = f"its meta is a JSON {json_type(meta)}, not an object"
    else:
        problem = next((f"its meta's {key!r} is a JSON {json_type(meta[key])}, not an object"
                        for key in ("config", "metrics", "position") if key in meta and not isinstance(meta[key], dict)),
                       None)
        val_loss = meta.get("metrics", {}).get("val_loss") if problem is None else None
        if problem is None and val_loss is not None and not is_number(val_loss):
            problem = f"its validation loss is {val_loss!r}, not a number"
    if problem:
        raise ModelError(f"checkpoint {path} is corrupt or not a charrnn-export checkpoint ({problem}); "
                         "use another checkpoint or train again")
    return meta


def check_run_config(config, path) -> dict:
    """A run's config.json: an object (train writes one), with a usable val_fraction and data_sha256."""
    problem = None
    if not isinstance(config, dict):
        problem = f"it is a JSON {json_type(config)}, not an object"
    elif "val_fraction" in config and not (is_number(config["val_fraction"]) and 0 < config["val_fraction"] < 1):
        problem = f"val_fraction is {config['val_fraction']!r}, not a number between 0 and 1"
    elif config.get("data_sha256") is not None and not isinstance(config["data_sha256"], str):
        problem = f"data_sha256 is {config['data_sha256']!r}, not a string"
    if problem:
        raise ModelError(f"{path} is corrupt ({problem}); re-create the run, or restore the config.json train wrote")
    return config


def json_type(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def is_number(value) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------- any checkpoint kind

CHECKPOINT_KINDS = (
    "pass a run directory from `charrnn-export train`, a tutorial training_checkpoints directory or "
    "prefix (e.g. training_checkpoints/ckpt_10), or a Keras .weights.h5 file"
)


@dataclass
class LoadedWeights:
    weights: ModelWeights
    kind: str  # "run", "tutorial-tf", "keras-h5"
    vocab: Vocab | None
    meta: dict
    source: str
    # How the checkpoint names its layers: "run" (this project), "sequential" (a Sequential model:
    # the original tutorial's stateful tf_keras model, or build_keras_model's), "subclassed" (the
    # current tutorial's MyModel). Only a tf_keras "sequential" TF checkpoint can be loaded back
    # into the original tutorial's model for the parity reference.
    layout: str = "run"

    @property
    def architecture(self) -> Architecture:
        return self.weights.architecture()


def load_any_checkpoint(path: str | os.PathLike) -> LoadedWeights:
    """Weights from a run directory, a tutorial TF checkpoint (dir or prefix), or a .weights.h5.

    Needs numpy (and h5py for .h5); TensorFlow only for TF checkpoints, imported quietly.
    """
    path = Path(path)
    kind = checkpoint_kind(path)
    if kind == "run" and path.is_dir():
        return load_run_dir(path)
    if kind == "run":
        ckpt = read_checkpoint(path)
        vocab_file = path.parent.parent / "vocab.json" if path.parent.name == "checkpoints" else path.parent / "vocab.json"
        vocab = Vocab.load(vocab_file) if vocab_file.exists() else None
        # train stores its config in each checkpoint
        meta = {**ckpt.meta, "run_config": check_run_config(ckpt.meta.get("config", {}), path)}
        return LoadedWeights(ckpt.weights, "run", vocab, meta, str(path.resolve()))
    if kind == "keras-h5":
        weights, layout = read_keras_h5(path)
        return LoadedWeights(weights, "keras-h5", None, {}, str(path.resolve()), layout)
    prefix = tf_checkpoint_prefix(path)
    weights, layout = read_tutorial_checkpoint(prefix)
    return LoadedWeights(weights, "tutorial-tf", None, {}, str(Path(prefix).resolve()), layout)


def checkpoint_kind(path: str | os.PathLike) -> str:
    """"run", "keras-h5" or "tutorial-tf" from the path alone (reads no weights); raises ModelError
    for anything else. Only run checkpoints carry their vocabulary."""
    path = Path(path)
    if path.is_dir() and ((path / "config.json").exists() or (path / "best.npz").exists()):
        return "run"
    if path.is_file() and path.suffix == ".npz":
        return "run"
    if path.is_file() and path.name.endswith((".h5", ".keras")):
        return "keras-h5"
    if tf_checkpoint_prefix(path) is not None:
        return "tutorial-tf"
    if not path.exists():
        raise ModelError(f"checkpoint not found: {path}; {CHECKPOINT_KINDS}")
    raise ModelError(f"{path} is not a checkpoint: {CHECKPOINT_KINDS}")


def load_run_dir(run_dir: Path) -> LoadedWeights:
    best = run_dir / "best.npz"
    if not best.exists():
        raise ModelError(f"run directory {run_dir} has no best.npz yet; train at least one epoch first")
    ckpt = read_checkpoint(best)
    if not (run_dir / "vocab.json").exists():
        raise ModelError(f"run directory {run_dir} has no vocab.json; re-create the run")
    vocab = Vocab.load(run_dir / "vocab.json")
    meta = dict(ckpt.meta)
    try:
        meta["run_config"] = check_run_config(json.loads((run_dir / "config.json").read_text(encoding="utf-8")),
                                              run_dir / "config.json")
    except FileNotFoundError:
        raise ModelError(f"run directory {run_dir} has no config.json; re-create the run") from None
    except (ValueError, UnicodeDecodeError):
        raise ModelError(f"{run_dir / 'config.json'} is corrupt; re-create the run") from None
    return LoadedWeights(ckpt.weights, "run", vocab, meta, str(best.resolve()))


TF_CHECKPOINT_FILE = re.compile(r"(.+)\.(index|data-\d{5}-of-\d{5})")


def tf_checkpoint_prefix(path: Path) -> str | None:
    """The prefix of a TF checkpoint given its directory (with a `checkpoint` file), its prefix, or
    one of its files (PREFIX.index, PREFIX.data-00000-of-00001); None when `path` is none of these.

    The `checkpoint` file is read here rather than by tf.train.latest_checkpoint, so that a
    wrong path fails before TensorFlow is imported and without TensorFlow's log lines.
    """
    if path.is_dir():
        state = path / "checkpoint"
        if not state.is_file():
            return None
        match = re.search(r'^model_checkpoint_path:\s*"(.*)"\s*$', state.read_text(errors="replace"), re.M)
        if match is None:
            raise ModelError(f"{state} names no checkpoint (no model_checkpoint_path line); pass a prefix "
                             f"such as {path / 'ckpt_1'} instead")
        name = match.group(1)
        prefix = Path(name) if Path(name).is_absolute() else path / name
        if not Path(f"{prefix}.index").is_file():
            present = sorted(p.name[: -len(".index")] for p in path.glob("*.index"))
            raise ModelError(f"{state} names {name!r}, but {prefix}.index does not exist"
                             + (f"; pass one of the prefixes present: {', '.join(present)}" if present else ""))
        return str(prefix)
    file_match = TF_CHECKPOINT_FILE.fullmatch(str(path))
    if path.is_file() and file_match and Path(f"{file_match.group(1)}.index").is_file():
        return file_match.group(1)
    if Path(f"{path}.index").is_file():
        return str(path)
    return None


def read_tutorial_checkpoint(prefix: str) -> tuple[ModelWeights, str]:
    """Weights saved by the tutorial's `model.save_weights(prefix)` or ModelCheckpoint (TF
    checkpoint format), and the layout.

    A Sequential model stores its layers as layer_with_weights-0/1/..., a subclassed one by
    attribute (embedding, gru, dense). cells/variables.py recognises each recurrent layer's kind
    by its arrays' shapes and chains the stack by them, so the attribute names do not matter.
    """
    from .tfsetup import import_tensorflow

    tf = import_tensorflow()
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    try:
        reader = tf.train.load_checkpoint(prefix)
        every = list(reader.get_variable_to_shape_map())
        names = [n for n in every
                 if n.endswith(suffix) and not n.startswith(("optimizer/", "save_counter/"))
                 and "/.OPTIMIZER_SLOT/" not in n]
        variables = [(n[: -len(suffix)], np.asarray(reader.get_tensor(n))) for n in names]
        for name in sorted(set(every) - set(names)):
            # Read (and drop) the optimizer's slots too: a .data file cut short past the weights
            # would otherwise pass here and fail later, deep inside tf_keras' load_weights.
            reader.get_tensor(name)
    except (tf.errors.OpError, IndexError, ValueError, OSError, RuntimeError) as e:
        # A truncated .data file surfaces as IndexError ("Read less bytes than requested"), a bad
        # .index as DataLossError; both mean the same thing to the user.
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"cannot read TF checkpoint {prefix}: it is corrupt or truncated ({first_line[:200]})") from None
    weights = weights_from_variables(variables, f"TF checkpoint {prefix}")
    layout = "sequential" if any(n.startswith("layer_with_weights-") for n, _ in variables) else "subclassed"
    return weights, layout


def read_keras_h5(path: Path) -> tuple[ModelWeights, str]:
    """Weights from a Keras `.weights.h5` (or a `.keras` archive holding one), and the layout.

    Keras 3 stores each layer's variables as vars/0, vars/1, ... under the layer's path:
    `embedding/vars/0`, `gru/cell/vars/0..2`, `dense/vars/0..1` for the current tutorial's
    subclassed MyModel, the same under `layers/` for a Sequential model, and the optimizer's
    variables under `optimizer/`. tf_keras' legacy .h5 names them instead (`gru/gru/gru_cell/kernel:0`).
    Either way cells/variables.py recognises the layers by shape, never by name; a .keras
    archive's config.json, which names every layer's class in order, is then held against that.
    """
    import h5py

    path = Path(path)
    variables: list[tuple[str, np.ndarray]] = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and name.split("/")[0] not in ("optimizer", "optimizer_weights"):
            variables.append((name, np.asarray(obj[()])))

    model_config = None
    try:
        if zipfile.is_zipfile(path):  # a .keras archive: config.json + model.weights.h5
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
                if "config.json" in names:
                    model_config = json.loads(archive.read("config.json"))
                source = io.BytesIO(archive.read("model.weights.h5"))
        else:
            source = str(path)
        with h5py.File(source, "r") as f:
            f.visititems(visit)
    except (OSError, KeyError, ValueError, RuntimeError, zipfile.BadZipFile) as e:
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"cannot read {path} as Keras weights: it is corrupt, truncated or not a Keras "
                         f"weights file ({first_line[:200]})") from None
    if model_config is not None:
        check_keras_config(model_config, path)
    if any(n.startswith("layers/") for n, _ in variables):
        layout = "sequential"  # Keras 3 Sequential
    elif any(":" in n for n, _ in variables):
        layout = "tf_keras-h5"  # tf_keras' legacy format: LAYER/LAYER/kernel:0
    else:
        layout = "subclassed"
    weights = weights_from_variables(variables, str(path))
    if model_config is not None:
        check_config_kinds(model_config, weights, path)
    return weights, layout


# Layers a char model may hold beside its weighted ones: they change nothing the step computes
# at inference (Dropout), or only how the model is fed.
INERT_LAYERS = {"InputLayer", "Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "ActivityRegularization"}


def keras_config_layers(model_config) -> list[dict] | None:
    """The layer entries of a .keras archive's config.json for a Sequential (or Functional) model,
    in model order; None for a subclassed model, whose config lists no layers."""
    config = model_config.get("config") if isinstance(model_config, dict) else None
    layers = config.get("layers") if isinstance(config, dict) else None
    if not isinstance(layers, list):
        return None
    return [entry for entry in layers if isinstance(entry, dict)]


def check_keras_config(model_config, path: Path) -> None:
    """Refuse, by name, any layer of a .keras archive the char model's step does not compute."""
    layers = keras_config_layers(model_config)
    if layers is None:
        return
    recurrent = {kind.keras_class for kind in KINDS.values()}
    allowed = {"Embedding", "Dense"} | recurrent | INERT_LAYERS
    for entry in layers:
        class_name = entry.get("class_name")
        name = (entry.get("config") or {}).get("name", "?") if isinstance(entry.get("config"), dict) else "?"
        if class_name not in allowed:
            inner = ((entry.get("config") or {}).get("layer") or {}).get("class_name") if class_name == "Bidirectional" else None
            what = f"Bidirectional({inner})" if inner else class_name
            raise ModelError(f"{path}: its layer {name!r} is a {what}; only Embedding -> GRU/LSTM/SimpleRNN layers "
                             "(one-directional) -> Dense char models can be exported")


def check_config_kinds(model_config, weights: ModelWeights, path: Path) -> None:
    """The recurrent layers the shapes gave must be the ones config.json names, in its order."""
    layers = keras_config_layers(model_config)
    if layers is None:
        return
    classes = {kind.keras_class: kind.name for kind in KINDS.values()}
    named = [(classes[e["class_name"]], (e.get("config") or {}).get("units")) for e in layers
             if e.get("class_name") in classes]
    found = [(layer.spec.kind, layer.spec.units) for layer in weights.layers]
    if named != found:
        show = lambda pairs: " -> ".join(f"{k}({u})" for k, u in pairs)  # noqa: E731
        raise ModelError(f"{path}: its config.json names the recurrent layers {show(named)} but its weights are "
                         f"{show(found)}; the archive is inconsistent: save the model again")


def non_finite_arrays(weights: ModelWeights) -> list[str]:
    """The arrays holding NaN or Inf, as "NaN in layers/0/kernel (3 of 1536 values)"; empty when none."""
    found = []
    for name, array in weights.named_arrays().items():
        array = np.asarray(array)
        if array.dtype.kind != "f":
            continue
        bad = ~np.isfinite(array)
        if bad.any():
            kinds = " and ".join(k for k, hit in (("NaN", np.isnan(array).any()), ("Inf", np.isinf(array).any())) if hit)
            found.append(f"{kinds} in {name} ({int(bad.sum())} of {array.size} values)")
    return found


# ---------------------------------------------------------------- the vocabulary of a checkpoint


def resolve_vocab(loaded: LoadedWeights, text: str | None, vocab_path: str | None) -> tuple[Vocab, str, bool]:
    """The vocabulary in id order, where it came from, and whether id 0 is the tutorial's [UNK];
    raises unless it fits the checkpoint's embedding."""
    rows = loaded.weights.vocab_size
    unk = False
    if vocab_path is not None:
        (vocab, unk), source = read_vocab_file(vocab_path), f"--vocab {vocab_path}"
        if loaded.vocab is not None and vocab != loaded.vocab:
            raise ConfigError(f"--vocab {vocab_path} differs from the vocabulary stored with {loaded.source}; "
                              "leave --vocab out")
    elif loaded.vocab is not None:
        vocab, source = loaded.vocab, "stored with the checkpoint: its vocab.json"
    elif text is not None:
        chars = tuple(sorted(set(text)))
        if rows == len(chars) + 1:
            vocab, source, unk = with_unknown_slot(chars), "--text: [UNK] + sorted(set(text)) (StringLookup)", True
        else:
            vocab, source = Vocab(chars), "--text: sorted(set(text))"
    else:
        raise ConfigError(
            f"{loaded.source} holds no vocabulary; pass --text FILE (the training text, to rebuild it as "
            "the tutorial did) or --vocab vocab.json"
        )
    if text is not None and not source.startswith("--text"):
        check_vocab_against_text(vocab, unk, text, vocab_origin(source))
    if len(vocab) != rows:
        raise ModelError(
            f"the checkpoint's embedding has {rows} rows (its vocabulary size) but the vocabulary "
            f"{vocab_origin(source)} has {len(vocab)} characters; pass the text or vocab.json the model was trained with"
        )
    return vocab, source, unk


def check_vocab_against_text(vocab: Vocab, unk: bool, text: str, origin: str) -> None:
    """A vocabulary given beside --text must be the one --text builds: the same characters in the
    same (sorted) order. A hand-edited vocab.json with two characters swapped would otherwise
    export a model that writes one where it means the other."""
    chars = vocab.chars[1:] if unk else vocab.chars
    built = tuple(sorted(set(text)))
    if chars == built:
        return
    extra, lacking = sorted(set(chars) - set(built)), sorted(set(built) - set(chars))
    if extra or lacking:
        what = "; ".join(part for part in (
            f"it holds {' '.join(map(repr, extra[:10]))} that --text lacks" if extra else "",
            f"it lacks {' '.join(map(repr, lacking[:10]))} that --text holds" if lacking else "") if part)
    else:
        first = next(i for i, (a, b) in enumerate(zip(chars, built)) if a != b)
        what = (f"the same characters in another order (id {first + unk} is {chars[first]!r} where --text "
                f"gives {built[first]!r})")
    raise ConfigError(f"the vocabulary {origin} is not the one --text builds (sorted(set(text))): {what}; "
                      "pass the vocab.json the model was trained with, or leave --vocab (or --text) out")


def vocab_origin(source: str) -> str:
    """How a message names where the vocabulary came from ("from --vocab v.json", "rebuilt from --text")."""
    kind = source.split(":")[0]
    if kind == "stored with the checkpoint":
        return "stored with the checkpoint"
    if kind == "--text":
        return "rebuilt from --text"
    return f"from {kind}"
