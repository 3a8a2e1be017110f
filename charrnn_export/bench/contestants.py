"""The contestants of the generation benchmark, and the one timed run that measures any of them.

    build_contestants(config, sources, tf, device, tf_gpu, ort_cuda) -> (contestants, notes)
    timed_run(contestant, start, batch, length, greedy, seed) -> {priming, steady, steps, texts}
    available_devices(tf, requested) -> (devices, notes on the devices left out)

A contestant's run(start, batch, length, greedy, seed) is a Python generator that yields once
per call that made characters (after they exist): None for one character of each row, or how
many each row got (the engine's blocks, a GPU graph's K steps), and returns the texts, one per
row. The time to its first yield is the priming (the start string and the first characters); the
rest is steady generation, including the final decoding into strings, each call's time shared
evenly among the characters it made. The TensorFlow contestants draw
from TensorFlow's global seed, set once per process (`seed` is for the host sampler).

    tutorial     the seed tutorial's generate_text: a stateful tf_keras Sequential (batch 1) called
                 eagerly on one character at a time, tf.random.categorical (batch 1 only)
    tf-function  the current tutorial's OneStep: a Keras 3 model whose recurrent layers return their state, called
                 inside a tf.function that also looks characters up and samples (strings in and out)
    savedmodel   the exported SavedModel's step signature, through the decode engine + the host sampler
    onnx-fp32    the decode engine over model.onnx: onnxruntime's step + the host sampler (HostSampler)
    onnx-int8    the same over model.int8.onnx
    decode-fp32  the decode engine over decode.onnx: sampling inside onnxruntime (OnnxDecoder; on
                 CUDA the GPU graph Generator builds, several steps per call)
    decode-int8  the same over decode.int8.onnx (CPU only)

The engine contestants are built by Generator.load, so they measure exactly what
`charrnn-export sample` and `serve` run. TensorFlow is imported by the caller and passed in.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import numpy as np

from ..vocab import Vocab
from ..errors import ConfigError
from .config import EXPORT_FILES, INT8, INT8_CUDA_NOTE, NEEDS_TENSORFLOW, NO_GPU, TF_MAX_BATCH, BenchConfig


class TutorialContestant:
    """The seed tutorial's generate_text, as written there, on a batch-1 stateful tf_keras model."""

    name = "tutorial"
    precision = "fp32"
    max_batch = 1

    def __init__(self, tf, weights, vocab: Vocab, temperature: float, device: str):
        import tf_keras

        from ..cells.keras_model import build_keras_model, set_keras_weights

        self.tf, self.device, self.temperature = tf, device, temperature
        with tf.device(device):
            # The tutorial's Sequential (Embedding, its recurrent layers, Dense), stateful at batch 1.
            self.model = build_keras_model(weights.architecture(), keras=tf_keras, batch_size=1, stateful=True,
                                           recurrent_initializer="glorot_uniform")
            set_keras_weights(self.model, weights)
        self.char2idx = vocab.index
        self.idx2char = np.array(vocab.chars)

    def scope(self):
        return self.tf.device(self.device)

    def run(self, start: str, batch: int, length: int, greedy: bool, seed: int):
        tf, model, idx2char = self.tf, self.model, self.idx2char
        assert batch == 1, "the tutorial's model is built for batch 1"
        input_eval = [self.char2idx[s] for s in start]
        input_eval = tf.expand_dims(input_eval, 0)
        text_generated = []
        temperature = self.temperature
        model.reset_states()
        for _ in range(length):
            predictions = model(input_eval)
            predictions = tf.squeeze(predictions, 0)  # (time, vocab)
            if greedy:  # only for the agreement check; the tutorial always samples
                predicted_id = tf.argmax(predictions[-1]).numpy()
            else:
                predictions = predictions / temperature
                predicted_id = tf.random.categorical(predictions, num_samples=1)[-1, 0].numpy()
            input_eval = tf.expand_dims([predicted_id], 0)
            text_generated.append(idx2char[predicted_id])
            yield
        return ["".join(text_generated)]


