"""Training throughput: this project's train step against a plain `model.fit` of the tutorial's model.

    python -m benchmarks.training [--data FILE] [--steps 30] [--warmup-steps 3] [--results-md]
    python -m benchmarks.training --quick          # tiny dims: checks the suite in seconds
    python -m benchmarks.training --workers 1 2    # --strategy multi-worker with 1 and 2 processes
                                                   # (benchmarks/training_workers.py)

Both sides train the tutorial's model (Embedding -> GRU -> Dense, Keras 3) with Adam and sparse
cross-entropy from logits, on the same batches of the same text (batch 64 x 100 characters by
default), for --warmup-steps + --steps steps; the warm-up steps (tracing, the first calls) are left
out of the figures.

    project  charrnn_export.train.train(TrainConfig(..., max_steps=W + N)) in a temporary run
             directory. Its per-step times are read from its own progress reports (the chars/s it
             reports after each step, the same figure as metrics.jsonl's chars_per_sec), and the wall
             time between reports gives the whole loop (batching included).
    fit      model.compile(Adam, SparseCategoricalCrossentropy(from_logits=True)) and model.fit on a
             tf.data pipeline of the same batches; a callback times each batch.

fit runs first: the project's train() turns on TensorFlow's op determinism for the rest of the
process (part of what it does), and fit should run as the tutorial runs it.
Writes training-<stamp>.json/.md/.png (and training-latest.*) to benchmarks/results/.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charrnn_export import bench

from . import repo
from charrnn_export.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
SHARED_TEXT = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


@dataclass
class TrainingBenchConfig:
    data: str | None = None  # default: the shared tiny-shakespeare copy, else the tutorial's URL
    embedding_dim: int = 256
    rnn_units: int = 1024
    batch_size: int = 64
    seq_length: int = 100
    steps: int = 30  # measured steps per side
    warmup_steps: int = 3  # left out: tracing and the first calls
    learning_rate: float = 1e-3
    val_fraction: float = 0.02  # only shortens the validation pass train() makes after the last step
    seed: int = 0
    quick: bool = False
    out: str | None = None
    command: str = ""

    def validate(self) -> "TrainingBenchConfig":
        for name in ("embedding_dim", "rnn_units", "batch_size", "seq_length", "steps", "warmup_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        return self


def default_data(scratch: Path, quick: bool) -> str:
    if SHARED_TEXT.exists():
        return str(SHARED_TEXT)
    if quick:  # no download for a smoke run: a made-up play in the tutorial's characters
        rng = random.Random(0)
        words = "the and my lord of to I you that is in not with me be your this what so but thou shall".split()
        lines = [f"{rng.choice(['ROMEO', 'JULIET', 'MENENIUS'])}:\n"
                 + " ".join(rng.choice(words) for _ in range(rng.randint(4, 12))).capitalize() + ".\n\n"
                 for _ in range(800)]
        path = scratch / "play.txt"
        path.write_text("".join(lines), encoding="utf-8")
        return str(path)
    from charrnn_export.contract import TUTORIAL_URL

    return TUTORIAL_URL


def step_figures(step_seconds: list[float], chars_per_step: int) -> dict:
    ms = np.array(step_seconds) * 1e3
    total = float(np.sum(step_seconds))
    return {
        "steps": len(step_seconds),
        "ms_per_step": total / len(step_seconds) * 1e3,
        "ms_median": float(np.median(ms)),
        "ms_p10": float(np.percentile(ms, 10)),
        "ms_p90": float(np.percentile(ms, 90)),
        "chars_per_s": chars_per_step * len(step_seconds) / total,
    }


# ---------------------------------------------------------------- the project's train()


def run_project(config: TrainingBenchConfig, data: str, scratch: Path) -> dict:
    """train() for warmup + steps; per-step times from the progress reports it makes after each step."""
    from charrnn_export import train as train_mod

    reports: list[tuple[int, int, float, float]] = []  # (epoch, done, chars/s so far, wall time)
    original = train_mod.Progress

    class RecordingProgress(original):
        """The train loop's progress display, also noting what each report says and when."""

        def update(self, done, loss, chars_per_sec):
            reports.append((self.epoch, done, chars_per_sec, time.perf_counter()))
            super().update(done, loss, chars_per_sec)

    total_steps = config.warmup_steps + config.steps
    train_config = train_mod.TrainConfig(
        data=data, embedding_dim=config.embedding_dim, rnn_units=config.rnn_units, seq_length=config.seq_length,
        batch_size=config.batch_size, learning_rate=config.learning_rate, max_steps=total_steps,
        val_fraction=config.val_fraction, seed=config.seed)
    train_mod.Progress = RecordingProgress
    try:
        train_mod.train(train_config, scratch / "run")
    finally:
        train_mod.Progress = original
    if len(reports) != total_steps:
        raise ConfigError(f"training benchmark: train() reported {len(reports)} steps, expected {total_steps}; "
                          "its progress reporting changed, update benchmarks/training.py")
    chars_per_step = config.batch_size * config.seq_length
    # Each report gives the epoch's train-step seconds so far: chars so far / chars per second.
    step_seconds, loop_seconds = [], []
    previous = None
    for epoch, done, chars_per_sec, wall in reports:
        in_epoch = done * chars_per_step / chars_per_sec
        if previous is not None and previous[0] == epoch:
            step_seconds.append(in_epoch - previous[1])
            loop_seconds.append(wall - previous[2])
        else:
            step_seconds.append(in_epoch)  # an epoch's first step: its own time (the loop gap holds validation)
            loop_seconds.append(in_epoch)
        previous = (epoch, in_epoch, wall)
    measured = slice(config.warmup_steps, None)
    return {
        "train_step": step_figures(step_seconds[measured], chars_per_step),
        "loop": step_figures(loop_seconds[measured], chars_per_step),
        "warmup_seconds": sum(step_seconds[: config.warmup_steps]),
    }


