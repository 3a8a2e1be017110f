"""`charrnn-export bench`: flags -> BenchConfig -> run_generation_bench -> files, markdown on stdout.

    add_bench_arguments(parser, default_out)   the flags (python -m benchmarks.generation shares them)
    measure_and_write(args, default_out, machine) -> the results folder

The markdown table goes to stdout, the progress and the paths written to stderr. RESULTS.md is
the repository's: `python -m benchmarks.generation --results-md` rewrites it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..bench import CONTESTANTS, BenchConfig, command_line, plot, render_markdown, run_generation_bench, write_results
from ..bench.config import BENCH_DEVICES, QUICK
from ..errors import ConfigError
from ..files import check_writable_dir
from .common import stderr_logger

DEFAULT_OUT = "benchmark-results"  # in the working folder


def add_bench_arguments(p: argparse.ArgumentParser, default_out=DEFAULT_OUT) -> None:
    """The flags; every default is BenchConfig's field, except that the fields --quick shortens
    (bench.config.QUICK) default to None: the config's value for the mode then applies."""
    d = BenchConfig()
    g = p.add_argument_group("model (the same weights for every contestant)")
    g.add_argument("--checkpoint", help="the Keras weights: a run directory from `train`, a tutorial "
                   "training_checkpoints directory or prefix, or a .weights.h5; exported (fp32 + int8) to a "
                   "temporary folder unless --model is given. Required unless --quick")
    g.add_argument("--model", metavar="EXPORT_DIR", help="an existing export of the same checkpoint "
                   "(model.onnx, model.int8.onnx, saved_model/), to skip the export")
    g.add_argument("--text", help="the training text, to rebuild a tutorial checkpoint's vocabulary")
    g.add_argument("--vocab", help="vocab.json for a checkpoint that holds no vocabulary")
    g = p.add_argument_group("what to measure")
    g.add_argument("--contestants", nargs="+", choices=CONTESTANTS, default=d.contestants, metavar="NAME",
                   help=f"any of {', '.join(CONTESTANTS)} (default: all). Without tutorial, tf-function and "
                   "savedmodel, and with --model, TensorFlow is not needed")
    g.add_argument("--batch-sizes", nargs="+", type=int, default=None, metavar="N",
                   help=f"default {' '.join(map(str, d.batch_sizes))} (the tutorial contestant runs at batch 1 only, "
                   "tf-function and savedmodel up to 256)")
    g.add_argument("--chars", type=int, default=None, help="steps of a measured run at batch 1; at batch B a run "
                   f"takes max(chars // B, --min-steps) steps, the same for every contestant (default {d.chars})")
    g.add_argument("--min-steps", type=int, default=None, help=f"fewest steps of a measured run (default {d.min_steps})")
    g.add_argument("--repeats", type=int, default=None, help="measured runs per contestant and batch size, "
                   f"alternating between contestants (default {d.repeats})")
    g.add_argument("--warmup", type=int, default=None, help=f"steps of the untimed warm-up run (default {d.warmup})")
    g.add_argument("--greedy-chars", type=int, default=None,
                   help=f"characters of the greedy agreement check at batch 1 (default {d.greedy_chars})")
    g.add_argument("--threads", type=int, default=d.threads,
                   help="intra-op threads for onnxruntime and TensorFlow (default: their own, all cores)")
    g.add_argument("--device", choices=BENCH_DEVICES, default=d.device,
                   help="auto: the CPU, and the GPU where TensorFlow or onnxruntime sees one (default)")
    g.add_argument("--temperature", type=float, default=d.temperature,
                   help="sampling temperature for all (default %(default)s)")
    g.add_argument("--start", default=d.start, help="start string (default %(default)r)")
    g.add_argument("--seed", type=int, default=d.seed, help="seeds sampling and the --quick model (default %(default)s)")
    g.add_argument("--quick", action="store_true", help="a tiny random model (unless --checkpoint) and short "
                   "runs at batch 1 and 8: checks the suite works, in well under a minute")
    g = p.add_argument_group("output")
    g.add_argument("--out", help=f"results folder (default: {default_out})")
    g.add_argument("--results-md", action="store_true",
                   help="also rewrite the repository's RESULTS.md (python -m benchmarks.generation in a checkout)")


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark generation: the tutorial's loops vs the exported model and engine",
                       description="Time the tutorial's generation loops, the exported SavedModel/ONNX models and "
                       "the decode engine on the same weights; writes JSON, markdown and a PNG chart.")
    add_bench_arguments(p)
    p.set_defaults(func=run_bench)


def config_from_args(args) -> BenchConfig:
    given = {k: getattr(args, k) for k in QUICK if getattr(args, k) is not None}  # None: the mode's default
    if "batch_sizes" in given:
        given["batch_sizes"] = tuple(given["batch_sizes"])
    common = dict(checkpoint=args.checkpoint, model=args.model, text=args.text, vocab=args.vocab,
                  contestants=tuple(dict.fromkeys(args.contestants)), threads=args.threads, device=args.device,
                  temperature=args.temperature, start=args.start, seed=args.seed, out=args.out,
                  command=command_line())
    if args.quick:
        return BenchConfig.quick_defaults(**common, **given)
    return BenchConfig(**common, **given)


def run_bench(args) -> int:
    if args.results_md:
        raise ConfigError("--results-md rewrites the repository's RESULTS.md: run `python -m benchmarks.generation "
                          "--results-md` from a source checkout (or drop --results-md)")
    measure_and_write(args, DEFAULT_OUT)
    return 0


def measure_and_write(args, default_out, machine: dict | None = None, name: str | None = None) -> Path:
    """Run the benchmark the flags describe; write its files (<name>-<stamp>.*, <name>-latest.*);
    the markdown to stdout."""
    log = stderr_logger("charrnn_export.bench")
    config = config_from_args(args).validate()
    out = Path(config.out or default_out)
    check_writable_dir(out, f"--out {out}")  # now: results that cannot be written are lost work
    results = run_generation_bench(config, machine)
    markdown = render_markdown(results)
    name = name or ("generation-quick" if config.quick else "generation")
    paths = write_results(results, out, name, markdown, plot(results))
    print(markdown)
    log.info(f"wrote {', '.join(str(p) for p in paths.values())} (and {name}-latest.*)")
    return out
