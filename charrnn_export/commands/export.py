"""`charrnn-export to-onnx`: flags -> export(); the parity figures on stdout."""

from __future__ import annotations


def add_export_parser(sub) -> None:
    from ..contract import DEFAULT_ATOL

    p = sub.add_parser("to-onnx", help="export a checkpoint to a single-step SavedModel and ONNX, parity-checked",
                       description="Export a trained char-RNN to a single-step model with explicit state: "
                       "model.onnx, saved_model/, vocab.json and export_report.json in --out.")
    p.add_argument("--checkpoint", required=True,
                   help="a run directory from `train` (its best checkpoint), a tutorial training_checkpoints "
                   "directory or prefix (e.g. training_checkpoints/ckpt_10), or a Keras .weights.h5 or .keras "
                   "file; the architecture (GRU, LSTM, SimpleRNN layers, stacked) is read from it")
    p.add_argument("--out", required=True, help="directory to write (created; must be empty unless --force)")
    p.add_argument("--text", help="the training text: rebuilds a tutorial checkpoint's vocabulary as the tutorial "
                   "did (sorted(set(text)), with [UNK] at id 0 when the embedding has one row more, as the current "
                   "tutorial's StringLookup), and its last tenth measures the fp32 and int8 models")
    p.add_argument("--vocab", help="vocab.json (a JSON list of characters in id order, or StringLookup's "
                   "get_vocabulary() starting with [UNK]) for checkpoints without one")
    p.add_argument("--quantize", choices=("int8",), help="also write model.int8.onnx (int8 weights, each row quantised on its own)")
    p.add_argument("--opset", type=int, help="ONNX opset, 13 to 18 (default: 18, the newest tf2onnx converts to)")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                   help="parity tolerance: max abs difference of logits and state (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random parity sequences")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=run_export)


def check_numbers(args) -> None:
    """The numeric flags, before TensorFlow loads (seconds) and before anything is read or written."""
    from ..checks import check_int, check_seed, check_tolerance
    from ..errors import ConfigError
    from ..step_model import DEFAULT_OPSET, MIN_OPSET

    check_seed(args.seed, "--seed")
    if args.opset is not None and not MIN_OPSET <= check_int(args.opset, "--opset") <= DEFAULT_OPSET:
        raise ConfigError(f"--opset must be between {MIN_OPSET} and {DEFAULT_OPSET} (tf2onnx's newest), got {args.opset}")
    check_tolerance(args.atol, "--atol")


def run_export(args) -> int:
    check_numbers(args)
    from ..export import export

    report = export(args.checkpoint, args.out, text=args.text, vocab_path=args.vocab, atol=args.atol,
                    quantize=args.quantize, opset=args.opset, force=args.force, seed=args.seed)
    parity = ", ".join(f"{k} {v['logits']:.2g}" for k, v in report["parity"].items()
                       if isinstance(v, dict) and "logits" in v)
    print(f"exported {report['source']} ({report['architecture']}) -> {args.out} (opset {report['opset']}); "
          f"max logit diff: {parity}")
    if "int8" in report:
        q = report["int8"]
        extra = f", top-1 agreement {q['top1_agreement']:.4f}" if "top1_agreement" in q else ""
        print(f"int8: max logit diff {q['max_logit_diff_random']:.3g}{extra}")
    return 0
