"""Which architecture is best: GRU x1, GRU x2, LSTM x1, LSTM x2 and SimpleRNN x2 at about equal
parameter counts, trained with the same step budget on the same text, then exported and timed.

    python -m benchmarks.architectures [--steps 1000] [--params 400000] [--archs gru-x1 lstm-x2 ...]
                                       [--results-md]
    python -m benchmarks.architectures --quick      # tiny sizes and a few steps: checks the suite

For each architecture the units of every layer are chosen so that the whole model's parameter
count (embedding, every layer's kernel, recurrent kernel and bias as cells/ shapes them, the dense
layer) is the nearest to --params; the chosen units are printed and recorded. Each then trains
through the project's train() (TrainConfig's defaults: embedding 256, batch 64 x 100 characters,
Adam 1e-3, the last 10% of the text held out) for --steps steps, is exported with export() (int8
too), and records:

    val_loss          the run's best windowed validation loss (train()'s, over seq_length windows
                      of the held-out 10%: the figure the tutorial's loss is comparable with)
    stream val loss   the export report's: the exported fp32 and int8 steps over the held-out text
                      with the state carried
    training chars/s  the run's characters trained over its train-step seconds (metrics.jsonl)
    generation        charrnn_export.bench's onnx-fp32 and onnx-int8 contestants at batch 1 and 256

The default budget (--steps 1000, about 6 epochs of tiny-shakespeare at batch 64 x 100) is sized
for a session on a CPU; the lead runs it on a quiet machine. Writes architectures-<stamp>.json/
.md/.png (and architectures-latest.*) to benchmarks/results/; --results-md rewrites RESULTS.md.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from charrnn_export import bench
from charrnn_export.errors import ConfigError

from . import repo
from .training import default_data

# name -> (cell kind, layers): the architectures the issue asks for, in the order they are run.
ARCHITECTURES = {"gru-x1": ("gru", 1), "gru-x2": ("gru", 2), "lstm-x1": ("lstm", 1), "lstm-x2": ("lstm", 2),
                 "rnn-x2": ("rnn", 2)}
MAX_UNITS = 8192
GENERATION_BATCHES = (1, 256)
GENERATION_CONTESTANTS = ("onnx-fp32", "onnx-int8")
QUICK = dict(params=6_000, steps=6, embedding_dim=8, seq_length=16, batch_size=8)


@dataclass
class ArchitecturesBenchConfig:
    data: str | None = None  # default: the shared tiny-shakespeare copy, else the tutorial's URL
    params: int = 400_000  # the parameter count every architecture is sized to
    steps: int = 1_000  # training steps, the same for every architecture
    archs: tuple[str, ...] = tuple(ARCHITECTURES)
    embedding_dim: int = 256  # TrainConfig's default
    seq_length: int = 100
    batch_size: int = 64
    learning_rate: float = 1e-3
    val_fraction: float = 0.1
    seed: int = 0
    quick: bool = False
    out: str | None = None
    command: str = ""
    bench_settings: dict = field(default_factory=dict)  # BenchConfig overrides (quick: short runs)

    def validate(self) -> "ArchitecturesBenchConfig":
        unknown = [a for a in self.archs if a not in ARCHITECTURES]
        if unknown or not self.archs:
            raise ConfigError(f"--archs: unknown {', '.join(unknown) or '(none given)'}; "
                              f"choose from {', '.join(ARCHITECTURES)}")
        for name in ("params", "steps", "embedding_dim", "seq_length", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        return self


# ---------------------------------------------------------------- sizing


def architecture_of(kind: str, layers: int, units: int, vocab_size: int, embedding_dim: int):
    from charrnn_export.cells import Architecture, LayerSpec

    return Architecture(vocab_size, embedding_dim, tuple(LayerSpec(kind, units) for _ in range(layers)))


def parameter_count(architecture) -> int:
    """Every trained number: the embedding, each layer's arrays (its kind's shapes), the dense layer."""
    from math import prod

    total, input_dim = architecture.vocab_size * architecture.embedding_dim, architecture.embedding_dim
    for spec in architecture.layers:
        total += sum(prod(shape) for shape in spec.cell.weight_shapes(spec, input_dim).values())
        input_dim = spec.units
    return total + input_dim * architecture.vocab_size + architecture.vocab_size


def units_for(kind: str, layers: int, target: int, vocab_size: int, embedding_dim: int) -> int:
    """The units per layer whose parameter count is nearest `target` (the count grows with units)."""
    count = lambda units: parameter_count(architecture_of(kind, layers, units, vocab_size, embedding_dim))  # noqa: E731
    low, high = 1, MAX_UNITS
    while low < high:  # the first units whose count reaches the target
        middle = (low + high) // 2
        low, high = (middle + 1, high) if count(middle) < target else (low, middle)
    if low > 1 and abs(count(low - 1) - target) <= abs(count(low) - target):
        return low - 1
    return low


# ---------------------------------------------------------------- one architecture


def epochs_for(config: ArchitecturesBenchConfig, data: str) -> int:
    """Enough epochs for --steps steps (train() stops at max_steps; its schedule follows epochs)."""
    from math import ceil

    from charrnn_export import data as data_mod
    from charrnn_export.vocab import Vocab

    text = data_mod.load_text(data)[0]
    train_ids, _ = data_mod.split_train_val(Vocab.from_text(text).encode(text), config.val_fraction)
    per_epoch = data_mod.steps_in_epoch(train_ids, config.seq_length, config.batch_size, config.seed, 0)
    if per_epoch < 1:
        raise ConfigError(f"{data} is too short for one batch of {config.batch_size} x {config.seq_length} "
                          "characters; pass a longer --data")
    return ceil(config.steps / per_epoch) + 1  # + 1: a later epoch may hold a step fewer


def train_one(config: ArchitecturesBenchConfig, kind: str, layers: int, units: int, data: str, run_dir: Path) -> dict:
    from charrnn_export.run_dir import RunDir
    from charrnn_export.train import TrainConfig, train

    train_config = TrainConfig(
        data=data, cell=kind, layers=layers, rnn_units=units, embedding_dim=config.embedding_dim,
        seq_length=config.seq_length, batch_size=config.batch_size, learning_rate=config.learning_rate,
        max_steps=config.steps, epochs=epochs_for(config, data), val_fraction=config.val_fraction, seed=config.seed)
    started = time.perf_counter()
    result = train(train_config, run_dir)
    rows = RunDir(run_dir).read_metrics()
    seconds = sum(row["epoch_time"] for row in rows)
    chars = sum(row["chars_per_sec"] * row["epoch_time"] for row in rows)
    return {"val_loss": result["best_val_loss"], "last_val_loss": rows[-1]["val_loss"] if rows else None,
            "train_loss": rows[-1]["train_loss"] if rows else None, "steps": rows[-1]["global_step"] if rows else 0,
            "chars_per_s": chars / seconds if seconds else None,
            "wall_seconds": round(time.perf_counter() - started, 1)}


def export_one(run_dir: Path, export_dir: Path, data: str) -> dict:
    """Export with int8; the training text is passed so that the export measures both models over
    its held-out end (the same validation split the run used)."""
    from charrnn_export.export import export

    report = export(str(run_dir), str(export_dir), text=data, quantize="int8")
    validation = report.get("validation", {})
    return {"stream_val_loss_fp32": validation.get("fp32", {}).get("loss"),
            "stream_val_loss_int8": report.get("int8", {}).get("val_loss_int8"),
            "int8_top1_agreement": report.get("int8", {}).get("top1_agreement")}


def generation_one(config: ArchitecturesBenchConfig, export_dir: Path) -> dict:
    """chars/s of the exported fp32 and int8 steps at batch 1 and 256 (charrnn_export.bench)."""
    settings = {"model": str(export_dir), "contestants": GENERATION_CONTESTANTS, "batch_sizes": GENERATION_BATCHES,
                "device": "cpu", "seed": config.seed, **config.bench_settings}
    bench_config = (bench.BenchConfig.quick_defaults(**settings) if config.quick else bench.BenchConfig(**settings))
    results = bench.run_generation_bench(bench_config)
    rows = results["devices"]["cpu"]["rows"]
    return {f"{row['contestant'].removeprefix('onnx-')}_batch{row['batch']}": row["chars_per_s"] for row in rows}


# ---------------------------------------------------------------- the suite


def run_architectures_bench(config: ArchitecturesBenchConfig) -> dict:
    config.validate()
    started = time.perf_counter()
    machine = repo.machine_info()
    with tempfile.TemporaryDirectory(prefix="charrnn-arch-bench-") as scratch_name:
        scratch = Path(scratch_name)
        data = config.data or default_data(scratch, config.quick)
        from charrnn_export import data as data_mod
        from charrnn_export.vocab import Vocab

        vocab_size = len(Vocab.from_text(data_mod.load_text(data)[0]))
        rows = []
        for name in config.archs:
            kind, layers = ARCHITECTURES[name]
            units = units_for(kind, layers, config.params, vocab_size, config.embedding_dim)
            arch = architecture_of(kind, layers, units, vocab_size, config.embedding_dim)
            repo.log(f"{name}: {arch.describe()}, {parameter_count(arch):,} parameters; "
                     f"training {config.steps} steps ...")
            row = {"name": name, "architecture": arch.describe(), "cell": kind, "layers": layers, "units": units,
                   "parameters": parameter_count(arch), "state_size": arch.state_size}
            row["training"] = train_one(config, kind, layers, units, data, scratch / name / "run")
            repo.log(f"{name}: val loss {row['training']['val_loss']:.4f}; exporting and timing generation ...")
            row["export"] = export_one(scratch / name / "run", scratch / name / "export", data)
            row["generation"] = generation_one(config, scratch / name / "export")
            rows.append(row)
    results = {
        **bench.results_head("architectures", config, machine, data=data, vocab_size=vocab_size),
        "rows": rows,
        "best": min(rows, key=lambda r: r["training"]["val_loss"])["name"] if rows else None,
    }
    results["machine"]["load_average_after"] = bench.load_average()
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def fmt(value, spec: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, spec)


def render_markdown(results: dict, name: str = "architectures") -> str:
    m, s = results["machine"], results["settings"]
    lines = [
        f"## Architectures{' (quick)' if results.get('quick') else ''}",
        "",
        f"- date: {results['date']}; command: `{results['command']}`",
        f"- machine: {m['cpu']}, {m['cores']} cores, load average {bench.fmt_load(m.get('load_average'))} before, "
        f"{bench.fmt_load(m.get('load_average_after'))} after",
        f"- each sized to about {s['params']:,} parameters (embedding {s['embedding_dim']}, vocabulary "
        f"{s['vocab_size']}), {s['steps']} training steps of batch {s['batch_size']} x {s['seq_length']} "
        f"characters, Adam {s['learning_rate']}, the last {s['val_fraction']:.0%} of {s['data']} held out",
        "- val loss: the run's best windowed validation loss (nats/char); stream: the exported step over the "
        "held-out text with its state carried; generation: `charrnn-export bench` onnx-fp32 / onnx-int8 on "
        "the CPU",
        "",
        "| architecture | units | parameters | val loss | stream fp32 / int8 | training chars/s | "
        "fp32 b1 | fp32 b256 | int8 b1 | int8 b256 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        t, e, g = row["training"], row["export"], row["generation"]
        lines.append(
            f"| {row['architecture']} | {row['units']} | {row['parameters']:,} | {fmt(t['val_loss'], '.4f')} | "
            f"{fmt(e['stream_val_loss_fp32'], '.4f')} / {fmt(e['stream_val_loss_int8'], '.4f')} | "
            f"{fmt(t['chars_per_s'])} | {fmt(g.get('fp32_batch1'))} | {fmt(g.get('fp32_batch256'))} | "
            f"{fmt(g.get('int8_batch1'))} | {fmt(g.get('int8_batch256'))} |")
    if results.get("best"):
        lines += ["", f"Lowest validation loss at this budget: {results['best']}."]
    lines += ["", f"![validation loss and speed by architecture](results/{name}-latest.png)"]
    return "\n".join(lines) + "\n"


def plot(results: dict) -> bytes | None:
    """Validation loss, training chars/s and generation chars/s (int8, batch 256) per architecture."""
    plt = bench.pyplot()
    if plt is None or not results["rows"]:
        return None
    names = [row["architecture"] for row in results["rows"]]
    panels = [("best validation loss (nats/char)", [row["training"]["val_loss"] for row in results["rows"]]),
              ("training chars/s", [row["training"]["chars_per_s"] or 0 for row in results["rows"]]),
              ("generation chars/s, int8 batch 256",
               [row["generation"].get("int8_batch256") or 0 for row in results["rows"]])]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    for ax, (title, values) in zip(axes, panels):
        ax.bar(range(len(names)), values, color="#1e88e5")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"about {results['settings']['params']:,} parameters, {results['settings']['steps']} steps",
                 fontsize=10)
    return bench.png_bytes(fig)


def main(argv: list[str] | None = None) -> int:
    from charrnn_export.commands.common import run_guarded

    d = ArchitecturesBenchConfig()
    p = repo.suite_parser("benchmarks.architectures", __doc__)
    repo.add_data_flag(p)
    p.add_argument("--archs", nargs="+", default=None, metavar="NAME",
                   help=f"which to run (default: all of {', '.join(ARCHITECTURES)})")
    p.add_argument("--params", type=int, default=None, help=f"parameters each is sized to (default {d.params:,})")
    p.add_argument("--steps", type=int, default=None, help=f"training steps each (default {d.steps})")
    p.add_argument("--embedding-dim", type=int, default=None, help=f"(default {d.embedding_dim})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--quick", action="store_true", help="tiny sizes and a few steps: checks the suite in minutes")
    repo.add_results_flags(p)
    return run_guarded(measure, p.parse_args(argv))


def measure(args) -> int:
    quick = {**QUICK, "bench_settings": {"chars": 20, "min_steps": 5, "repeats": 1, "warmup": 1,
                                         "greedy_chars": 10}} if args.quick else {}
    given = {k: getattr(args, k) for k in ("params", "steps", "embedding_dim") if getattr(args, k) is not None}
    config = ArchitecturesBenchConfig(**{**quick, **given}, data=args.data, seed=args.seed, quick=args.quick,
                                      archs=tuple(args.archs or ARCHITECTURES), out=args.out,
                                      command=bench.command_line())
    config.validate()
    results = run_architectures_bench(config)
    for row in results["rows"]:
        print(f"{row['name']}: {row['architecture']} ({row['parameters']:,} parameters)")
    name = "architectures-quick" if config.quick else "architectures"
    out = Path(config.out) if config.out else repo.RESULTS_DIR
    markdown = render_markdown(results, name)
    paths = bench.write_results(results, out, name, markdown, plot(results))
    print(markdown)
    repo.log(f"wrote {', '.join(str(p) for p in paths.values())} (and {name}-latest.*)")
    if args.results_md:
        repo.log(f"wrote {repo.refresh_results_md(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
