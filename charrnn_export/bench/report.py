"""The results of a generation benchmark, for a reader: the machine, markdown, a chart, the files.

    machine_info() -> dict        CPU, cores, memory, load, library versions (benchmarks/ adds git)
    load_average() -> [1, 5, 15 min] or None
    results_head(benchmark, config, machine, **settings) -> what every suite's results start with
    command_line() -> str         the command as typed, recorded with the results
    render_markdown(results, level=1) -> str
    plot(results) -> PNG bytes, or None without matplotlib (a plain install has none)
    pyplot() -> matplotlib.pyplot on Agg, or None; png_bytes(fig) -> PNG bytes   (for every chart)
    write_results(results, out_dir, name, markdown, png) -> {suffix: path}
        <name>-<stamp>.json/.md/.png in out_dir, copied to <name>-latest.*

Nothing here prints; the command decides what goes to stdout.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import platform
import shlex
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from ..errors import ConfigError
from ..files import atomic_write_bytes
from .config import CONTESTANTS, NO_GPU

# ---------------------------------------------------------------- the machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine_info() -> dict:
    """What a reader needs to judge the numbers: CPU, cores, load, library versions."""
    packages = ("numpy", "onnxruntime", "onnxruntime-gpu", "onnx", "tensorflow", "keras", "tf-keras", "tf2onnx")
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        memory_gib = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "memory_gib": memory_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {p: v for p in packages if (v := package_version(p)) is not None},
        "load_average": load_average(),
    }


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where the system keeps none."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def results_head(benchmark: str, config, machine: dict, **settings) -> dict:
    """What every suite's results start with: its name, schema 1, the date (UTC), the command, the
    mode, the machine, and the config's fields as settings (out and command aside) plus `settings`."""
    fields = {k: v for k, v in asdict(config).items() if k not in ("out", "command")}
    return {"benchmark": benchmark, "schema": 1, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": config.command or command_line(), "quick": config.quick, "machine": machine,
            "settings": {**fields, **settings}}


