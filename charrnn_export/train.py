"""Train a char model (the tutorial's, or any stack of GRU / LSTM / SimpleRNN layers the cells
package knows): text -> run directory with checkpoints, best weights and metrics.

    train(TrainConfig, out_dir, resume=..., force=...) -> summary dict

A run directory holds:
    config.json       everything that defines the run (model, data, optimisation, seed), and the
                      architecture (cells.Architecture.to_json) the flags make of it
    vocab.json        the characters in id order
    checkpoints/      ckpt-eEEE-sSSSSSSS.npz: weights + optimizer state + position, one per epoch
    best.npz          the weights with the lowest validation loss so far
    metrics.jsonl     one line per epoch: losses, bits/char, chars/s, wall time

Every file is written atomically, and the data order, dropout masks and optimizer state are
functions of (seed, step), so `--resume` after a kill repeats an uninterrupted run exactly.

The run directory also holds `.charrnn-export.json`, the manifest of every file the run wrote
(`--force` removes exactly those), and while training runs `.charrnn-export.lock`, which one
process at a time holds (see files.py). A run that fails before its first checkpoint removes
what it wrote, so the next try starts clean (run_dir.py keeps those rules).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import data as data_mod
from . import distribute
from .vocab import Vocab
from .checks import check_seed
from .errors import ConfigError, DataError
from .files import FolderLock, atomic_write_text, check_writable_dir, make_dirs, remove_dirs
from .run_dir import RunDir, prepare_run_dir, remove_partial_writes, start_over, undo_failed_start
from .contract import TUTORIAL_URL


@dataclass
class TrainConfig:
    data: str = TUTORIAL_URL
    embedding_dim: int = 256
    rnn_units: int | tuple[int, ...] = 1024  # every layer's units, or one per layer
    cell: str = "gru"  # a registered cell kind (cells.kind_names()): gru, lstm, rnn
    layers: int | None = None  # recurrent layers; None: as many as rnn_units lists, else one
    seq_length: int = 100
    batch_size: int = 64
    learning_rate: float = 1e-3
    epochs: int = 10
    max_steps: int | None = None
    val_fraction: float = 0.1
    seed: int = 0
    dropout: float = 0.0  # after the embedding and after every recurrent layer
    lr_schedule: str = "constant"  # or "cosine": decays to min_lr_ratio over the planned steps
    warmup_steps: int = 0
    min_lr_ratio: float = 0.05
    clip_norm: float | None = None
    weight_decay: float = 0.0  # > 0: AdamW's decoupled weight decay

    # Options that may change when a run is resumed (e.g. train for more epochs). The architecture
    # (cell, layers, rnn_units, embedding_dim) never may: the checkpoint's weights fit only it.
    RESUMABLE = ("epochs", "max_steps", "data")

    def __post_init__(self):
        if isinstance(self.rnn_units, list):
            self.rnn_units = tuple(self.rnn_units)
        if self.layers is None and isinstance(self.rnn_units, tuple) and self.rnn_units:
            self.layers = len(self.rnn_units)  # the list says how many
        self.rnn_units = canonical_units(self.rnn_units, self.layers)

    @property
    def layer_count(self) -> int:
        """--layers, or (not given) 1: what config.json records as "layers"."""
        return 1 if self.layers is None else self.layers

    @property
    def units_per_layer(self) -> tuple[int, ...]:
        if isinstance(self.rnn_units, tuple):
            return self.rnn_units
        return (self.rnn_units,) * self.layer_count

    def architecture(self, vocab_size: int):
        """The model this config trains on a vocabulary of `vocab_size` (cells.Architecture)."""
        from .cells import Architecture, LayerSpec

        layers = tuple(LayerSpec(self.cell, units) for units in self.units_per_layer)
        return Architecture(vocab_size, self.embedding_dim, layers)

    def validate(self) -> None:
        self.validate_architecture()
        for name in ("embedding_dim", "seq_length", "batch_size", "epochs"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ConfigError(f"--max-steps must be positive, got {self.max_steps}")
        if not self.learning_rate > 0:
            raise ConfigError(f"--learning-rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"--lr-schedule must be constant or cosine, got {self.lr_schedule}")
        if self.warmup_steps < 0:
            raise ConfigError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ConfigError(f"--clip-norm must be positive, got {self.clip_norm}")
        for name in ("learning_rate", "min_lr_ratio", "weight_decay", "clip_norm", "dropout", "val_fraction"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        check_seed(self.seed, "--seed")  # numpy's and Keras' seeds are 32-bit, as the samplers' are

    def validate_architecture(self) -> None:
        """--cell, --layers and --rnn-units, each named in its own one-line error."""
        from .cells import kind_names

        if not isinstance(self.cell, str) or self.cell not in kind_names():
            raise ConfigError(f"--cell must be one of {', '.join(kind_names())}, got {self.cell!r}")
        if self.layers is not None and (type(self.layers) is not int or self.layers <= 0):
            raise ConfigError(f"--layers must be positive, got {self.layers}")
        units = self.rnn_units if isinstance(self.rnn_units, tuple) else (self.rnn_units,)
        for value in units:
            if type(value) is not int:
                raise ConfigError(f"--rnn-units must be a whole number or a comma list of them, one per layer "
                                  f"(512 or 512,256), got {value!r}")
            if value <= 0:
                raise ConfigError(f"--rnn-units must be positive, got {value}")
        if isinstance(self.rnn_units, tuple) and len(self.rnn_units) != self.layer_count:
            listed = ",".join(map(str, self.rnn_units))
            raise ConfigError(f"--rnn-units {listed} gives {len(self.rnn_units)} layers' units but --layers is "
                              f"{self.layers}: give one number for every layer, or one per layer")

    def to_dict(self) -> dict:
        """The fields as config.json holds them (JSON types: a per-layer rnn_units is a list)."""
        fields = {**dataclasses.asdict(self), "layers": self.layer_count}
        if isinstance(self.rnn_units, tuple):
            fields["rnn_units"] = list(self.rnn_units)
        return fields


def canonical_units(rnn_units, layers):
    """rnn_units as one spelling per architecture: a list becomes a tuple, and a list of one value
    for every layer becomes that value, so `--rnn-units 64,64` and `--rnn-units 64 --layers 2`
    record (and resume) the same run. Anything odd is left for validate() to name."""
    if isinstance(rnn_units, tuple) and len(rnn_units) == layers and len(set(rnn_units)) == 1:
        if type(rnn_units[0]) is int:
            return rnn_units[0]
    return rnn_units


# ---------------------------------------------------------------- progress


class Progress:
    """A tqdm bar on a terminal; plain lines (about ten per epoch) when stderr is not one."""

    def __init__(self, total: int, epoch: int, epochs: int, start: int):
        self.total, self.epoch, self.epochs = total, epoch, epochs
        self.bar = None
        self.last_line = start
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                            file=sys.stderr, dynamic_ncols=True, leave=True)

    def update(self, done: int, loss: float, chars_per_sec: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", chars_s=f"{chars_per_sec:,.0f}", refresh=False)
        elif done - self.last_line >= max(1, self.total // 10) or done == self.total:
            self.last_line = done
            print(f"epoch {self.epoch + 1}/{self.epochs} batch {done}/{self.total} loss {loss:.4f} "
                  f"{chars_per_sec:,.0f} chars/s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- training


def train(config: TrainConfig, out_dir: str | Path, resume: bool = False, force: bool = False,
          distribution: distribute.DistributeOptions | None = None) -> dict:
    """Train (or resume) a run in `out_dir`; returns the last epoch's metrics and the best val loss.

    Holds the folder's lock the whole time (a second process gets FolderInUse naming this one),
    and a run that fails before its first checkpoint leaves no trace of itself.
    """
    if resume and force:
        raise ConfigError("--resume and --force contradict each other: --resume continues the run in --out, "
                          "--force deletes it and starts over; pass one of them")
    config.validate()
    if distribution is not None:
        distribution.validate()
    if not distribute.is_chief(distribution):
        return train_as_worker(config, out_dir, distribution)
    run = RunDir(out_dir)
    check_writable_dir(run.path, f"--out {run.path}")
    created = make_dirs(run.path)
    lock = FolderLock(run.path, f"--out {run.path}")
    try:
        lock.acquire()
        return train_locked(config, run, resume, force, distribution)
    except BaseException:
        undo_failed_start(run)
        raise
    finally:
        lock.release()
        remove_dirs(created)  # only while empty: a failed first try leaves no folder behind


def train_as_worker(config: TrainConfig, out_dir: str | Path, distribution: distribute.DistributeOptions) -> dict:
    """A multi-worker run's other workers never touch --out (it may not exist on their machine):
    each trains in a scratch folder, removed after, and keeps quiet (its lines would repeat the
    chief's); it takes the chief's weights and position from the chief itself (sync_from_chief)."""
    with tempfile.TemporaryDirectory(prefix="charrnn-export-worker-") as scratch, \
            contextlib.redirect_stderr(io.StringIO()):
        summary = train_locked(config, RunDir(scratch), False, False, distribution)
    return {**summary, "run_dir": str(out_dir)}


def train_locked(config: TrainConfig, run: RunDir, resume: bool, force: bool,
                 distribution: distribute.DistributeOptions | None = None) -> dict:
    """train() once the folder is locked."""
    text, sha256 = data_mod.load_text(config.data)
    vocab = Vocab.from_text(text)
    if len(vocab) < 2:
        raise DataError(f"the text has only one distinct character ({vocab.chars[0]!r}); a model needs at least two "
                        "to choose between: pass --data with a real text")
    ids = vocab.encode(text)
    train_ids, val_ids = data_mod.split_train_val(ids, config.val_fraction)
    data_mod.check_enough_text(train_ids, val_ids, config.seq_length, config.batch_size)

    architecture = config.architecture(len(vocab))
    stored = {**config.to_dict(), "vocab_size": len(vocab), "data_sha256": sha256, "data_chars": len(text),
              "architecture": architecture.to_json(), "state_size": architecture.state_size}
    resuming = prepare_run_dir(run, stored, resume, force, TrainConfig.RESUMABLE)
    if resuming and Vocab.load(run.vocab) != vocab:
        raise DataError(f"the data's vocabulary differs from the one in {run.vocab}; resume with the same --data")
    remove_partial_writes(run)
    if not resuming:
        start_over(run)
    run.started = True

    from .tfsetup import import_tensorflow

    tf = import_tensorflow()  # only now: data and config errors above stay fast and print one line
    dist = distribute.start(distribution, tf)  # before any other op, as tf.distribute requires
    import keras

    from .cells.keras_model import build_keras_model, set_keras_weights, weights_from_keras_model
    from .checkpoints import read_checkpoint, save_checkpoint
    from .forward import forward, model_parts

    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    run.record(run.vocab, run.config)
    vocab.save(run.vocab, root=run.path)
    atomic_write_text(run.config, json.dumps(stored, indent=2, ensure_ascii=False) + "\n", run.path)

    with dist.scope():  # under --strategy, variables made here are mirrored on every replica
        # glorot_uniform recurrent weights, as the tutorial's GRU (Keras' default is orthogonal)
        model = build_keras_model(architecture, recurrent_initializer="glorot_uniform")
        steps_per_epoch = [data_mod.steps_in_epoch(train_ids, config.seq_length, config.batch_size, config.seed, e)
                           for e in range(config.epochs)]
        # --max-steps only stops the run early; the schedule follows --epochs so a resumed run matches.
        planned_steps = sum(steps_per_epoch)
        schedule = learning_rate_schedule(config, planned_steps)
        if config.weight_decay > 0:
            optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay,
                                               global_clipnorm=config.clip_norm)
        else:
            optimizer = keras.optimizers.Adam(learning_rate=schedule, global_clipnorm=config.clip_norm)
        optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    parts = model_parts(model, architecture)

    def logits(x, seed_pair, training: bool, rows=None):  # the one forward pass (forward.py)
        return forward(tf, parts, x, training, config.dropout, seed_pair, rows)

    batch_spec = tf.TensorSpec([None, config.seq_length], tf.int32)

    @tf.function(input_signature=[batch_spec, batch_spec, tf.TensorSpec([2], tf.int64)])
    def one_replica_step(x, y, seed_pair):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, logits(x, seed_pair, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    # With tf.distribute, the same step split over the replicas: the global batch in, its mean loss out.
    train_step = dist.train_step(model, optimizer, config, logits) if dist.active else one_replica_step

    @tf.function(input_signature=[batch_spec, batch_spec])
    def val_loss_sum(x, y):
        losses = keras.losses.sparse_categorical_crossentropy(y, logits(x, None, training=False), from_logits=True)
        return tf.reduce_sum(losses)

    def validate() -> float:
        windows = data_mod.validation_windows(val_ids, config.seq_length)
        total = 0.0
        for b in range(0, len(windows), config.batch_size):
            chunk = windows[b : b + config.batch_size]
            total += float(val_loss_sum(chunk[:, :-1], chunk[:, 1:]))
        return total / (len(windows) * config.seq_length)

    # Position: epoch, batch within it, global step, and the epoch's running sums.
    epoch, batch_in_epoch, global_step = 0, 0, 0
    epoch_loss_sum, epoch_chars, epoch_seconds, wall_before = 0.0, 0, 0.0, 0.0
    best_val = math.inf
    metrics = []
    if resuming:
        newest = run.newest_checkpoint()
        ckpt = read_checkpoint(newest)
        if ckpt.weights.architecture() != architecture:  # config.json matched; the checkpoint must too
            raise ConfigError(f"{newest} holds a {ckpt.weights.architecture().describe()} model, but the run's "
                              f"config.json says {architecture.describe()}; pass --force to start over")
        set_keras_weights(model, ckpt.weights)
        if len(ckpt.optimizer_state) != len(optimizer.variables):
            raise ConfigError(f"{newest} holds {len(ckpt.optimizer_state)} optimizer variables, expected "
                              f"{len(optimizer.variables)}; pass --force to start over")
        for var, value in zip(optimizer.variables, ckpt.optimizer_state):
            var.assign(value)
        pos = resume_position(ckpt.meta, newest)
        epoch, batch_in_epoch, global_step = pos["epoch"], pos["batch"], pos["global_step"]
        epoch_loss_sum, epoch_chars, epoch_seconds = pos["loss_sum"], pos["chars"], pos["seconds"]
        wall_before, best_val = pos["wall_time"], pos["best_val_loss"]
        # Rows past the checkpoint, and the row of an epoch it stopped inside, are written again.
        metrics = [m for m in run.read_metrics() if m["global_step"] < global_step and m["complete"]]
        # A kill between the checkpoint's writes leaves best.npz and metrics.jsonl behind it: catch them up.
        if ckpt.meta["metrics"]["complete"]:
            metrics.append(ckpt.meta["metrics"])
        if ckpt.meta["metrics"]["val_loss"] == best_val:
            run.record(run.best)
            save_checkpoint(run.best, ckpt.weights, ckpt.meta, root=run.path)
        run.write_metrics(metrics)
        if batch_in_epoch >= steps_per_epoch[min(epoch, config.epochs - 1)]:
            epoch, batch_in_epoch, epoch_loss_sum, epoch_chars, epoch_seconds = epoch + 1, 0, 0.0, 0, 0.0
        log(f"resuming {run.path} from {newest.name}: epoch {epoch + 1}, step {global_step}")
    else:
        log(f"training {run.path}: {architecture.describe()}, {len(train_ids):,} train / {len(val_ids):,} "
            f"validation characters, vocab {len(vocab)}, {config.epochs} epochs of {steps_per_epoch[0]} steps")

    if dist.active:  # every worker starts where the chief's checkpoint (or a fresh start) puts it
        log(f"{dist.describe()}; global batch {config.batch_size}")
        epoch, batch_in_epoch, global_step = dist.sync_from_chief(
            [*model.variables, *optimizer.variables], (epoch, batch_in_epoch, global_step))
    session_start = time.perf_counter() - wall_before
    last = metrics[-1] if metrics else {}
    while epoch < config.epochs and (config.max_steps is None or global_step < config.max_steps):
        total = steps_per_epoch[epoch]
        progress = Progress(total, epoch, config.epochs, batch_in_epoch)
        stopped_early = False
        for x, y in data_mod.epoch_batches(train_ids, config.seq_length, config.batch_size, config.seed, epoch,
                                           start=batch_in_epoch):
            t0 = time.perf_counter()
            loss = float(train_step(x, y, np.array([config.seed, global_step], dtype=np.int64)))
            epoch_seconds += time.perf_counter() - t0
            if not math.isfinite(loss):
                progress.close()
                raise ConfigError(f"loss is {loss} at step {global_step}: training diverged; "
                                  "lower --learning-rate or set --clip-norm")
            global_step += 1
            batch_in_epoch += 1
            epoch_loss_sum += loss
            epoch_chars += x.size
            progress.update(batch_in_epoch, epoch_loss_sum / batch_in_epoch, epoch_chars / max(epoch_seconds, 1e-9))
            if config.max_steps is not None and global_step >= config.max_steps and batch_in_epoch < total:
                stopped_early = True
                break
        progress.close()

        val_loss = validate()
        row = {
            "epoch": epoch + 1,
            "global_step": global_step,
            "complete": not stopped_early,
            "train_loss": epoch_loss_sum / max(batch_in_epoch, 1),
            "val_loss": val_loss,
            "val_bpc": val_loss / math.log(2),
            "chars_per_sec": epoch_chars / max(epoch_seconds, 1e-9),
            "epoch_time": epoch_seconds,
            "wall_time": time.perf_counter() - session_start,
            "learning_rate": float(optimizer.learning_rate.numpy() if hasattr(optimizer.learning_rate, "numpy")
                                   else optimizer.learning_rate),
        }
        weights = weights_from_keras_model(model)
        is_best = val_loss < best_val
        best_val = min(best_val, val_loss)
        position = {"epoch": epoch, "batch": batch_in_epoch, "global_step": global_step,
                    "loss_sum": epoch_loss_sum, "chars": epoch_chars, "seconds": epoch_seconds,
                    "wall_time": row["wall_time"], "best_val_loss": best_val}
        meta = {"config": stored, "position": position, "metrics": row}
        # Order matters for a kill between writes: the checkpoint first, then best, then metrics;
        # resume trusts only the checkpoint and drops metric rows beyond it.
        checkpoint = run.checkpoint_path(epoch + 1, global_step)
        run.record(checkpoint, run.best)
        save_checkpoint(checkpoint, weights, meta, [np.asarray(v) for v in optimizer.variables], root=run.path)
        if is_best:
            save_checkpoint(run.best, weights, meta, root=run.path)
        metrics.append(row)
        run.write_metrics(metrics)
        log(f"epoch {epoch + 1}: train {row['train_loss']:.4f}  val {val_loss:.4f} nats/char "
            f"({row['val_bpc']:.3f} bits/char){'  best' if is_best else ''}  "
            f"{row['chars_per_sec']:,.0f} chars/s")
        last = row
        if stopped_early:
            break
        epoch, batch_in_epoch, epoch_loss_sum, epoch_chars, epoch_seconds = epoch + 1, 0, 0.0, 0, 0.0

    return {"run_dir": str(run.path), "last": last, "best_val_loss": best_val}


POSITION_KEYS = ("epoch", "batch", "global_step", "loss_sum", "chars", "seconds", "wall_time", "best_val_loss")


def resume_position(meta: dict, path) -> dict:
    """The position a checkpoint resumes from, checked: every field train writes, each a number."""
    pos, metrics = meta.get("position"), meta.get("metrics")
    ok = (isinstance(pos, dict) and isinstance(metrics, dict) and "complete" in metrics and "val_loss" in metrics
          and all(isinstance(pos.get(k), (int, float)) and not isinstance(pos.get(k), bool) for k in POSITION_KEYS))
    if not ok:
        raise ConfigError(f"{path} holds no position to resume from (not a checkpoint train wrote, or damaged); "
                          "pass --force to start over")
    return pos


def learning_rate_schedule(config: TrainConfig, planned_steps: int):
    if config.lr_schedule == "constant" and config.warmup_steps == 0:
        return config.learning_rate
    import keras

    decay_steps = max(1, planned_steps - config.warmup_steps)
    alpha = config.min_lr_ratio if config.lr_schedule == "cosine" else 1.0
    if config.warmup_steps:
        return keras.optimizers.schedules.CosineDecay(
            config.learning_rate * 0.01, decay_steps, alpha=alpha,
            warmup_target=config.learning_rate, warmup_steps=config.warmup_steps)
    return keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps, alpha=alpha)
