"""What a generation benchmark measures: the contestants' names and BenchConfig, checked.

    BenchConfig(...).validate() -> the config, or ConfigError naming the flag
    BenchConfig.quick_defaults(**overrides)   a tiny model and short runs (QUICK): seconds, not minutes
    needs_tensorflow(config) -> bool          only the tutorial's loops, the SavedModel and an export do

The flag names in the messages are the command's (`--chars`), since the command is the usual caller,
and the command's defaults are BenchConfig's fields (QUICK's under --quick).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..checks import (LENGTH_LIMIT, SEED_LIMIT, check_choice, check_count, check_fits_memory, check_seed,
                      check_start, check_temperature, check_threads)
from ..contract import DECODE_FILES, DEVICES, MODEL_FILES, TUTORIAL_START
from ..errors import ConfigError
from ..files import check_writable_dir

# The tutorial's loops (TF), the exported step + the host sampler through the engine (HostSampler),
# and the engine over the decode model (OnnxDecoder: sampling inside onnxruntime).
CONTESTANTS = ("tutorial", "tf-function", "savedmodel", "onnx-fp32", "onnx-int8", "decode-fp32", "decode-int8")
TF_CONTESTANTS = ("tutorial", "tf-function")  # they need the Keras weights, not the export
NEEDS_TENSORFLOW = TF_CONTESTANTS + ("savedmodel",)
INT8 = ("onnx-int8", "decode-int8")
# The export's file each exported contestant runs.
EXPORT_FILES = {"savedmodel": "saved_model/saved_model.pb",
                **{f"onnx-{p}": MODEL_FILES[p] for p in MODEL_FILES},
                **{f"decode-{p}": DECODE_FILES[MODEL_FILES[p]] for p in MODEL_FILES}}
BENCH_DEVICES = ("auto",) + DEVICES  # auto: cpu, and cuda where TensorFlow or onnxruntime has it
DEFAULT_BATCH_SIZES = (1, 8, 64, 256, 4096)  # 4096: what one engine serves at once on a GPU
# The TensorFlow contestants stop here: the comparison with the tutorial's loops is made up to 256,
# and a TensorFlow step at batch 4096 on a CPU costs seconds and tells nothing new.
TF_MAX_BATCH = 256
START = TUTORIAL_START
NO_GPU = "no GPU: TensorFlow sees none, onnxruntime has no CUDA provider"
INT8_CUDA_NOTE = "{name} skipped on CUDA: onnxruntime's int8 (DynamicQuantize) kernels crash there"
FULL_SIZE = {"embedding_dim": 256, "rnn_units": 1024}  # the tutorial's model; the targets are for it
MAX_BATCH = 65_536  # --batch-sizes: 16 times what one engine serves on a GPU
# Memory one batch row may take across the contestants (the state, logits and buffers of each
# runtime, TensorFlow's among them, for the tutorial's 1024 units): bounds --batch-sizes by the
# memory free, before anything is measured (the kernel's OOM killer, not an error, otherwise).
BATCH_ROW_BYTES = 256 * 1024
MAX_REPEATS = 1_000
# --quick: a tiny model (made here unless a checkpoint is given) and short runs.
QUICK = dict(chars=60, min_steps=20, batch_sizes=(1, 8), repeats=2, warmup=3, greedy_chars=60)
QUICK_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # tiny-shakespeare's 65


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
    device: str = BENCH_DEVICES[0]  # auto
    quick: bool = False
    out: str | None = None
    command: str = ""

    @classmethod
    def quick_defaults(cls, **overrides) -> "BenchConfig":
        """A tiny model (made here unless a checkpoint is given) and short runs: seconds, not minutes."""
        return cls(**{**QUICK, "quick": True, **overrides})

    def steps(self, batch: int) -> int:
        """Steps of one measured run at `batch`: the same for every contestant in the row."""
        return max(self.chars // batch, min(self.min_steps, self.chars), 2)

    def validate(self) -> "BenchConfig":
        """Every flag, before anything is loaded or measured: a bad one found after minutes of
        measuring would throw them away."""
        unknown = [c for c in self.contestants if c not in CONTESTANTS]
        if unknown or not self.contestants:
            raise ConfigError(f"--contestants: unknown {', '.join(unknown) or '(none given)'}; "
                              f"choose from {', '.join(CONTESTANTS)}")
        if not self.batch_sizes:
            raise ConfigError("--batch-sizes must be positive integers, got []")
        for batch in self.batch_sizes:
            check_count(batch, "--batch-sizes", MAX_BATCH)
        check_fits_memory(max(self.batch_sizes), BATCH_ROW_BYTES, "--batch-sizes")
        for name in ("chars", "min_steps", "warmup", "greedy_chars"):
            check_count(getattr(self, name), f"--{name.replace('_', '-')}", LENGTH_LIMIT)
        check_count(self.repeats, "--repeats", MAX_REPEATS)
        if self.chars < 2:
            raise ConfigError(f"--chars must be >= 2 (one priming and at least one steady step), got {self.chars}")
        check_threads(self.threads, "--threads")  # 1 .. the CPUs this process may use
        check_temperature(self.temperature, "--temperature")
        # Run r of a contestant is seeded seed + r: every one of them must be a seed.
        last_seed = check_seed(self.seed, "--seed") + self.repeats - 1
        if last_seed >= SEED_LIMIT:
            raise ConfigError(f"--seed {self.seed} with --repeats {self.repeats} seeds runs up to {last_seed}, past "
                              f"2**32 - 1; use --seed <= {SEED_LIMIT - self.repeats}")
        check_choice(self.device, "--device", BENCH_DEVICES)
        if not check_start(self.start, "--start"):
            raise ConfigError("--start must not be empty")
        if self.out is not None:
            check_writable_dir(self.out, f"--out {self.out}")
        needs_keras = any(c in TF_CONTESTANTS for c in self.contestants)
        if self.checkpoint is None and not self.makes_tiny_model and (needs_keras or self.model is None):
            raise ConfigError(
                "pass --checkpoint (the run directory or checkpoint the model comes from): the tutorial and "
                "tf-function contestants need the Keras weights, which an export's folded step does not hold "
                "(or --model EXPORT_DIR with --contestants savedmodel onnx-fp32 onnx-int8; or --quick)")
        return self

    @property
    def makes_tiny_model(self) -> bool:
        """--quick alone: a tiny random model, exported here."""
        return self.quick and self.model is None and self.checkpoint is None

    @property
    def exports(self) -> bool:
        """No --model: the checkpoint is exported to a temporary folder first (which needs TensorFlow)."""
        return self.model is None


def needs_tensorflow(config: BenchConfig) -> bool:
    """Only the tutorial's loops, the SavedModel contestant and an export need TensorFlow; an
    existing export measured with the onnx and decode contestants runs on onnxruntime alone."""
    return config.exports or any(c in NEEDS_TENSORFLOW for c in config.contestants)
