"""Parity of the exports with the Keras model, and the quality of the int8 model.

    check_parity(loaded, vocab, saved_model_dir, onnx_path, atol) -> figures; raises ParityError
    stream_loss(onnx_path, vocab, text) -> validation loss with the state carried through the text
    compare_int8(fp32_path, int8_path, vocab, text) -> logit difference, top-1 agreement, losses

The reference is the Keras 3 model run over whole sequences; for a checkpoint written by the
tutorial it is also the tutorial's own stateful tf_keras model called on the whole string.
Every mismatch is collected and reported together, never downgraded to a warning.
"""

from __future__ import annotations

import math

import numpy as np

from .vocab import Vocab
from .errors import ModelError, ParityError
from .checkpoints import LoadedWeights
from .model import model_from_weights

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
    return np.stack(logits_seq, axis=1), np.stack(state_seq, axis=1)  # (batch, time, vocab|units)


def keras_reference(model, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Keras model over whole sequences: its GRU outputs are the states after each step."""
    states = model.get_layer("gru")(model.get_layer("embedding")(tokens))  # (batch, time, units)
    logits = model.get_layer("dense")(states)  # (batch, time, vocab)
    return np.asarray(logits), np.asarray(states)


def tutorial_reference(prefix: str, weights, tokens: np.ndarray) -> np.ndarray:
    """The original tutorial's own model (tf_keras, stateful, fixed batch) loaded from its checkpoint
    with its own load_weights, called on the whole (batch, time) string from its zero state.

    It shares no code with our readers, so a wrong variable mapping in read_tutorial_checkpoint
    shows up here as a difference."""
    import tensorflow as tf
    import tf_keras

    batch = tokens.shape[0]
    model = tf_keras.Sequential([
        tf_keras.layers.Embedding(weights.vocab_size, weights.embedding_dim, batch_input_shape=[batch, None]),
        tf_keras.layers.GRU(weights.rnn_units, return_sequences=True, stateful=True,
                            recurrent_initializer="glorot_uniform"),
        tf_keras.layers.Dense(weights.vocab_size),
    ])
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


def check_parity(loaded: LoadedWeights, vocab: Vocab, saved_model_dir, onnx_path, atol: float, seed: int = 0) -> dict:
    from .runtimes.onnx import OnnxRuntime
    from .runtimes.savedmodel import SavedModelRuntime

    model = model_from_weights(loaded.weights)
    runtimes = [SavedModelRuntime(saved_model_dir), OnnxRuntime(onnx_path)]
    rng = np.random.default_rng(seed)
    figures: dict[str, dict[str, float]] = {}
    failures: list[str] = []

    def record(name: str, quantity: str, value: float) -> None:
        entry = figures.setdefault(name, {})
        entry[quantity] = max(entry.get(quantity, 0.0), value)

    for batch, length in PARITY_CASES:
        tokens = rng.integers(0, len(vocab), size=(batch, length), dtype=np.int32)
        ref_logits, ref_states = keras_reference(model, tokens)
        for runtime in runtimes:
            logits, states = step_through(runtime, tokens)
            record(f"keras_vs_{runtime.name}", "logits", max_diff(ref_logits, logits))
            record(f"keras_vs_{runtime.name}", "state", max_diff(ref_states, states))
        if loaded.kind == "tutorial-tf" and loaded.layout == "sequential":
            tutorial_logits = tutorial_reference(loaded.source, loaded.weights, tokens)
            onnx_logits, _ = step_through(runtimes[-1], tokens)
            record("tutorial_vs_onnx", "logits", max_diff(tutorial_logits, onnx_logits))
            record("tutorial_vs_keras", "logits", max_diff(tutorial_logits, ref_logits))

    for name, entry in figures.items():
        for quantity, value in entry.items():
            if not value <= atol:  # also catches NaN
                failures.append(f"{name} {quantity} max abs diff {value:.3g} > atol {atol:g}")
    figures["cases"] = [list(c) for c in PARITY_CASES]  # type: ignore[assignment]
    if failures:
        raise ParityError(f"export parity failed, nothing written: {'; '.join(failures)} "
                          "(exports vs the Keras model on random token sequences; see --atol)")
    return figures


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
    worst = 0.0
    for batch, length in PARITY_CASES:
        tokens = rng.integers(0, len(vocab), size=(batch, length), dtype=np.int32)
        worst = max(worst, max_diff(step_through(fp32, tokens)[0], step_through(int8, tokens)[0]))
    report = {"max_logit_diff_random": worst, "int8_ops": int8_op_counts(int8_path)}
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
