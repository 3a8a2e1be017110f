"""Training on several replicas with tf.distribute: `train --strategy mirrored|multi-worker`.

    DistributeOptions(strategy, cpu_replicas, worker_timeout)   what the flags ask for
    is_chief(options) -> bool            pure Python (reads TF_CONFIG): decides who may write files
    start(options, tf) -> Distribution   creates the strategy (call it before any other TensorFlow op)
    Distribution.scope()                 where the model and the optimizer must be built
    Distribution.train_step(...)         step(x, y, seed_pair) -> mean loss, as train.py's own step,
                                         through the same forward pass (forward.py)
    Distribution.sync_from_chief(...)    every worker takes the chief's weights, optimizer and position
    local_tf_configs(n)                  TF_CONFIG values for n workers on free 127.0.0.1 ports

Why the training is the same as one process: every worker builds the same global batch (numpy,
a function of seed and step) and each replica takes its own contiguous slice of it, so each window
is used once per epoch; each replica's loss is its sum over characters divided by the *global*
batch's characters, and the optimizer sums the replicas' gradients, giving the global mean's
gradient; dropout masks are the slices of the mask a one-process run draws for the whole batch
(forward.dropout draws both).
Keras' `model.fit` does not run under MultiWorkerMirroredStrategy with Keras 3, hence the custom step.

A worker that dies leaves the others waiting inside a collective; `CommunicationOptions(timeout_seconds)`
turns that wait into DeadlineExceededError after --worker-timeout, which becomes WorkerLost here.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, WorkerLost

STRATEGIES = ("none", "mirrored", "multi-worker")
DEFAULT_WORKER_TIMEOUT = 300.0  # seconds: must outlast the chief's validation and checkpoint writes


@dataclass
class DistributeOptions:
    strategy: str = "none"
    cpu_replicas: int | None = None  # mirrored only: N logical CPU devices instead of the GPUs
    worker_timeout: float = DEFAULT_WORKER_TIMEOUT

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy}")
        if self.cpu_replicas is not None:
            if self.strategy != "mirrored":
                raise ConfigError("--cpu-replicas needs --strategy mirrored")
            if self.cpu_replicas < 1:
                raise ConfigError(f"--cpu-replicas must be positive, got {self.cpu_replicas}")
        if not (math.isfinite(self.worker_timeout) and self.worker_timeout > 0):
            raise ConfigError(f"--worker-timeout must be a positive number of seconds, got {self.worker_timeout}")
        if self.strategy == "multi-worker":
            read_tf_config()

    @property
    def active(self) -> bool:
        return self.strategy != "none"


def read_tf_config() -> dict:
    """TF_CONFIG as a dict, checked enough that TensorFlow's own errors (or hangs) cannot follow."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ConfigError("--strategy multi-worker needs TF_CONFIG (the cluster and this worker's task); "
                          "see the README's section on several machines")
    try:
        tf_config = json.loads(raw)
        workers = tf_config["cluster"].get("worker", [])
        chiefs = tf_config["cluster"].get("chief", [])
        task_type, index = tf_config["task"]["type"], int(tf_config["task"]["index"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError('TF_CONFIG is not {"cluster": {"worker": [...]}, "task": {"type": ..., "index": ...}}: '
                          f"{raw[:200]}") from None
    if set(tf_config["cluster"]) - {"chief", "worker"} or task_type not in ("chief", "worker"):
        raise ConfigError("TF_CONFIG: --strategy multi-worker uses only chief and worker tasks, got "
                          f"{sorted(tf_config['cluster'])} and task {task_type!r}")
    members = chiefs if task_type == "chief" else workers
    if not 0 <= index < len(members) or len(chiefs) > 1:
        raise ConfigError(f"TF_CONFIG: task {task_type} {index} is not in the cluster {tf_config['cluster']}")
    return tf_config


def is_chief(options: DistributeOptions | None) -> bool:
    """The chief alone writes the run directory: the `chief` task, else worker 0."""
    if options is None or options.strategy != "multi-worker":
        return True
    tf_config = read_tf_config()
    task_type, index = tf_config["task"]["type"], int(tf_config["task"]["index"])
    return task_type == "chief" or (index == 0 and not tf_config["cluster"].get("chief"))


def local_tf_configs(workers: int, host: str = "127.0.0.1") -> list[str]:
    """TF_CONFIG for `workers` processes on this machine, on ports free now (worker 0 is the chief)."""
    sockets = [socket.socket() for _ in range(workers)]
    try:
        for s in sockets:  # all held open together, so the ports differ
            s.bind((host, 0))
        addresses = [f"{host}:{s.getsockname()[1]}" for s in sockets]
    finally:
        for s in sockets:
            s.close()
    return [json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}})
            for i in range(workers)]


