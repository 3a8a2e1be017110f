"""The generation benchmark from config to results: check, floors, warm-up, alternating measured runs.

    run_generation_bench(config, machine=None) -> results dict (report.py writes and renders it)

Before anything is timed, every contestant generates greedily at batch 1 and the texts are
compared: fp32 contestants that disagree stop the run (ParityError naming them); int8 reports its
agreement. Each contestant is warmed up at each batch size; then the measured runs alternate
between contestants (so a busy machine slows all alike), the priming (the start string and the
first character) timed apart from the steady steps. TensorFlow is imported only when a
contestant or the export needs it (config.needs_tensorflow). Progress goes to the
"charrnn_export.bench" logger; the command shows it on stderr.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from ..cells import Architecture
from ..rng import row_seed
from ..vocab import Vocab
from ..errors import DataError, ParityError
from .config import BenchConfig, needs_tensorflow
from .contestants import available_devices, build_contestants, timed_run
from .floors import measure_floors
from .report import find_row, load_average, machine_info, results_head
from .sources import Sources, prepare_sources

log = logging.getLogger("charrnn_export.bench")


# ---------------------------------------------------------------- the greedy agreement check


def first_difference(a: str, b: str) -> int | None:
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def compare_greedy(texts: dict[str, str], precision: dict[str, str]) -> dict:
    """Compare every contestant's greedy text with the first fp32 one's; raise ParityError when
    fp32 contestants disagree (int8 may: its agreement is reported instead)."""
    fp32 = [n for n in texts if precision[n] == "fp32"]
    reference = fp32[0] if fp32 else next(iter(texts))
    ref = texts[reference]
    results, failures = {}, []
    for name, text in texts.items():
        at = first_difference(text, ref)
        same = sum(x == y for x, y in zip(text, ref))
        results[name] = {"identical": at is None, "first_difference": at,
                         "agreement": same / max(len(ref), 1), "text": text}
        if at is not None and precision[name] == "fp32":
            failures.append(f"{name} differs from {reference} at character {at} "
                            f"({text[at:at + 20]!r} vs {ref[at:at + 20]!r})")
    if failures:
        raise ParityError("refusing to compare contestants whose greedy outputs disagree (same weights should give "
                          "the same text): " + "; ".join(failures))
    return {"reference": reference, "results": results}


def teacher_forced_agreement(fp32_runtime, int8_runtime, ids: np.ndarray) -> float:
    """How often int8's top-1 next character equals fp32's, both reading the same text."""
    states = [fp32_runtime.zero_state(1), int8_runtime.zero_state(1)]
    agree = 0
    for token in ids:
        tokens = np.array([token], dtype=np.int32)
        (l32, states[0]), (l8, states[1]) = fp32_runtime.step(tokens, states[0]), int8_runtime.step(tokens, states[1])
        agree += int(np.argmax(l32) == np.argmax(l8))
    return agree / max(len(ids), 1)


def greedy_check(config: BenchConfig, contestants: list, vocab: Vocab) -> dict:
    """Every contestant's greedy text at batch 1, compared (compare_greedy), and int8's top-1 agreement."""
    texts, precision = {}, {}
    for c in contestants:
        texts[c.name] = timed_run(c, config.start, 1, config.greedy_chars, True, config.seed)["texts"][0]
        precision[c.name] = c.precision
    check = compare_greedy(texts, precision)
    check["chars"] = config.greedy_chars
    by_name = {c.name: c for c in contestants}
    if "onnx-int8" in by_name and "onnx-fp32" in by_name:
        ids = vocab.encode(config.start + texts["onnx-fp32"])
        check["int8_teacher_forced_top1"] = teacher_forced_agreement(
            by_name["onnx-fp32"].generator.runtime, by_name["onnx-int8"].generator.runtime, ids)
    return check


# ---------------------------------------------------------------- the run


def check_start_in_vocab(start: str, vocab: Vocab) -> None:
    try:
        vocab.encode(start)
    except DataError as e:
        raise DataError(f"--start {start!r}: {e}") from None


def run_generation_bench(config: BenchConfig, machine: dict | None = None) -> dict:
    """Measure every contestant on every device; `machine`: more facts about it to record
    (benchmarks/ adds the git commit)."""
    config.validate()
    started = time.perf_counter()
    machine = {**machine_info(), **(machine or {})}
    tf = tensorflow_for_bench(config)
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-") as scratch_name:
        scratch = Path(scratch_name)
        sources = prepare_sources(config, scratch)
        check_start_in_vocab(config.start, sources.vocab)  # before measuring, not in the greedy check after
        devices, device_notes = available_devices(tf, config.device)
        tf_gpu, ort_cuda = device_notes.pop("_tf_gpu") == "True", device_notes.pop("_ort_cuda") == "True"
        if tf_gpu:
            tf.config.experimental.enable_tensor_float_32_execution(False)  # fp32 must agree exactly
        results_by_device = {d: {"available": False, "note": note, "rows": []} for d, note in device_notes.items()}
        for device in devices:
            results_by_device[device] = run_device(config, sources, tf, device, tf_gpu, ort_cuda, scratch)
    results = results_head(
        "generation", config, machine, steps_by_batch={str(b): config.steps(b) for b in config.batch_sizes},
        tf_intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads() if tf else None)
    results.update(model=sources.description, devices=results_by_device)
    results["targets"] = evaluate_targets(results)
    results["machine"]["load_average_after"] = load_average()
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def tensorflow_for_bench(config: BenchConfig):
    """TensorFlow, seeded and threaded for the run, or None when no contestant needs it."""
    if not needs_tensorflow(config):
        return None
    from ..tfsetup import import_tensorflow, set_threads

    tf = import_tensorflow()
    # Seeded once: re-seeding before each run would make every tf.function with a random op
    # trace again (the seed is part of its cache key), which would be timed as steps.
    tf.random.set_seed(config.seed)
    if config.threads and not set_threads(tf, config.threads):
        log.info("bench: TensorFlow was already initialised; its thread setting stands")
    return tf


def run_device(config: BenchConfig, sources: Sources, tf, device: str, tf_gpu: bool, ort_cuda: bool,
               scratch: Path) -> dict:
    log.info(f"[{device}] building contestants ...")
    contestants, notes = build_contestants(config, sources, tf, device, tf_gpu, ort_cuda)
    if not contestants:
        return {"available": False, "note": "; ".join(notes) or "no contestant can run here", "rows": []}

    log.info(f"[{device}] greedy agreement check: {config.greedy_chars} characters at batch 1 ...")
    check = greedy_check(config, contestants, sources.vocab)
    for name, r in check["results"].items():
        if not r["identical"]:
            log.info(f"[{device}]   {name}: first difference at {r['first_difference']}, "
                     f"agreement {r['agreement']:.1%}")

    log.info(f"[{device}] floors ...")
    architecture = Architecture.from_config(sources.description["config"], f"{sources.export_dir}")
    floors = measure_floors(architecture.step_matrices(), architecture.state_size, config.batch_sizes,
                            config.threads, device, tf, ort_cuda, scratch,
                            budget_s=0.15 if config.quick else 0.5, export_dir=sources.export_dir)
    rows = measure_rows(config, contestants, device)
    reference = next((r for r in rows if r["contestant"] == "tutorial"), None)
    for row in rows:
        row["speedup"] = row["chars_per_s"] / reference["chars_per_s"] if reference else None
        floor = floors["by_batch"][str(row["batch"])].get(row["precision"])
        row["floor_ms"] = floor["ms"] if floor else None
        row["floor_ratio"] = row["ms_per_step"] / floor["ms"] if floor else None
    for r in check["results"].values():
        r.pop("text")
    return {"available": True, "rows": rows, "floors": floors, "greedy_check": check, "notes": notes}


def measure_rows(config: BenchConfig, contestants: list, device: str) -> list[dict]:
    """A warm-up run per contestant and batch size, then config.repeats measured rounds."""
    plan = [(c, b) for b in config.batch_sizes for c in contestants if c.max_batch is None or b <= c.max_batch]
    log.info(f"[{device}] warm-up ...")
    for c, b in plan:
        timed_run(c, config.start, b, config.warmup, False, config.seed)
    samples: dict[tuple[str, int], list] = {(c.name, b): [] for c, b in plan}
    for repeat in range(config.repeats):
        log.info(f"[{device}] repeat {repeat + 1}/{config.repeats} ...")
        rotated = plan[repeat % len(plan):] + plan[:repeat % len(plan)]  # no contestant always goes first
        for c, b in rotated:
            run = timed_run(c, config.start, b, config.steps(b), False, row_seed(config.seed, repeat))
            run.pop("texts")
            samples[(c.name, b)].append(run)
    return [summarise(c.name, c.precision, b, config.steps(b), samples[(c.name, b)]) for c, b in plan]


def summarise(name: str, precision: str, batch: int, steps: int, runs: list[dict]) -> dict:
    per_step = np.array([s for r in runs for s in r["steps"]]) * 1e3  # ms
    steady = sum(r["steady"] for r in runs)
    steady_steps = sum(len(r["steps"]) for r in runs)
    mean_ms = steady / steady_steps * 1e3
    return {
        "contestant": name,
        "precision": precision,
        "batch": batch,
        "steps": steps,
        "chars_per_run": steps * batch,
        "runs": len(runs),
        "ms_per_step": mean_ms,  # total steady time / steps: what chars/s is computed from
        "ms_median": float(np.median(per_step)),
        "ms_p10": float(np.percentile(per_step, 10)),
        "ms_p90": float(np.percentile(per_step, 90)),
        "chars_per_s": batch * 1e3 / mean_ms,
        "priming_ms_median": float(np.median([r["priming"] for r in runs])) * 1e3,
    }


# ---------------------------------------------------------------- targets


def evaluate_targets(results: dict) -> list[dict]:
    """Issue #5's targets, for the full-size model on the CPU; measured, never asserted."""
    rows = results["devices"].get("cpu", {}).get("rows", [])
    fp32_1, int8_1, int8_256 = (find_row(rows, "onnx-fp32", 1), find_row(rows, "onnx-int8", 1),
                                find_row(rows, "onnx-int8", 256))
    tutorial = find_row(rows, "tutorial", 1)

    def best_speedup(row):
        """The speed-up a step running exactly at its floor would reach: what the machine allows."""
        if tutorial is None or row is None or not row.get("floor_ms"):
            return None
        return tutorial["ms_per_step"] / row["floor_ms"]

    targets = [
        ("onnx-fp32 batch 1 speed-up over the tutorial", ">= 60x", fp32_1 and fp32_1["speedup"], 60.0, "x",
         best_speedup(fp32_1)),
        ("onnx-fp32 batch 1 distance from the fp32 floor", "<= 1.3x floor", fp32_1 and fp32_1["floor_ratio"],
         1.3, "floor", 1.0 if fp32_1 else None),
        ("onnx-int8 batch 1 speed-up over the tutorial", ">= 120x", int8_1 and int8_1["speedup"], 120.0, "x",
         best_speedup(int8_1)),
        ("onnx-int8 batch 256 characters per second", ">= 80,000 chars/s", int8_256 and int8_256["chars_per_s"],
         80_000.0, "chars/s", int8_256 and int8_256.get("floor_ms") and 256e3 / int8_256["floor_ms"]),
    ]
    applies = bool(results["model"].get("full_size")) and not results["model"].get("random_weights")
    out = []
    for name, target, value, bound, unit, at_floor in targets:
        if value is None:
            met = None
        elif unit == "floor":
            met = value <= bound
        else:
            met = value >= bound
        out.append({"name": name, "target": target, "value": value, "unit": unit, "met": met, "applies": applies,
                    "at_floor": at_floor})
    return out
