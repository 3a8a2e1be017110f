"""Every parity check of an export in one step, and the measures of its quality.

    validate(inputs, folder, atol, seed) -> figures; raises one ParityError listing every failure:
        step parity     the SavedModel and ONNX steps vs the Keras model (cells.keras_model) over
                        whole sequences, logits and each layer's h, and vs the numpy reference
                        (cells.reference) for the whole packed state; a tutorial TF checkpoint
                        also vs the tutorial's own stateful tf_keras model loaded by load_weights
        int8            every MatMul int8 (step_model.check_int8_graph); its quality (logit error,
                        its share of the fp32 logits' spread, top-1 agreement, validation loss) is
                        measured and reported, not gated: an untrained model's flat logits would fail
                        any fixed bound
        decode models   each decode model vs its step model + sampling.choose, id for id
    stream_loss(onnx_path, vocab, text) -> validation loss with the state carried through the text
    compare_int8(fp32_path, int8_path, vocab, text) -> logit difference, top-1 agreement, losses

Every mismatch is collected and reported together, never downgraded to a warning. Nothing here
knows a cell kind: the architecture (cells) says how wide each layer's slice of the state is.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from . import contract
from .cells.keras_model import build_keras_model, set_keras_weights
from .cells.reference import reference_step
from .checkpoints import LoadedWeights
from .errors import ModelError, ParityError
from .vocab import Vocab

# (batch, length) of the random token sequences stepped through every runtime.
PARITY_CASES = ((1, 64), (4, 24), (16, 8))



def step_through(runtime, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Feed (batch, time) tokens one step at a time from a zero state; returns logits, states."""
    batch, length = tokens.shape
    state = runtime.zero_state(batch)
    logits_seq, state_seq = [], []
    for t in range(length):
        logits, state = runtime.step(tokens[:, t], state)
        logits_seq.append(logits)
        state_seq.append(state)
    return np.stack(logits_seq, axis=1), np.stack(state_seq, axis=1)  # (batch, time, vocab|state_size)


def keras_model_of(loaded: LoadedWeights):
    """The Keras 3 model of the checkpoint's architecture (cells.keras_model) holding its weights."""
    model = build_keras_model(loaded.architecture)
    set_keras_weights(model, loaded.weights)
    return model