# ---------------------------------------------------------------- the strategy


def start(options: DistributeOptions | None, tf) -> "Distribution":
    """Create the strategy the options ask for; before any other op, as TensorFlow requires."""
    if options is None or not options.active:
        return Distribution(None, options or DistributeOptions(), tf)
    options.validate()
    if options.strategy == "mirrored":
        strategy = mirrored_strategy(options, tf)
    else:
        strategy = multi_worker_strategy(options, tf)
    return Distribution(strategy, options, tf)


def multi_worker_strategy(options: DistributeOptions, tf):
    """The cluster from TF_CONFIG. Creating it waits for every worker to register with the chief."""
    communication = tf.distribute.experimental.CommunicationOptions(timeout_seconds=options.worker_timeout)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=communication)
    except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError) as e:
        raise WorkerLost(f"the cluster in TF_CONFIG did not come together ({type(e).__name__}): start every "
                         "worker, the chief first, with the same TF_CONFIG cluster list, and check that their "
                         "ports are reachable") from None


def mirrored_strategy(options: DistributeOptions, tf):
    if options.cpu_replicas is None:
        return tf.distribute.MirroredStrategy()  # every local GPU (or the CPU alone when there is none)
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(options.cpu_replicas)])
    except RuntimeError:
        raise ConfigError("--cpu-replicas: TensorFlow was already initialised in this process; "
                          "call train() in a fresh process") from None
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(options.cpu_replicas)])


