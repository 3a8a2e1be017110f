"""`charrnn-export to-tflite`: flags -> to_tflite(); what was written and its parity on stdout."""

from __future__ import annotations


def add_tflite_parser(sub) -> None:
    from ..contract import DEFAULT_ATOL
    from ..litert_step import PRECISIONS

    p = sub.add_parser("to-tflite", help="convert an export to LiteRT (TFLite) single-step models, parity-checked",
                       description="Convert an export's single-step model (the same explicit-state contract: "
                       "token int32 [batch], state float32 [batch, S] -> logits, state_out) to LiteRT: "
                       "model.tflite (fp32) and model.int8.tflite (dynamic-range int8), each carrying its "
                       "vocabulary, with vocab.json and litert_report.json beside them in --out.")
    p.add_argument("--model", default="fp32", metavar="EXPORT_DIR|fp32|int8",
                   help="an export directory from `to-onnx` (or its model.onnx or saved_model/); 'fp32' or 'int8': "
                   "the shipped model, whose fp32 weights both files are made from (default %(default)s)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder to write: new, empty, or an earlier to-tflite folder (with --force)")
    p.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                   help="which files to write (default: %(default)s)")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                   help="fp32 parity tolerance: max abs difference of logits and state (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random parity inputs")
    p.add_argument("--force", action="store_true", help="replace an earlier to-tflite conversion in --out")
    p.set_defaults(func=run_tflite)


def check_numbers(args) -> None:
    """The numeric flags, before TensorFlow loads (seconds) and before anything is read or written."""
    from ..checks import check_seed, check_tolerance

    check_seed(args.seed, "--seed")
    check_tolerance(args.atol, "--atol")


def run_tflite(args) -> int:
    check_numbers(args)
    from ..tflite_export import to_tflite

    report = to_tflite(args.model, args.out, precisions=args.precision, force=args.force, atol=args.atol,
                       seed=args.seed)
    print(f"converted {report['source']} -> {report['out']} (state [batch, {report['state_size']}], "
          f"{report['vocab_size']} characters), checked against {report['reference']}:")
    for precision in ("fp32", "int8"):
        if precision in report:
            entry = report[precision]
            print(f"  {entry['file']}: {entry['bytes']:,} bytes; max logit diff {entry['max_logits_diff']:.3g}, "
                  f"top-1 agreement {entry['top1_agreement']:.2%}, greedy {entry['greedy_agreement']}/"
                  f"{report['cases']['greedy_chars']}")
    return 0
