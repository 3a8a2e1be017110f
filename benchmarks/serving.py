"""Load benchmark for `charrnn-export serve`: continuous batching against the engine alone and a naive server.

    python -m benchmarks.serving                       # shipped int8 model; 1, 16, 64, 256 streams
    python -m benchmarks.serving --duration 10 --results-md      # and write the section in RESULTS.md
    python -m benchmarks.serving --soak 300            # good, bad and abruptly closed requests mixed

For each number of concurrent streams, a bounded load generator (async httpx, one process, on
127.0.0.1) keeps that many streaming requests open for --duration seconds, each starting the next
as soon as one ends, and measures total characters per second, the time to the first character
and the gap between events (p50/p99), and errors. Beside it: the engine alone (same lengths, same
number of requests in its batch, no HTTP) and a naive server (benchmarks/naive_server.py: a thread
per request running what Generator.generate runs). Results go to benchmarks/results/serving-*.json,
.md and .png; --results-md rewrites benchmarks/RESULTS.md with it (benchmarks/repo.py).

The soak run checks that nothing answers 500 and that the server's resident memory stays flat.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .repo import REPO, RESULTS_DIR as RESULTS, refresh_results_md

PROMPT = "ROMEO:"


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

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

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
    lines = ["## Serving benchmark", "",
             f"- date: {result['date']}; command: `{result['command']}`",
             f"- machine: {m['cpu']}, {m['cores']} cores ({m['usable']} usable), load average "
             f"{'/'.join(f'{x:.2f}' for x in m['load_before'])} before; Python {m['python']}, onnxruntime "
             f"{m['onnxruntime']}, fastapi {m['fastapi']}, uvicorn {m['uvicorn']}",
             f"- model: shipped {result['model']}; server `charrnn-export serve --model {result['model']} --slots 256` "
             f"(sampler {result['sampler']}, onnxruntime threads {result['threads'] or 'default'}); each stream: prompt {PROMPT!r}, max_tokens drawn from [{result['max_tokens'] // 2}, {result['max_tokens'] * 3 // 2}] (mean {result['max_tokens']}), "
             f"temperature 0.8, a new request as soon as one ends, for {result['duration']} s per row; the load "
             "generator (async httpx) runs on the same machine", "",
             "| streams | server chars/s | engine alone chars/s | naive chars/s | server / engine | server / naive "
             "| first char p50 / p99 ms | event gap p50 / p99 ms | requests | errors |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in result["rows"]:
        s, e, n = row["server"], row["engine"], row.get("naive")
        naive = f"{n['chars_per_s']:,.0f}" if n else "-"
        ratio_naive = f"{s['chars_per_s'] / n['chars_per_s']:.1f}x" if n else "-"
        lines.append(f"| {s['streams']} | {s['chars_per_s']:,.0f} | {e['chars_per_s']:,.0f} | {naive} | "
                     f"{s['chars_per_s'] / e['chars_per_s']:.2f}x | {ratio_naive} | {s['ttfc_p50_ms']} / {s['ttfc_p99_ms']} | "
                     f"{s['gap_p50_ms']} / {s['gap_p99_ms']} | {s['requests']} | {s['errors'] or 'none'} |")
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


def targets(rows) -> list[dict]:
    by = {r["server"]["streams"]: r for r in rows}
    out = []
    if 256 in by:
        r = by[256]
        ratio = r["server"]["chars_per_s"] / r["engine"]["chars_per_s"]
        out.append({"name": "256 streams: server >= 0.7x the engine's chars/s", "value": f"{ratio:.2f}x", "met": ratio >= 0.7})
        if r.get("naive"):
            ratio = r["server"]["chars_per_s"] / r["naive"]["chars_per_s"]
            out.append({"name": "256 streams: server >= 10x the naive server", "value": f"{ratio:.1f}x", "met": ratio >= 10})
    if 64 in by and by[64]["server"]["ttfc_p99_ms"] is not None:
        p99 = by[64]["server"]["ttfc_p99_ms"]
        out.append({"name": "64 streams: p99 time to first character < 1 s", "value": f"{p99:.0f} ms", "met": p99 < 1000})
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    streams = [r["server"]["streams"] for r in result["rows"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("server", "charrnn-export serve"), ("engine", "engine alone"), ("naive", "naive server")):
        values = [r[key]["chars_per_s"] if r.get(key) else np.nan for r in result["rows"]]
        left.plot(streams, values, marker="o", label=label)
    left.set(xscale="log", yscale="log", xlabel="concurrent streams", ylabel="characters / s", title="throughput")
    left.set_xticks(streams, [str(s) for s in streams])
    left.legend()
    for key, label in (("ttfc_p50_ms", "first char p50"), ("ttfc_p99_ms", "first char p99"),
                       ("gap_p50_ms", "event gap p50"), ("gap_p99_ms", "event gap p99")):
        right.plot(streams, [r["server"][key] for r in result["rows"]], marker="o", label=label)
    right.set(xscale="log", yscale="log", xlabel="concurrent streams", ylabel="ms", title="latency (server)")
    right.set_xticks(streams, [str(s) for s in streams])
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Load benchmark for charrnn-export serve.")
    parser.add_argument("--model", default="int8", help="int8, fp32 or a path (default %(default)s)")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per row (default %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=1000,
                        help="mean characters per request; each draws from [mean/2, 3 mean/2] (default %(default)s)")
    parser.add_argument("--sampler", default="auto", choices=("auto", "graph", "host"))
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (server and engine alone)")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive server")
    parser.add_argument("--soak", type=float, default=0, metavar="SECONDS", help="then the soak run")
    parser.add_argument("--results-md", action="store_true", help="write the section in benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.serving " + " ".join(argv if argv is not None else sys.argv[1:])
    serve = [sys.executable, "-m", "charrnn_export.cli", "serve", "--model", args.model, "--port", "0",
             "--slots", "256", "--sampler", args.sampler, *(["--threads", str(args.threads)] if args.threads else [])]
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": command.strip(),
              "machine": machine(), "model": args.model, "sampler": args.sampler, "threads": args.threads, "max_tokens": args.max_tokens,
              "duration": args.duration, "rows": []}
    rows = {s: {} for s in args.streams}
    for streams in args.streams:
        rows[streams]["engine"] = engine_alone(args.model, streams, args.duration, args.max_tokens, args.sampler,
                                               args.threads)
        print(f"engine alone, {streams} streams: {rows[streams]['engine']['chars_per_s']:,.0f} chars/s", file=sys.stderr)
    for name, command_line in (("server", serve), ("naive", None if args.no_naive else
                                                   [sys.executable, "-m", "benchmarks.naive_server", "--model", args.model])):
        if command_line is None:
            continue
        process = Process(command_line, name)
        try:
            for streams in args.streams:
                asyncio.run(load(process.url, streams, 1.0, args.max_tokens))  # warm-up
                rows[streams][name] = asyncio.run(load(process.url, streams, args.duration, args.max_tokens))
                print(f"{name}, {streams} streams: {rows[streams][name]}", file=sys.stderr)
            if name == "server" and args.soak:
                result["soak"] = asyncio.run(soak(process, args.soak))
                print(f"soak: {({k: v for k, v in result['soak'].items() if k != 'memory'})}", file=sys.stderr)
        finally:
            process.stop()
    result["rows"] = [rows[s] for s in args.streams]
    result["targets"] = targets(result["rows"])
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    result["png"] = f"serving-{stamp}.png"
    plot(result, RESULTS / result["png"])
    (RESULTS / f"serving-{stamp}.json").write_text(json.dumps(result, indent=1) + "\n")
    section = markdown(result)
    (RESULTS / f"serving-{stamp}.md").write_text(section)
    (RESULTS / "serving-latest.md").write_text(section)
    print(section)
    if args.results_md:
        print(f"wrote {refresh_results_md(RESULTS)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