def keras_reference(model, tokens: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The Keras model over whole sequences, layer by layer: the logits (batch, time, vocab) and
    each recurrent layer's outputs (batch, time, units), its h after each step."""
    embedding, *recurrent, dense = [layer for layer in model.layers if layer.get_weights()]
    x, outputs = embedding(tokens), []
    for layer in recurrent:
        x = layer(x)
        outputs.append(np.asarray(x))
    return np.asarray(dense(x)), outputs


def numpy_reference(loaded: LoadedWeights, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cells.reference's float64 step over (batch, time) tokens: logits and the packed states."""
    state = np.zeros((tokens.shape[0], loaded.architecture.state_size))
    logits_seq, state_seq = [], []
    for t in range(tokens.shape[1]):
        logits, state = reference_step(loaded.weights, tokens[:, t], state)
        logits_seq.append(logits)
        state_seq.append(state)
    return np.stack(logits_seq, axis=1), np.stack(state_seq, axis=1)


def tutorial_reference(prefix: str, loaded: LoadedWeights, tokens: np.ndarray) -> np.ndarray:
    """The original tutorial's own kind of model (tf_keras, stateful, fixed batch) for the
    checkpoint's architecture, loaded from its checkpoint with its own load_weights, called on the
    whole (batch, time) string from its zero state.

    It shares no reading code with ours, so a wrong variable mapping in read_tutorial_checkpoint
    (a layer taken for another, two layers swapped) shows up here as a difference."""
    import tensorflow as tf
    import tf_keras

    architecture = loaded.architecture
    batch = tokens.shape[0]
    layers = [tf_keras.layers.Embedding(architecture.vocab_size, architecture.embedding_dim,
                                        batch_input_shape=[batch, None])]
    layers += [spec.cell.keras_layer(spec, tf_keras, stateful=True) for spec in architecture.layers]
    layers.append(tf_keras.layers.Dense(architecture.vocab_size))
    model = tf_keras.Sequential(layers)
    # expect_partial: the optimizer's slots are in the checkpoint but not in this model. Every
    # variable of the model must have been restored, or the reference would be random weights.
    try:
        model.load_weights(prefix).expect_partial().assert_existing_objects_matched()
    except (tf.errors.OpError, IndexError, ValueError, OSError, RuntimeError, AssertionError) as e:
        # read_tutorial_checkpoint read every tensor already: this is a file changed meanwhile.
        line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelError(f"cannot read TF checkpoint {prefix}: it is corrupt or truncated ({line})") from None
    return np.asarray(model(tokens))  # (batch, time, vocab)


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


class Figures:
    """Worst differences by comparison and quantity, and the failures over the tolerance."""

    def __init__(self):
        self.figures: dict[str, dict[str, float]] = {}

    def record(self, name: str, quantity: str, value: float) -> None:
        entry = self.figures.setdefault(name, {})
        entry[quantity] = max(entry.get(quantity, 0.0), value) if not math.isnan(value) else value

    def failures(self, atol: float) -> list[str]:
        return [f"{name} {quantity} max abs diff {value:.3g} > atol {atol:g}"
                for name, entry in self.figures.items() for quantity, value in entry.items()
                if not value <= atol]  # also catches NaN


def h_columns(architecture) -> list[tuple[int, int]]:
    """Each layer's h in the packed state: its first `units` columns (a kind's state starts with h)."""
    return [(slot.offset, slot.offset + slot.units) for slot in architecture.state_layout()]


def step_parity(loaded: LoadedWeights, vocab: Vocab, runtimes: list, seed: int) -> Figures:
    """The runtimes' steps vs the Keras model, the numpy reference and (a tutorial Sequential TF
    checkpoint) the tutorial's own model, over PARITY_CASES' random sequences."""
    model = keras_model_of(loaded)
    columns = h_columns(loaded.architecture)
    rng = np.random.default_rng(seed)
    figures = Figures()
    tutorial = loaded.kind == "tutorial-tf" and loaded.layout == "sequential"
    for batch, length in PARITY_CASES:
        tokens = rng.integers(0, len(vocab), size=(batch, length), dtype=np.int32)
        keras_logits, keras_h = keras_reference(model, tokens)
        _, reference_states = numpy_reference(loaded, tokens)
        for runtime in runtimes:
            logits, states = step_through(runtime, tokens)
            name = f"keras_vs_{runtime.name}"
            figures.record(name, "logits", max_diff(keras_logits, logits))
            figures.record(name, "state", max(max_diff(h, states[..., a:b]) for h, (a, b) in zip(keras_h, columns)))
            figures.record(f"reference_vs_{runtime.name}", "state", max_diff(reference_states, states))
        if tutorial:
            tutorial_logits = tutorial_reference(loaded.source, loaded, tokens)
            onnx_logits, _ = step_through(runtimes[-1], tokens)
            figures.record("tutorial_vs_onnx", "logits", max_diff(tutorial_logits, onnx_logits))
            figures.record("tutorial_vs_keras", "logits", max_diff(tutorial_logits, keras_logits))
    return figures


def check_parity(loaded: LoadedWeights, vocab: Vocab, saved_model_dir, onnx_path, atol: float, seed: int = 0) -> dict:
    """Step parity alone (the SavedModel and ONNX steps); raises ParityError listing every failure."""
    figures, failures = step_parity_report(loaded, vocab, saved_model_dir, onnx_path, atol, seed)
    if failures:
        raise parity_error(failures)
    return figures


def step_parity_report(loaded, vocab, saved_model_dir, onnx_path, atol, seed) -> tuple[dict, list[str]]:
    from .runtimes.onnx import OnnxRuntime
    from .runtimes.savedmodel import SavedModelRuntime

    runtimes = [SavedModelRuntime(saved_model_dir), OnnxRuntime(onnx_path)]
    for runtime in runtimes:
        if runtime.rnn_units != loaded.architecture.state_size:
            return {}, [f"{runtime.name} takes a state {runtime.rnn_units} wide, the checkpoint's "
                        f"{loaded.architecture.describe()} needs {loaded.architecture.state_size}"]
    figures = step_parity(loaded, vocab, runtimes, seed)
    report = dict(figures.figures)
    report["cases"] = [list(c) for c in PARITY_CASES]  # type: ignore[assignment]
    return report, figures.failures(atol)


def parity_error(failures: list[str]) -> ParityError:
    return ParityError(f"export parity failed, nothing written: {'; '.join(failures)} "
                       "(exports vs the Keras model and the numpy reference on random token sequences; see --atol)")


def validate(loaded: LoadedWeights, vocab: Vocab, folder: Path, *, atol: float, seed: int = 0,
             text: str | None = None) -> dict:
    """Every parity check of the export in `folder` (its step models, int8 model, decode models):
    the figures of each; one ParityError listing every failure, whichever checks they come from."""
    folder = Path(folder)
    failures: list[str] = []
    report: dict = {}
    report["parity"], step_failures = step_parity_report(loaded, vocab, folder / "saved_model",
                                                         folder / contract.MODEL_FILES["fp32"], atol, seed)
    failures += step_failures
    int8_path = folder / contract.MODEL_FILES["int8"]
    if int8_path.is_file():
        report["int8"] = compare_int8(folder / contract.MODEL_FILES["fp32"], int8_path, vocab, text, seed=seed)
        failures += int8_failures(int8_path, report["int8"])
    report["decode"], decode_failures = decode_parity_report(folder, seed)
    failures += decode_failures
    if failures:
        raise parity_error(failures)
    return report


def int8_failures(int8_path: Path, figures: dict) -> list[str]:
    import onnx

    from .step_model import check_int8_graph

    failures = []
    try:
        figures["matmuls"] = check_int8_graph(onnx.load(str(int8_path)))
    except ModelError as e:
        failures.append(str(e))
    return failures


def decode_parity_report(folder: Path, seed: int = 0) -> tuple[dict, list[str]]:
    """Each decode model in `folder` against its step model + the numpy sampler: the figures, and
    a failure for any id or state that differs."""
    report, failures = {}, []
    for step_name, decode_name in contract.DECODE_FILES.items():
        if (Path(folder) / decode_name).is_file():
            figures = decode_parity(Path(folder) / step_name, Path(folder) / decode_name, seed=seed)
            report[decode_name] = figures
            if figures["mismatched_ids"] or figures["max_state_diff"] > 0:
                failures.append(f"{decode_name} disagrees with {step_name} + the numpy sampler: "
                                f"{figures['mismatched_ids']} of {figures['chars']} ids differ, state differs by up "
                                f"to {figures['max_state_diff']:.3g}")
    return report, failures


def check_decode_models(folder: Path, seed: int = 0) -> dict:
    """decode_parity_report for a folder alone (the shipped artifacts/); raises ParityError."""
    report, failures = decode_parity_report(folder, seed)
    if failures:
        raise ParityError("; ".join(failures))
    return report


def decode_parity(step_path: Path, decode_path: Path, seed: int = 0, batch: int = 16, steps: int = 64) -> dict:
    """Run the decode model and (step model + sampling.choose) side by side, feeding back the
    decode model's ids, with mixed per-row settings: how many ids and how far the states differ."""
    import onnxruntime as ort

    from .decode import decode_feeds, step_metadata
    from .sampling import SamplingConfig, Settings, choose, mask_unknown

    step = ort.InferenceSession(str(step_path), providers=["CPUExecutionProvider"])
    decode = ort.InferenceSession(str(decode_path), providers=["CPUExecutionProvider"])
    import onnx

    vocab_size, unk_id = step_metadata(onnx.load(str(step_path), load_external_data=False))
    rng = np.random.default_rng(seed)
    configs = [SamplingConfig(float(rng.choice([0.5, 1.0, 1.3])), int(rng.choice([0, 1, 3, vocab_size])) or None,
                              float(rng.choice([1.0, 0.9, 0.5])), bool(row % 5 == 0)) for row in range(batch)]
    settings = Settings.of(configs)
    state_size = step.get_inputs()[1].shape[1]
    tokens = rng.integers(0, vocab_size, batch).astype(np.int32)
    state = np.zeros((batch, state_size), np.float32)
    mismatched_ids, state_diff = 0, 0.0
    for _ in range(steps):
        uniforms = rng.random(batch)
        ids, new_state = decode.run([contract.NEXT_TOKEN, contract.STATE_OUT],
                                    decode_feeds(tokens, state, settings, uniforms))
        logits, ref_state = step.run([contract.LOGITS, contract.STATE_OUT], {contract.TOKEN: tokens, contract.STATE: state})
        mask_unknown(logits, unk_id)
        mismatched_ids += int(np.sum(choose(logits, settings, uniforms) != ids))
        state_diff = max(state_diff, float(np.abs(new_state - ref_state).max()))
        tokens, state = ids, new_state
    return {"chars": batch * steps, "mismatched_ids": mismatched_ids, "max_state_diff": state_diff}


def stream_windows(ids: np.ndarray, streams: int) -> np.ndarray:
    """Cut ids into `streams` contiguous pieces of equal length, one per batch row."""
    streams = max(1, min(streams, len(ids) // 2))
    length = len(ids) // streams
    return ids[: streams * length].reshape(streams, length)


def stream_loss(onnx_path, vocab: Vocab, text: str, streams: int = 64) -> dict:
    from .runtimes.onnx import OnnxRuntime

    return compare_over_text([OnnxRuntime(onnx_path)], vocab, text, streams)[0]


def compare_over_text(runtimes, vocab: Vocab, text: str, streams: int = 64) -> list[dict]:
    """Mean next-character loss of each runtime over `text`, state carried from the start of each
    of `streams` contiguous pieces; with two runtimes, also how often their top-1 choices agree."""
    windows = stream_windows(vocab.encode(text), streams)  # (streams, length)
    states = [r.zero_state(len(windows)) for r in runtimes]
    loss_sums = [0.0 for _ in runtimes]
    agree = 0
    for t in range(windows.shape[1] - 1):
        top1 = []
        for i, runtime in enumerate(runtimes):
            logits, states[i] = runtime.step(windows[:, t], states[i])
            loss_sums[i] += float(np.sum(cross_entropy(logits, windows[:, t + 1])))
            top1.append(np.argmax(logits, axis=1))
        if len(top1) == 2:
            agree += int(np.sum(top1[0] == top1[1]))
    count = windows.shape[0] * (windows.shape[1] - 1)
    results = [{"loss": s / count, "bpc": s / count / math.log(2)} for s in loss_sums]
    if len(runtimes) == 2:
        results[1]["top1_agreement"] = agree / count
    return results


def cross_entropy(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    return log_norm - shifted[np.arange(len(targets)), targets]


def compare_int8(fp32_path, int8_path, vocab: Vocab, text: str | None, seed: int = 0) -> dict:
    from .runtimes.onnx import OnnxRuntime

    fp32, int8 = OnnxRuntime(fp32_path), OnnxRuntime(int8_path)
    rng = np.random.default_rng(seed)
    worst, agree, positions, errors, spreads = 0.0, 0, 0, [], []
    for batch, length in PARITY_CASES:
        tokens = rng.integers(0, len(vocab), size=(batch, length), dtype=np.int32)
        fp32_logits, int8_logits = step_through(fp32, tokens)[0], step_through(int8, tokens)[0]
        worst = max(worst, max_diff(fp32_logits, int8_logits))
        agree += int(np.sum(np.argmax(fp32_logits, axis=-1) == np.argmax(int8_logits, axis=-1)))
        positions += batch * length
        errors.append(np.abs(fp32_logits.astype(np.float64) - int8_logits).ravel())
        spreads.append(fp32_logits.astype(np.float64).ravel())
    spread = float(np.std(np.concatenate(spreads)))
    report = {"max_logit_diff_random": worst, "top1_agreement_random": agree / positions,
              "relative_logit_error_random": float(np.mean(np.concatenate(errors))) / spread if spread > 0 else 0.0,
              "int8_ops": int8_op_counts(int8_path)}
    if text:
        fp32_result, int8_result = compare_over_text([fp32, int8], vocab, text)
        report.update({"val_loss_fp32": fp32_result["loss"], "val_loss_int8": int8_result["loss"],
                       "val_bpc_fp32": fp32_result["bpc"], "val_bpc_int8": int8_result["bpc"],
                       "top1_agreement": int8_result["top1_agreement"]})
    return report


def int8_op_counts(path) -> dict:
    """Which weights are stored as int8 and which stay float, and the op types: proof it is int8."""
    import onnx

    model = onnx.load(str(path))
    int8 = {i.name: list(i.dims) for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    other = {i.name: [onnx.TensorProto.DataType.Name(i.data_type), list(i.dims)]
             for i in model.graph.initializer if i.data_type != onnx.TensorProto.INT8}
    ops = sorted({n.op_type for n in model.graph.node})
    return {"int8_initializers": len(int8), "int8_weights": int8, "other_weights": other, "ops": ops}
