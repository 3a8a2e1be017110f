"""One model's engine in a process of its own, behind the Scheduler's interface.

    scheduler = RemoteScheduler(ModelSpec(path, threads, sampler), options)   # starts the process
    scheduler.vocab                                    the model's vocabulary (for parsing prompts)
    scheduler.submit(job) / cancel(job) / stop() / close() / idle / busy / queued   as Scheduler's
    await scheduler.refresh()                          the engine's counters, for /metrics

Why a process: the engine's lanes (host_sampler.py) need Python's GIL between their model steps,
a few times per millisecond, and in one process with the server's event loop they wait for it
whenever the event loop runs Python (parsing a request, writing events): the cores then idle.
In a process of its own the engine is what it is alone, and the event loop only takes its share
of the CPU.

The child runs the real Scheduler (scheduler.py) over the model ModelSpec loads. Between the two
processes, one pipe: the server sends ("submit", key, choices, length, sampling, stops),
("cancel", key), ("metrics",) and ("close",); the child sends ("ready", vocab) or ("failed",
text) once, then ("updates", [(key, items, causes)]) where the Scheduler would have called its
event loop (one message per flush: items as Job.updates yields them, causes for the choices that
ended "error") and ("metrics", counters) for each ("metrics",). stop() only sets an Event the
child watches, so that it is safe in a signal handler. A child that dies ends every open request
with "error" naming it, and the server answers 503 from then on (the command's /health says so).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import multiprocessing
import signal
import threading
from collections import deque
from typing import NamedTuple

from ..errors import ModelError
from .scheduler import ERROR, STEP_BUCKETS, Busy, Job, Scheduler, Stopping, post

log = logging.getLogger("charrnn_export.serve")
CONTEXT = multiprocessing.get_context("spawn")  # the server has threads (and onnxruntime's) by now: no fork
POLL_SECONDS = 0.05  # how often the child looks at the stop Event while no message comes
COUNTERS = ("chars_made", "steps", "step_seconds", "step_buckets", "busy", "queued", "internal_errors",
            "failed_choices")


class ModelSpec(NamedTuple):
    """What the child loads: Generator.load(path, threads=threads, sampler=sampler)."""

    path: str
    threads: int | None = None
    sampler: str = "auto"

    def __call__(self):
        from ..generate import Generator

        return Generator.load(self.path, threads=self.threads, sampler=self.sampler)


class RemoteScheduler:
    def __init__(self, loader, options):
        self.slots, self.queue_limit = options.slots, options.queue
        # This process's count of choices is the one that refuses (429): the child's lags it by a
        # step after a cancel (the choice is gone here at once, there at the engine's next step),
        # so the child's own limit leaves room for every choice that may be cancelled meanwhile.
        settings = {"slots": options.slots, "queue": options.slots + 2 * options.queue,
                    "flush_interval": options.flush_interval, "max_event_rate": options.max_event_rate}
        self._conn, child = CONTEXT.Pipe()
        self._stop = CONTEXT.Event()
        self.process = CONTEXT.Process(target=engine_main, args=(child, loader, settings, self._stop),
                                       name="charrnn-engine", daemon=True)
        self.process.start()
        child.close()
        try:
            kind, value = self._conn.recv()
        except EOFError:
            kind, value = "failed", f"the engine process exited with {self.process.exitcode} while loading"
        if kind != "ready":
            self.process.join(5)
            raise ModelError(f"the engine process could not start: {value}")
        self.vocab = value
        self.stopping = False
        self.failure: str | None = None  # why the engine process is gone, if it is
        self._closed = False
        self._jobs: dict[int, Job] = {}
        self._open: dict[int, int] = {}  # key -> choices not yet ended, as this process has heard
        self._keys = itertools.count()
        self._reserved = 0
        self._lock = threading.Lock()  # _jobs, _open, _reserved: the event loop and the reader
        self._send_lock = threading.Lock()
        self._asked: deque = deque()  # futures of ("metrics",) requests, in the order sent
        self._counters = {name: 0 for name in COUNTERS}
        self._counters["step_buckets"] = [0] * len(STEP_BUCKETS)
        self._reader = threading.Thread(target=self._read, name="charrnn-engine-reader", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------ the Scheduler's interface

    def submit(self, job: Job) -> None:
        if self.stopping or self.failure:
            raise Stopping(self.failure or "the server is shutting down")
        with self._lock:
            if self._reserved + len(job.choices) > self.slots + self.queue_limit:
                raise Busy()
            self._reserved += len(job.choices)
            job.key = key = next(self._keys)
            self._jobs[key] = job
            self._open[key] = len(job.choices)
        choices = [(choice.start_ids, choice.seed) for choice in job.choices]
        self._send(("submit", key, choices, job.length, job.sampling, job.stops))

    def cancel(self, job: Job) -> None:
        job.gone = True
        with self._lock:
            self._jobs.pop(job.key, None)
            self._reserved -= self._open.pop(job.key, 0)
        self._send(("cancel", job.key))

    def stop(self) -> None:
        """End every request with finish "abort" and take no more. Only sets flags: safe in a signal handler."""
        self.stopping = True
        self._stop.set()

    def close(self, timeout: float = 5.0) -> None:
        self.stop()
        self._closed = True
        self._send(("close",))
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        self._conn.close()

    @property
    def idle(self) -> bool:
        return self._reserved == 0

    async def refresh(self) -> None:
        """Bring the engine's counters (busy, queued, chars_made, ...) up to date."""
        if self.failure or self._closed:
            return
        future = asyncio.get_running_loop().create_future()
        with self._send_lock:
            self._asked.append(future)
            if not self._send_now(("metrics",)):
                self._asked.pop()
                return
        await future

    # ------------------------------------------------------------ the pipe

    def _send(self, message) -> None:
        with self._send_lock:
            self._send_now(message)

    def _send_now(self, message) -> bool:
        try:
            self._conn.send(message)
            return True
        except (OSError, ValueError):  # the child is gone (the reader reports it) or we closed
            return False

    def _read(self) -> None:
        """The reader thread: the child's updates to their jobs' event loops, its counters to refresh()."""
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == "updates":
                self._deliver(message[1])
            elif message[0] == "metrics":
                self._counters = message[1]
                future = self._asked.popleft()
                future.get_loop().call_soon_threadsafe(_resolve, future)
        self._gone()

    def _deliver(self, entries) -> None:
        updates = []
        with self._lock:
            for key, items, causes in entries:
                job = self._jobs.get(key)
                if job is None:  # cancelled here meanwhile
                    continue
                for index, cause in causes.items():
                    job.choices[index].cause = cause
                ended = sum(1 for _, _, finish in items if finish)
                if ended:
                    self._reserved -= ended
                    self._open[key] -= ended
                    if not self._open[key]:
                        del self._open[key], self._jobs[key]
                updates.append((job, items))
        post(updates)

    def _gone(self) -> None:
        """The pipe closed: by close(), or because the child died. Every open request ends."""
        self.process.join(1)
        if not self._closed:
            self.failure = f"the engine process exited (exit code {self.process.exitcode}); restart the server"
            log.error("%s", self.failure)
        with self._lock:
            jobs, self._jobs, self._open, self._reserved = self._jobs, {}, {}, 0
        for job in jobs.values():
            for choice in job.choices:
                choice.cause = self.failure or "the server stopped"
        post([(job, [(choice.index, "", ERROR) for choice in job.choices]) for job in jobs.values()])
        while self._asked:
            future = self._asked.popleft()
            future.get_loop().call_soon_threadsafe(_resolve, future)


