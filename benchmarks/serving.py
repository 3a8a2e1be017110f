"""Load benchmark for `charrnn-export serve`: continuous batching against the engine alone and a naive server.

    python -m benchmarks.serving                       # shipped int8 model; 1, 16, 64, 256 streams
    python -m benchmarks.serving --client wrk --streams 1 64 256 --duration 10 --results-md
    python -m benchmarks.serving --soak 300            # good, bad and abruptly closed requests mixed

For each number of concurrent streams, a load generator on 127.0.0.1 keeps that many streaming
requests open for --duration seconds, each starting the next as soon as one ends. Two clients
(--client, default both when wrk is installed, else python):

  python   async httpx in this process: characters counted from the events it reads, the time to
           the first character and the gap between events (p50/p99), and errors. It is heavy: at
           256 streams it takes a large share of the cores the server needs, so it understates
           what the server can make.
  wrk      the compiled load generator (apt-get install wrk) with benchmarks/wrk_post.lua: light,
           so its chars/s is the server's own; characters are counted from the server's /metrics
           before and after, latency is the whole response's (wrk cannot see the first event).

Every row says how much CPU the client and the server took (CPU seconds / (wall seconds x usable
cores)): the server's from /proc/PID/stat (with its engine processes), the Python client's from this process's rusage, wrk's
from the rusage of its finished process. Beside it: the engine alone (same lengths, same number of
requests in its batch, no HTTP) and a naive server (benchmarks/naive_server.py: a thread per
request running what Generator.generate runs), loaded by the first client named. Results go to
--out (benchmarks/results/) as serving-*.json, .md and .png; --results-md rewrites RESULTS.md
beside it (benchmarks/repo.py).

The soak run checks that nothing answers 500 and that the server's resident memory stays flat.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from charrnn_export.commands.common import fail
from charrnn_export.files import atomic_write_text

from .repo import REPO, RESULTS_DIR, add_results_flags, refresh_results_md, suite_parser

PROMPT = "ROMEO:"
WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_post.lua"
CLIENTS = ("python", "wrk")


# ---------------------------------------------------------------- processes


class Process:
    """A server in a subprocess; its stderr in a file; stopped by pid."""

    def __init__(self, command: list[str], name: str):
        self.log_path = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline, self.url = time.monotonic() + 120, None
        while self.url is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not start:\n{self.log_path.read_text()}")
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", self.log_path.read_text())
            self.url = found.group(1) if found else None
            time.sleep(0.1)
        import httpx

        while httpx.get(f"{self.url}/health", timeout=10).status_code != 200:
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid)

    def rss_mb(self) -> float:
        """Resident memory of the server and its engine processes."""
        total = 0
        for pid in process_tree(self.process.pid):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                continue
            total += int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))
        return total / 1024

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()
        return self.process.returncode


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process and the processes it started (the server's
    engine processes), every thread of each (/proc/PID/stat utime, stime)."""
    total = 0.0
    for one in process_tree(pid):
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()  # after "(name)": state first
        except FileNotFoundError:  # it ended meanwhile
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def process_tree(pid: int) -> list[int]:
    """pid and its descendants, from /proc/PID/task/TID/children."""
    found, queue = [], [pid]
    while queue:
        one = queue.pop()
        found.append(one)
        for children in Path(f"/proc/{one}/task").glob("*/children"):
            try:
                queue += [int(child) for child in children.read_text().split()]
            except FileNotFoundError:
                pass
    return found


def rusage_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


# ---------------------------------------------------------------- the engine alone