def command_line() -> str:
    """The command as typed: `python -m benchmarks.generation ...` or `charrnn-export bench ...`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = [f"python -m {spec.name}"] if spec is not None and spec.name != "__main__" else [
        Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"]
    return " ".join(program + [shlex.quote(a) for a in sys.argv[1:]])


# ---------------------------------------------------------------- markdown


def find_row(rows: list[dict], contestant: str, batch: int) -> dict | None:
    return next((r for r in rows if r["contestant"] == contestant and r["batch"] == batch), None)


def fmt(value, spec: str = ",.0f", missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def times(value, spec: str) -> str:
    """A ratio as '2.5x', or '-' when there is nothing to divide by (no tutorial contestant)."""
    return "-" if value is None else f"{format(value, spec)}x"


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "n/a"
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def render_markdown(results: dict, level: int = 1) -> str:
    """The results as markdown: settings, one table per device, floors, agreement, targets."""
    h = "#" * level
    m, model, s = results["machine"], results["model"], results["settings"]
    cfg = model["config"]
    lines = [
        f"{h} Generation benchmark{' (quick)' if results.get('quick') else ''}",
        "",
        f"- date: {results['date']}; command: `{results['command']}`",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m.get('cores_usable')} usable), "
        f"load average {fmt_load(m.get('load_average'))} before, {fmt_load(m.get('load_average_after'))} after",
        "- libraries: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- model: embedding {cfg.get('embedding_dim')}, {model_layers(cfg)}, vocabulary "
        f"{cfg.get('vocab_size')}; weights from {model.get('checkpoint') or model.get('export_dir')}"
        + (" (random, untrained)" if model.get("random_weights") else ""),
        f"- every contestant in a row generates the same characters: {fmt_steps(s['steps_by_batch'])} steps per "
        f"run at batch sizes {', '.join(s['steps_by_batch'])}; {s['repeats']} measured runs each after a "
        f"{s['warmup']}-step warm-up; temperature {s['temperature']}, start {s['start']!r}; threads "
        f"{s['threads'] or 'default'}",
        "- ms/step is the steady time (after the first character) over the steps; chars/s = batch / that; "
        "p10-p90 are of the single steps (a call that makes several, an engine block, gives each its average); "
        "priming is the time to the first characters (start string included); "
        "x tutorial is chars/s over the tutorial's at batch 1 on the same device; x floor is ms/step over the "
        "time of the step's two matrix products alone (fp32, or int8 for the int8 contestants) at that batch size; "
        "onnx-* and savedmodel run the decode engine over the step model with host sampling (sampling.py's rule, "
        "compiled where built), decode-* over the "
        "decode model (sampling inside onnxruntime)",
        "",
    ]
    for device in ("cpu", "cuda"):
        if device in results["devices"]:
            lines += render_device(results["devices"][device], device, h)
    lines += render_targets(results.get("targets", []), h)
    return "\n".join(lines)


def render_device(d: dict, device: str, h: str) -> list[str]:
    """One device's table of rows, its floors, the agreement check and the notes."""
    lines = [f"{h}# {'CPU' if device == 'cpu' else 'GPU (CUDA)'}", ""]
    if not d.get("available"):
        return lines + [d.get("note", NO_GPU), ""]
    lines += [
        "| contestant | batch | steps | ms/step | median (p10-p90) | chars/s | x tutorial | x floor | priming ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in d["rows"]:
        lines.append(
            f"| {r['contestant']} | {r['batch']} | {r['steps']} | {fmt_ms(r['ms_per_step'])} | "
            f"{fmt_ms(r['ms_median'])} ({fmt_ms(r['ms_p10'])}-{fmt_ms(r['ms_p90'])}) | {fmt(r['chars_per_s'])} | "
            f"{times(r['speedup'], '.1f')} | {times(r['floor_ratio'], '.2f')} | {fmt_ms(r['priming_ms_median'])} |")
    lines += [""]
    lines += render_floors(d["floors"], h)
    lines += render_step_floors(d["floors"])
    lines += render_check(d["greedy_check"])
    lines += [f"- note: {note}" for note in d.get("notes", [])]
    return lines + [""]


def render_targets(targets: list[dict], h: str) -> list[str]:
    lines = [f"{h}# Targets", ""]
    if targets and not targets[0]["applies"]:
        lines += ["The targets are for the full-size model (embedding 256, 1024 units, trained); this run's model "
                  "is not it, so they are shown for reference only.", ""]
    for t in targets:
        verdict = "not measured" if t["met"] is None else "met" if t["met"] else "NOT met"
        if not t["applies"] and t["met"] is not None:
            verdict = f"n/a ({verdict} here)"
        value = fmt(t["value"], ",.0f" if t["unit"] == "chars/s" else ".2f")
        unit = "x" if t["unit"] in ("x", "floor") else f" {t['unit']}"
        ceiling = ""
        if t.get("at_floor") and t["unit"] != "floor":
            ceiling = (f" (a step at the floor would give {fmt(t['at_floor'], ',.0f' if t['unit'] == 'chars/s' else '.1f')}"
                       f"{unit} here)")
        shown = "-" if t["value"] is None else f"{value}{unit}"  # nothing measured: no unit after "n/a"
        lines.append(f"- {t['name']} {t['target']}: {shown} -> **{verdict}**{ceiling}")
    lines.append("")
    return lines


def fmt_load(load) -> str:
    return "n/a" if not load else "/".join(f"{x:.2f}" for x in load)


def fmt_steps(steps_by_batch: dict) -> str:
    return "/".join(str(v) for v in steps_by_batch.values())


def model_layers(cfg: dict) -> str:
    """The recurrent layers of a results file's model config, "gru(1024) x1" (an older file's
    config, rnn_units alone, reads as its GRU)."""
    from ..cells import Architecture
    from ..errors import ModelError

    try:
        return Architecture.from_config(cfg).describe()
    except ModelError:
        return "layers unknown"


def render_floors(floors: dict, h: str) -> list[str]:
    shapes = floors.get("matrices")
    products = ", ".join(f"[{rows}, {columns}]" for rows, columns in shapes) if shapes else "each kernel"
    lines = [f"Floors: the step's matrix products alone (an input as wide as each matrix's rows times {products}: "
             "every layer's kernels and the output kernel), the fastest of the libraries timed (same threads); GB/s counts the weights "
             "read once per step (the batch-1 ceiling), GFLOP/s the multiply-adds (the large-batch ceiling):", "",
             "| batch | fp32 ms | fp32 GB/s | fp32 GFLOP/s | int8 ms | int8 GB/s | int8 GFLOP/s | fp32 ms by library |",
             "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for batch, row in floors["by_batch"].items():
        f32, i8 = row.get("fp32", {}), row.get("int8", {})
        libraries = ", ".join(f"{name} {fmt_ms(ms)}" for name, ms in f32.get("ms_by_method", {}).items())
        lines.append(f"| {batch} | {fmt_ms(f32.get('ms'))} | {fmt(f32.get('weights_gb_per_s'), '.1f')} | "
                     f"{fmt(f32.get('gflop_per_s'), '.1f')} | {fmt_ms(i8.get('ms'))} | "
                     f"{fmt(i8.get('weights_gb_per_s'), '.1f')} | {fmt(i8.get('gflop_per_s'), '.1f')} | "
                     f"{libraries} |")
    return lines + [""] + [f"- note: {note}" for note in floors.get("notes", [])] + ([""] if floors.get("notes") else [])


STEP_FLOORS = {"decode-fp32": "decode model fp32", "decode-int8": "decode model int8",
               "step-cuda-graph": "step model, IO binding + CUDA graph"}


def render_step_floors(floors: dict) -> list[str]:
    """The whole-step floors (floors.step_floors), where any was measured."""
    names = [n for n in STEP_FLOORS if any(n in row for row in floors["by_batch"].values())]
    if not names:
        return []
    lines = ["Whole-step floors: one model call alone at each batch size (the decode model: step and sampling, "
             "one session.run with fixed inputs; no engine around it):", "",
             "| batch | " + " | ".join(f"{STEP_FLOORS[n]} ms | chars/s" for n in names) + " |",
             "|---:|" + "---:|---:|" * len(names)]
    for batch, row in floors["by_batch"].items():
        cells = [f"{fmt_ms(row.get(n, {}).get('ms'))} | {fmt(row.get(n, {}).get('chars_per_s'))}" for n in names]
        lines.append(f"| {batch} | " + " | ".join(cells) + " |")
    return lines + [""]


def render_check(check: dict) -> list[str]:
    lines = [f"Greedy agreement ({check['chars']} characters at batch 1, against {check['reference']}): "]
    parts = []
    for name, r in check["results"].items():
        if name == check["reference"]:
            continue
        if r["identical"]:
            parts.append(f"{name} identical")
        else:
            parts.append(f"{name} first differs at character {r['first_difference']} "
                         f"({r['agreement']:.0%} of positions equal)")
    if "int8_teacher_forced_top1" in check:
        parts.append(f"int8's top-1 choice equals fp32's on {check['int8_teacher_forced_top1']:.1%} of the "
                     "characters when both read the same text")
    lines[0] += "; ".join(parts) + "."
    return lines + [""]


CONTESTANT_COLOURS = {"tutorial": "#9e9e9e", "tf-function": "#ff9800", "savedmodel": "#8d6e63",
                      "onnx-fp32": "#1e88e5", "onnx-int8": "#43a047", "decode-fp32": "#3949ab",
                      "decode-int8": "#00897b"}


def plot(results: dict) -> bytes | None:
    """chars/s by contestant and batch size (log scale), one panel per device, floors as lines;
    None without matplotlib (it comes with the train extra)."""
    plt = pyplot()
    if plt is None:
        return None
    devices = [d for d in ("cpu", "cuda") if results["devices"].get(d, {}).get("available")]
    fig, axes = plt.subplots(1, max(len(devices), 1), figsize=(7.5 * max(len(devices), 1), 4.8), squeeze=False)
    cfg = results["model"]["config"]
    for ax, device in zip(axes[0], devices or ["cpu"]):
        d = results["devices"].get(device, {})
        rows = d.get("rows", [])
        batches = sorted({r["batch"] for r in rows})
        names = [n for n in CONTESTANTS if any(r["contestant"] == n for r in rows)]
        width = 0.8 / max(len(names), 1)
        for i, name in enumerate(names):
            xs, ys = [], []
            for j, b in enumerate(batches):
                r = find_row(rows, name, b)
                if r is not None:
                    xs.append(j - 0.4 + width * (i + 0.5))
                    ys.append(r["chars_per_s"])
            bars = ax.bar(xs, ys, width, label=name, color=CONTESTANT_COLOURS.get(name), zorder=2)
            for bar, y in zip(bars, ys):
                ax.annotate(f"{y:,.0f}", (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom",
                            fontsize=6.5, rotation=90, xytext=(0, 2), textcoords="offset points", zorder=4,
                            bbox=dict(boxstyle="square,pad=0.05", fc="white", ec="none", alpha=0.85))
        floors = d.get("floors", {}).get("by_batch", {})
        for precision, style in (("fp32", "--"), ("int8", ":")):
            label = f"{precision} floor (matrix products alone)"
            for j, b in enumerate(batches):
                f = floors.get(str(b), {}).get(precision)
                if f:
                    ax.hlines(f["chars_per_s"], j - 0.45, j + 0.45, colors="black", linestyles=style, linewidth=1,
                              label=label, zorder=3)
                    label = None
        ax.set_yscale("log")
        ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
        ax.set_ylabel("characters per second (log scale)")
        ax.set_title(f"{'CPU' if device == 'cpu' else 'GPU'}: {results['machine']['cpu'][:48]}"
                     if device == "cpu" else "GPU (CUDA)", fontsize=10)
        top = max([r["chars_per_s"] for r in rows] + [f.get(p, {}).get("chars_per_s", 0)
                                                       for f in floors.values() for p in ("fp32", "int8")] + [1])
        bottom = min([r["chars_per_s"] for r in rows] + [top])
        ax.set_ylim(bottom / 3, top * 4)
        ax.grid(axis="y", which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", ncol=2)
    fig.suptitle(f"char-RNN generation, embedding {cfg.get('embedding_dim')}, {model_layers(cfg)}, "
                 f"vocab {cfg.get('vocab_size')}{' (quick: tiny random model)' if results.get('quick') else ''}",
                 fontsize=11)
    return png_bytes(fig)


def pyplot():
    """matplotlib.pyplot drawing into files (the Agg backend: no display needed), or None
    without matplotlib (it comes with the train extra)."""
    if importlib.util.find_spec("matplotlib") is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    """A finished figure as PNG bytes (laid out, 120 dpi); the figure is closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def write_results(results: dict, out_dir, name: str, markdown: str, png: bytes | None) -> dict[str, Path]:
    """<name>-<stamp>.json/.md/.png in out_dir, copied to <name>-latest.*; returns the paths."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create --out {out} ({e.strerror}); choose a writable folder") from None
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    contents = {"json": (json.dumps(results, indent=2, ensure_ascii=False) + "\n").encode(),
                "md": markdown.encode()}
    if png is not None:
        contents["png"] = png
    paths = {}
    for suffix, data in contents.items():
        path = out / f"{name}-{stamp}.{suffix}"
        atomic_write_bytes(path, data, root=out)  # a link in --out that leads out of it is refused
        atomic_write_bytes(out / f"{name}-latest.{suffix}", data, root=out)
        paths[suffix] = path
    return paths
