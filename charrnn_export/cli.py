"""`charrnn-export`: the entry point. Builds the parser from the commands and runs one.

Each subcommand lives in charrnn_export/commands/ (flags, printing, exit status) and calls one
stage's typed function. Every CharRNNError becomes one line on stderr and exit status 2
(commands/common.py); nothing else is caught. No command imports TensorFlow before its flags
are checked: the stages that need it import it themselves.
"""

from __future__ import annotations

import argparse
import os
import sys

from .commands.bench import add_bench_parser
from .commands.common import Parser, run_guarded
from .commands.export import add_export_parser
from .commands.sample import add_sample_parser
from .commands.serve import add_serve_parser
from .commands.tflite import add_tflite_parser
from .commands.train import add_train_parser
from .commands.web import add_web_parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="charrnn-export", description="Train, export and sample character-level RNN models (GRU, LSTM, SimpleRNN).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add_parser in (add_train_parser, add_export_parser, add_tflite_parser, add_sample_parser, add_bench_parser,
                       add_web_parser, add_serve_parser):
        add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter is noise for a CLI user; keep warnings and errors.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = build_parser().parse_args(argv)
    return run_guarded(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