def engine_alone(model: str, streams: int, duration: float, max_tokens: int, sampler: str,
                 threads: int | None = None) -> dict:
    """The same work without HTTP: `streams` requests in one engine, each replaced when it ends."""
    from charrnn_export import Generator
    from charrnn_export.engine import Engine, step_once
    from charrnn_export.sampling import SamplingConfig

    generator = Generator.load(model, sampler=sampler, threads=threads)
    engine = Engine(generator.backend(256), streams)
    ids = generator.vocab.encode(PROMPT)
    lengths = random.Random(0)
    sampling = SamplingConfig.checked(0.8)
    for seed in range(streams):
        engine.submit(ids, request_length(lengths, max_tokens), sampling, seed)
    chars, began, seed = 0, time.perf_counter(), streams
    while time.perf_counter() - began < duration:
        rids, _, endings = step_once(engine)
        chars += len(rids)
        for _ in endings:  # each request that ended is replaced by a new one
            engine.submit(ids, request_length(lengths, max_tokens), sampling, seed)
            seed += 1
    return {"streams": streams, "chars_per_s": chars / (time.perf_counter() - began)}


def request_length(rng: random.Random, mean: int) -> int:
    """A request's max_tokens: uniform in [mean/2, 3*mean/2], as real requests differ (equal
    lengths would start and end every stream at once, in waves, which no real load does)."""
    return rng.randint(max(1, mean // 2), mean * 3 // 2)


# ---------------------------------------------------------------- the load generator


async def load(url: str, streams: int, duration: float, max_tokens: int) -> dict:
    """`streams` workers, each keeping one streaming request open until `duration` has passed."""
    import httpx

    ttfc, gaps, errors, chars = [], [], {}, [0]
    limits = httpx.Limits(max_connections=streams + 8, max_keepalive_connections=streams + 8)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        began = time.perf_counter()
        stop_at = began + duration

        async def worker(index: int) -> None:
            seed = index * 100_000
            lengths = random.Random(index)
            while time.perf_counter() < stop_at:
                seed += 1
                body = {"prompt": PROMPT, "max_tokens": request_length(lengths, max_tokens), "temperature": 0.8,
                        "seed": seed, "stream": True}
                try:
                    await one_stream(client, url, body, ttfc, gaps, chars, errors)
                except httpx.HTTPError as e:
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

        await asyncio.gather(*(worker(i) for i in range(streams)))
        elapsed = time.perf_counter() - began
    return {"streams": streams, "chars_per_s": chars[0] / elapsed, "requests": len(ttfc), "errors": errors,
            "ttfc_p50_ms": percentile(ttfc, 50), "ttfc_p99_ms": percentile(ttfc, 99),
            "gap_p50_ms": percentile(gaps, 50), "gap_p99_ms": percentile(gaps, 99), "seconds": elapsed}


async def one_stream(client, url, body, ttfc, gaps, chars, errors) -> None:
    sent = time.perf_counter()
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            errors[response.status_code] = errors.get(response.status_code, 0) + 1
            return
        buffer, last = b"", None
        async for data in response.aiter_raw():
            now = time.perf_counter()
            buffer += data
            *events, buffer = buffer.split(b"\n\n")
            made = 0
            for event in events:
                if event != b"data: [DONE]":
                    made += sum(len(c["text"]) for c in json.loads(event[6:])["choices"])
            if made:
                if last is None:
                    ttfc.append(now - sent)
                else:
                    gaps.append(now - last)
                last = now
                chars[0] += made


def wrk_load(url: str, streams: int, duration: float, max_tokens: int) -> dict:
    """wrk keeping `streams` streamed requests open (benchmarks/wrk_post.lua); wrk's own counts.
    The characters come from the server's counters (measured() adds them)."""
    seconds = max(1, round(duration))  # wrk takes whole seconds
    command = ["wrk", "-t", str(min(2, streams)), "-c", str(streams), "-d", f"{seconds}s", "--timeout", "120s",
               "-s", str(WRK_SCRIPT), url, "--", str(max_tokens), json.dumps(PROMPT)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 150)
    found = re.search(r"^WRK_RESULT (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    report = json.loads(found.group(1))
    errors = {kind: count for kind, count in report["errors"].items() if count}
    return {"streams": streams, "requests": report["requests"], "errors": errors, "seconds": report["duration_us"] / 1e6,
            "response_p50_ms": report["response_p50_ms"], "response_p99_ms": report["response_p99_ms"],
            "ttfc_p50_ms": None, "ttfc_p99_ms": None, "gap_p50_ms": None, "gap_p99_ms": None}


def server_characters(url: str) -> int:
    """charrnn_characters_total from GET /metrics, summed over the models served."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(int(float(v)) for v in re.findall(r"^charrnn_characters_total\{[^}]*\} (\S+)$", text, re.MULTILINE))


def measured(client: str, server: Process, streams: int, duration: float, max_tokens: int) -> dict:
    """One row of `client` against `server`, with the CPU both took over it and the characters the
    server counted. For wrk, chars/s is the server's count; for python, what the client read."""
    cores = usable_cores()
    chars_before, server_before = server_characters(server.url), server.cpu_seconds()
    # wrk is the only child reaped while it runs, so RUSAGE_CHILDREN's growth is wrk's CPU
    client_usage = resource.RUSAGE_CHILDREN if client == "wrk" else resource.RUSAGE_SELF
    client_before, began = rusage_seconds(client_usage), time.perf_counter()
    if client == "wrk":
        row = wrk_load(server.url, streams, duration, max_tokens)
    else:
        row = asyncio.run(load(server.url, streams, duration, max_tokens))
    wall = time.perf_counter() - began
    client_cpu, server_cpu = rusage_seconds(client_usage) - client_before, server.cpu_seconds() - server_before
    counted = (server_characters(server.url) - chars_before) / wall
    row.update({"client": client, "cores": cores, "wall_s": round(wall, 3),
                "client_cpu_s": round(client_cpu, 3), "client_cpu_share": round(client_cpu / (wall * cores), 4),
                "server_cpu_s": round(server_cpu, 3), "server_cpu_share": round(server_cpu / (wall * cores), 4),
                "server_counted_chars_per_s": counted})
    if client == "wrk":
        row["chars_per_s"] = counted
    return row


def warm_up(client: str, server: Process, streams: int, max_tokens: int) -> None:
    if client == "wrk":
        wrk_load(server.url, streams, 1, max_tokens)
    else:
        asyncio.run(load(server.url, streams, 1.0, max_tokens))


def percentile(values, q) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 2) if values else None


# ---------------------------------------------------------------- soak


async def soak(server: Process, seconds: float, streams: int = 32) -> dict:
    """Good, bad and abruptly closed requests for `seconds`; memory sampled every second."""
    import httpx

    statuses: dict = {}
    memory: list[tuple[float, float]] = []
    began = time.perf_counter()
    bad_bodies = [b"{", b'{"prompt": "ROMEO:", "temperature": 0}', '{"prompt": "caf\u00e9"}'.encode(),
                  b'{"prompt": "A", "max_tokens": 99999999}', b'{"model": "../x.onnx", "prompt": "A"}', b"[]"]

    async def worker(index: int) -> None:
        rng = random.Random(index)
        async with httpx.AsyncClient(timeout=60) as client:
            while time.perf_counter() - began < seconds:
                kind = rng.random()
                try:
                    if kind < 0.3:  # bad input
                        r = await client.post(f"{server.url}/v1/completions", content=rng.choice(bad_bodies))
                        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    elif kind < 0.5:  # abrupt disconnect mid-stream
                        body = {"prompt": PROMPT, "max_tokens": 4000, "stream": True}
                        async with client.stream("POST", f"{server.url}/v1/completions", json=body) as r:
                            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                            async for _ in r.aiter_raw():
                                break
                    else:  # good, streamed or not
                        body = {"prompt": PROMPT, "max_tokens": rng.randint(1, 400), "stream": kind < 0.75,
                                "temperature": 0.9, "stop": ["\n\n"] if kind > 0.9 else None}
                        r = await client.post(f"{server.url}/v1/completions", json=body)
                        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                except httpx.HTTPError as e:
                    statuses[type(e).__name__] = statuses.get(type(e).__name__, 0) + 1

    async def sample_memory() -> None:
        while time.perf_counter() - began < seconds:
            memory.append((time.perf_counter() - began, server.rss_mb()))
            await asyncio.sleep(1)

    await asyncio.gather(sample_memory(), *(worker(i) for i in range(streams)))
    rss = [m for _, m in memory]
    quarter = max(1, len(rss) // 4)
    first, last = float(np.median(rss[quarter:2 * quarter] or rss)), float(np.median(rss[-quarter:]))
    return {"seconds": seconds, "statuses": {str(k): v for k, v in statuses.items()}, "rss_mb_second_quarter": first,
            "rss_mb_last_quarter": last, "rss_growth": last / first - 1, "no_500": 500 not in statuses,
            "memory_flat": last / first - 1 < 0.10, "memory": memory}


# ---------------------------------------------------------------- report


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import fastapi
    import onnxruntime
    import uvicorn

    return {"cpu": cpu, "cores": os.cpu_count(), "usable": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__,
            "load_before": os.getloadavg()}


def markdown(result: dict) -> str:
    m = result["machine"]
    clients = result["clients"]
    lines = ["## Serving benchmark", "",
             f"- date: {result['date']}; command: `{result['command']}`",
             f"- machine: {m['cpu']}, {m['cores']} cores ({m['usable']} usable), load average "
             f"{'/'.join(f'{x:.2f}' for x in m['load_before'])} before; Python {m['python']}, onnxruntime "
             f"{m['onnxruntime']}, fastapi {m['fastapi']}, uvicorn {m['uvicorn']}"
             + (f", {m['wrk']}" if m.get("wrk") else ""),
             f"- model: shipped {result['model']}; server `charrnn-export serve --model {result['model']} --slots 256` "
             f"(sampler {result['sampler']}, onnxruntime threads {result['threads'] or 'default'}); each stream: prompt "
             f"{PROMPT!r}, max_tokens drawn from [{result['max_tokens'] // 2}, {result['max_tokens'] * 3 // 2}] "
             f"(mean {result['max_tokens']}), temperature 0.8, streamed, a new request as soon as one ends, for "
             f"{result['duration']} s per row",
             "- clients, on the same machine as the server: "
             + "; ".join(CLIENT_TEXT[c] for c in clients)
             + (f". The naive server is loaded by the {clients[0]} client" if naive_measured(result) else "")
             + ". CPU: seconds used over the row / "
             "(wall seconds x usable cores), for the client and for the server; what the client takes, the "
             "server cannot use", "",
             "| streams | client | server chars/s | engine alone chars/s | server / engine | client CPU | server CPU "
             "| naive chars/s | server / naive | first char p50 / p99 ms | event gap p50 / p99 ms "
             "| whole response p50 / p99 ms | requests | errors |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in result["rows"]:
        e, n = row["engine"], row.get("naive")
        for client in clients:
            s = row[client]
            naive = f"{n['chars_per_s']:,.0f}" if n and n["client"] == client else "-"
            ratio_naive = f"{s['chars_per_s'] / n['chars_per_s']:.1f}x" if naive != "-" else "-"
            lines.append(f"| {s['streams']} | {client} | {s['chars_per_s']:,.0f} | {e['chars_per_s']:,.0f} | "
                         f"{s['chars_per_s'] / e['chars_per_s']:.2f}x | {s['client_cpu_share']:.0%} | "
                         f"{s['server_cpu_share']:.0%} | {naive} | {ratio_naive} | {pair(s, 'ttfc')} | "
                         f"{pair(s, 'gap')} | {pair(s, 'response')} | {s['requests']} | {s['errors'] or 'none'} |")
    lines += ["", "Targets:"] + [f"- {t['name']}: {t['value']} -> **{'met' if t['met'] else 'NOT met'}**"
                                 for t in result["targets"]]
    if result.get("soak"):
        s = result["soak"]
        lines += ["", f"Soak ({s['seconds']} s, 32 clients mixing good, bad and abruptly closed requests): answers "
                  f"{s['statuses']}; no 500: **{s['no_500']}**; resident memory {s['rss_mb_second_quarter']:.0f} MB "
                  f"(second quarter) -> {s['rss_mb_last_quarter']:.0f} MB (last quarter), "
                  f"{s['rss_growth'] * 100:+.1f}%: flat: **{s['memory_flat']}**"]
    lines += ["", f"![serving: chars/s and time to first character](results/{result['png']})", ""]
    return "\n".join(lines)


def naive_measured(result: dict) -> bool:
    return any(row.get("naive") for row in result["rows"])


CLIENT_TEXT = {"python": "python: async httpx in the benchmark's process, characters counted from the events it reads",
               "wrk": "wrk: the compiled load generator, 2 threads, benchmarks/wrk_post.lua, characters counted "
                      "from the server's /metrics before and after (wrk sees whole responses, not first characters)"}


def pair(row: dict, key: str) -> str:
    p50, p99 = row.get(f"{key}_p50_ms"), row.get(f"{key}_p99_ms")
    return "-" if p50 is None else f"{p50} / {p99}"


def targets(rows, clients) -> list[dict]:
    """The light client's figures when it ran (the Python client's own CPU would be counted against
    the server), each target naming the client it was read from."""
    by = {r["engine"]["streams"]: r for r in rows}
    light = "wrk" if "wrk" in clients else clients[0]
    out = []
    if 256 in by:
        r = by[256]
        s = r[light]
        ratio = s["chars_per_s"] / r["engine"]["chars_per_s"]
        out.append({"name": f"256 streams, {light} client (taking {s['client_cpu_share']:.0%} of the CPU): server "
                    ">= 0.8x the engine's chars/s", "value": f"{ratio:.2f}x", "met": ratio >= 0.8})
        if r.get("naive"):
            ratio = r[r["naive"]["client"]]["chars_per_s"] / r["naive"]["chars_per_s"]
            out.append({"name": f"256 streams, {r['naive']['client']} client: server >= 10x the naive server",
                        "value": f"{ratio:.1f}x", "met": ratio >= 10})
    if 64 in by and "python" in clients and by[64]["python"]["ttfc_p99_ms"] is not None:
        p99 = by[64]["python"]["ttfc_p99_ms"]
        out.append({"name": "64 streams, python client: p99 time to first character < 1 s", "value": f"{p99:.0f} ms",
                    "met": p99 < 1000})
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    streams = [r["engine"]["streams"] for r in result["rows"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    lines = [(c, f"charrnn-export serve ({c} client)") for c in result["clients"]]
    for key, label in [*lines, ("engine", "engine alone"), ("naive", "naive server")]:
        values = [r[key]["chars_per_s"] if r.get(key) else np.nan for r in result["rows"]]
        left.plot(streams, values, marker="o", label=label)
    left.set(xscale="log", yscale="log", xlabel="concurrent streams", ylabel="characters / s", title="throughput")
    left.set_xticks(streams, [str(s) for s in streams])
    left.legend()
    latency = "python" if "python" in result["clients"] else "wrk"
    keys = ((("ttfc_p50_ms", "first char p50"), ("ttfc_p99_ms", "first char p99"), ("gap_p50_ms", "event gap p50"),
             ("gap_p99_ms", "event gap p99")) if latency == "python" else
            (("response_p50_ms", "whole response p50"), ("response_p99_ms", "whole response p99")))
    for key, label in keys:
        right.plot(streams, [r[latency][key] for r in result["rows"]], marker="o", label=label)
    right.set(xscale="log", yscale="log", xlabel="concurrent streams", ylabel="ms", title=f"latency ({latency} client)")
    right.set_xticks(streams, [str(s) for s in streams])
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------- main


def build_parser():
    parser = suite_parser("benchmarks.serving", __doc__)
    parser.add_argument("--model", default="int8", help="int8, fp32 or a path (default %(default)s)")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds per row (default %(default)s; wrk rounds it to whole seconds)")
    parser.add_argument("--max-tokens", type=int, default=1000,
                        help="mean characters per request; each draws from [mean/2, 3 mean/2] (default %(default)s)")
    parser.add_argument("--client", nargs="+", choices=CLIENTS, default=None,
                        help="load generators, each measured on every row (default: wrk and python when wrk is "
                             "installed, else python): wrk is light, so it shows what the server makes; python "
                             "also measures the first character and the gaps between events")
    parser.add_argument("--sampler", default="auto", choices=("auto", "graph", "host"))
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (server and engine alone)")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive server")
    parser.add_argument("--soak", type=float, default=0, metavar="SECONDS", help="then the soak run")
    add_results_flags(parser)
    return parser


def chosen_clients(asked: list[str] | None) -> list[str]:
    """--client, duplicates dropped; without it wrk then python where wrk is installed."""
    if asked is not None:
        return list(dict.fromkeys(asked))
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk): measuring with the python client only, whose own "
              "CPU use lowers what the server makes", file=sys.stderr)
        return ["python"]
    return ["wrk", "python"]


def wrk_version() -> str | None:
    if shutil.which("wrk") is None:
        return None
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return (done.stdout + done.stderr).strip().splitlines()[0].split(" Copyright")[0] if done.stdout + done.stderr else None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if "wrk" in (args.client or []) and shutil.which("wrk") is None:
        return fail("--client wrk: wrk is not on PATH; install it (apt-get install wrk) or use --client python")
    clients = chosen_clients(args.client)
    out = Path(args.out) if args.out else RESULTS_DIR
    command = "python -m benchmarks.serving " + " ".join(argv if argv is not None else sys.argv[1:])
    serve = [sys.executable, "-m", "charrnn_export.cli", "serve", "--model", args.model, "--port", "0",
             "--slots", "256", "--sampler", args.sampler, *(["--threads", str(args.threads)] if args.threads else [])]
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": command.strip(),
              "machine": {**machine(), "wrk": wrk_version() if "wrk" in clients else None}, "model": args.model,
              "sampler": args.sampler, "threads": args.threads, "max_tokens": args.max_tokens,
              "duration": args.duration, "clients": clients, "rows": []}
    rows = {s: {} for s in args.streams}
    for streams in args.streams:
        rows[streams]["engine"] = engine_alone(args.model, streams, args.duration, args.max_tokens, args.sampler,
                                               args.threads)
        print(f"engine alone, {streams} streams: {rows[streams]['engine']['chars_per_s']:,.0f} chars/s", file=sys.stderr)
    naive = None if args.no_naive else [sys.executable, "-m", "benchmarks.naive_server", "--model", args.model]
    for name, command_line, loaders in (("server", serve, clients), ("naive", naive, clients[:1])):
        if command_line is None:
            continue
        process = Process(command_line, name)
        try:
            for streams in args.streams:
                for client in loaders:
                    warm_up(client, process, streams, args.max_tokens)
                    row = measured(client, process, streams, args.duration, args.max_tokens)
                    rows[streams][client if name == "server" else name] = row
                    print(f"{name}, {client} client, {streams} streams: {row}", file=sys.stderr)
            if name == "server" and args.soak:
                result["soak"] = asyncio.run(soak(process, args.soak))
                print(f"soak: {({k: v for k, v in result['soak'].items() if k != 'memory'})}", file=sys.stderr)
        finally:
            process.stop()
    result["rows"] = [rows[s] for s in args.streams]
    result["targets"] = targets(result["rows"], clients)
    write_results(result, out)
    if args.results_md:
        print(f"wrote {refresh_results_md(out)}", file=sys.stderr)
    return 0


def write_results(result: dict, out: Path) -> None:
    """serving-STAMP.json, .md, .png and serving-latest.md (what RESULTS.md shows) in `out`."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    result["png"] = f"serving-{stamp}.png"
    plot(result, out / result["png"])
    atomic_write_text(out / f"serving-{stamp}.json", json.dumps(result, indent=1) + "\n")
    section = markdown(result)
    atomic_write_text(out / f"serving-{stamp}.md", section)
    atomic_write_text(out / "serving-latest.md", section)
    print(section)


if __name__ == "__main__":
    sys.exit(main())
