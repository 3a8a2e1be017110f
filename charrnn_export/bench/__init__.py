"""Generation benchmark: the tutorial's own loops against the exported step and the decode engine,
on the same weights.

    run_generation_bench(BenchConfig(...)) -> results dict
    render_markdown(results) -> str; plot(results) -> PNG bytes or None
    write_results(results, out_dir, name, markdown, png) -> paths

In import order: config (names, BenchConfig) -> sources (the weights and their export) ->
contestants (what is timed, and the one timed run) -> floors (this machine's ceilings) -> run
(check, warm-up, measured rounds, targets) -> report (machine, markdown, chart, files). No
argparse and no printing here: `charrnn-export bench` (commands/bench.py) and
`python -m benchmarks.generation` are the commands. TensorFlow, onnx and matplotlib are
imported inside the functions that use them, and only when a contestant needs them.
"""

from .config import CONTESTANTS, DEFAULT_BATCH_SIZES, NO_GPU, BenchConfig, needs_tensorflow
from .contestants import available_devices
from .report import (command_line, cpu_model, fmt_load, fmt_ms, load_average, machine_info, plot, png_bytes, pyplot,
                     render_markdown, results_head, write_results)
from .run import compare_greedy, run_generation_bench

__all__ = ["BenchConfig", "CONTESTANTS", "DEFAULT_BATCH_SIZES", "NO_GPU", "available_devices", "command_line",
           "compare_greedy", "cpu_model", "fmt_load", "fmt_ms", "load_average", "machine_info", "needs_tensorflow",
           "plot", "png_bytes", "pyplot", "render_markdown", "results_head", "run_generation_bench", "write_results"]
