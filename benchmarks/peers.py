"""`python -m benchmarks.peers`: the project's generator against other runtimes on the same weights.

    python -m benchmarks.peers                          # the shipped model; batch 1 64 256; 8 repeats
    python -m benchmarks.peers --model EXPORT_DIR --batch-sizes 1 8 --repeats 1 --length 200
    python -m benchmarks.peers --contestants ort-int8 litert-int8 --results-md

Measures characters per second generating with sampling (the state fed back) at each batch size:
    generator-int8, generator-fp32   the project's API, Generator.load(model.int8.onnx / model.onnx)
    generator-fp32-auto              Generator.load(model.onnx, runtime="auto"): OpenVINO bf16 where
                                     the CPU has bf16 matrix units and openvino is installed
    cli-default                      what `python -m charrnn_export.sample` loads with no flags
    ort-fp32, ort-int8               the same files in a bare onnxruntime loop
    torch-fp32, torch-int8, torch-bf16   PyTorch nn.GRU, fp32 / quantize_dynamic qint8 / bf16
    openvino-default, openvino-f32   OpenVINO on model.onnx, default hints / INFERENCE_PRECISION_HINT f32
    litert-fp32, litert-int8         LiteRT, converted from the export's SavedModel (charrnn_export/litert_step.py)
each peer "+ sampling" (host sampling of its logits in numpy) and "step alone" (the same tokens every
step: the model call and the state fed back, no sampling). The weights are the export's (how each
peer gets them: benchmarks/peer_models.py). Host sampling is the project's rule (charrnn_export/
sampling.py: choose, temperature 1) unless --sampling softmax (a ten-line softmax sampler).

Each contestant runs in a process of its own (this module with --worker), all contestants in
one round in a rotating order, --repeats rounds; the table gives the median and min-max over the
rounds. A run times reading the start string and then --length characters; chars/s = batch *
length / that time, after a warm-up in the same process. The first round also checks each
contestant: greedy agreement (how many of --check-chars greedy characters equal those of the
project's fp32 Generator before they part) and the max |logit| and |state| difference against the
onnxruntime fp32 step on the same inputs (the states along that greedy text, in one batch).
Contestants whose package is missing are skipped with the reason (pip install 'charrnn-export[peers]').

Writes benchmarks/results/peers-<stamp>.json/.md/.png and peers-latest.*; --results-md rewrites
benchmarks/RESULTS.md (benchmarks/repo.py) with the section.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from charrnn_export.bench.report import command_line, fmt, fmt_load, package_version, write_results
from charrnn_export.commands.common import Parser, fail, run_guarded
from charrnn_export.errors import ConfigError, ModelError

from .peer_models import PEERS, load_peer, missing_package
from .repo import REPO, RESULTS_DIR, log, machine_info, refresh_results_md

PROJECT = {
    "generator-int8": "this project, `Generator.load(model.int8.onnx)`",
    "generator-fp32": "this project, `Generator.load(model.onnx)`",
    "generator-fp32-auto": "this project, `Generator.load(model.onnx, runtime=\"auto\")` (OpenVINO's bf16 where it is faster)",
    "cli-default": "this project, what `python -m charrnn_export.sample` loads with no flags",
}
MODES = {"sampling": "+ sampling", "step": "step alone"}
JOBS = [(name, "sampling") for name in PROJECT] + [(peer, mode) for peer in PEERS for mode in MODES]
NEEDS_INT8 = ("generator-int8", "ort-int8")
WARMUP_STEPS = 16
PEER_PACKAGES = ("torch", "openvino", "ai-edge-litert")


def job_key(name: str, mode: str) -> str:
    return name if name in PROJECT else f"{name} {MODES[mode]}"


# ---------------------------------------------------------------- sampling on the host


def rule_sampler(batch: int, seed: int):
    """The project's rule (sampling.choose) at temperature 1, uniforms from numpy's generator."""
    from charrnn_export.sampling import Settings, choose

    settings, rng = Settings.empty(batch), np.random.default_rng(seed)
    return lambda logits: choose(logits, settings, rng.random(batch))


def softmax_sampler(batch: int, seed: int):
    """A ten-line sampler: softmax, cumulative sum, the first id past a uniform draw."""
    rng = np.random.default_rng(seed)

    def sample(logits):
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))  # (batch, vocab)
        cdf = np.cumsum(weights, axis=1)
        ids = (cdf < (rng.random(batch) * cdf[:, -1])[:, None]).sum(axis=1)
        return np.minimum(ids, logits.shape[1] - 1).astype(np.int32)

    return sample


SAMPLERS = {"rule": rule_sampler, "softmax": softmax_sampler}


# ---------------------------------------------------------------- the worker: one contestant


def load_contestant(name: str, args, model_dir: Path):
    if name in PROJECT:
        from charrnn_export import Generator

        if name == "cli-default":
            from charrnn_export.commands.sample import build_parser

            flags = build_parser().parse_args(["--model", args.model] if args.model else [])
            return Generator.load(flags.model, runtime=flags.runtime, threads=args.threads or flags.threads,
                                  device=flags.device, vocab_path=flags.vocab)
        file = "model.int8.onnx" if name == "generator-int8" else "model.onnx"
        runtime = "auto" if name == "generator-fp32-auto" else "onnx"
        return Generator.load(str(model_dir / file), runtime=runtime, threads=args.threads)
    return load_peer(name, model_dir, Path(args.work), args.threads)


def time_generator(generator, batch: int, start: str, length: int, seed: int) -> float:
    generator.generate_batch([start] * batch, WARMUP_STEPS, seed=seed)
    t0 = time.perf_counter()
    generator.generate_batch([start] * batch, length, seed=seed)
    return time.perf_counter() - t0


def time_peer(peer, batch: int, start_ids: np.ndarray, length: int, sampler) -> float:
    """Seconds to read the start string and make `length` characters; sampler None: step alone."""
    priming = [np.full(batch, token, np.int32) for token in start_ids[:-1]]
    first = np.full(batch, start_ids[-1], np.int32)
    peer.begin(batch)
    for _ in range(WARMUP_STEPS):
        peer.advance(first)
    peer.begin(batch)
    t0 = time.perf_counter()
    for tokens in priming:
        peer.advance(tokens)
    tokens = first
    for _ in range(length):
        logits = peer.advance(tokens)
        if sampler is not None:
            tokens = sampler(peer.logits_numpy(logits))
    return time.perf_counter() - t0


def greedy_ids(contestant, name: str, start: str, start_ids: np.ndarray, chars: int) -> np.ndarray:
    if name in PROJECT:
        return contestant.vocab.encode(contestant.generate(start, chars, greedy=True))
    contestant.begin(1)
    for token in start_ids[:-1]:
        contestant.advance(np.array([token], np.int32))
    tokens, ids = np.array([start_ids[-1]], np.int32), []
    for _ in range(chars):
        tokens = np.argmax(contestant.logits_numpy(contestant.advance(tokens)), axis=1).astype(np.int32)
        ids.append(int(tokens[0]))
    return np.array(ids, np.int32)


def agreement(ids: np.ndarray, reference: np.ndarray) -> int:
    """Characters equal before the first difference."""
    differ = np.flatnonzero(ids[:len(reference)] != reference[:len(ids)])
    return int(differ[0]) if len(differ) else int(min(len(ids), len(reference)))


def check_contestant(contestant, name: str, start: str, reference: dict) -> dict:
    step = contestant.runtime.step if name in PROJECT else contestant.step
    logits, state = step(reference["tokens"], reference["states"])  # every state of the greedy text, one batch
    ids = greedy_ids(contestant, name, start, reference["start_ids"], len(reference["greedy_ids"]))
    return {"greedy_agreement": agreement(ids, reference["greedy_ids"]), "greedy_chars": len(reference["greedy_ids"]),
            "max_logit_diff": float(np.abs(logits - reference["logits"]).max()),
            "max_state_diff": float(np.abs(state - reference["state_out"]).max())}


def run_worker(args) -> int:
    """One contestant in this process: chars/s at each batch size, one JSON line on stdout."""
    name, mode = args.worker, args.mode
    if not args.work or name not in {*PROJECT, *PEERS}:
        raise ConfigError("--worker is how the benchmark runs one contestant; run `python -m benchmarks.peers` "
                          "(with --contestants NAME for one)")
    model_dir = Path(args.model) if args.model else shipped_dir()
    reference = dict(np.load(Path(args.work) / "reference.npz"))
    package = PEERS[name][0] if name in PEERS else None
    reason = missing_package(package) if package else None
    if reason:
        print(json.dumps({"skipped": reason}))
        return 0
    contestant = load_contestant(name, args, model_dir)
    start = args.start
    chars_per_s = {}
    for batch in args.batch_sizes:
        if name in PROJECT:
            seconds = time_generator(contestant, batch, start, args.length, args.seed)
        else:
            sampler = SAMPLERS[args.sampling](batch, args.seed) if mode == "sampling" else None
            seconds = time_peer(contestant, batch, reference["start_ids"], args.length, sampler)
        chars_per_s[str(batch)] = batch * args.length / seconds
    result = {"chars_per_s": chars_per_s}
    if args.check:
        result["check"] = check_contestant(contestant, name, start, reference)
        if hasattr(contestant, "precision"):
            result["check"]["precision"] = contestant.precision
    print(json.dumps(result))
    return 0


def shipped_dir() -> Path:
    from charrnn_export.generate import shipped_model_path

    return shipped_model_path("fp32").parent


# ---------------------------------------------------------------- the parent: preparing, rounds, results


def write_reference(model_dir: Path, start: str, chars: int, path: Path) -> dict:
    """The project's fp32 greedy text and, along it, the onnxruntime fp32 step's inputs and outputs."""
    from charrnn_export import Generator

    generator = Generator.load(str(model_dir / "model.onnx"))
    start_ids = generator.vocab.encode(start).astype(np.int32)
    greedy = generator.vocab.encode(generator.generate(start, chars, greedy=True)).astype(np.int32)
    runtime = generator.runtime
    sequence = np.concatenate([start_ids, greedy])[:-1]  # each step's input token
    state = runtime.zero_state(1)
    states, logits, state_out = [], [], []
    for token in sequence:
        states.append(state[0])
        step_logits, state = runtime.step(np.array([token], np.int32), state)
        logits.append(step_logits[0])
        state_out.append(state[0])
    reference = {"start_ids": start_ids, "greedy_ids": greedy, "tokens": sequence.astype(np.int32),
                 "states": np.array(states, np.float32), "logits": np.array(logits, np.float32),
                 "state_out": np.array(state_out, np.float32)}
    np.savez(path, **reference)
    from charrnn_export.cells import Architecture

    return {"config": runtime.config, "vocab_size": runtime.vocab_size, "rnn_units": runtime.rnn_units,
            "architecture": Architecture.from_config(runtime.config, runtime.name).describe()}


def prepare_litert(args) -> int:
    """--prepare-litert WORK: model.tflite and model.int8.tflite in WORK from the export's SavedModel
    (one made from model.onnx when the export has none, as the shipped artifacts/ do not)."""
    from charrnn_export.litert_step import LITERT_FILES, saved_model_from_onnx, write_litert_model

    model_dir, work = (Path(args.model) if args.model else shipped_dir()), Path(args.prepare_litert)
    saved_model = model_dir / "saved_model"
    if not (saved_model / "saved_model.pb").is_file():
        saved_model = saved_model_from_onnx(model_dir / "model.onnx", work / "saved_model")
    for precision, file in LITERT_FILES.items():
        write_litert_model(saved_model, work / file, precision)
    print(json.dumps({"written": sorted(LITERT_FILES.values())}))
    return 0


def worker_command(args, *extra: str) -> list[str]:
    command = [sys.executable, "-m", "benchmarks.peers", "--work", args.work, "--length", str(args.length),
               "--start", args.start, "--seed", str(args.seed), "--sampling", args.sampling,
               "--batch-sizes", *map(str, args.batch_sizes), *extra]
    if args.model:
        command += ["--model", args.model]
    if args.threads:
        command += ["--threads", str(args.threads)]
    return command


def run_child(command: list[str], timeout: float) -> tuple[dict | None, str]:
    """(the JSON line the child printed, or None; the last line of its stderr)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None, f"took more than {timeout:g} s (--timeout)"
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    last = errors[-1][:300] if errors else f"exit status {done.returncode}"
    if done.returncode != 0:
        return None, last
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else None), last


