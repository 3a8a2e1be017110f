"""`python -m charrnn_export.sample`: the `charrnn-export sample` command as a module.

The command itself (flags, output, errors) is charrnn_export/commands/sample.py; choosing a
character is sampling.py, and the generation loop is generate.py (over engine.py).
"""

import sys

from .commands.sample import main

if __name__ == "__main__":
    sys.exit(main())