# ---------------------------------------------------------------- the tutorial's model.fit


def run_fit(config: TrainingBenchConfig, data: str) -> dict:
    """model.fit of the tutorial's model on the project's batches, each batch timed by a callback."""
    import keras
    import tensorflow as tf

    from charrnn_export import data as data_mod
    from charrnn_export.vocab import Vocab
    from charrnn_export.cells import Architecture, LayerSpec
    from charrnn_export.cells.keras_model import build_keras_model

    text, _ = data_mod.load_text(data)
    vocab = Vocab.from_text(text)
    train_ids, _ = data_mod.split_train_val(vocab.encode(text), config.val_fraction)
    total_steps = config.warmup_steps + config.steps
    xs, ys, epoch = [], [], 0
    while len(xs) < total_steps:
        batches = list(data_mod.epoch_batches(train_ids, config.seq_length, config.batch_size, config.seed, epoch))
        if not batches:
            raise ConfigError(f"{data} is too short for one batch of {config.batch_size} x {config.seq_length}")
        for x, y in batches[: total_steps - len(xs)]:
            xs.append(x)
            ys.append(y)
        epoch += 1
    inputs = np.concatenate(xs)  # (steps * batch, seq_length)
    targets = np.concatenate(ys)
    dataset = (tf.data.Dataset.from_tensor_slices((inputs, targets))
               .batch(config.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))

    keras.utils.set_random_seed(config.seed)
    # The tutorial's model: one GRU (its Keras defaults), glorot_uniform recurrent init.
    architecture = Architecture(len(vocab), config.embedding_dim, (LayerSpec("gru", config.rnn_units),))
    model = build_keras_model(architecture, recurrent_initializer="glorot_uniform")
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    class BatchTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends: list[float] = []
            self.begin = 0.0

        def on_train_begin(self, logs=None):
            self.begin = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    timer = BatchTimer()
    model.fit(dataset, epochs=1, steps_per_epoch=total_steps, verbose=0, callbacks=[timer], shuffle=False)
    if len(timer.ends) != total_steps:
        raise ConfigError(f"training benchmark: fit ran {len(timer.ends)} steps, expected {total_steps}")
    gaps = np.diff([timer.begin] + timer.ends).tolist()  # each batch, its data fetch included
    chars_per_step = config.batch_size * config.seq_length
    return {"loop": step_figures(gaps[config.warmup_steps:], chars_per_step),
            "warmup_seconds": sum(gaps[: config.warmup_steps])}


