"""`python -m benchmarks.generation`: the generation benchmark (the same as `charrnn-export bench`),
writing into benchmarks/results/ with the checkout's git commit, and RESULTS.md with --results-md.

    python -m benchmarks.generation --checkpoint RUN_DIR [--batch-sizes 1 8 64 256 4096] [--results-md]
    python -m benchmarks.generation --model artifacts --contestants onnx-fp32 onnx-int8 decode-fp32 decode-int8 \
        --batch-sizes 1 64 256 4096 --name engine --results-md     # the engine on the CPU, no TensorFlow
    python -m benchmarks.generation --quick            # a tiny model: checks the suite in seconds

The logic lives in charrnn_export/bench/ so that the installed command has it too; see there
for the contestants, the floors and what is written.
"""

import os
import sys

from charrnn_export.commands.bench import add_bench_arguments, measure_and_write
from charrnn_export.commands.common import Parser, run_guarded

from .repo import RESULTS_DIR, git_commit, log, refresh_results_md


def run(args) -> int:
    out = measure_and_write(args, RESULTS_DIR, machine={"git_commit": git_commit()}, name=args.name)
    if args.results_md:
        log(f"wrote {refresh_results_md(out)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = Parser(prog="python -m benchmarks.generation", description=__doc__.split("\n\n")[0])
    add_bench_arguments(parser, default_out=RESULTS_DIR)
    parser.add_argument("--name", default=None, help="results file names <name>-*.json/md/png (default generation; "
                        "RESULTS.md shows generation-latest and engine-latest)")
    return run_guarded(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