def skip_reasons(args, model_dir: Path, jobs: list[tuple[str, str]]) -> dict[str, str]:
    """contestant -> why it cannot run here (a missing package or file); the LiteRT files are made here."""
    reasons = {}
    for name in {name for name, _ in jobs}:
        if name in NEEDS_INT8 and not (model_dir / "model.int8.onnx").is_file():
            reasons[name] = f"no model.int8.onnx in {model_dir} (export with --quantize int8)"
        elif name in PEERS and (reason := missing_package(PEERS[name][0])):
            reasons[name] = reason
    litert = [name for name, _ in jobs if name.startswith("litert-") and name not in reasons]
    if litert:
        log("converting the step to LiteRT (fp32, int8)")
        result, last = run_child([sys.executable, "-m", "benchmarks.peers", "--prepare-litert", args.work]
                                 + (["--model", args.model] if args.model else []), args.timeout)
        if result is None:
            reasons.update({name: f"the LiteRT conversion failed: {last}" for name in litert})
    return reasons


def rounds(args, jobs: list[tuple[str, str]]) -> tuple[dict, dict, dict, list]:
    """runs[key][batch] -> [chars/s per round]; checks[name]; failures[key] -> ("skipped" | "failed",
    why); the order of each round."""
    runs, checks, failures, orders = {}, {}, {}, []
    for r in range(args.repeats):
        order = jobs[r % len(jobs):] + jobs[:r % len(jobs)]
        orders.append([job_key(*job) for job in order])
        for name, mode in order:
            key = job_key(name, mode)
            if key in failures:
                continue
            check = r == 0 and name not in checks
            log(f"round {r + 1}/{args.repeats}: {key}")
            result, last = run_child(worker_command(args, "--worker", name, "--mode", mode,
                                                    *(["--check"] if check else [])), args.timeout)
            if result is None or "skipped" in result:
                failures[key] = ("skipped", result["skipped"]) if result else ("failed", last)
                continue
            for batch, value in result["chars_per_s"].items():
                runs.setdefault(key, {}).setdefault(batch, []).append(value)
            if check:
                checks[name] = result["check"]
    return runs, checks, failures, orders


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def measure(args) -> dict:
    model_dir = Path(args.model) if args.model else shipped_dir()
    if not (model_dir / "model.onnx").is_file():
        raise ModelError(f"no model.onnx in {model_dir}; pass --model with an export directory (from `to-onnx`)")
    jobs = [job for job in JOBS if not args.contestants or job[0] in args.contestants]
    machine = machine_info()
    machine["versions"].update({p: v for p in PEER_PACKAGES if (v := package_version(p))})
    with tempfile.TemporaryDirectory(prefix="charrnn-peers-") as work:
        args.work = work
        model = write_reference(model_dir, args.start, args.check_chars, Path(work) / "reference.npz")
        reasons = skip_reasons(args, model_dir, jobs)
        runnable = [job for job in jobs if job[0] not in reasons]
        runs, checks, failures, orders = rounds(args, runnable) if runnable else ({}, {}, {}, [])
    machine["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    rows = []
    for name, mode in jobs:
        key = job_key(name, mode)
        row = {"key": key, "contestant": name, "mode": mode,
               "what": PROJECT.get(name) or PEERS[name][1], "check": checks.get(name)}
        if name in reasons:
            row["skipped"] = reasons[name]
        elif key in failures:
            row[failures[key][0]] = failures[key][1]
        else:
            row["chars_per_s"] = {batch: summary(values) for batch, values in runs[key].items()}
        rows.append(row)
    return {
        "date": datetime.now().isoformat(timespec="seconds"), "command": command_line(), "machine": machine,
        "model": {"dir": str(model_dir), **model},
        "settings": {"batch_sizes": args.batch_sizes, "length": args.length, "repeats": args.repeats,
                     "start": args.start, "seed": args.seed, "sampling": args.sampling, "temperature": 1.0,
                     "check_chars": args.check_chars, "threads": args.threads, "warmup_steps": WARMUP_STEPS},
        "rounds": orders, "rows": rows,
    }


# ---------------------------------------------------------------- markdown and the plot


def fmt_cell(figures: dict | None) -> str:
    if not figures:
        return "-"
    return f"{fmt(figures['median'])} ({fmt(figures['min'])}-{fmt(figures['max'])})"


def fmt_check(row: dict) -> tuple[str, str]:
    check = row.get("check")
    if not check or row["mode"] == "step":
        return "", ""
    chars, same = check["greedy_chars"], check["greedy_agreement"]
    greedy = f"= fp32 for {chars}" if same == chars else f"parts at {same}"
    precision = f" ({check['precision']})" if check.get("precision") else ""
    return greedy, f"{check['max_logit_diff']:.2g} / {check['max_state_diff']:.2g}{precision}"


def model_layers(model: dict) -> str:
    """The model's recurrent layers as recorded ("gru(1024) x1"); an older results file has its GRU's units."""
    return model.get("architecture") or f"gru({model['rnn_units']}) x1"


def render_markdown(results: dict) -> str:
    m, s, model = results["machine"], results["settings"], results["model"]
    batches = [str(b) for b in s["batch_sizes"]]
    sampling = ("the project's rule (sampling.choose, temperature 1)" if s["sampling"] == "rule"
                else "a ten-line numpy softmax sampler")
    lines = [
        "## Peers: the same weights in other runtimes", "",
        f"- date: {results['date']}; command: `{results['command']}`",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m.get('cores_usable')} usable), load average "
        f"{fmt_load(m.get('load_average'))} before, {fmt_load(m.get('load_average_after'))} after; git "
        f"{m.get('git_commit')}",
        "- libraries: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- model: {model_layers(model)}, vocabulary {model['vocab_size']}, from {model['dir']}",
        f"- characters per second generating with the state fed back: the start {s['start']!r} then {s['length']} "
        f"characters per run (chars/s = batch x {s['length']} / the run's time, start included, after "
        f"{s['warmup_steps']} warm-up steps); one process per contestant, rotating order, {s['repeats']} rounds: "
        f"median (min-max); host sampling: {sampling}; threads {s['threads'] or 'each library default'} "
        "(LiteRT: the usable cores)",
        f"- greedy: how many of {s['check_chars']} greedy characters equal the project's fp32 Generator's before "
        "they part; max |diff|: logits / state against the onnxruntime fp32 step on the same inputs (the states "
        "along that greedy text)",
        "",
        "| contestant | what | " + " | ".join(f"batch {b}" for b in batches) + " | greedy text | max diff |",
        "|---|---|" + "---:|" * len(batches) + "---|---|",
    ]
    notes = []
    for row in results["rows"]:
        if "chars_per_s" not in row:
            notes.append(f"- {row['key']}: {'skipped' if 'skipped' in row else 'FAILED'}: "
                         f"{row.get('skipped') or row.get('failed')}")
            continue
        greedy, diff = fmt_check(row)
        cells = [fmt_cell(row["chars_per_s"].get(b)) for b in batches]
        lines.append(f"| {row['key']} | {row['what']} | " + " | ".join(cells) + f" | {greedy} | {diff} |")
    lines += [""] + notes + ([""] if notes else [])
    lines += verdicts(results["rows"], batches)
    lines += ["![chars/s of each contestant by batch size](results/peers-latest.png)", ""]
    return "\n".join(lines)


