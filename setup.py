"""The one compiled part: _charrnn_export_plain (charrnn_export/_plain.c), sampling.py's rule for
plain rows in C.

Everything else about the package is in pyproject.toml. The extension is optional: where no C
compiler is found the install goes on without it, and sampling.py uses numpy (the same ids).
"""

import sys

from setuptools import Extension, setup

# A fused multiply-add would round differently from numpy's separate multiply and add.
flags = [] if sys.platform == "win32" else ["-O2", "-ffp-contract=off", "-fno-fast-math"]

setup(ext_modules=[Extension("_charrnn_export_plain", ["charrnn_export/_plain.c"], extra_compile_args=flags,
                             optional=True)])
