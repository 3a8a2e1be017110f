"""`charrnn-export` subcommands: a thin layer that parses flags and calls each stage's function.

Every CharRNNError becomes one line on stderr and exit status 2; nothing else is caught.
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import CharRNNError


def fail(message: str, status: int = 2) -> int:
    print(f"charrnn-export: error: {message}", file=sys.stderr)
    return status


class Parser(argparse.ArgumentParser):
    """argparse that reports bad flags in our one-line form (argparse already exits 2)."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_train_parser(sub) -> None:
    from .train import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train the tutorial's char-RNN on a UTF-8 text",
                       description="Train Embedding -> GRU -> Dense on a text; writes a run directory.")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=d.data, help="local UTF-8 file or http(s) URL (default: the tutorial's "
                   "tiny-shakespeare URL, cached under $CHARRNN_EXPORT_CACHE)")
    g.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="last fraction of the text held out for validation (default %(default)s)")
    g.add_argument("--seq-length", type=int, default=d.seq_length, help="characters per training window (%(default)s)")
    g = p.add_argument_group("model")
    g.add_argument("--embedding-dim", type=int, default=d.embedding_dim, help="(default %(default)s)")
    g.add_argument("--rnn-units", type=int, default=d.rnn_units, help="GRU units (default %(default)s)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="(default %(default)s)")
    g.add_argument("--learning-rate", type=float, default=d.learning_rate, help="Adam's (default %(default)s)")
    g.add_argument("--lr-schedule", choices=("constant", "cosine"), default=d.lr_schedule,
                   help="cosine decays to --min-lr-ratio of the rate over the planned steps (default %(default)s)")
    g.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="(default %(default)s)")
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warm-up (default %(default)s)")
    g.add_argument("--dropout", type=float, default=d.dropout,
                   help="dropout on the embedding output and the GRU output (default %(default)s, as the tutorial)")
    g.add_argument("--clip-norm", type=float, default=d.clip_norm, help="global gradient-norm clip (default none)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="decoupled weight decay (AdamW) when > 0 (default %(default)s)")
    g.add_argument("--epochs", type=int, default=d.epochs, help="(default %(default)s)")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps in all")
    g.add_argument("--seed", type=int, default=d.seed, help="seeds initialisation, data order and dropout")
    g = p.add_argument_group("run directory")
    g.add_argument("--out", required=True, help="run directory to write (config, vocab, checkpoints, metrics)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    g.add_argument("--force", action="store_true", help="start over in --out even if it holds another run")
    g = p.add_argument_group("several devices or machines (tf.distribute; see the README)")
    g.add_argument("--strategy", choices=("none", "mirrored", "multi-worker"), default="none",
                   help="mirrored: every local GPU (or --cpu-replicas); multi-worker: the cluster in TF_CONFIG, "
                   "one process per machine. --batch-size stays the global batch (default %(default)s)")
    g.add_argument("--cpu-replicas", type=int, default=None,
                   help="with --strategy mirrored: N logical CPU devices instead of the GPUs (for testing)")
    g.add_argument("--worker-timeout", type=float, default=None, metavar="SECONDS",
                   help="stop with an error when another worker has not answered for this long; must outlast "
                   "an epoch's validation and checkpoint (default 300)")
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    from .train import TrainConfig, train

    config = TrainConfig(
        data=args.data, embedding_dim=args.embedding_dim, rnn_units=args.rnn_units, seq_length=args.seq_length,
        batch_size=args.batch_size, learning_rate=args.learning_rate, epochs=args.epochs, max_steps=args.max_steps,
        val_fraction=args.val_fraction, seed=args.seed, dropout=args.dropout, lr_schedule=args.lr_schedule,
        warmup_steps=args.warmup_steps, min_lr_ratio=args.min_lr_ratio, clip_norm=args.clip_norm,
        weight_decay=args.weight_decay,
    )
    distribution = None
    if args.strategy != "none" or args.cpu_replicas is not None or args.worker_timeout is not None:
        from .distribute import DEFAULT_WORKER_TIMEOUT, DistributeOptions

        distribution = DistributeOptions(args.strategy, args.cpu_replicas,
                                         DEFAULT_WORKER_TIMEOUT if args.worker_timeout is None else args.worker_timeout)
    summary = train(config, args.out, resume=args.resume, force=args.force, distribution=distribution)
    print(f"best validation loss {summary['best_val_loss']:.4f} nats/char; run in {summary['run_dir']}")
    return 0


def add_export_parser(sub) -> None:
    from .contract import DEFAULT_ATOL

    p = sub.add_parser("to-onnx", help="export a checkpoint to a single-step SavedModel and ONNX, parity-checked",
                       description="Export a trained char-RNN to a single-step model with explicit state: "
                       "model.onnx, saved_model/, vocab.json and export_report.json in --out.")
    p.add_argument("--checkpoint", required=True,
                   help="a run directory from `train` (its best checkpoint), a tutorial training_checkpoints "
                   "directory or prefix (e.g. training_checkpoints/ckpt_10), or a Keras .weights.h5 file")
    p.add_argument("--out", required=True, help="directory to write (created; must be empty unless --force)")
    p.add_argument("--text", help="the training text: rebuilds a tutorial checkpoint's vocabulary as the tutorial "
                   "did (sorted(set(text)), with [UNK] at id 0 when the embedding has one row more, as the current "
                   "tutorial's StringLookup), and its last tenth measures the fp32 and int8 models")
    p.add_argument("--vocab", help="vocab.json (a JSON list of characters in id order, or StringLookup's "
                   "get_vocabulary() starting with [UNK]) for checkpoints without one")
    p.add_argument("--quantize", choices=("int8",), help="also write model.int8.onnx (dynamic int8 weights)")
    p.add_argument("--opset", type=int, help="ONNX opset, 13 to 18 (default: 18, the newest tf2onnx converts to)")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                   help="parity tolerance: max abs difference of logits and state (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random parity sequences")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    from .export import export

    report = export(args.checkpoint, args.out, text=args.text, vocab_path=args.vocab, atol=args.atol,
                    quantize=args.quantize, opset=args.opset, force=args.force, seed=args.seed)
    parity = ", ".join(f"{k} {v['logits']:.2g}" for k, v in report["parity"].items() if isinstance(v, dict))
    print(f"exported {report['source']} -> {args.out} (opset {report['opset']}); max logit diff: {parity}")
    if "int8" in report:
        q = report["int8"]
        extra = f", top-1 agreement {q['top1_agreement']:.4f}" if "top1_agreement" in q else ""
        print(f"int8: max logit diff {q['max_logit_diff_random']:.3g}{extra}")
    return 0


from .sample import add_sample_parser  # noqa: E402  (`charrnn-export sample`: the parser lives in sample.py)
from .bench import add_bench_parser  # noqa: E402  (`charrnn-export bench`: the parser lives in bench.py)
from .web.command import add_web_parser  # noqa: E402  (`charrnn-export to-web`: charrnn_export/web/)
from .serve.command import add_serve_parser  # noqa: E402  (`charrnn-export serve`: charrnn_export/serve/)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="charrnn-export", description="Train, export and sample character-level GRU models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_train_parser(sub)
    for add_parser in (add_export_parser, add_sample_parser, add_bench_parser, add_web_parser, add_serve_parser):
        add_parser(sub)
    return parser


def needs_tensorflow(args) -> bool:
    if args.command == "sample":
        return getattr(args, "runtime", "onnx") != "onnx"
    # train and to-onnx import it themselves (quietly), after checking their data and options.
    return args.command in ("bench",)


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter is noise for a CLI user; keep warnings and errors.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = build_parser().parse_args(argv)
    try:
        if needs_tensorflow(args):
            from .tfsetup import import_tensorflow

            import_tensorflow()
        return args.func(args)
    except CharRNNError as e:
        return fail(str(e), e.exit_status)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except BrokenPipeError:
        return 141  # the reader went away (e.g. `| head`): not an error worth a message


if __name__ == "__main__":
    sys.exit(main())