class Distribution:
    """The strategy (None: one process, one device, train.py's own step) and what goes with it."""

    def __init__(self, strategy, options: DistributeOptions, tf):
        self.strategy, self.options, self.tf = strategy, options, tf
        self.is_chief = is_chief(options)

    @property
    def active(self) -> bool:
        return self.strategy is not None

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync if self.active else 1

    def describe(self) -> str:
        return f"--strategy {self.options.strategy}, {self.replicas} replicas" if self.active else "one process"

    def scope(self):
        return self.strategy.scope() if self.active else contextlib.nullcontext()

    def check_batch(self, batch_size: int) -> int:
        if batch_size % self.replicas:
            raise ConfigError(f"--batch-size {batch_size} does not split evenly over {self.replicas} replicas; "
                              f"use a multiple of {self.replicas}")
        return batch_size // self.replicas

    def lost_worker(self, error, step: int) -> WorkerLost:
        return WorkerLost(
            f"a worker stopped answering at step {step} ({type(error).__name__}; --worker-timeout is "
            f"{self.options.worker_timeout:g} s): it died or its machine is unreachable; start every worker "
            "again with --resume (they restart from the chief's last checkpoint)")

    # ------------------------------------------------------------ the step

    def train_step(self, model, optimizer, config, logits):
        """step(x, y, seed_pair) -> the global batch's mean loss; x, y (batch, seq_length) numpy, the global batch.

        logits(x, seed_pair, training, rows) is train.py's forward pass (forward.py), the same one a
        single process runs; each replica passes its rows of the global batch for the dropout masks."""
        tf, strategy = self.tf, self.strategy
        import keras

        from .forward import Rows

        local_batch = self.check_batch(config.batch_size)
        replicas = self.replicas
        characters = float(config.batch_size * config.seq_length)  # the global batch: the mean's denominator

        def replica_step(x, y, seed_pair):  # x, y: (local_batch, seq_length)
            context = tf.distribute.get_replica_context()
            rows = Rows(context.replica_id_in_sync_group * local_batch, local_batch, config.batch_size)
            with tf.GradientTape() as tape:
                predicted = logits(x, seed_pair, training=True, rows=rows)  # (local_batch, time, vocab)
                losses = keras.losses.sparse_categorical_crossentropy(y, predicted, from_logits=True)
                loss = tf.reduce_sum(losses) / characters
            grads = tape.gradient(loss, model.trainable_variables)
            if config.clip_norm is not None:
                # Keras clips each replica's part before summing the parts; clip the sum instead, with the
                # optimizer's own clipping (it measures the embedding's IndexedSlices row by row, as in one
                # process), and hand the optimizer 1/replicas of it, since it sums the replicas' parts again.
                grads = optimizer._clip_gradients(context.all_reduce(tf.distribute.ReduceOp.SUM, grads))
                grads = [scaled(g, 1 / replicas) for g in grads]
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        def scaled(gradient, factor: float):
            if isinstance(gradient, tf.IndexedSlices):
                return tf.IndexedSlices(gradient.values * factor, gradient.indices, gradient.dense_shape)
            return gradient * factor

        @tf.function
        def distributed_step(x, y, seed_pair):
            per_replica = strategy.run(replica_step, args=(x, y, seed_pair))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        def step(x, y, seed_pair) -> float:
            rows = lambda ctx: slice(ctx.replica_id_in_sync_group * local_batch,  # noqa: E731
                                     (ctx.replica_id_in_sync_group + 1) * local_batch)
            xs = strategy.experimental_distribute_values_from_function(lambda ctx: tf.constant(x[rows(ctx)]))
            ys = strategy.experimental_distribute_values_from_function(lambda ctx: tf.constant(y[rows(ctx)]))
            try:
                return float(distributed_step(xs, ys, tf.constant(seed_pair)))
            except self.worker_errors() as e:
                raise self.lost_worker(e, int(seed_pair[1])) from None

        return step

    def worker_errors(self) -> tuple:
        errors = self.tf.errors
        return (errors.DeadlineExceededError, errors.UnavailableError, errors.AbortedError, errors.CancelledError)

    # ------------------------------------------------------------ resume

    def sync_from_chief(self, variables, position: tuple[int, ...]) -> tuple[int, ...]:
        """Give every worker the chief's variable values and position (epoch, batch, step).

        Only the chief reads the run directory (the workers may be on machines without it); replica 0,
        the chief's first, sends its values, every other replica zeros, and an all-reduce sums them:
        adding zeros is exact, so each worker ends with the chief's values bit for bit.
        """
        if not self.active:
            return position
        tf, strategy = self.tf, self.strategy
        values = [tf.cast(v.value, tf.float64) for v in variables]  # float64 holds float32 and int64 steps
        values.append(tf.constant(position, tf.float64))

        def replica_fn():
            context = tf.distribute.get_replica_context()
            leader = tf.equal(context.replica_id_in_sync_group, 0)
            sent = [tf.where(leader, v, tf.zeros_like(v)) for v in values]
            return context.all_reduce(tf.distribute.ReduceOp.SUM, sent)

        try:
            received = [strategy.experimental_local_results(r)[0] for r in strategy.run(tf.function(replica_fn))]
        except self.worker_errors() as e:
            raise self.lost_worker(e, int(position[-1])) from None
        for variable, value in zip(variables, received):
            variable.assign(tf.cast(value, variable.dtype))
        return tuple(int(p) for p in np.asarray(received[-1]))
