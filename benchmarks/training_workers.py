"""Training throughput with `--strategy multi-worker`: 1 and 2 worker processes on this machine.

    python -m benchmarks.training --workers 1 2 [--data FILE] [--epochs 4] [--chars 70000] [--results-md]

Each contestant is `charrnn-export train` run as a user runs it (subprocesses; workers on 127.0.0.1
ports), on the first --chars characters of the text so that an epoch is a few steps:

    one process    no --strategy: the default loop
    N worker(s)    --strategy multi-worker with N processes (TF_CONFIG per process), the same global
                   batch split over them; each gets cores // N intra-op threads

The figure is the chief's own metric: metrics.jsonl's chars_per_sec (global characters over its
train-step seconds, validation left out) over the epochs after the first (tracing is left out).
On one machine the workers share its cores, so no speed-up is expected: the table shows what the
collectives and the split batch cost. Across machines each worker brings its own cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from charrnn_export import bench

from . import repo
from charrnn_export.data import load_text
from charrnn_export.distribute import local_tf_configs
from charrnn_export.errors import ConfigError

TIMEOUT = 1800  # seconds for one contestant's processes


def train_command(data: Path, out: Path, settings: dict, extra: tuple = ()) -> list[str]:
    flags = []
    for name in ("embedding_dim", "rnn_units", "batch_size", "seq_length", "epochs", "seed", "learning_rate"):
        flags += [f"--{name.replace('_', '-')}", str(settings[name])]
    return [sys.executable, "-m", "charrnn_export.cli", "train", "--data", str(data), "--out", str(out),
            *flags, *extra]


def run_processes(commands: list[list[str]], envs: list[dict], logs: list[Path]) -> None:
    """Run the commands together; kill every one still running if one fails or time runs out."""
    procs = []
    try:
        for command, env, log in zip(commands, envs, logs):
            with open(log, "wb") as err:
                procs.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env))
        deadline = time.monotonic() + TIMEOUT
        for proc, log in zip(procs, logs):
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            if proc.returncode != 0:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:]
                raise ConfigError(f"training benchmark: a worker failed (exit {proc.returncode}): {tail}")
    except subprocess.TimeoutExpired:
        raise ConfigError(f"training benchmark: the workers did not finish in {TIMEOUT} s") from None
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def measure(run: Path, settings: dict) -> dict:
    """chars/s and ms/step over the epochs after the first, from the chief's metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    measured = rows[1:]
    steps = rows[-1]["global_step"] - rows[0]["global_step"]
    seconds = sum(r["epoch_time"] for r in measured)
    chars = steps * settings["batch_size"] * settings["seq_length"]
    return {"epochs": len(measured), "steps": steps, "seconds": seconds, "chars_per_s": chars / seconds,
            "ms_per_step": seconds / steps * 1e3,
            "epoch_chars_per_s": [r["chars_per_sec"] for r in measured], "final_loss": rows[-1]["train_loss"]}


def run_contestant(workers: int | None, data: Path, scratch: Path, settings: dict) -> dict:
    """workers=None: one process without --strategy; else that many multi-worker processes."""
    name = "one process" if workers is None else f"{workers} worker{'s' if workers > 1 else ''}"
    repo.log(f"{name}: {settings['epochs']} epochs ...")
    base = f"workers-{workers or 0}"
    cores = os.cpu_count() or 1
    if workers is None:
        commands = [train_command(data, scratch / base / "run0", settings)]
        envs, threads = [dict(os.environ)], cores
    else:
        threads = max(1, cores // workers)
        commands = [train_command(data, scratch / base / f"run{i}", settings, ("--strategy", "multi-worker"))
                    for i in range(workers)]
        envs = [{**os.environ, "TF_CONFIG": tf_config, "TF_NUM_INTRAOP_THREADS": str(threads)}
                for tf_config in local_tf_configs(workers)]
    logs = [scratch / f"{base}-{i}.stderr" for i in range(len(commands))]
    for env in envs:
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    started = time.perf_counter()
    run_processes(commands, envs, logs)
    figures = measure(scratch / base / "run0", settings)
    return {"name": name, "processes": len(commands), "intra_op_threads": threads,
            "wall_seconds": time.perf_counter() - started, **figures}


def run_workers_bench(worker_counts: list[int], data: str, scratch: Path, settings: dict, command: str) -> dict:
    text, _ = load_text(data)
    sliced = scratch / "text.txt"
    sliced.write_text(text[: settings["chars"]], encoding="utf-8")
    machine = repo.machine_info()
    contestants = [run_contestant(None, sliced, scratch, settings)]
    contestants += [run_contestant(n, sliced, scratch, settings) for n in worker_counts]
    machine["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    base = contestants[0]["chars_per_s"]
    for c in contestants:
        c["over_one_process"] = c["chars_per_s"] / base
    from datetime import datetime, timezone

    return {"benchmark": "training-workers", "schema": 1, "command": command, "machine": machine,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "settings": {**settings, "data": data}, "contestants": contestants}


def render_markdown(results: dict) -> str:
    m, s = results["machine"], results["settings"]
    lines = [
        "# Training throughput with several workers",
        "",
        f"- date: {results['date']}; command: `{results['command']}`",
        f"- machine: {m['cpu']}, {m['cores']} cores, load average {bench.fmt_load(m.get('load_average'))} before, "
        f"{bench.fmt_load(m.get('load_average_after'))} after; every worker on this one machine (127.0.0.1)",
        "- libraries: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- model: embedding {s['embedding_dim']}, GRU {s['rnn_units']} units; global batch {s['batch_size']} x "
        f"{s['seq_length']} characters; first {s['chars']:,} characters of {s['data']}; {s['epochs']} epochs, "
        "the first (tracing) left out; the figure is the chief's metrics.jsonl chars_per_sec",
        "",
        "| run | processes | intra-op threads each | steps | ms/step | chars/s | x one process |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in results["contestants"]:
        lines.append(f"| {c['name']} | {c['processes']} | {c['intra_op_threads']} | {c['steps']} | "
                     f"{bench.fmt_ms(c['ms_per_step'])} | {c['chars_per_s']:,.0f} | {c['over_one_process']:.2f}x |")
    lines += ["", "All workers share this machine's cores: the ratio is what splitting the batch over processes "
              "(each with fewer threads) and one all-reduce per step cost or save here, not what more machines "
              "would give. Other work on the machine moves these figures: compare the load averages.", ""]
    return "\n".join(lines)
