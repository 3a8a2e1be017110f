"""Generation benchmark: the tutorial's own loops against the exported step, on the same weights.

    charrnn-export bench --checkpoint RUN_DIR            (also: python -m benchmarks.generation)
    run_generation_bench(BenchConfig(...)) -> results dict; write_results(results, out_dir) -> paths

Contestants, each generating the same number of characters from the same start string:
    tutorial     the seed tutorial's generate_text: a stateful tf_keras Sequential (batch 1) called
                 eagerly on one character at a time, tf.random.categorical (batch 1 only)
    tf-function  the current tutorial's OneStep: a Keras 3 model whose GRU returns its state, called
                 inside a tf.function that also looks characters up and samples (strings in and out)
    savedmodel   the exported SavedModel's step signature + this project's numpy sampler
    onnx-fp32    model.onnx through onnxruntime + the sampler
    onnx-int8    model.int8.onnx through onnxruntime + the sampler

Before anything is timed, every contestant generates greedily at batch 1 and the texts are
compared: fp32 contestants that disagree stop the run (ParityError naming them); int8 reports its
agreement. Each contestant is warmed up at each batch size; then the measured runs alternate
between contestants (so a busy machine slows all alike), the priming (the start string and the
first character) timed apart from the steady steps. The floors are this machine's own ceilings
for one step: the step's two matrix products alone, fp32 and int8, measured at every batch size.

Out: generation-<stamp>.json / .md / .png in the output folder, copied to generation-latest.*.
TensorFlow and matplotlib are imported inside the functions that use them.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .checks import check_threads
from .data import Vocab
from .files import atomic_write_bytes, atomic_write_text
from .errors import CharRNNError, ConfigError, ModelError, ParityError

CONTESTANTS = ("tutorial", "tf-function", "savedmodel", "onnx-fp32", "onnx-int8")
TF_CONTESTANTS = ("tutorial", "tf-function")  # they need the Keras weights, not the export
INT8 = ("onnx-int8",)
DEFAULT_BATCH_SIZES = (1, 8, 64, 256)
START = "ROMEO: "  # the tutorial's start string
NO_GPU = "no GPU: TensorFlow sees none, onnxruntime has no CUDA provider"
INT8_CUDA_NOTE = "onnx-int8 skipped on CUDA: onnxruntime's int8 (DynamicQuantize) kernels crash there"
FULL_SIZE = {"embedding_dim": 256, "rnn_units": 1024}  # the tutorial's model; the targets are for it

REPO = Path(__file__).resolve().parent.parent
QUICK_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # tiny-shakespeare's 65


def default_out_dir() -> Path:
    """benchmarks/results/ in a source checkout; ./benchmark-results for an installed package."""
    if (REPO / "benchmarks").is_dir():
        return REPO / "benchmarks" / "results"
    return Path.cwd() / "benchmark-results"


@dataclass
class BenchConfig:
    checkpoint: str | None = None  # the Keras weights (run dir, tutorial checkpoint, .weights.h5)
    model: str | None = None  # an export directory; exported from `checkpoint` when not given
    text: str | None = None  # rebuilds a tutorial checkpoint's vocabulary
    vocab: str | None = None
    chars: int = 500  # steps of a measured run at batch 1
    min_steps: int = 50  # steps of a measured run at any batch size (at least)
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    contestants: tuple[str, ...] = CONTESTANTS
    threads: int | None = None
    repeats: int = 3
    warmup: int = 20  # steps of the untimed run per contestant and batch size
    greedy_chars: int = 200
    temperature: float = 1.0
    start: str = START
    seed: int = 0
    device: str = "auto"  # auto: cpu, and cuda where TensorFlow or onnxruntime has it
    quick: bool = False
    out: str | None = None
    command: str = ""

    @classmethod
    def quick_defaults(cls, **overrides) -> "BenchConfig":
        """A tiny model (made here unless a checkpoint is given) and short runs: seconds, not minutes."""
        base = dict(chars=60, min_steps=20, batch_sizes=(1, 8), repeats=2, warmup=3, greedy_chars=60, quick=True)
        return cls(**{**base, **overrides})

    def steps(self, batch: int) -> int:
        """Steps of one measured run at `batch`: the same for every contestant in the row."""
        return max(self.chars // batch, min(self.min_steps, self.chars), 2)

    def validate(self) -> "BenchConfig":
        unknown = [c for c in self.contestants if c not in CONTESTANTS]
        if unknown or not self.contestants:
            raise ConfigError(f"--contestants: unknown {', '.join(unknown) or '(none given)'}; "
                              f"choose from {', '.join(CONTESTANTS)}")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ConfigError(f"--batch-sizes must be positive integers, got {list(self.batch_sizes)}")
        for name in ("chars", "repeats", "greedy_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.chars < 2:
            raise ConfigError(f"--chars must be >= 2 (one priming and at least one steady step), got {self.chars}")
        if self.warmup < 1:
            raise ConfigError(f"--warmup must be >= 1, got {self.warmup}")
        check_threads(self.threads, "--threads")  # 1 .. the CPUs this process may use
        if not self.temperature > 0 or math.isinf(self.temperature):
            raise ConfigError(f"--temperature must be a positive number, got {self.temperature}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device must be auto, cpu or cuda, got {self.device}")
        if not self.start:
            raise ConfigError("--start must not be empty")
        needs_keras = any(c in TF_CONTESTANTS for c in self.contestants)
        makes_tiny_model = self.quick and self.model is None  # --quick alone: a tiny random model
        if self.checkpoint is None and not makes_tiny_model and (needs_keras or self.model is None):
            raise ConfigError(
                "pass --checkpoint (the run directory or checkpoint the model comes from): the tutorial and "
                "tf-function contestants need the Keras weights, which an export's folded step does not hold "
                "(or --model EXPORT_DIR with --contestants savedmodel onnx-fp32 onnx-int8; or --quick)")
        return self


# ---------------------------------------------------------------- the machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The checkout's commit (+ '-dirty' with local changes), or None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict:
    """What a reader needs to judge the numbers: CPU, cores, load, library versions."""
    packages = ("numpy", "onnxruntime", "onnxruntime-gpu", "onnx", "tensorflow", "keras", "tf-keras", "tf2onnx")
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        memory_gib = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "memory_gib": memory_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {p: v for p in packages if (v := package_version(p)) is not None},
        "git_commit": git_commit(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def command_line() -> str:
    """The command as typed: `python -m benchmarks.generation ...` or `charrnn-export bench ...`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = [f"python -m {spec.name}"] if spec is not None and spec.name != "__main__" else [
        Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"]
    return " ".join(program + [shlex.quote(a) for a in sys.argv[1:]])


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- contestants
#
# A contestant's run(start, batch, length, greedy, seed) is a Python generator that yields once
# per generated character (after that character exists) and returns the texts, one per row. The
# time to its first yield is the priming (the start string and the first character); the rest is
# steady generation, including the final decoding into strings. The TensorFlow contestants draw
# from TensorFlow's global seed, set once per process (`seed` is for the numpy sampler).


class TutorialContestant:
    """The seed tutorial's generate_text, as written there, on a batch-1 stateful tf_keras model."""

    name = "tutorial"
    precision = "fp32"
    batch_sizes = (1,)

    def __init__(self, tf, weights, vocab: Vocab, temperature: float, device: str):
        import tf_keras

        self.tf, self.device, self.temperature = tf, device, temperature
        with tf.device(device):
            self.model = tf_keras.Sequential([
                tf_keras.layers.Embedding(weights.vocab_size, weights.embedding_dim, batch_input_shape=[1, None]),
                tf_keras.layers.GRU(weights.rnn_units, return_sequences=True, stateful=True,
                                    recurrent_initializer="glorot_uniform"),
                tf_keras.layers.Dense(weights.vocab_size),
            ])
            self.model.set_weights(weights.arrays())  # Embedding, GRU (kernel, recurrent, bias), Dense
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
    batch_sizes = None  # any

    def __init__(self, tf, weights, vocab: Vocab, temperature: float, device: str):
        import keras

        self.tf, self.device = tf, device
        units = weights.rnn_units

        class MyModel(keras.Model):
            def __init__(self, vocab_size, embedding_dim, rnn_units):
                super().__init__()
                self.embedding = keras.layers.Embedding(vocab_size, embedding_dim)
                self.gru = keras.layers.GRU(rnn_units, return_sequences=True, return_state=True)
                self.dense = keras.layers.Dense(vocab_size)

            def call(self, inputs, states=None, return_state=False, training=False):
                x = self.embedding(inputs, training=training)
                if states is None:
                    states = tf.zeros([tf.shape(inputs)[0], units])
                x, states = self.gru(x, initial_state=states, training=training)
                x = self.dense(x, training=training)
                return (x, states) if return_state else x

        chars = list(vocab.chars)
        with tf.device(device):
            model = MyModel(weights.vocab_size, weights.embedding_dim, units)
            model(tf.zeros([1, 1], tf.int32))  # build
            model.embedding.set_weights([weights.embedding])
            model.gru.set_weights([weights.kernel, weights.recurrent_kernel, weights.bias])
            model.dense.set_weights([weights.dense_kernel, weights.dense_bias])
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


class GeneratorContestant:
    """An exported runtime's step + this project's sampler (charrnn_export.generate.Generator)."""

    batch_sizes = None

    def __init__(self, name: str, runtime, temperature: float):
        from .generate import Generator

        self.name = name
        self.precision = "int8" if name in INT8 else "fp32"
        self.generator = Generator(runtime)
        self.temperature = temperature
        self.table = np.array(runtime.vocab.chars)

    def scope(self):
        return nullcontext()  # the runtimes place their own work

    def run(self, start: str, batch: int, length: int, greedy: bool, seed: int):
        from .sampling import SamplingConfig

        sampling = SamplingConfig(temperature=self.temperature, greedy=greedy)
        engine, rids = self.generator.engine_for([start] * batch, length, sampling, seed, "error")
        ids: dict[int, list[int]] = {rid: [] for rid in rids}
        while engine.has_work():
            made = False
            for rid, token, reason in engine.step():
                if reason is None:
                    ids[rid].append(token)
                    made = True
            if made:
                yield  # one engine step that made a character per row (the start strings are read first)
        return ["".join(self.table[ids[rid]].tolist()) for rid in rids]


def timed_run(contestant, start: str, batch: int, length: int, greedy: bool, seed: int) -> dict:
    """Run once; the priming (to the first character) apart from the steady per-step times."""
    with contestant.scope():
        t0 = time.perf_counter()
        steps = contestant.run(start, batch, length, greedy, seed)
        step_seconds = []
        texts = None
        try:
            next(steps)
            t1 = previous = time.perf_counter()
            while True:
                next(steps)
                now = time.perf_counter()
                step_seconds.append(now - previous)
                previous = now
        except StopIteration as done:
            texts = done.value
        end = time.perf_counter()
    if step_seconds:
        step_seconds[-1] += end - previous  # the last step also pays the decoding into strings
    assert texts is not None and len(texts) == batch and all(len(t) == length for t in texts), contestant.name
    return {"priming": t1 - t0, "steady": end - t1, "steps": step_seconds, "texts": texts}


# ---------------------------------------------------------------- the models


@dataclass
class Sources:
    weights: object | None  # GRUWeights for the TF contestants
    vocab: Vocab
    export_dir: Path
    description: dict = field(default_factory=dict)


def tiny_random_checkpoint(folder: Path, seed: int) -> Path:
    """A tiny untrained model as a checkpoint .npz with its vocab.json: --quick without --checkpoint."""
    from .model import GRUWeights, save_checkpoint

    vocab = Vocab.from_text(QUICK_CHARS)
    rng = np.random.default_rng(seed)
    vocab_size, embedding_dim, units = len(vocab), 16, 64

    def normal(fan_in: int, *shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / math.sqrt(fan_in)).astype(np.float32)

    weights = GRUWeights(normal(1, vocab_size, embedding_dim), normal(embedding_dim, embedding_dim, 3 * units),
                         normal(units, units, 3 * units), normal(10, 2, 3 * units),
                         normal(units, units, vocab_size) * 3, normal(10, vocab_size))
    path = folder / "best.npz"
    save_checkpoint(path, weights.check("tiny model"), {"note": "bench --quick: random weights"})
    vocab.save(folder / "vocab.json")
    return path


def prepare_sources(config: BenchConfig, scratch: Path) -> Sources:
    """The Keras weights and an export of the same weights (made here unless --model is given)."""
    from .model import load_any_checkpoint

    checkpoint = config.checkpoint
    if checkpoint is None and config.quick and config.model is None:
        checkpoint = str(tiny_random_checkpoint(scratch, config.seed))
        log("bench --quick: a tiny random model (16-dim embedding, 64 units)")
    loaded = load_any_checkpoint(checkpoint) if checkpoint is not None else None
    vocab_path = config.vocab
    if loaded is not None and loaded.vocab is None and vocab_path is None and config.text is not None:
        from .data import load_text

        vocab_path = str(scratch / "vocab.json")  # a vocabulary alone: export need not read the text
        Vocab.from_text(load_text(config.text)[0]).save(vocab_path)

    if config.model is not None:
        export_dir = Path(config.model)
    else:
        from .export import export

        export_dir = scratch / "export"
        log(f"exporting {loaded.source} (fp32 and int8) to a temporary folder ...")
        started = time.perf_counter()
        export(checkpoint, str(export_dir), vocab_path=vocab_path, quantize="int8", seed=config.seed)
        log(f"exported in {time.perf_counter() - started:.0f} s")
    wanted = {"savedmodel": "saved_model/saved_model.pb", "onnx-fp32": "model.onnx", "onnx-int8": "model.int8.onnx"}
    missing = [f for c, f in wanted.items() if c in config.contestants and not (export_dir / f).is_file()]
    if missing:
        raise ModelError(f"--model {export_dir} lacks {', '.join(missing)}; export it with "
                         "`charrnn-export to-onnx --quantize int8`, or leave those contestants out")

    from .runtimes.onnx import OnnxRuntime

    probe = OnnxRuntime(export_dir / "model.onnx") if (export_dir / "model.onnx").is_file() else None
    vocab = probe.vocab if probe is not None else Vocab.load(export_dir / "vocab.json")
    export_config = dict(probe.config) if probe is not None else {}
    if loaded is not None:
        if export_config and any(export_config.get(k) != v for k, v in loaded.weights.config().items()):
            raise ModelError(f"--model {export_dir} ({export_config}) is not the model of --checkpoint "
                             f"{loaded.source} ({loaded.weights.config()}); export that checkpoint, or drop --model")
        if len(vocab) != loaded.weights.vocab_size:
            raise ModelError(f"--model {export_dir} has {len(vocab)} characters, the checkpoint "
                             f"{loaded.weights.vocab_size}")
    model_config = loaded.weights.config() if loaded is not None else {
        k: export_config.get(k) for k in ("vocab_size", "embedding_dim", "rnn_units")}
    description = {
        "checkpoint": loaded.source if loaded is not None else None,
        "checkpoint_kind": loaded.kind if loaded is not None else None,
        "export_dir": str(config.model) if config.model is not None else "(exported to a temporary folder)",
        "config": model_config,
        "full_size": all(model_config.get(k) == v for k, v in FULL_SIZE.items()),
        "random_weights": checkpoint is not None and config.checkpoint is None,
    }
    return Sources(loaded.weights if loaded is not None else None, vocab, export_dir, description)


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


def build_contestants(config: BenchConfig, sources: Sources, tf, device: str, tf_gpu: bool,
                      ort_cuda: bool) -> tuple[list, list[str]]:
    """The contestants that can run on `device`, in CONTESTANTS order, and notes on the others."""
    from .runtimes import load_runtime

    notes: list[str] = []
    built = []
    tf_device = "/GPU:0" if device == "cuda" else "/CPU:0"
    for name in config.contestants:
        if device == "cuda":
            if name in INT8:
                notes.append(INT8_CUDA_NOTE)
                continue
            if name in ("tutorial", "tf-function", "savedmodel") and not tf_gpu:
                notes.append(f"{name} skipped on CUDA: TensorFlow sees no GPU")
                continue
            if name == "onnx-fp32" and not ort_cuda:
                notes.append("onnx-fp32 skipped on CUDA: onnxruntime has no CUDA provider")
                continue
        if name == "tutorial":
            built.append(TutorialContestant(tf, sources.weights, sources.vocab, config.temperature, tf_device))
        elif name == "tf-function":
            built.append(OneStepContestant(tf, sources.weights, sources.vocab, config.temperature, tf_device))
        else:
            runtime_kind, path = {
                "savedmodel": ("savedmodel", sources.export_dir / "saved_model"),
                "onnx-fp32": ("onnx", sources.export_dir / "model.onnx"),
                "onnx-int8": ("onnx", sources.export_dir / "model.int8.onnx"),
            }[name]
            runtime = load_runtime(path, runtime_kind, threads=config.threads, device=device)
            built.append(GeneratorContestant(name, runtime, config.temperature))
    return built, notes


# ---------------------------------------------------------------- the greedy agreement check


def first_difference(a: str, b: str) -> int | None:
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def compare_greedy(texts: dict[str, str], precision: dict[str, str]) -> dict:
    """Compare every contestant's greedy text with the first fp32 one's; raise ParityError when
    fp32 contestants disagree (int8 may: its agreement is reported instead)."""
    fp32 = [n for n in texts if precision[n] == "fp32"]
    reference = fp32[0] if fp32 else next(iter(texts))
    ref = texts[reference]
    results, failures = {}, []
    for name, text in texts.items():
        at = first_difference(text, ref)
        same = sum(x == y for x, y in zip(text, ref))
        results[name] = {"identical": at is None, "first_difference": at,
                         "agreement": same / max(len(ref), 1), "text": text}
        if at is not None and precision[name] == "fp32":
            failures.append(f"{name} differs from {reference} at character {at} "
                            f"({text[at:at + 20]!r} vs {ref[at:at + 20]!r})")
    if failures:
        raise ParityError("refusing to compare contestants whose greedy outputs disagree (same weights should give "
                          "the same text): " + "; ".join(failures))
    return {"reference": reference, "results": results}


def teacher_forced_agreement(fp32_runtime, int8_runtime, ids: np.ndarray) -> float:
    """How often int8's top-1 next character equals fp32's, both reading the same text."""
    states = [fp32_runtime.zero_state(1), int8_runtime.zero_state(1)]
    agree = 0
    for token in ids:
        tokens = np.array([token], dtype=np.int32)
        (l32, states[0]), (l8, states[1]) = fp32_runtime.step(tokens, states[0]), int8_runtime.step(tokens, states[1])
        agree += int(np.argmax(l32) == np.argmax(l8))
    return agree / max(len(ids), 1)


def greedy_check(config: BenchConfig, contestants: list, vocab: Vocab) -> dict:
    texts, precision = {}, {}
    for c in contestants:
        texts[c.name] = timed_run(c, config.start, 1, config.greedy_chars, True, config.seed)["texts"][0]
        precision[c.name] = c.precision
    check = compare_greedy(texts, precision)
    check["chars"] = config.greedy_chars
    by_name = {c.name: c for c in contestants}
    if "onnx-int8" in by_name and "onnx-fp32" in by_name:
        ids = vocab.encode(config.start + texts["onnx-fp32"])
        check["int8_teacher_forced_top1"] = teacher_forced_agreement(
            by_name["onnx-fp32"].generator.runtime, by_name["onnx-int8"].generator.runtime, ids)
    return check


# ---------------------------------------------------------------- floors


def matmul_graph(units: int, widths: tuple[int, ...], seed: int):
    """An ONNX graph of the step's matrix products alone: state (batch, units) times each weight."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes, outputs = [], [], []
    for i, width in enumerate(widths):
        w = (rng.standard_normal((units, width)) / math.sqrt(units)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", ["state", f"w{i}"], [f"y{i}"]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["batch", width]))
    graph = helper.make_graph(nodes, "step_matmuls",
                              [helper.make_tensor_value_info("state", TensorProto.FLOAT, ["batch", units])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def time_call(fn, budget_s: float, min_calls: int = 10) -> float:
    """Seconds per call of fn() (total time / calls, as the contestants' ms/step), after a
    warm-up, over about budget_s seconds."""
    for _ in range(3):
        fn()
    calls = 0
    t0 = time.perf_counter()
    deadline = t0 + budget_s
    while calls < min_calls or time.perf_counter() < deadline:
        fn()
        calls += 1
        if calls >= 20_000:
            break
    return (time.perf_counter() - t0) / calls


def measure_floors(units: int, vocab_size: int, batch_sizes, threads: int | None, device: str, tf,
                   ort_cuda: bool, scratch: Path, budget_s: float) -> dict:
    """Per batch size: the seconds of the step's two products alone, fp32 and int8, and the rates
    they imply (GB/s of weights: the memory floor at batch 1; GFLOP/s: the compute floor at large
    batches). fp32 is timed through onnxruntime, TensorFlow and numpy, and the fastest is the floor:
    the best this machine does, whichever library; int8 through onnxruntime's dynamic int8 MatMul,
    the kernel model.int8.onnx uses."""
    import onnx
    import onnxruntime as ort

    from .runtimes.onnx import session_options

    widths = (3 * units, vocab_size)  # the recurrent kernel (z, r, h gates) and the output layer
    fp32_path, int8_path = scratch / "floor.fp32.onnx", scratch / "floor.int8.onnx"
    onnx.save(matmul_graph(units, widths, seed=1), str(fp32_path))
    methods: dict[str, dict[str, object]] = {"fp32": {}, "int8": {}}  # precision -> method -> fn(state)
    if device == "cpu":
        from .export import quantize_int8

        quantize_int8(fp32_path, int8_path)  # the same dynamic int8 MatMuls as model.int8.onnx
        for precision, path in (("fp32", fp32_path), ("int8", int8_path)):
            session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
            methods[precision]["onnxruntime"] = lambda x, session=session: session.run(None, {"state": x})
    elif ort_cuda:
        session = ort.InferenceSession(str(fp32_path), session_options(threads),
                                       providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        methods["fp32"]["onnxruntime"] = lambda x: session.run(None, {"state": x})
    rng = np.random.default_rng(0)
    weights = [(rng.standard_normal((units, w)) / math.sqrt(units)).astype(np.float32) for w in widths]
    if tf is not None and (device == "cpu" or tf.config.list_physical_devices("GPU")):
        tf_device = "/GPU:0" if device == "cuda" else "/CPU:0"
        with tf.device(tf_device):
            tf_weights = [tf.constant(w) for w in weights]

        @tf.function
        def tf_products(x):
            return [tf.matmul(x, w) for w in tf_weights]

        def run_tf(x):
            with tf.device(tf_device):
                return [y.numpy() for y in tf_products(tf.constant(x))]  # numpy out, as a runtime's step

        methods["fp32"]["tensorflow"] = run_tf
    if device == "cpu":
        methods["fp32"]["numpy"] = lambda x: [x @ w for w in weights]

    floors = {"widths": list(widths), "weights": units * sum(widths), "by_batch": {}}
    for batch in batch_sizes:
        state = rng.standard_normal((batch, units)).astype(np.float32)
        row = {}
        for precision, fns in methods.items():
            if not fns:
                continue
            by_method = {name: time_call(lambda fn=fn: fn(state), budget_s) for name, fn in fns.items()}
            best = min(by_method, key=by_method.get)
            row[precision] = floor_figures(by_method[best], batch, units, widths, 4 if precision == "fp32" else 1)
            row[precision]["via"] = best
            row[precision]["ms_by_method"] = {name: seconds * 1e3 for name, seconds in by_method.items()}
        floors["by_batch"][str(batch)] = row
    return floors


def floor_figures(seconds: float, batch: int, units: int, widths, bytes_per_weight: int) -> dict:
    weights = units * sum(widths)
    return {
        "ms": seconds * 1e3,
        "weights_gb_per_s": weights * bytes_per_weight / seconds / 1e9,
        "gflop_per_s": 2.0 * batch * weights / seconds / 1e9,
        "chars_per_s": batch / seconds,
    }


# ---------------------------------------------------------------- the run


def summarise(name: str, precision: str, batch: int, steps: int, runs: list[dict]) -> dict:
    per_step = np.array([s for r in runs for s in r["steps"]]) * 1e3  # ms
    steady = sum(r["steady"] for r in runs)
    steady_steps = sum(len(r["steps"]) for r in runs)
    mean_ms = steady / steady_steps * 1e3
    return {
        "contestant": name,
        "precision": precision,
        "batch": batch,
        "steps": steps,
        "chars_per_run": steps * batch,
        "runs": len(runs),
        "ms_per_step": mean_ms,  # total steady time / steps: what chars/s is computed from
        "ms_median": float(np.median(per_step)),
        "ms_p10": float(np.percentile(per_step, 10)),
        "ms_p90": float(np.percentile(per_step, 90)),
        "chars_per_s": batch * 1e3 / mean_ms,
        "priming_ms_median": float(np.median([r["priming"] for r in runs])) * 1e3,
    }


def run_device(config: BenchConfig, sources: Sources, tf, device: str, tf_gpu: bool, ort_cuda: bool,
               scratch: Path) -> dict:
    log(f"[{device}] building contestants ...")
    contestants, notes = build_contestants(config, sources, tf, device, tf_gpu, ort_cuda)
    if not contestants:
        return {"available": False, "note": "; ".join(notes) or "no contestant can run here", "rows": []}

    log(f"[{device}] greedy agreement check: {config.greedy_chars} characters at batch 1 ...")
    check = greedy_check(config, contestants, sources.vocab)
    for name, r in check["results"].items():
        if not r["identical"]:
            log(f"[{device}]   {name}: first difference at {r['first_difference']}, "
                f"agreement {r['agreement']:.1%}")

    log(f"[{device}] floors ...")
    units, vocab_size = sources.description["config"]["rnn_units"], len(sources.vocab)
    floors = measure_floors(units, vocab_size, config.batch_sizes, config.threads, device, tf, ort_cuda, scratch,
                            budget_s=0.15 if config.quick else 0.5)

    plan = [(c, b) for b in config.batch_sizes for c in contestants if c.batch_sizes is None or b in c.batch_sizes]
    log(f"[{device}] warm-up ...")
    for c, b in plan:
        timed_run(c, config.start, b, config.warmup, False, config.seed)
    samples: dict[tuple[str, int], list] = {(c.name, b): [] for c, b in plan}
    for repeat in range(config.repeats):
        log(f"[{device}] repeat {repeat + 1}/{config.repeats} ...")
        rotated = plan[repeat % len(plan):] + plan[:repeat % len(plan)]  # no contestant always goes first
        for c, b in rotated:
            run = timed_run(c, config.start, b, config.steps(b), False, config.seed + repeat)
            run.pop("texts")
            samples[(c.name, b)].append(run)

    rows = [summarise(c.name, c.precision, b, config.steps(b), samples[(c.name, b)]) for c, b in plan]
    reference = next((r for r in rows if r["contestant"] == "tutorial"), None)
    for row in rows:
        row["speedup"] = row["chars_per_s"] / reference["chars_per_s"] if reference else None
        floor = floors["by_batch"][str(row["batch"])].get(row["precision"])
        row["floor_ms"] = floor["ms"] if floor else None
        row["floor_ratio"] = row["ms_per_step"] / floor["ms"] if floor else None
    for r in check["results"].values():
        r.pop("text")
    return {"available": True, "rows": rows, "floors": floors, "greedy_check": check, "notes": notes}


def run_generation_bench(config: BenchConfig) -> dict:
    """Measure every contestant on every device; returns the results (written by write_results)."""
    config.validate()
    started = time.perf_counter()
    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-") as scratch_name:
        scratch = Path(scratch_name)
        from .tfsetup import import_tensorflow

        tf = import_tensorflow()
        # Seeded once: re-seeding before each run would make every tf.function with a random op
        # trace again (the seed is part of its cache key), which would be timed as steps.
        tf.random.set_seed(config.seed)
        if config.threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(config.threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:
                log("bench: TensorFlow was already initialised; its thread setting stands")
        sources = prepare_sources(config, scratch)
        devices, device_notes = available_devices(tf, config.device)
        tf_gpu, ort_cuda = device_notes.pop("_tf_gpu") == "True", device_notes.pop("_ort_cuda") == "True"
        if tf_gpu:
            tf.config.experimental.enable_tensor_float_32_execution(False)  # fp32 must agree exactly
        results_by_device = {d: {"available": False, "note": note, "rows": []} for d, note in device_notes.items()}
        for device in devices:
            results_by_device[device] = run_device(config, sources, tf, device, tf_gpu, ort_cuda, scratch)
    settings = {k: v for k, v in asdict(config).items() if k not in ("out", "command")}
    settings["steps_by_batch"] = {str(b): config.steps(b) for b in config.batch_sizes}
    settings["tf_intra_op_threads"] = tf.config.threading.get_intra_op_parallelism_threads()
    results = {
        "benchmark": "generation",
        "schema": 1,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": config.command or command_line(),
        "quick": config.quick,
        "machine": machine,
        "model": sources.description,
        "settings": settings,
        "devices": results_by_device,
    }
    results["targets"] = evaluate_targets(results)
    results["machine"]["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


# ---------------------------------------------------------------- targets


def find_row(rows: list[dict], contestant: str, batch: int) -> dict | None:
    return next((r for r in rows if r["contestant"] == contestant and r["batch"] == batch), None)


def evaluate_targets(results: dict) -> list[dict]:
    """Issue #5's targets, for the full-size model on the CPU; measured, never asserted."""
    rows = results["devices"].get("cpu", {}).get("rows", [])
    fp32_1, int8_1, int8_256 = (find_row(rows, "onnx-fp32", 1), find_row(rows, "onnx-int8", 1),
                                find_row(rows, "onnx-int8", 256))
    tutorial = find_row(rows, "tutorial", 1)

    def best_speedup(row):
        """The speed-up a step running exactly at its floor would reach: what the machine allows."""
        if tutorial is None or row is None or not row.get("floor_ms"):
            return None
        return tutorial["ms_per_step"] / row["floor_ms"]

    targets = [
        ("onnx-fp32 batch 1 speed-up over the tutorial", ">= 60x", fp32_1 and fp32_1["speedup"], 60.0, "x",
         best_speedup(fp32_1)),
        ("onnx-fp32 batch 1 distance from the fp32 floor", "<= 1.3x floor", fp32_1 and fp32_1["floor_ratio"],
         1.3, "floor", 1.0 if fp32_1 else None),
        ("onnx-int8 batch 1 speed-up over the tutorial", ">= 120x", int8_1 and int8_1["speedup"], 120.0, "x",
         best_speedup(int8_1)),
        ("onnx-int8 batch 256 characters per second", ">= 80,000 chars/s", int8_256 and int8_256["chars_per_s"],
         80_000.0, "chars/s", int8_256 and int8_256.get("floor_ms") and 256e3 / int8_256["floor_ms"]),
    ]
    applies = bool(results["model"].get("full_size")) and not results["model"].get("random_weights")
    out = []
    for name, target, value, bound, unit, at_floor in targets:
        if value is None:
            met = None
        elif unit == "floor":
            met = value <= bound
        else:
            met = value >= bound
        out.append({"name": name, "target": target, "value": value, "unit": unit, "met": met, "applies": applies,
                    "at_floor": at_floor})
    return out


# ---------------------------------------------------------------- writing results


def fmt(value, spec: str = ",.0f", missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "n/a"
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def render_markdown(results: dict, level: int = 1) -> str:
    """The results as markdown: settings, one table per device, floors, agreement, targets."""
    h = "#" * level
    m, model, s = results["machine"], results["model"], results["settings"]
    cfg = model["config"]
    lines = [
        f"{h} Generation benchmark{' (quick)' if results.get('quick') else ''}",
        "",
        f"- date: {results['date']}; command: `{results['command']}`",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m.get('cores_usable')} usable), "
        f"load average {fmt_load(m.get('load_average'))} before, {fmt_load(m.get('load_average_after'))} after",
        f"- libraries: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- model: embedding {cfg.get('embedding_dim')}, GRU {cfg.get('rnn_units')} units, vocabulary "
        f"{cfg.get('vocab_size')}; weights from {model.get('checkpoint') or model.get('export_dir')}"
        + (" (random, untrained)" if model.get("random_weights") else ""),
        f"- every contestant in a row generates the same characters: {fmt_steps(s['steps_by_batch'])} steps per "
        f"run at batch sizes {', '.join(s['steps_by_batch'])}; {s['repeats']} measured runs each after a "
        f"{s['warmup']}-step warm-up; temperature {s['temperature']}, start {s['start']!r}; threads "
        f"{s['threads'] or 'default'}",
        "- ms/step is the steady time (after the first character) over the steps; chars/s = batch / that; "
        "p10-p90 are of the single steps; priming is the time to the first character (start string included); "
        "x tutorial is chars/s over the tutorial's at batch 1 on the same device; x floor is ms/step over the "
        "time of the step's two matrix products alone (fp32, or int8 for onnx-int8) at that batch size",
        "",
    ]
    for device in ("cpu", "cuda"):
        d = results["devices"].get(device)
        if d is None:
            continue
        lines += [f"{h}# {'CPU' if device == 'cpu' else 'GPU (CUDA)'}", ""]
        if not d.get("available"):
            lines += [d.get("note", NO_GPU), ""]
            continue
        lines += [
            "| contestant | batch | steps | ms/step | median (p10-p90) | chars/s | x tutorial | x floor | priming ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in d["rows"]:
            lines.append(
                f"| {r['contestant']} | {r['batch']} | {r['steps']} | {fmt_ms(r['ms_per_step'])} | "
                f"{fmt_ms(r['ms_median'])} ({fmt_ms(r['ms_p10'])}-{fmt_ms(r['ms_p90'])}) | {fmt(r['chars_per_s'])} | "
                f"{fmt(r['speedup'], '.1f')}x | {fmt(r['floor_ratio'], '.2f')}x | {fmt_ms(r['priming_ms_median'])} |")
        lines += [""]
        lines += render_floors(d["floors"], h)
        lines += render_check(d["greedy_check"])
        for note in d.get("notes", []):
            lines.append(f"- note: {note}")
        lines.append("")
    lines += [f"{h}# Targets", ""]
    targets = results.get("targets", [])
    if targets and not targets[0]["applies"]:
        lines += ["The targets are for the full-size model (embedding 256, 1024 units, trained); this run's model "
                  "is not it, so they are shown for reference only.", ""]
    for t in targets:
        verdict = "not measured" if t["met"] is None else "met" if t["met"] else "NOT met"
        if not t["applies"] and t["met"] is not None:
            verdict = f"n/a ({verdict} here)"
        value = fmt(t["value"], ",.0f" if t["unit"] == "chars/s" else ".2f")
        unit = "x" if t["unit"] in ("x", "floor") else f" {t['unit']}"
        ceiling = ""
        if t.get("at_floor") and t["unit"] != "floor":
            ceiling = (f" (a step at the floor would give {fmt(t['at_floor'], ',.0f' if t['unit'] == 'chars/s' else '.1f')}"
                       f"{unit} here)")
        lines.append(f"- {t['name']} {t['target']}: {value}{unit} -> **{verdict}**{ceiling}")
    lines.append("")
    return "\n".join(lines)


def fmt_load(load) -> str:
    return "n/a" if not load else "/".join(f"{x:.2f}" for x in load)


def fmt_steps(steps_by_batch: dict) -> str:
    return "/".join(str(v) for v in steps_by_batch.values())


def render_floors(floors: dict, h: str) -> list[str]:
    lines = ["Floors: the step's two matrix products alone (state x recurrent kernel [units, 3 units] and x output "
             "kernel [units, vocab]), the fastest of the libraries timed (same threads); GB/s counts the weights "
             "read once per step (the batch-1 ceiling), GFLOP/s the multiply-adds (the large-batch ceiling):", "",
             "| batch | fp32 ms | fp32 GB/s | fp32 GFLOP/s | int8 ms | int8 GB/s | int8 GFLOP/s | fp32 ms by library |",
             "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for batch, row in floors["by_batch"].items():
        f32, i8 = row.get("fp32", {}), row.get("int8", {})
        libraries = ", ".join(f"{name} {fmt_ms(ms)}" for name, ms in f32.get("ms_by_method", {}).items())
        lines.append(f"| {batch} | {fmt_ms(f32.get('ms'))} | {fmt(f32.get('weights_gb_per_s'), '.1f')} | "
                     f"{fmt(f32.get('gflop_per_s'), '.1f')} | {fmt_ms(i8.get('ms'))} | "
                     f"{fmt(i8.get('weights_gb_per_s'), '.1f')} | {fmt(i8.get('gflop_per_s'), '.1f')} | "
                     f"{libraries} |")
    return lines + [""]


def render_check(check: dict) -> list[str]:
    lines = [f"Greedy agreement ({check['chars']} characters at batch 1, against {check['reference']}): "]
    parts = []
    for name, r in check["results"].items():
        if name == check["reference"]:
            continue
        if r["identical"]:
            parts.append(f"{name} identical")
        else:
            parts.append(f"{name} first differs at character {r['first_difference']} "
                         f"({r['agreement']:.0%} of positions equal)")
    if "int8_teacher_forced_top1" in check:
        parts.append(f"int8's top-1 choice equals fp32's on {check['int8_teacher_forced_top1']:.1%} of the "
                     "characters when both read the same text")
    lines[0] += "; ".join(parts) + "."
    return lines + [""]


CONTESTANT_COLOURS = {"tutorial": "#9e9e9e", "tf-function": "#ff9800", "savedmodel": "#8d6e63",
                      "onnx-fp32": "#1e88e5", "onnx-int8": "#43a047"}


def plot(results: dict) -> bytes:
    """chars/s by contestant and batch size (log scale), one panel per device, floors as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = [d for d in ("cpu", "cuda") if results["devices"].get(d, {}).get("available")]
    fig, axes = plt.subplots(1, max(len(devices), 1), figsize=(7.5 * max(len(devices), 1), 4.8), squeeze=False)
    cfg = results["model"]["config"]
    for ax, device in zip(axes[0], devices or ["cpu"]):
        d = results["devices"].get(device, {})
        rows = d.get("rows", [])
        batches = sorted({r["batch"] for r in rows})
        names = [n for n in CONTESTANTS if any(r["contestant"] == n for r in rows)]
        width = 0.8 / max(len(names), 1)
        for i, name in enumerate(names):
            xs, ys = [], []
            for j, b in enumerate(batches):
                r = find_row(rows, name, b)
                if r is not None:
                    xs.append(j - 0.4 + width * (i + 0.5))
                    ys.append(r["chars_per_s"])
            bars = ax.bar(xs, ys, width, label=name, color=CONTESTANT_COLOURS.get(name), zorder=2)
            for bar, y in zip(bars, ys):
                ax.annotate(f"{y:,.0f}", (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom",
                            fontsize=6.5, rotation=90, xytext=(0, 2), textcoords="offset points", zorder=4,
                            bbox=dict(boxstyle="square,pad=0.05", fc="white", ec="none", alpha=0.85))
        floors = d.get("floors", {}).get("by_batch", {})
        for precision, style in (("fp32", "--"), ("int8", ":")):
            label = f"{precision} floor (matrix products alone)"
            for j, b in enumerate(batches):
                f = floors.get(str(b), {}).get(precision)
                if f:
                    ax.hlines(f["chars_per_s"], j - 0.45, j + 0.45, colors="black", linestyles=style, linewidth=1,
                              label=label, zorder=3)
                    label = None
        ax.set_yscale("log")
        ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
        ax.set_ylabel("characters per second (log scale)")
        ax.set_title(f"{'CPU' if device == 'cpu' else 'GPU'}: {results['machine']['cpu'][:48]}"
                     if device == "cpu" else "GPU (CUDA)", fontsize=10)
        top = max([r["chars_per_s"] for r in rows] + [f.get(p, {}).get("chars_per_s", 0)
                                                       for f in floors.values() for p in ("fp32", "int8")] + [1])
        bottom = min([r["chars_per_s"] for r in rows] + [top])
        ax.set_ylim(bottom / 3, top * 4)
        ax.grid(axis="y", which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", ncol=2)
    fig.suptitle(f"char-RNN generation, embedding {cfg.get('embedding_dim')}, GRU {cfg.get('rnn_units')}, "
                 f"vocab {cfg.get('vocab_size')}{' (quick: tiny random model)' if results.get('quick') else ''}",
                 fontsize=11)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def write_results(results: dict, out_dir, name: str, markdown: str, png: bytes | None) -> dict[str, Path]:
    """<name>-<stamp>.json/.md/.png in out_dir, copied to <name>-latest.*; returns the paths."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create --out {out} ({e.strerror}); choose a writable folder") from None
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    contents = {"json": (json.dumps(results, indent=2, ensure_ascii=False) + "\n").encode(),
                "md": markdown.encode()}
    if png is not None:
        contents["png"] = png
    paths = {}
    for suffix, data in contents.items():
        path = out / f"{name}-{stamp}.{suffix}"
        atomic_write_bytes(path, data)
        atomic_write_bytes(out / f"{name}-latest.{suffix}", data)
        paths[suffix] = path
    return paths


def render_results_md(results_dir) -> str:
    """benchmarks/RESULTS.md from the latest generation and training results in results_dir."""
    results_dir = Path(results_dir)
    parts = ["# Benchmark results", "",
             "Written by `python -m benchmarks.generation --results-md` / `python -m benchmarks.training "
             "--results-md` from the latest results in benchmarks/results/; every figure below is measured.", ""]
    generation = results_dir / "generation-latest.json"
    if generation.exists():
        parts += [render_markdown(json.loads(generation.read_text()), level=2),
                  "![chars/s by contestant and batch size](results/generation-latest.png)", ""]
    else:
        parts += ["## Generation", "", "Not measured yet: run `python -m benchmarks.generation --checkpoint RUN_DIR`.",
                  ""]
    training = results_dir / "training-latest.md"
    if training.exists():
        text = training.read_text()
        parts += [text.replace("\n# ", "\n## ").replace("# ", "## ", 1) if text.startswith("# ") else text, ""]
    else:
        parts += ["## Training", "", "Not measured yet: run `python -m benchmarks.training`.", ""]
    workers = results_dir / "training-workers-latest.md"  # python -m benchmarks.training --workers 1 2
    if workers.exists():
        parts += [workers.read_text().replace("# ", "## ", 1), ""]
    web = results_dir / "web-latest.md"  # python -m benchmarks.web: the to-web page in a browser
    if web.exists():
        parts += [web.read_text(), ""]
    return "\n".join(parts)


def refresh_results_md(out_dir) -> Path:
    """Rewrite RESULTS.md beside the results folder (benchmarks/RESULTS.md for benchmarks/results)."""
    path = Path(out_dir).resolve().parent / "RESULTS.md"
    atomic_write_text(path, render_results_md(out_dir))
    return path


# ---------------------------------------------------------------- command line


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (the same weights for every contestant)")
    g.add_argument("--checkpoint", help="the Keras weights: a run directory from `train`, a tutorial "
                   "training_checkpoints directory or prefix, or a .weights.h5; exported (fp32 + int8) to a "
                   "temporary folder unless --model is given. Required unless --quick")
    g.add_argument("--model", metavar="EXPORT_DIR", help="an existing export of the same checkpoint "
                   "(model.onnx, model.int8.onnx, saved_model/), to skip the export")
    g.add_argument("--text", help="the training text, to rebuild a tutorial checkpoint's vocabulary")
    g.add_argument("--vocab", help="vocab.json for a checkpoint that holds no vocabulary")
    g = p.add_argument_group("what to measure")
    g.add_argument("--contestants", nargs="+", choices=CONTESTANTS, default=None, metavar="NAME",
                   help=f"any of {', '.join(CONTESTANTS)} (default: all)")
    g.add_argument("--batch-sizes", nargs="+", type=int, default=None, metavar="N",
                   help="default 1 8 64 256 (the tutorial contestant runs at batch 1 only)")
    g.add_argument("--chars", type=int, default=None, help="steps of a measured run at batch 1; at batch B a run "
                   "takes max(chars // B, --min-steps) steps, the same for every contestant (default 500)")
    g.add_argument("--min-steps", type=int, default=None, help="fewest steps of a measured run (default 50)")
    g.add_argument("--repeats", type=int, default=None, help="measured runs per contestant and batch size, "
                   "alternating between contestants (default 3)")
    g.add_argument("--warmup", type=int, default=None, help="steps of the untimed warm-up run (default 20)")
    g.add_argument("--greedy-chars", type=int, default=None,
                   help="characters of the greedy agreement check at batch 1 (default 200)")
    g.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for onnxruntime and TensorFlow (default: their own, all cores)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: the CPU, and the GPU where TensorFlow or onnxruntime sees one (default)")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature for all (default 1.0)")
    g.add_argument("--start", default=START, help="start string (default %(default)r)")
    g.add_argument("--seed", type=int, default=0, help="seeds sampling and the --quick model")
    g.add_argument("--quick", action="store_true", help="a tiny random model (unless --checkpoint) and short "
                   "runs at batch 1 and 8: checks the suite works, in well under a minute")
    g = p.add_argument_group("output")
    g.add_argument("--out", help=f"results folder (default: {default_out_dir()})")
    g.add_argument("--results-md", action="store_true",
                   help="also rewrite RESULTS.md beside the results folder from the latest results there")


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark generation: the tutorial's loops vs the exported model",
                       description="Time the tutorial's generation loops and the exported SavedModel/ONNX "
                       "models on the same weights; writes JSON, markdown and a PNG chart.")
    add_bench_arguments(p)
    p.set_defaults(func=run_bench)


