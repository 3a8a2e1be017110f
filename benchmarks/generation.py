"""`python -m benchmarks.generation`: the generation benchmark (the same as `charrnn-export bench`).

    python -m benchmarks.generation --checkpoint RUN_DIR [--batch-sizes 1 8 64 256] [--results-md]
    python -m benchmarks.generation --quick            # a tiny model: checks the suite in seconds

The logic lives in charrnn_export/bench.py so that the installed command has it too; see there
for the contestants, the floors and what is written to benchmarks/results/.
"""

import sys

from charrnn_export.bench import main

if __name__ == "__main__":
    sys.exit(main())