def verdicts(rows: list[dict], batches: list[str]) -> list[str]:
    """The issue's comparisons, as lines: the project's int8 Generator against the fastest peer
    generating with sampling, and its fp32-weights paths against OpenVINO's default on model.onnx."""
    medians = {r["key"]: {b: r["chars_per_s"][b]["median"] for b in batches if b in r["chars_per_s"]}
               for r in rows if "chars_per_s" in r}
    peers = {k: v for k, v in medians.items() if k.endswith(MODES["sampling"]) and k.split()[0] in PEERS}
    lines = []
    for batch in batches:
        ours = medians.get("generator-int8", {}).get(batch)
        rivals = {k: v[batch] for k, v in peers.items() if batch in v}
        if ours is None or not rivals:
            continue
        best = max(rivals, key=rivals.get)
        lines.append(f"- batch {batch}: generator-int8 {ours:,.0f} vs the fastest peer, {best}, {rivals[best]:,.0f}: "
                     f"{ours / rivals[best]:.2f}x")
        openvino = peers.get(f"openvino-default {MODES['sampling']}", {}).get(batch)
        for name in ("generator-fp32", "generator-fp32-auto"):
            fp32 = medians.get(name, {}).get(batch)
            if fp32 is not None and openvino:
                lines.append(f"  - {name} {fp32:,.0f} vs openvino-default + sampling {openvino:,.0f}: "
                             f"{fp32 / openvino:.2f}x")
    return lines + [""] if lines else []