def config_from_args(args) -> BenchConfig:
    given = {k: getattr(args, k) for k in ("chars", "min_steps", "repeats", "warmup", "greedy_chars")
             if getattr(args, k) is not None}
    if args.batch_sizes is not None:
        given["batch_sizes"] = tuple(args.batch_sizes)
    if args.contestants is not None:
        given["contestants"] = tuple(dict.fromkeys(args.contestants))
    common = dict(checkpoint=args.checkpoint, model=args.model, text=args.text, vocab=args.vocab,
                  threads=args.threads, device=args.device, temperature=args.temperature, start=args.start,
                  seed=args.seed, out=args.out, command=command_line())
    if args.quick:
        return BenchConfig.quick_defaults(**common, **given)
    return BenchConfig(**common, **given)


def run_bench(args) -> int:
    config = config_from_args(args)
    results = run_generation_bench(config)
    markdown = render_markdown(results)
    out = Path(config.out) if config.out else default_out_dir()
    name = "generation-quick" if config.quick else "generation"
    paths = write_results(results, out, name, markdown, plot(results))
    print(markdown)
    log(f"wrote {', '.join(str(p) for p in paths.values())} (and {name}-latest.*)")
    if args.results_md:
        log(f"wrote {refresh_results_md(out)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.generation`: the same as `charrnn-export bench`."""
    from .cli import Parser, fail

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = Parser(prog="python -m benchmarks.generation", description=__doc__.split("\n\n")[0])
    add_bench_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_bench(args)
    except CharRNNError as e:
        return fail(str(e), e.exit_status)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
