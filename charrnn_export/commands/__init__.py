"""The command layer: argparse, printing and exit codes, over each stage's typed function.

    common.py   Parser, fail, run_guarded (the one error handling), stderr logging
    train.py  export.py  sample.py  bench.py  serve.py  web.py   one command each: add_*_parser, run_*

Only this layer touches argparse or stdout. Nothing is imported here, so `python -m
charrnn_export.sample` loads commands/sample.py alone (numpy and onnxruntime, never TensorFlow).
"""
