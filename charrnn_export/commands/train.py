"""`charrnn-export train`: flags -> TrainConfig -> train(); one line of result on stdout."""

from __future__ import annotations


def units_list(value: str) -> int | tuple[int, ...] | str:
    """--rnn-units: one number for every layer (512), or a comma list, one per layer (512,256).
    Anything else is passed on as it is: TrainConfig.validate names it in the same one-line form
    as every other bad value (and a value that is not positive)."""
    try:
        numbers = tuple(int(part) for part in value.split(","))
    except ValueError:
        return value
    return numbers[0] if len(numbers) == 1 else numbers


def add_train_parser(sub) -> None:
    from ..cells import kind_names
    from ..train import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train the tutorial's char-RNN on a UTF-8 text",
                       description="Train Embedding -> recurrent layers (GRU, LSTM or SimpleRNN) -> Dense on a text; "
                       "writes a run directory.")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=d.data, help="local UTF-8 file or http(s) URL (default: the tutorial's "
                   "tiny-shakespeare URL, cached under $CHARRNN_EXPORT_CACHE)")
    g.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="last fraction of the text held out for validation (default %(default)s)")
    g.add_argument("--seq-length", type=int, default=d.seq_length, help="characters per training window (%(default)s)")
    g = p.add_argument_group("model")
    g.add_argument("--embedding-dim", type=int, default=d.embedding_dim, help="(default %(default)s)")
    g.add_argument("--cell", default=d.cell, metavar="{" + ",".join(kind_names()) + "}",
                   help="the recurrent layers' kind: gru (Keras' GRU, reset_after), lstm, or rnn (SimpleRNN) "
                   "(default %(default)s, as the tutorial)")
    g.add_argument("--layers", type=int, default=None,
                   help="recurrent layers, stacked (default 1, or as many as --rnn-units lists)")
    g.add_argument("--rnn-units", type=units_list, default=d.rnn_units, metavar="N[,N...]",
                   help="units of every recurrent layer, or a comma list with one number per layer "
                   "(default %(default)s)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="(default %(default)s)")
    g.add_argument("--learning-rate", type=float, default=d.learning_rate, help="Adam's (default %(default)s)")
    g.add_argument("--lr-schedule", choices=("constant", "cosine"), default=d.lr_schedule,
                   help="cosine decays to --min-lr-ratio of the rate over the planned steps (default %(default)s)")
    g.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="(default %(default)s)")
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warm-up (default %(default)s)")
    g.add_argument("--dropout", type=float, default=d.dropout,
                   help="dropout on the embedding's output and on every recurrent layer's output, so also between "
                   "layers (default %(default)s, as the tutorial)")
    g.add_argument("--clip-norm", type=float, default=d.clip_norm, help="global gradient-norm clip (default none)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="decoupled weight decay (AdamW) when > 0 (default %(default)s)")
    g.add_argument("--epochs", type=int, default=d.epochs, help="(default %(default)s)")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps in all")
    g.add_argument("--seed", type=int, default=d.seed, help="seeds initialisation, data order and dropout")
    g = p.add_argument_group("run directory")
    g.add_argument("--out", required=True, help="run directory to write (config, vocab, checkpoints, metrics)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint "
                   "(--epochs, --max-steps and --data's location may change; the rest, the architecture included, "
                   "must match)")
    g.add_argument("--force", action="store_true", help="start over in --out even if it holds another run "
                   "(removes only the files that run wrote; not with --resume)")
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
    from ..train import TrainConfig, train

    config = TrainConfig(
        data=args.data, embedding_dim=args.embedding_dim, rnn_units=args.rnn_units, cell=args.cell, layers=args.layers,
        seq_length=args.seq_length,
        batch_size=args.batch_size, learning_rate=args.learning_rate, epochs=args.epochs, max_steps=args.max_steps,
        val_fraction=args.val_fraction, seed=args.seed, dropout=args.dropout, lr_schedule=args.lr_schedule,
        warmup_steps=args.warmup_steps, min_lr_ratio=args.min_lr_ratio, clip_norm=args.clip_norm,
        weight_decay=args.weight_decay,
    )
    distribution = None
    if args.strategy != "none" or args.cpu_replicas is not None or args.worker_timeout is not None:
        from ..distribute import DEFAULT_WORKER_TIMEOUT, DistributeOptions

        distribution = DistributeOptions(args.strategy, args.cpu_replicas,
                                         DEFAULT_WORKER_TIMEOUT if args.worker_timeout is None else args.worker_timeout)
    summary = train(config, args.out, resume=args.resume, force=args.force, distribution=distribution)
    print(f"best validation loss {summary['best_val_loss']:.4f} nats/char; run in {summary['run_dir']}")
    return 0
