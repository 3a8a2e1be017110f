"""How much the decode engine adds to the bare ONNX step: the Python loop's per-character overhead.

    python benchmarks/sampler_overhead.py --model MODEL.onnx [--threads N] [--batch-sizes 1 64]
    python benchmarks/sampler_overhead.py --model int8 --sampler graph     # against the decode model

For each batch size it times, in alternating repeats (so a busy machine slows both alike):
    bare       session.run in a loop, fixed tokens, the state fed back: the floor (with
               --sampler graph, the decode model's session.run: the step and the sampling in the graph)
    generator  Generator.stream (batch 1, consumed one character at a time, as `sample --stream`
               does) or Generator.generate_batch (batch > 1): priming, sampling, decoding included
and prints the medians (and min-max) per step and the overhead = generator / bare - 1.
Steady generation is timed apart from priming and the first character (time to first char).
--json FILE also writes the figures with the machine and library versions; --results-md writes
benchmarks/results/overhead-<model>-latest.md and rewrites benchmarks/RESULTS.md with it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository's package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from charrnn_export import Generator, contract  # noqa: E402


def bare_step_seconds(session, batch: int, steps: int, rnn_units: int) -> float:
    """Seconds per session.run, with the state fed back as generation does (a step model, or a
    decode model with fixed sampling settings and random numbers)."""
    tokens = np.zeros(batch, dtype=np.int32)
    state = np.zeros((batch, rnn_units), dtype=np.float32)
    feeds = {contract.TOKEN: tokens}
    if contract.UNIFORM in {i.name for i in session.get_inputs()}:
        outputs = [contract.NEXT_TOKEN, contract.STATE_OUT, contract.LOGIT_CHECK]
        feeds.update({contract.TEMPERATURE: np.ones(batch, np.float32), contract.TOP_K: np.zeros(batch, np.int64),
                      contract.TOP_P: np.ones(batch, np.float32), contract.GREEDY: np.zeros(batch, bool),
                      contract.UNIFORM: np.full(batch, 0.5), contract.RESET: np.zeros(batch, bool)})
        pick = 1
    else:
        outputs, pick = [contract.LOGITS, contract.STATE_OUT], 1
    t0 = time.perf_counter()
    for _ in range(steps):
        state = session.run(outputs, {**feeds, contract.STATE: state})[pick]
    return (time.perf_counter() - t0) / steps


def generator_seconds(generator, start: str, batch: int, length: int, options: dict) -> tuple[float, float]:
    """(seconds per character after the first, seconds to the first character: priming + one choice)."""
    if batch == 1:
        t0 = time.perf_counter()
        chars = generator.stream(start, length, **options)
        next(chars)
        t1 = time.perf_counter()
        for _ in chars:
            pass
        t2 = time.perf_counter()
        return (t2 - t1) / (length - 1), t1 - t0
    # generate_batch returns only at the end: time a one-character call (priming and the first
    # choice) and take it off the full call.
    t0 = time.perf_counter()
    generator.generate_batch([start] * batch, 1, **options)
    t1 = time.perf_counter()
    generator.generate_batch([start] * batch, length, **options)
    t2 = time.perf_counter()
    first = t1 - t0
    return (t2 - t1 - first) / (length - 1), first


def summary(values: list[float]) -> dict:
    return {"median_us": statistics.median(values) * 1e6, "min_us": min(values) * 1e6, "max_us": max(values) * 1e6}


def measure(generator, batch: int, length: int, repeats: int, options: dict, session) -> dict:
    runtime = generator.runtime
    start = "\n" if "\n" in generator.vocab.chars else generator.vocab.chars[0]  # one priming step
    bare_step_seconds(session, batch, 50, runtime.rnn_units)  # warm up both
    generator_seconds(generator, start, batch, 50, options)
    bare, per_char, first = [], [], []
    for repeat in range(repeats):
        bare.append(bare_step_seconds(session, batch, length, runtime.rnn_units))
        per, to_first = generator_seconds(generator, start, batch, length, {**options, "seed": repeat})
        per_char.append(per)
        first.append(to_first)
    b, g = statistics.median(bare), statistics.median(per_char)
    return {
        "batch": batch, "length": length, "repeats": repeats,
        "bare_step": summary(bare), "generator_step": summary(per_char), "time_to_first_char": summary(first),
        "overhead_pct": (g / b - 1.0) * 100.0,
        "overhead_us": (g - b) * 1e6,
        "chars_per_s": batch / g,
    }


def environment(model: str, threads: int | None) -> dict:
    import onnxruntime

    return {
        "model": model, "threads": threads, "python": platform.python_version(), "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__, "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model.onnx or export directory (default: the shipped model)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: its own)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64], help="(default %(default)s)")
    p.add_argument("--length", type=int, default=2000, help="characters (steps) per repeat (default %(default)s)")
    p.add_argument("--repeats", type=int, default=9, help="alternating repeats; medians reported (%(default)s)")
    p.add_argument("--temperature", type=float, default=1.0, help="(default %(default)s)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--sampler", choices=("host", "graph"), default="host",
                   help="host: host sampling (sampling.py, compiled where built), against the step model; "
                   "graph: the decode model, against its own "
                   "session.run (default %(default)s)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--results-md", action="store_true", help="also record the table in benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    if args.length < 2 or args.repeats < 1:
        p.error("--length must be >= 2 and --repeats >= 1")

    generator = Generator.load(args.model, runtime="onnx", threads=args.threads, sampler=args.sampler)
    session = generator.runtime.session
    if args.sampler == "graph":  # the bare decode model, in a session of its own
        from charrnn_export.runtimes.onnx_decode import OnnxDecoder, find_decode_model

        session = OnnxDecoder(find_decode_model(generator.runtime.path), 1, threads=args.threads).session
    options = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "greedy": args.greedy}
    env = environment(str(generator.runtime.path), args.threads)
    env["sampler"] = args.sampler
    print(f"model {env['model']}: state {generator.runtime.rnn_units} wide, vocab {len(generator.vocab)}; "
          f"threads {args.threads or 'default'}; sampling {options}; medians of {args.repeats} x {args.length} steps")
    print(f"{'batch':>5}  {'bare step us':>14}  {'generator us/step':>18}  {'overhead':>9}  "
          f"{'gen chars/s':>12}  {'first char ms':>13}")
    results = []
    for batch in args.batch_sizes:
        r = measure(generator, batch, args.length, args.repeats, options, session)
        results.append(r)
        print(f"{batch:>5}  {r['bare_step']['median_us']:>14.1f}  {r['generator_step']['median_us']:>18.1f}  "
              f"{r['overhead_pct']:>8.1f}%  {r['chars_per_s']:>12,.0f}  "
              f"{r['time_to_first_char']['median_us'] / 1e3:>13.2f}", flush=True)
    if args.json:
        from charrnn_export.files import atomic_write_text

        atomic_write_text(args.json, json.dumps({"environment": env, "sampling": options, "results": results},
                                                indent=2) + "\n")
    if args.results_md:
        record(env, options, args, results)
    return 0


def record(env: dict, options: dict, args, results: list[dict], out: Path | None = None) -> Path:
    """overhead-<model>-latest.md (and a dated copy) in `out` (benchmarks/results/), then the
    RESULTS.md beside it; returns the section's path."""
    from datetime import datetime, timezone

    from benchmarks.repo import REPO, machine_info, refresh_results_md
    from charrnn_export.bench import command_line, write_results

    label = Path(env["model"]).name.removesuffix(".onnx").removeprefix("model.")  # model.int8.onnx -> int8
    label = "fp32" if label == "model" else label
    machine = machine_info()
    lines = [f"## The engine against the bare step: {label} ({env['model']})", "",
             f"- date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}; command: `{command_line()}`",
             f"- machine: {machine.get('cpu', '?')}, {env['cpu_count']} cores, load average "
             f"{'/'.join(f'{v:.2f}' for v in env['load_average'] or ())} before; numpy {env['numpy']}, "
             f"onnxruntime {env['onnxruntime']}; git {machine.get('git_commit')}",
             f"- bare: `session.run` in a loop with fixed tokens, the state fed back; generator: `Generator.stream` "
             f"(batch 1, one character at a time) or `generate_batch`, sampling {options}; alternating repeats, "
             f"medians of {args.repeats} x {args.length} steps (min-max)", "",
             "| batch | bare step µs | generator µs/step | generator / bare | generator chars/s | first char ms |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        b, g = r["bare_step"], r["generator_step"]
        lines.append(f"| {r['batch']} | {b['median_us']:.1f} ({b['min_us']:.1f}-{b['max_us']:.1f}) | "
                     f"{g['median_us']:.1f} ({g['min_us']:.1f}-{g['max_us']:.1f}) | "
                     f"{g['median_us'] / b['median_us']:.3f}x | {r['chars_per_s']:,.0f} | "
                     f"{r['time_to_first_char']['median_us'] / 1e3:.2f} |")
    out = out or REPO / "benchmarks" / "results"
    paths = write_results({"environment": env, "sampling": options, "results": results}, out, f"overhead-{label}",
                          "\n".join(lines) + "\n", None)
    print(f"wrote {refresh_results_md(out)}")
    return paths["md"]


if __name__ == "__main__":
    sys.exit(main())