class OneStepContestant:
    """The current tutorial's MyModel + OneStep: strings in, strings out, all in one tf.function.

    The tutorial's vocabulary has an [UNK] id 0 that OneStep masks out; this model's has none,
    so the lookups have no out-of-vocabulary id and there is nothing to mask. The tutorial's
    `self.gru.get_initial_state(x)` fails under Keras 3, so the first state is zeros.
    """

    name = "tf-function"
    precision = "fp32"
    max_batch = TF_MAX_BATCH

    def __init__(self, tf, weights, vocab: Vocab, temperature: float, device: str):
        import keras

        from ..cells.keras_model import set_keras_weights

        self.tf, self.device = tf, device
        architecture = weights.architecture()

        class MyModel(keras.Model):
            """The tutorial's MyModel, with each of the architecture's recurrent layers returning its state."""

            def __init__(self):
                super().__init__()
                self.embedding = keras.layers.Embedding(architecture.vocab_size, architecture.embedding_dim)
                self.recurrent = [spec.cell.keras_layer(spec, keras, return_state=True) for spec in architecture.layers]
                self.dense = keras.layers.Dense(architecture.vocab_size)

            def call(self, inputs, states=None, return_state=False, training=False):
                x = self.embedding(inputs, training=training)
                states = states if states is not None else [None] * len(self.recurrent)  # None: Keras' zeros
                new_states = []
                for layer, state in zip(self.recurrent, states):
                    x, *layer_state = layer(x, initial_state=state, training=training)  # an LSTM's is [h, c]
                    new_states.append(layer_state)
                x = self.dense(x, training=training)
                return (x, new_states) if return_state else x

        chars = list(vocab.chars)
        with tf.device(device):
            model = MyModel()
            model(tf.zeros([1, 1], tf.int32))  # build
            set_keras_weights(model, weights)
            ids_from_chars = keras.layers.StringLookup(vocabulary=chars, mask_token=None, num_oov_indices=0)
            chars_from_ids = keras.layers.StringLookup(vocabulary=chars, mask_token=None, num_oov_indices=0,
                                                       invert=True)
        self.model = model

        def one_step(inputs, states, greedy: bool):
            input_chars = tf.strings.unicode_split(inputs, "UTF-8")
            input_ids = ids_from_chars(input_chars).to_tensor()
            predicted_logits, states = model(inputs=input_ids, states=states, return_state=True)
            predicted_logits = predicted_logits[:, -1, :]  # (batch, vocab): only the last prediction
            if greedy:  # only for the agreement check
                predicted_ids = tf.argmax(predicted_logits, axis=-1)
            else:
                predicted_logits = predicted_logits / temperature
                predicted_ids = tf.random.categorical(predicted_logits, num_samples=1)
                predicted_ids = tf.squeeze(predicted_ids, axis=-1)
            return chars_from_ids(predicted_ids), states

        self.generate_one_step = tf.function(lambda inputs, states=None: one_step(inputs, states, False))
        self.generate_one_step_greedy = tf.function(lambda inputs, states=None: one_step(inputs, states, True))

    def scope(self):
        return self.tf.device(self.device)

    def run(self, start: str, batch: int, length: int, greedy: bool, seed: int):
        tf = self.tf
        generate_one_step = self.generate_one_step_greedy if greedy else self.generate_one_step
        states = None
        next_char = tf.constant([start] * batch)
        result = []  # the tutorial also keeps the start string; only the new characters are compared
        for _ in range(length):
            next_char, states = generate_one_step(next_char, states=states)
            result.append(next_char)
            yield
        joined = tf.strings.join(result)
        return [row.decode("utf-8") for row in joined.numpy()]


class EngineContestant:
    """An exported model through the decode engine, as Generator.load builds it: `sampler` host
    (the step model + sampling.choose) or graph (the decode model beside the step model)."""

    max_batch = None  # any

    def __init__(self, name: str, path, runtime: str, sampler: str, threads: int | None, device: str,
                 temperature: float):
        from ..generate import Generator

        self.name = name
        self.precision = "int8" if name in INT8 else "fp32"
        # fp32 on a GPU too: the greedy check compares this text with the CPU contestants'.
        self.generator = Generator.load(str(path), runtime=runtime, threads=threads, device=device, sampler=sampler,
                                        gpu_precision="fp32")
        self.temperature = temperature
        self.table = np.array(self.generator.vocab.chars)

    def scope(self):
        return nullcontext()  # the runtimes place their own work

    def run(self, start: str, batch: int, length: int, greedy: bool, seed: int):
        from ..engine import drive
        from ..sampling import SamplingConfig

        sampling = SamplingConfig.checked(temperature=self.temperature, greedy=greedy)
        engine, rids = self.generator.engine_for([start] * batch, length, sampling, seed, "error")
        ids: dict[int, list[int]] = {rid: [] for rid in rids}
        for made_by, tokens, _ in drive(engine):  # every request runs to its length
            for rid, token in zip(made_by.tolist(), tokens.tolist()):
                ids[rid].append(token)
            made = int(np.count_nonzero(made_by == rids[0]))  # row 0's: several in a block or a GPU graph's call
            if made:
                yield made  # the start strings are read first
        self.generator.give_back(engine.backend)  # the next run reuses it, as Generator's own calls do
        return ["".join(self.table[ids[rid]].tolist()) for rid in rids]


