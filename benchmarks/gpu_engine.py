"""Every GPU figure of the decode-engine issue in one command, on a machine with an NVIDIA GPU and
onnxruntime-gpu but no TensorFlow (../shared/gpu/README.md says how to get onnxruntime-gpu there).

    python benchmarks/gpu_engine.py --model artifacts/model.onnx --out gpu.json

From the shipped flat fp32 step model it builds, with the package's own code (step_variants.py,
decode.py; needs the `onnx` package), the native-GRU and fp16 variants and their decode models,
then measures at each batch size (default 1, 256, 4096):

  before   the project's loop before the engine: step model on CUDA + numpy sampling on the host
  floor    the step model alone, IO binding, state on the GPU, CUDA graph (no sampling, no host work)
  graph    the decode engine's block graph alone (K steps per call, fixed inputs), per step
  engine   the decode engine: Engine + BlockDecoder (sampling in the graph, K steps per call with
           the ids fed back on the GPU, state on the GPU, a CUDA graph per batch bucket), whole
           requests from submit to the last character

and checks that the engine on CUDA makes the same text as on the CPU (greedy and seeded; GPU
arithmetic may round differently, so it reports how many characters agree before the first
difference). Prints a table and writes JSON. Device: --device cpu runs the same script on the CPU
(a dry run of the bookkeeping; no CUDA graphs there).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from charrnn_export.bench.floors import BLOCK, io_bound_step  # noqa: E402
from charrnn_export.engine import Engine, HostSampler, drive, submit_rows  # noqa: E402
from charrnn_export.runtimes.onnx import OnnxRuntime  # noqa: E402
from charrnn_export.runtimes.onnx_decode import BlockDecoder, control_block  # noqa: E402
from charrnn_export.sampling import SamplingConfig, Settings  # noqa: E402


def build_variants(flat_path: Path, folder: Path) -> dict[str, dict[str, Path]]:
    """{variant: {"step": path, "decode": path}} for flat fp32, native fp32, flat fp16, native fp16."""
    import onnx

    from charrnn_export.decode import decode_model_for
    from charrnn_export.step_variants import float16_step, native_gru_step

    flat = onnx.load(str(flat_path))
    native = native_gru_step(flat)
    steps = {"flat-fp32": flat, "native-fp32": native, "flat-fp16": float16_step(flat), "native-fp16": float16_step(native)}
    paths = {}
    for name, model in steps.items():
        step_path, decode_path = folder / f"{name}.step.onnx", folder / f"{name}.decode.onnx"
        onnx.save(model, str(step_path))
        onnx.save(decode_model_for(model), str(decode_path))
        paths[name] = {"step": step_path, "decode": decode_path}
    return paths


def time_loop(run_once, seconds: float, min_reps: int = 20) -> tuple[float, int]:
    """Median seconds per call over repeated timed blocks."""
    for _ in range(5):
        run_once()
    samples, reps, started = [], 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - started < seconds:
        t = time.perf_counter()
        run_once()
        samples.append(time.perf_counter() - t)
        reps += 1
    return float(np.median(samples)), reps


def floor_step(step_path: Path, batch: int, device: str, seconds: float) -> float:
    """The step model alone with IO binding, the state ping-ponged on the device, a CUDA graph
    (the bench's step-cuda-graph floor: charrnn_export.bench.floors.io_bound_step)."""
    per_block, _ = time_loop(io_bound_step(step_path, batch, device), seconds)
    return per_block / BLOCK


def engine_run(backend, batch: int, length: int, start_ids, config: SamplingConfig, seed: int = 0):
    """Whole requests through the engine; returns (seconds after the first character, chars then, texts)."""
    engine = Engine(backend, capacity=batch)
    rids = submit_rows(engine, [start_ids] * batch, length, config, seed)
    texts = {rid: [] for rid in rids}
    first = None
    made_after_first = 0
    for ids, tokens, _ in drive(engine):
        if len(ids):
            if first is None:
                first = time.perf_counter()
            else:
                made_after_first += len(ids)
            if batch <= 8:
                for rid, token in zip(ids.tolist(), tokens.tolist()):
                    texts[rid].append(token)
    return time.perf_counter() - first, made_after_first, [texts[r] for r in rids]


def benchmark_control(batch: int, steps: int) -> np.ndarray:
    """A block graph's `control` for timing it alone: temperature 0.8, no cuts, every id fed back."""
    return control_block(Settings.of([SamplingConfig(0.8)] * batch), np.zeros(batch, bool),
                         np.full((batch, steps), 0.5), np.full((batch, steps), -1))


def chars_per_second(backend, batch: int, length: int, start_ids, repeats: int = 3) -> float:
    config = SamplingConfig(0.8)
    engine_run(backend, batch, min(length, 20), start_ids, config)  # warm
    best = 0.0
    for r in range(repeats):
        seconds, made, _ = engine_run(backend, batch, length, start_ids, config, seed=r)
        best = max(best, made / seconds)
    return best


def agreement(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def report(results: dict, command: str) -> str:
    """The RESULTS.md section for one run's JSON."""
    rows = results["rows"]
    batches = sorted({r["batch"] for r in rows})
    lines = [f"- machine: {results.get('gpu')} ({results['machine']}), onnxruntime-gpu {results['onnxruntime']}, "
             f"no TensorFlow; command: `{command}`",
             "- before: the step model on CUDA with numpy sampling on the host (the Generator before the engine); "
             "floor: the step model alone with IO binding and a CUDA graph; graph: the engine's block graph alone "
             "(K steps per call, sampling included, fixed inputs); engine: whole requests through Engine + "
             "BlockDecoder (K = characters per call). fp32 runs with TF32 off (the CPU's text); ms per character "
             "step at batch 1, M chars/s at larger batches.",
             "", "| kind | graph | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---|---|" + "---:|" * len(batches)]
    keyed: dict[tuple[str, str], dict[int, dict]] = {}
    for r in rows:
        keyed.setdefault((r["kind"], r["variant"]), {})[r["batch"]] = r
    for (kind, variant), by_batch in keyed.items():
        cells = []
        for b in batches:
            r = by_batch.get(b)
            cells.append("-" if r is None else (f"{r['ms_per_step']:.3f} ms" if b == 1 else
                                                f"{r['chars_per_s'] / 1e6:.2f} M"))
        lines.append(f"| {kind} | {variant} | " + " | ".join(cells) + " |")
    best = {b: max((r for r in rows if r["kind"] == "engine" and r["batch"] == b), key=lambda r: r["chars_per_s"],
                   default=None) for b in batches}
    targets = {1: ("batch 1 <= 0.06 ms/char", lambda r: r["ms_per_step"] <= 0.06, lambda r: f"{r['ms_per_step']:.3f} ms"),
               256: ("batch 256 >= 2.5 M chars/s", lambda r: r["chars_per_s"] >= 2.5e6, lambda r: f"{r['chars_per_s'] / 1e6:.2f} M"),
               4096: ("batch 4096 >= 6 M chars/s", lambda r: r["chars_per_s"] >= 6e6, lambda r: f"{r['chars_per_s'] / 1e6:.2f} M")}
    lines += ["", "Targets (the best engine row at each batch size):"]
    for b, (name, ok, shown) in targets.items():
        if best.get(b):
            lines.append(f"- {name}: {shown(best[b])} ({best[b]['variant']}) -> {'**met**' if ok(best[b]) else '**NOT met**'}")
    lines += ["", "Same text as the CPU (4 requests of 300 characters; characters equal before the first difference):"]
    for key, same in results["parity"].items():
        lines.append(f"- {key}: {same}")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--report", metavar="JSON", help="write the RESULTS.md section for a saved run (to --out, or "
                   "stdout) and stop")
    p.add_argument("--model", default="artifacts/model.onnx")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 256, 4096])
    p.add_argument("--length", type=int, default=400, help="characters per request in the engine runs")
    p.add_argument("--seconds", type=float, default=1.5, help="time per floor measurement")
    p.add_argument("--variants", nargs="+", default=["flat-fp32", "native-fp32", "flat-fp16", "native-fp16"])
    p.add_argument("--steps", type=int, nargs="+", default=[1, 8, 16],
                   help="characters per GPU call (BlockDecoder): all for the native-GRU graphs, the largest for the rest")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.report:
        text = "## Decode engine on a GPU\n\n" + report(json.loads(Path(args.report).read_text()),
                                                         "python benchmarks/gpu_engine.py --variants flat-fp32 native-fp32 flat-fp16 native-fp16 --steps 8 16 --out gpu.json")
        if args.out:
            Path(args.out).write_text(text)
        else:
            print(text, end="")
        return 0

    import onnxruntime as ort

    if args.device == "cuda":
        ort.preload_dlls()
    results = {"machine": platform.node(), "onnxruntime": ort.__version__, "device": args.device,
               "providers": ort.get_available_providers(), "rows": [], "parity": {}}
    try:
        import subprocess

        results["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                        capture_output=True, text=True).stdout.strip()
    except OSError:
        results["gpu"] = None
    print(f"# {results['gpu']} onnxruntime {ort.__version__} device {args.device}", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="charrnn-gpu-"))
    variants = build_variants(Path(args.model), folder)
    step_runtime = OnnxRuntime(Path(args.model), device=args.device)
    start_ids = step_runtime.vocab.encode("ROMEO:")

    def row(kind, variant, batch, seconds_per_char_step):
        cps = batch / seconds_per_char_step
        entry = {"kind": kind, "variant": variant, "batch": batch, "ms_per_step": seconds_per_char_step * 1e3,
                 "chars_per_s": cps}
        results["rows"].append(entry)
        print(f"{kind:8s} {variant:16s} batch {batch:5d}: {seconds_per_char_step * 1e3:8.4f} ms/step "
              f"{cps / 1e6:8.3f} M chars/s", flush=True)

    def measure_engine(variant: str, steps: int) -> None:
        label = f"{variant}/k{steps}"
        try:
            decoder = BlockDecoder.for_gpu(args.model, max(args.batches), steps=steps, device=args.device,
                                           precision=variant.split("-")[1]) if variant.startswith("native") else \
                BlockDecoder(variants[variant]["decode"], max(args.batches), steps=steps, device=args.device)
        except Exception as e:  # noqa: BLE001
            print(f"engine   {label:16s}: FAILED to load {type(e).__name__}: {str(e).splitlines()[0][:160]}", flush=True)
            return
        if decoder.graph_error:
            print(f"engine   {label:16s}: no CUDA graph ({decoder.graph_error})", flush=True)
        try:
            for batch in args.batches:
                # The block graph alone: its calls with a fixed control array, no engine around it.
                control = benchmark_control(batch, steps)
                for variant_name in decoder.buffers.sessions:  # full rule, and plain (no top-k/top-p)
                    per_call, _ = time_loop(lambda: decoder.buffers.run(batch, control, variant_name), args.seconds / 2)
                    row("graph", f"{label}/{variant_name}", batch, per_call / steps)
                cps = chars_per_second(decoder, batch, args.length, start_ids)
                row("engine", label, batch, batch / cps)
            # Same text as the CPU? Greedy and seeded, 4 requests of 300 characters.
            cpu = HostSampler(OnnxRuntime(Path(args.model)), 4)
            for name, config in (("greedy", SamplingConfig(greedy=True)), ("seeded", SamplingConfig(0.8, top_k=20))):
                _, _, gpu_texts = engine_run(decoder, 4, 300, start_ids, config, seed=5)
                _, _, cpu_texts = engine_run(cpu, 4, 300, start_ids, config, seed=5)
                same = [agreement(g, c) for g, c in zip(gpu_texts, cpu_texts)]
                results["parity"][f"{label}/{name}"] = same
                print(f"parity   {label:16s} {name}: characters equal to the CPU's before the first difference: "
                      f"{same}", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"engine   {label:16s}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)

    for batch in args.batches:  # before: the step on the device, sampling on the host
        try:
            cps = chars_per_second(HostSampler(step_runtime, batch), batch, min(args.length, 200), start_ids, repeats=2)
            row("before", "flat-fp32", batch, batch / cps)
        except Exception as e:  # noqa: BLE001
            print(f"before   batch {batch}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
    for variant in args.variants:
        for batch in args.batches:
            try:
                row("floor", variant, batch, floor_step(variants[variant]["step"], batch, args.device, args.seconds))
            except Exception as e:  # noqa: BLE001 - report and go on: one variant failing must not hide the rest
                print(f"floor    {variant:12s} batch {batch:5d}: FAILED {str(e).splitlines()[0][:160]}", flush=True)
        for steps in (args.steps if variant.startswith("native") else [max(args.steps)]):
            measure_engine(variant, steps)
        if args.out:  # after each variant: a run cut short still leaves its figures
            Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