for _name in COUNTERS:  # the engine's counters, as Scheduler has them (as of the last refresh)
    setattr(RemoteScheduler, _name, property(lambda self, name=_name: self._counters[name]))


def _resolve(future) -> None:
    if not future.done():
        future.set_result(None)


# ---------------------------------------------------------------- the child


class Outbox:
    """What the child's Scheduler takes for its jobs' event loop: each flush goes down the pipe."""

    def __init__(self, conn, jobs: dict):
        self.conn, self.jobs = conn, jobs
        self.lock = threading.Lock()  # the engine thread's flushes and the main thread's replies

    def call_soon_threadsafe(self, _callback, batch) -> None:
        entries = []
        for job, items in batch:
            causes = {index: job.choices[index].cause for index, _, finish in items if finish == ERROR}
            entries.append((job.key, items, causes))
            if all(choice.reported for choice in job.choices):
                self.jobs.pop(job.key, None)
        self.send(("updates", entries))

    def send(self, message) -> None:
        with self.lock:
            try:
                self.conn.send(message)
            except (OSError, ValueError):  # the server is gone: the child's loop sees it and ends
                pass


def engine_main(conn, loader, settings: dict, stop) -> None:
    """The child: load the model, start its Scheduler, and serve the pipe until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the server decides
    try:
        generator = loader()
        scheduler = Scheduler(generator, **settings)
        scheduler.start()
    except Exception as e:  # noqa: BLE001 - reported to the server, which says it in one line
        conn.send(("failed", f"{type(e).__name__}: {e}"))
        return
    jobs: dict[int, Job] = {}
    outbox = Outbox(conn, jobs)
    # What is loaded now lives as long as the process: out of the collector's way, so that a full
    # collection (which holds the GIL, and so the lanes) walks only what requests make.
    gc.freeze()
    conn.send(("ready", generator.vocab))
    try:
        serve_pipe(conn, scheduler, outbox, jobs, stop)
    finally:
        scheduler.close()


def serve_pipe(conn, scheduler: Scheduler, outbox: Outbox, jobs: dict, stop) -> None:
    while True:
        if stop.is_set() and not scheduler.stopping:
            scheduler.stop()
        try:
            if not conn.poll(POLL_SECONDS):
                continue
            message = conn.recv()
        except (EOFError, OSError):
            return
        kind = message[0]
        if kind == "submit":
            _, key, choices, length, sampling, stops = message
            job = Job(choices, length, sampling, stops, loop=outbox)
            job.key = key
            jobs[key] = job
            try:
                scheduler.submit(job)
            except (Busy, Stopping) as e:  # stopping (Busy cannot be: see RemoteScheduler's settings)
                refuse(outbox, jobs, job, "every slot is busy; retry" if isinstance(e, Busy) else str(e))
        elif kind == "cancel":
            job = jobs.pop(message[1], None)
            if job is not None:
                scheduler.cancel(job)
        elif kind == "metrics":
            outbox.send(("metrics", counters(scheduler)))
        elif kind == "close":
            return


def refuse(outbox: Outbox, jobs: dict, job: Job, cause: str) -> None:
    for choice in job.choices:
        choice.finish, choice.cause, choice.reported = ERROR, cause, True
    jobs.pop(job.key, None)
    outbox.send(("updates", [(job.key, [(c.index, "", ERROR) for c in job.choices],
                              {c.index: cause for c in job.choices})]))


def counters(scheduler: Scheduler) -> dict:
    return {"chars_made": scheduler.chars_made, "steps": scheduler.steps, "step_seconds": scheduler.step_seconds,
            "step_buckets": list(scheduler.step_buckets), "busy": scheduler.busy, "queued": scheduler.queued,
            "internal_errors": scheduler.internal_errors, "failed_choices": scheduler.failed_choices}