FAMILY_COLOURS = {"generator": "#1e88e5", "cli": "#1565c0", "ort": "#43a047", "torch": "#ef6c00",
                  "openvino": "#8e24aa", "litert": "#e53935"}


def plot(results: dict) -> bytes | None:
    """One panel per batch size: a bar per contestant (min-max as a whisker), step-alone bars hatched."""
    from importlib.util import find_spec

    rows = [r for r in results["rows"] if "chars_per_s" in r]
    if find_spec("matplotlib") is None or not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = [str(b) for b in results["settings"]["batch_sizes"]]
    fig, axes = plt.subplots(1, len(batches), figsize=(4.6 * len(batches), 0.32 * len(rows) + 1.6),
                             squeeze=False, sharey=True)
    for ax, batch in zip(axes[0], batches):
        shown = [r for r in rows if batch in r["chars_per_s"]]
        ys = range(len(shown))
        medians = [r["chars_per_s"][batch]["median"] for r in shown]
        spread = [[m - r["chars_per_s"][batch]["min"] for m, r in zip(medians, shown)],
                  [r["chars_per_s"][batch]["max"] - m for m, r in zip(medians, shown)]]
        bars = ax.barh(list(ys), medians, xerr=spread, error_kw={"linewidth": 0.8}, zorder=2,
                       color=[FAMILY_COLOURS.get(r["contestant"].split("-")[0], "#757575") for r in shown])
        for bar, row in zip(bars, shown):
            if row["mode"] == "step":
                bar.set_hatch("///")
                bar.set_alpha(0.55)
        for y, value in zip(ys, medians):
            ax.annotate(f"{value:,.0f}", (value, y), va="center", fontsize=6.5, xytext=(3, 0),
                        textcoords="offset points")
        ax.set_yticks(list(ys), [r["key"] for r in shown], fontsize=7)
    axes[0][0].invert_yaxis()  # the first contestant on top (the panels share the y axis: once)
    for ax, batch in zip(axes[0], batches):
        ax.set_xscale("log")
        ax.set_xlabel("characters per second (log)")
        ax.set_title(f"batch {batch}", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.25)
    model = results["model"]
    fig.suptitle(f"the same weights in other runtimes: {model_layers(model)}, vocab {model['vocab_size']}; "
                 f"{results['machine']['cpu'][:48]}", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


# ---------------------------------------------------------------- the command


def check_args(args) -> None:
    if any(b < 1 for b in args.batch_sizes):
        raise ConfigError("--batch-sizes must all be >= 1")
    if args.length < 1 or args.repeats < 1 or args.check_chars < 1:
        raise ConfigError("--length, --repeats and --check-chars must be >= 1")
    unknown = sorted(set(args.contestants or ()) - set(PROJECT) - set(PEERS))
    if unknown:
        raise ConfigError(f"unknown contestant(s) {', '.join(unknown)}; choose from "
                          f"{', '.join([*PROJECT, *PEERS])}")
    if args.model and not Path(args.model).is_dir():
        raise ConfigError(f"--model {args.model} is not a directory; pass an export directory (from `to-onnx`)")


def run(args) -> int:
    if args.prepare_litert:
        return prepare_litert(args)
    if args.worker:
        return run_worker(args)
    check_args(args)
    results = measure(args)
    markdown = render_markdown(results)
    paths = write_results(results, args.out, "peers", markdown, plot(results))
    print(markdown)
    for path in paths.values():
        log(f"wrote {path}")
    if args.results_md:
        log(f"wrote {refresh_results_md(args.out)}")
    failed = [row["key"] for row in results["rows"] if "failed" in row]
    return fail(f"contestant(s) failed: {', '.join(failed)}", 1) if failed else 0


def build_parser() -> Parser:
    p = Parser(prog="python -m benchmarks.peers", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, metavar="DIR",
                   help="an export directory with model.onnx (and model.int8.onnx) (default: the shipped model)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 256], metavar="N")
    p.add_argument("--length", type=int, default=500, help="characters per run (default %(default)s)")
    p.add_argument("--repeats", type=int, default=8, help="rounds of every contestant (default %(default)s)")
    p.add_argument("--contestants", nargs="+", default=None, metavar="NAME",
                   help=f"a subset of: {', '.join([*PROJECT, *PEERS])} (default: all)")
    p.add_argument("--start", default="ROMEO: ", help="the start string (default %(default)r)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampling", choices=tuple(SAMPLERS), default="rule",
                   help="host sampling: the project's rule or a ten-line softmax sampler (default %(default)s)")
    p.add_argument("--check-chars", type=int, default=200, help="greedy characters compared (default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for every runtime (default: theirs)")
    p.add_argument("--timeout", type=float, default=900, help="seconds a contestant's process may take")
    p.add_argument("--out", default=RESULTS_DIR, type=Path, help="results folder (default benchmarks/results)")
    p.add_argument("--results-md", action="store_true", help="also rewrite RESULTS.md beside the results folder")
    # The parent calls itself with these: one contestant per process.
    p.add_argument("--worker", default=None, help=argparse_hidden())
    p.add_argument("--mode", choices=tuple(MODES), default="sampling", help=argparse_hidden())
    p.add_argument("--check", action="store_true", help=argparse_hidden())
    p.add_argument("--work", default=None, help=argparse_hidden())
    p.add_argument("--prepare-litert", default=None, help=argparse_hidden())
    return p


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return run_guarded(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