# ---------------------------------------------------------------- results


def run_training_bench(config: TrainingBenchConfig) -> dict:
    config.validate()
    started = time.perf_counter()
    machine = repo.machine_info()
    with tempfile.TemporaryDirectory(prefix="charrnn-train-bench-") as scratch_name:
        scratch = Path(scratch_name)
        data = config.data or default_data(scratch, config.quick)
        from charrnn_export.tfsetup import import_tensorflow

        import_tensorflow()
        repo.log(f"fit: {config.warmup_steps} + {config.steps} steps ...")
        fit = run_fit(config, data)
        repo.log(f"project train(): {config.warmup_steps} + {config.steps} steps ...")
        project = run_project(config, data, scratch)
    results = {
        **bench.results_head("training", config, machine, data=data),
        "fit": fit,
        "project": project,
        "project_over_fit": project["loop"]["chars_per_s"] / fit["loop"]["chars_per_s"],
        "notes": ["fit ran first; the project's train() then enabled TensorFlow op determinism, which it always does"],
    }
    results["machine"]["load_average_after"] = bench.load_average()
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def render_markdown(results: dict) -> str:
    m, s = results["machine"], results["settings"]
    fmt_ms = bench.fmt_ms
    rows = [("model.fit (tutorial)", results["fit"]["loop"]),
            ("project train(): whole loop", results["project"]["loop"]),
            ("project train(): train step only (its chars/s metric)", results["project"]["train_step"])]
    lines = [
        f"# Training throughput{' (quick)' if results.get('quick') else ''}",
        "",
        f"- date: {results['date']}; command: `{results['command']}`",
        f"- machine: {m['cpu']}, {m['cores']} cores, load average {bench.fmt_load(m.get('load_average'))} before, "
        f"{bench.fmt_load(m.get('load_average_after'))} after",
        "- libraries: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- model: embedding {s['embedding_dim']}, GRU {s['rnn_units']} units; batch {s['batch_size']} x "
        f"{s['seq_length']} characters; Adam {s['learning_rate']}; data {s['data']}",
        f"- {s['steps']} measured steps each, after {s['warmup_steps']} warm-up steps (tracing) that are left out",
        "",
        "| trainer | ms/step | median (p10-p90) | chars/s |",
        "|---|---:|---:|---:|",
    ]
    for name, f in rows:
        lines.append(f"| {name} | {fmt_ms(f['ms_per_step'])} | {fmt_ms(f['ms_median'])} "
                     f"({fmt_ms(f['ms_p10'])}-{fmt_ms(f['ms_p90'])}) | {f['chars_per_s']:,.0f} |")
    lines += ["", f"The project's loop trains at {results['project_over_fit']:.2f}x the characters per second "
              "of model.fit.", ""]
    lines += [f"- note: {n}" for n in results.get("notes", [])]
    return "\n".join(lines) + "\n"