def timed_run(contestant, start: str, batch: int, length: int, greedy: bool, seed: int) -> dict:
    """Run once; the priming (to the first character) apart from the steady per-step times."""
    with contestant.scope():
        t0 = time.perf_counter()
        steps = contestant.run(start, batch, length, greedy, seed)
        step_seconds = []
        texts = None
        try:
            first = next(steps) or 1
            t1 = previous = time.perf_counter()
            while True:
                made = next(steps) or 1
                now = time.perf_counter()
                step_seconds.extend([(now - previous) / made] * made)
                previous = now
        except StopIteration as done:
            texts = done.value
        end = time.perf_counter()
    steady = end - t1
    if not step_seconds:  # every character came in the first call (a short run, one block): time them all
        step_seconds, steady = [(t1 - t0) / first] * first, end - t0
    step_seconds[-1] += end - previous  # the last step also pays the decoding into strings
    assert texts is not None and len(texts) == batch and all(len(t) == length for t in texts), contestant.name
    return {"priming": t1 - t0, "steady": steady, "steps": step_seconds, "texts": texts}


def available_devices(tf, requested: str) -> tuple[list[str], dict[str, str]]:
    """Devices to run on, and a note for each device left out."""
    import onnxruntime as ort

    tf_gpu = bool(tf.config.list_physical_devices("GPU")) if tf is not None else False
    ort_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    notes = {}
    devices = ["cpu"] if requested in ("auto", "cpu") else []
    if requested in ("auto", "cuda"):
        if tf_gpu or ort_cuda:
            devices.append("cuda")
        else:
            notes["cuda"] = NO_GPU
    if requested == "cuda" and "cuda" not in devices:
        raise ConfigError(f"--device cuda: {NO_GPU}")
    return devices, {**notes, "_tf_gpu": str(tf_gpu), "_ort_cuda": str(ort_cuda)}


def skip_reason(name: str, export_dir, device: str, tf_gpu: bool, ort_cuda: bool) -> str | None:
    """Why `name` cannot run on `device`, or None."""
    if name.startswith("decode-") and not (export_dir / EXPORT_FILES[name]).is_file():
        return f"{name} skipped: the export has no {EXPORT_FILES[name]} (exported before decode models)"
    if device != "cuda":
        return None
    if name in INT8:
        return INT8_CUDA_NOTE.format(name=name)
    if name in NEEDS_TENSORFLOW and not tf_gpu:
        return f"{name} skipped on CUDA: TensorFlow sees no GPU"
    if name not in NEEDS_TENSORFLOW and not ort_cuda:
        return f"{name} skipped on CUDA: onnxruntime has no CUDA provider"
    return None


def build_contestants(config: BenchConfig, sources, tf, device: str, tf_gpu: bool,
                      ort_cuda: bool) -> tuple[list, list[str]]:
    """The contestants that can run on `device`, in CONTESTANTS order, and notes on the others."""
    notes: list[str] = []
    built = []
    tf_device = "/GPU:0" if device == "cuda" else "/CPU:0"
    for name in config.contestants:
        reason = skip_reason(name, sources.export_dir, device, tf_gpu, ort_cuda)
        if reason:
            notes.append(reason)
        elif name == "tutorial":
            built.append(TutorialContestant(tf, sources.weights, sources.vocab, config.temperature, tf_device))
        elif name == "tf-function":
            built.append(OneStepContestant(tf, sources.weights, sources.vocab, config.temperature, tf_device))
        else:
            built.append(exported_contestant(name, sources.export_dir, config, device))
    return built, notes


def exported_contestant(name: str, export_dir, config: BenchConfig, device: str) -> EngineContestant:
    if name == "savedmodel":
        path, runtime, sampler = export_dir / "saved_model", "savedmodel", "host"
    else:  # onnx-*: the step model; decode-*: the same, the decode model beside it does the sampling
        step_file = "model.int8.onnx" if name in INT8 else "model.onnx"
        path, runtime, sampler = export_dir / step_file, "onnx", "graph" if name.startswith("decode-") else "host"
    contestant = EngineContestant(name, path, runtime, sampler, config.threads, device, config.temperature)
    if name == "savedmodel":
        contestant.max_batch = TF_MAX_BATCH
    return contestant
