"""Characters per second in the browser: the to-web page's generation (onnxruntime-web's
WebAssembly backend in a Web Worker, the JavaScript sampler), fp32 and int8, on 1 and more
threads, beside Python's onnxruntime on the same models and machine.

    python -m benchmarks.web [--models fp32 int8] [--threads 1 2] [--length 2000] [--repeats 5] [--results-md]

Each site is built with `to-web --ort-web web/node_modules/onnxruntime-web/dist` and served by
the project's COOP/COEP server (cross-origin isolated, so threads > 1 are allowed), then driven
in headless Chromium. Per configuration: one warm-up generation, then --repeats seeded
generations of --length characters; chars/s is the worker's own count over its own clock from
the first character on (priming the start string is timed apart). The browser's text is checked
against Python's for the same seed. Writes benchmarks/results/web-<stamp>.json/.md (and -latest);
--results-md also rewrites benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ORT_WEB = REPO / "web" / "node_modules" / "onnxruntime-web" / "dist"
RESULTS = REPO / "benchmarks" / "results"
START = "ROMEO:"
SETTINGS = {"temperature": 0.8, "top_k": 20}  # Python's names; the page's are below
JS_SETTINGS = {"temperature": 0.8, "topK": 20}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def first_difference(a: str, b: str) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def summary(rates: list[float], prime_ms: list[float]) -> dict:
    return {"chars_per_s": statistics.median(rates), "min": min(rates), "max": max(rates),
            "runs": [round(r, 1) for r in rates], "prime_ms": statistics.median(prime_ms) if prime_ms else None}


def browser_runs(page, length: int, repeats: int) -> tuple[dict, str]:
    page.evaluate("([s, o]) => charrnn.generate(s, 300, o)", [START, {**JS_SETTINGS, "seed": 0}])  # warm-up
    rates, primes, first_text = [], [], None
    for seed in range(1, repeats + 1):
        text, run = page.evaluate("async ([s, n, o]) => [await charrnn.generate(s, n, o), charrnn.lastRun]",
                                  [START, length, {**JS_SETTINGS, "seed": seed}])
        rates.append(run["made"] / run["seconds"])
        primes.append(run["primeSeconds"] * 1000)
        first_text = first_text or text
    return summary(rates, primes), first_text


def python_runs(model: str, threads: int, length: int, repeats: int) -> tuple[dict, str]:
    from charrnn_export.generate import Generator

    generator = Generator.load(model, threads=threads)
    generator.generate(START, 300, seed=0, **SETTINGS)  # warm-up
    rates, first_text = [], None
    for seed in range(1, repeats + 1):
        t0 = time.perf_counter()
        text = generator.generate(START, length, seed=seed, **SETTINGS)  # priming included (6 steps)
        rates.append(length / (time.perf_counter() - t0))
        first_text = first_text or text
    return summary(rates, []), first_text


def run(models: list[str], threads_list: list[int], length: int, repeats: int) -> dict:
    from playwright.sync_api import sync_playwright

    from charrnn_export.web.browser import find_chromium, launch
    from charrnn_export.web.build import ORT_VERSION, build_site
    from charrnn_export.web.serve import running

    rows = []
    with tempfile.TemporaryDirectory() as scratch, sync_playwright() as playwright:
        browser = launch(playwright)
        for model in models:
            site = Path(scratch) / model
            build_site(model, site, ort_web=str(ORT_WEB))
            with running(site) as url:
                for threads in threads_list:
                    py, py_text = python_runs(model, threads, length, repeats)
                    rows.append({"model": model, "where": "python onnxruntime", "threads": threads, **py})
                    log(f"{model} python  {threads} thread(s): {py['chars_per_s']:,.0f} chars/s")
                    page = browser.new_page()
                    page.goto(f"{url}?threads={threads}")
                    page.wait_for_selector("body[data-state=ready]", timeout=300_000)
                    isolated, used = page.evaluate("[charrnn.crossOriginIsolated, charrnn.threads]")
                    js, js_text = browser_runs(page, length, repeats)
                    page.close()
                    rows.append({"model": model, "where": "browser (onnxruntime-web wasm)", "threads": used,
                                 "isolated": isolated, "first_difference_from_python": first_difference(js_text, py_text),
                                 **js})
                    log(f"{model} browser {used} thread(s): {js['chars_per_s']:,.0f} chars/s")
        version = browser.version
        chromium = find_chromium()
        browser.close()
    return {"rows": rows, "browser": f"{chromium} ({version})", "onnxruntime_web": ORT_VERSION,
            "length": length, "repeats": repeats, "start": START, "settings": SETTINGS}


def render(results: dict) -> str:
    m = results["machine"]
    lines = ["## Browser benchmark (to-web)", "",
             f"- date: {results['date']}; command: `{results['command']}`",
             f"- machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), load average "
             f"{'/'.join(f'{x:.2f}' for x in m['load_average'] or [])} before",
             f"- browser: {results['browser']}, onnxruntime-web {results['onnxruntime_web']} (WebAssembly, in a Web "
             "Worker, page served with COOP/COEP); Python: onnxruntime "
             f"{m['versions'].get('onnxruntime', '?')} through Generator.generate",
             f"- per row: {results['repeats']} seeded generations of {results['length']} characters from "
             f"{results['start']!r} (temperature 0.8, top-k 20) after a warm-up; chars/s is the median (min-max); "
             "the browser's counts from the first character (priming apart), Python's include priming (6 steps)",
             "", "| model | where | threads | chars/s | min-max | priming ms | same text as Python |",
             "|---|---|---:|---:|---:|---:|---|"]
    for row in results["rows"]:
        diff = row.get("first_difference_from_python", "")
        same = "" if "isolated" not in row else ("identical" if diff is None else f"first differs at char {diff}")
        prime = f"{row['prime_ms']:.1f}" if row["prime_ms"] is not None else ""
        lines.append(f"| {row['model']} | {row['where']} | {row['threads']} | {row['chars_per_s']:,.0f} | "
                     f"{row['min']:,.0f}-{row['max']:,.0f} | {prime} | {same} |")
    lines += ["", default_note(results["rows"])]
    return "\n".join(lines) + "\n"


def default_note(rows: list[dict]) -> str:
    """Which model the page should default to, from these figures (to-web's default is fp32)."""
    browser = {r["model"]: r for r in rows if "isolated" in r and r["threads"] == 1}
    if not {"fp32", "int8"} <= set(browser):
        return "(fp32 and int8 were not both measured on 1 thread: no default is argued here)"
    fp32, int8 = browser["fp32"], browser["int8"]
    exact = {m: r["first_difference_from_python"] is None for m, r in browser.items()}
    faster = "fp32" if fp32["chars_per_s"] >= int8["chars_per_s"] else "int8"
    ratio = max(fp32["chars_per_s"], int8["chars_per_s"]) / min(fp32["chars_per_s"], int8["chars_per_s"])
    fp32_text = "exactly" if exact["fp32"] else "NOT exactly"
    int8_text = "exactly too" if exact["int8"] else "Python's only until a quantized state value rounds the other way"
    slower = "" if faster == "fp32" else " (slower here, but exact)"
    return (f"In the browser on 1 thread fp32 makes {fp32['chars_per_s']:,.0f} chars/s and int8 "
            f"{int8['chars_per_s']:,.0f} ({faster} is {ratio:.1f}x faster). fp32's text is Python's {fp32_text}; "
            f"int8's is {int8_text}. So `to-web` defaults to **fp32**{slower}.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.web", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["fp32", "int8"], help="shipped models or .onnx paths")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="WebAssembly / onnxruntime threads")
    parser.add_argument("--length", type=int, default=2000, help="characters per generation (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="measured generations per row (default %(default)s)")
    parser.add_argument("--results-md", action="store_true", help="also rewrite benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if not ORT_WEB.is_dir():
        parser.error(f"no {ORT_WEB}: run `npm ci` in web/ first")

    from charrnn_export.bench import command_line, write_results

    from .repo import machine_info, refresh_results_md

    machine = machine_info()
    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command_line(),
               "machine": machine, **run(args.models, args.threads, args.length, args.repeats)}
    markdown = render(results)
    paths = write_results(results, RESULTS, "web", markdown, None)
    print(markdown)
    log(f"wrote {paths['json']}")
    if args.results_md:
        log(f"wrote {refresh_results_md(RESULTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