def plot(results: dict) -> bytes | None:
    """Training characters per second, fit against the project's loop; None without matplotlib."""
    plt = bench.pyplot()
    if plt is None:
        return None
    names = ["model.fit\n(tutorial)", "project train()\nwhole loop", "project train()\ntrain step only"]
    figures = [results["fit"]["loop"], results["project"]["loop"], results["project"]["train_step"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    bars = ax.bar(names, [f["chars_per_s"] for f in figures], color=["#9e9e9e", "#1e88e5", "#90caf9"])
    for bar, f in zip(bars, figures):
        ax.annotate(f"{f['chars_per_s']:,.0f}", (bar.get_x() + bar.get_width() / 2, f["chars_per_s"]),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    s = results["settings"]
    ax.set_ylabel("training characters per second")
    ax.set_title(f"training, embedding {s['embedding_dim']}, GRU {s['rnn_units']}, batch {s['batch_size']} x "
                 f"{s['seq_length']}", fontsize=10)
    ax.margins(y=0.15)
    return bench.png_bytes(fig)


def main(argv: list[str] | None = None) -> int:
    from charrnn_export.commands.common import run_guarded

    d = TrainingBenchConfig()
    p = repo.suite_parser("benchmarks.training", __doc__)
    repo.add_data_flag(p)
    p.add_argument("--embedding-dim", type=int, default=None, help=f"(default {d.embedding_dim})")
    p.add_argument("--rnn-units", type=int, default=None, help=f"(default {d.rnn_units})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="(default %(default)s)")
    p.add_argument("--seq-length", type=int, default=d.seq_length, help="(default %(default)s)")
    p.add_argument("--steps", type=int, default=None, help=f"measured steps per trainer (default {d.steps})")
    p.add_argument("--warmup-steps", type=int, default=None, help=f"left-out first steps (default {d.warmup_steps})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--quick", action="store_true", help="tiny dims (16, 32) and 2 + 8 steps: checks the suite")
    repo.add_results_flags(p)
    g = p.add_argument_group("--workers: one process against multi-worker runs (see benchmarks/training_workers.py)")
    g.add_argument("--workers", type=int, nargs="+", metavar="N",
                   help="measure `train --strategy multi-worker` with N processes on this machine instead of fit")
    g.add_argument("--epochs", type=int, default=4, help="epochs per --workers run; the first is left out (%(default)s)")
    g.add_argument("--chars", type=int, default=70_000,
                   help="the --workers runs train on the text's first CHARS characters (default %(default)s)")
    args = p.parse_args(argv)
    return run_guarded(main_workers if args.workers else measure, args)


def measure(args) -> int:
    """The fit-against-train() benchmark the flags describe: measured, written, printed."""
    quick = dict(embedding_dim=16, rnn_units=32, steps=8, warmup_steps=2) if args.quick else {}
    given = {k: getattr(args, k) for k in ("embedding_dim", "rnn_units", "steps", "warmup_steps")
             if getattr(args, k) is not None}
    config = TrainingBenchConfig(**{**quick, **given}, data=args.data, batch_size=args.batch_size,
                                 seq_length=args.seq_length, seed=args.seed, quick=args.quick, out=args.out,
                                 command=bench.command_line())
    results = run_training_bench(config)
    publish(results, render_markdown(results), plot(results), "training-quick" if config.quick else "training",
            config.out, args.results_md)
    return 0


def publish(results: dict, markdown: str, figure, name: str, out: str | None, results_md: bool) -> None:
    """Write the results (JSON, markdown, plot) and print the markdown; RESULTS.md too if asked."""
    out = Path(out) if out else repo.RESULTS_DIR
    paths = bench.write_results(results, out, name, markdown, figure)
    print(markdown)
    repo.log(f"wrote {', '.join(str(p) for p in paths.values())} (and {name}-latest.*)")
    if results_md:
        repo.log(f"wrote {repo.refresh_results_md(out)}")


def main_workers(args) -> int:
    from benchmarks import training_workers
    from charrnn_export.commands.common import fail

    if min(args.workers) < 1 or args.epochs < 2 or args.chars < 1:
        return fail("--workers must be >= 1, --epochs >= 2 (the first is left out) and --chars >= 1")
    d = TrainingBenchConfig()
    settings = {"embedding_dim": args.embedding_dim or d.embedding_dim, "rnn_units": args.rnn_units or d.rnn_units,
                "batch_size": args.batch_size, "seq_length": args.seq_length, "epochs": args.epochs,
                "seed": args.seed, "learning_rate": d.learning_rate, "chars": args.chars}
    with tempfile.TemporaryDirectory(prefix="charrnn-workers-bench-") as scratch:
        data = args.data or default_data(Path(scratch), False)
        results = training_workers.run_workers_bench(args.workers, data, Path(scratch), settings,
                                                     bench.command_line())
    publish(results, training_workers.render_markdown(results), None, "training-workers", args.out,
            args.results_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
