"""What the benchmarks know about this repository: where results go, RESULTS.md, the git commit.

    RESULTS_DIR                   benchmarks/results/ (every suite's default --out)
    machine_info() -> dict        the package's bench.machine_info() plus the checkout's git commit
    refresh_results_md(out_dir)   rewrite RESULTS.md beside out_dir from the latest results there
    log(message)                  a progress line on stderr
    suite_parser(module, doc)     a suite's one-line-error parser, TensorFlow's C++ log off
    add_data_flag(parser), add_results_flags(parser)   --data; --out and --results-md, as the suites name them

The package (charrnn_export) never refers to this folder; these suites import it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from charrnn_export import bench
from charrnn_export.files import atomic_write_text

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def suite_parser(module: str, doc: str):
    """The parser of `python -m MODULE` (one-line errors, exit 2), described by its docstring's
    first paragraph; TensorFlow's C++ log is turned off first, as every suite that trains wants."""
    import os

    from charrnn_export.commands.common import Parser

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return Parser(prog=f"python -m {module}", description=doc.split("\n\n")[0])


def add_data_flag(parser) -> None:
    """--data: the text a training suite reads (training.default_data chooses when it is not given)."""
    parser.add_argument("--data", help="UTF-8 text or URL (default: ../shared/data/tinyshakespeare.txt when "
                        "present, else the tutorial's URL)")


def add_results_flags(parser) -> None:
    """--out (default RESULTS_DIR) and --results-md."""
    parser.add_argument("--out", help=f"results folder (default: {RESULTS_DIR})")
    parser.add_argument("--results-md", action="store_true",
                        help="also rewrite RESULTS.md beside the results folder from the latest results there")


def git_commit() -> str | None:
    """The checkout's commit (+ '-dirty' with local changes), or None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict:
    return {**bench.machine_info(), "git_commit": git_commit()}


def render_results_md(results_dir) -> str:
    """benchmarks/RESULTS.md from the latest generation and training results in results_dir."""
    results_dir = Path(results_dir)
    parts = ["# Benchmark results", "",
             "Written from the latest results in benchmarks/results/ by any suite's `--results-md` "
             "(`python -m benchmarks.generation`, `benchmarks.training`, `benchmarks.serving`, `benchmarks.web`, "
             "`benchmarks.peers`, `benchmarks.architectures`, `benchmarks/sampler_overhead.py`; "
             "`benchmarks/gpu_engine.py --report` writes the GPU section's file); every figure below is measured, "
             "and each section names its command, machine and date.", ""]
    generation = results_dir / "generation-latest.json"
    if generation.exists():
        parts += [bench.render_markdown(json.loads(generation.read_text()), level=2),
                  "![chars/s by contestant and batch size](results/generation-latest.png)", ""]
    else:
        parts += ["## Generation", "", "Not measured yet: run `python -m benchmarks.generation --checkpoint RUN_DIR`.",
                  ""]
    training = results_dir / "training-latest.md"
    if training.exists():
        text = training.read_text()
        parts += [text.replace("\n# ", "\n## ").replace("# ", "## ", 1) if text.startswith("# ") else text, ""]
    else:
        parts += ["## Training", "", "Not measured yet: run `python -m benchmarks.training`.", ""]
    workers = results_dir / "training-workers-latest.md"  # python -m benchmarks.training --workers 1 2
    if workers.exists():
        parts += [workers.read_text().replace("# ", "## ", 1), ""]
    engine = results_dir / "engine-latest.json"  # python -m benchmarks.generation ... --name engine
    if engine.exists():
        parts += [bench.render_markdown(json.loads(engine.read_text()), level=2)
                  .replace("## Generation benchmark", "## The decode engine on the CPU", 1),
                  "![chars/s by contestant and batch size](results/engine-latest.png)", ""]
    # sampler_overhead.py, gpu_engine.py --report, serving.py, web.py, peers.py, architectures.py
    overheads = [path.name.removesuffix("-latest.md") for path in sorted(results_dir.glob("overhead-*-latest.md"))]
    for name in (*overheads, "gpu-engine", "serving", "web", "peers", "architectures"):
        section = results_dir / f"{name}-latest.md"
        if section.exists():
            parts += [section.read_text().rstrip("\n"), ""]
    return "\n".join(parts)


def refresh_results_md(out_dir) -> Path:
    """Rewrite RESULTS.md beside the results folder (benchmarks/RESULTS.md for benchmarks/results)."""
    path = Path(out_dir).resolve().parent / "RESULTS.md"
    atomic_write_text(path, render_results_md(out_dir))
    return path
