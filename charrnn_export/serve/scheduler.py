"""The engine thread: one Engine for every request of one model, and a queue per request.

    scheduler = Scheduler(generator, slots=256, queue=1024); scheduler.start()
    job = Job(choices=[(start_ids, seed), ...], length, sampling, stops)   # on the event loop
    scheduler.submit(job)          # Busy when slots + queue are full; Stopping after stop()
    async for updates in job.updates(): ...   # lists of (choice index, new text, finish reason or None)
    scheduler.cancel(job)          # the client went away: its slots are free at the next step
    scheduler.idle                 # nothing running or waiting (a draining server may stop now)
    scheduler.stop()               # signal-safe: every running request ends with finish "abort"
    scheduler.close()              # joins the thread

The thread outlives every request: its engine isolates failures (engine.py), so a backend call
that raises or a sampler that gives an impossible id ends only the requests it touched, with
finish "error" and `choice.cause` saying why; and anything else raised in one pass of the loop
ends the requests then running and the loop goes on. Only close() ends the thread.

Only this thread and its step thread touch the engine (submit, cancel and step; steps run on one
of them at a time): the event loop hands it jobs through a deque, so no event of a new request
can arrive before the request is registered. While steps are large (a block of a large batch) the
step thread runs them back to back, and this thread hands out each one's characters while the
next one runs (see _pass).
Each step's characters are appended to their choice's text; what was made since the last
delivery goes to the event loop in one call_soon_threadsafe every `flush_interval` (sooner for a
request's first characters and its end: that request alone, so that requests coming and going do
not deliver every other stream's text early). One event per character would make the event loop, not
the engine, what limits a Python server; per flush, a stream gets everything it made since its
last. When many streams are open the interval grows so that all of them together stay near
`max_event_rate` events per second. The engine's steps and end reasons are read through
engine.step_once, as every other driver of an engine reads them.

Stop strings are matched here, on each new character: the choice ends with finish "stop", its
text cut before the stop string (as OpenAI does), and its engine request is cancelled. While a
choice may still be inside a stop string, its last (longest stop - 1) characters are held back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque

import numpy as np

from ..engine import FINISH_ABORT as ABORT
from ..engine import FINISH_ERROR as ERROR
from ..engine import Engine
from .options import ServeOptions
from .stepper import OVERLAP_CHARS, Stepper, timed_step

log = logging.getLogger("charrnn_export.serve")
STOP = "stop"  # a stop string matched (here, not in the engine)
URGENT_INTERVAL = 0.025  # seconds: a request's first characters or its end wait at most this long
STEP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)  # seconds, for /metrics


# What one slot costs, for sizing --slots, --queue and --max-length against the machine's memory
# before anything is allocated: the backend's state and its copies in a step (input, output, the
# gates), the logits and the sampler's sorted copies, the engine's rows and random blocks; the
# text a running choice may hold (a non-streamed answer keeps all of it, then its JSON); and a
# waiting choice (its prompt as text and ids, at the longest prompt).
STATE_COPIES, LOGIT_COPIES, SLOT_OVERHEAD = 8, 6, 4096
TEXT_BYTES_PER_CHAR = 16
WAITING_CHOICE_BYTES = 64 * 1024


def memory_needed(slots: int, queue: int, max_length: int, state_width: int, vocab_size: int) -> dict[str, int]:
    """Bytes one model's engine may need at most: {"slots": ..., "text": ..., "queue": ...}."""
    per_slot = state_width * 4 * STATE_COPIES + vocab_size * 8 * LOGIT_COPIES + SLOT_OVERHEAD
    return {"slots": slots * per_slot, "text": slots * max_length * TEXT_BYTES_PER_CHAR,
            "queue": queue * WAITING_CHOICE_BYTES}


class Busy(Exception):
    """Every slot is busy and the queue is full."""


class Stopping(Exception):
    """The server is shutting down (or its engine failed) and takes no new requests."""


class Choice:
    __slots__ = ("job", "index", "start_ids", "seed", "rid", "chars", "finish", "reported", "hold", "cause")

    def __init__(self, job, index, start_ids, seed, hold):
        self.job, self.index, self.start_ids, self.seed, self.hold = job, index, start_ids, seed, hold
        self.rid, self.chars, self.finish, self.reported = None, [], None, False  # chars: not yet delivered
        self.cause: str | None = None  # why it ended with "error" (set before that end is delivered)


class Job:
    """One HTTP request: its choices and the queue of updates the engine thread fills."""

    def __init__(self, choices, length: int, sampling, stops: tuple[str, ...] = (), loop=None):
        self.loop = loop or asyncio.get_running_loop()  # where updates go (remote.py passes its pipe's)
        self.key: int | None = None  # its name between processes (remote.py)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.length, self.sampling, self.stops = length, sampling, stops
        hold = max(map(len, stops), default=1) - 1
        self.choices = [Choice(self, i, ids, seed, hold) for i, (ids, seed) in enumerate(choices)]
        self.open = len(self.choices)  # choices not yet finished, as the event loop has seen them
        self.gone = False  # the client disconnected: nothing more is delivered
        self.flushed = False  # its first characters have been delivered

    async def updates(self):
        """Lists of (choice index, new text, finish reason or None) until every choice finished."""
        while self.open:
            items = await self.queue.get()
            while not self.queue.empty():
                items += self.queue.get_nowait()
            self.open -= sum(1 for _, _, finish in items if finish)
            yield items


class Scheduler:
    def __init__(self, generator, slots: int, queue: int, flush_interval: float = ServeOptions.flush_interval,
                 max_event_rate: float = ServeOptions.max_event_rate):
        self.engine = Engine(generator.backend(slots), slots, isolate_failures=True)
        self.chars = generator.vocab.chars
        self._char_array = np.array(self.chars, dtype=object)  # token ids -> characters, many at once
        self.slots, self.queue_limit = slots, queue
        self.flush_interval, self.max_event_rate = flush_interval, max_event_rate
        self._inbox: deque = deque()  # ("submit" | "cancel", job), from the event loop
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._reserved = 0  # choices accepted and not yet ended by the engine (running or queued)
        self._live: dict[int, Choice] = {}  # engine request id -> choice
        self._jobs = 0  # jobs with a choice in the engine (for the flush interval)
        self._dirty: dict[Job, None] = {}  # jobs with something to deliver (an ordered set)
        self._urgent: dict[Job, None] = {}  # dirty jobs to deliver at once: a first character, an end
        self.stopping = False
        self.internal_errors = 0  # passes of the loop that raised (a bug): for /metrics
        self.failure: str | None = None  # the engine never fails as a whole here (remote.py's can)
        self.failed_choices = 0  # choices ended with "error" (their generation failed): for /metrics
        self._closed = False
        # Metrics, written by this thread only (readers see whole Python ints).
        self.chars_made = 0
        self.steps = 0
        self.step_seconds = 0.0
        self.step_buckets = [0] * len(STEP_BUCKETS)
        self.thread = threading.Thread(target=self._run, name="charrnn-engine", daemon=True)
        # Large steps run on a thread of their own, one after another (stepper.py): while one
        # runs, this thread hands out the characters of the one before.
        self._stepper = Stepper(self.engine, self._wake, lambda: self._closed or self.stopping)

    # ------------------------------------------------------------ any thread

    def start(self) -> None:
        self.thread.start()
        self._stepper.start()

    def submit(self, job: Job) -> None:
        if self.stopping:
            raise Stopping("the server is shutting down")
        with self._lock:
            if self._reserved + len(job.choices) > self.slots + self.queue_limit:
                raise Busy()
            self._reserved += len(job.choices)
        self._inbox.append(("submit", job))
        self._wake.set()

    def cancel(self, job: Job) -> None:
        job.gone = True
        self._inbox.append(("cancel", job))
        self._wake.set()

    def stop(self) -> None:
        """End every request with finish "abort" and take no more. Only sets flags: safe in a signal handler."""
        self.stopping = True
        self._wake.set()

    def close(self, timeout: float = 5.0) -> None:
        self.stop()
        self._closed = True
        self._wake.set()
        self._stepper.close(timeout)
        self.thread.join(timeout)

    @property
    def idle(self) -> bool:
        return self._reserved == 0

    async def refresh(self) -> None:
        """Nothing to fetch: the counters are this process's (remote.py's come from its engine's)."""

    @property
    def busy(self) -> int:
        return self.engine.busy_count

    @property
    def queued(self) -> int:
        return max(0, self._reserved - self.engine.busy_count)

    # ------------------------------------------------------------ the engine's thread

    def _run(self) -> None:
        self._last_flush = self._last_urgent = time.perf_counter()
        while not self._closed:
            try:
                self._pass()
            except Exception as e:  # noqa: BLE001 - a bug in one pass ends the requests it held, not the thread
                self.internal_errors += 1
                log.exception("engine thread: a step failed; ending the requests it held")
                self._fail_live(f"internal error in the engine thread: {type(e).__name__}: {e}")

    def _pass(self) -> None:
        """One turn of the loop: take new jobs and cancels; take the next step's characters (made
        here, or by the step thread); deliver. A step of many characters (a block of a large
        batch) starts a run of steps on the step thread, which goes on from each step straight
        into the next while this thread hands out the characters of the one before, so that the
        engine's cores are not idle while thousands of characters go out, nor while this thread
        wakes up to start the next step (each request's text stays in the order made: the steps
        are handed out in the order they ran; what came meanwhile joins the step after). A small
        step runs here: the hand-over between threads would cost more than it saves."""
        self._take_inbox()
        if self.stopping:
            self._abort_all(ABORT)
        if self._stepper.ready:
            (rids, tokens, endings), seconds = self._stepper.take()  # a step that raised: this pass's error
        elif self._stepper.running:
            self._wait()
            return
        elif not self.engine.has_work():
            self._flush()
            self._wait()
            return
        else:
            (rids, tokens, endings), seconds = timed_step(self.engine)
            if len(rids) >= OVERLAP_CHARS:
                self._stepper.begin()
        now = time.perf_counter()
        self._count_step(seconds)
        self._dispatch(rids, tokens, endings)
        interval = max(self.flush_interval, self._jobs / self.max_event_rate)
        if self._dirty and now - self._last_flush >= interval:
            self._flush()
            self._last_flush = now
        elif self._urgent and now - self._last_urgent >= URGENT_INTERVAL:
            # Only those: one job's end must not deliver every stream's text early. At most one
            # such call per URGENT_INTERVAL: each wakes the event loop through its self-pipe.
            self._flush(list(self._urgent))
            self._last_urgent = now
        # Hand the GIL to the event loop between steps: a thread that only waits for the
        # GIL gets it back late (the switch interval), and a starved event loop admits
        # no new requests, so the batch stays nearly empty. sched_yield releases the GIL
        # at once; time.sleep(0) waits out the kernel's timer slack, far longer.
        os.sched_yield()

    def _wait(self) -> None:
        self._wake.wait()
        self._wake.clear()

    def _fail_live(self, cause: str) -> None:
        """After a pass raised: end every choice the engine holds with "error", cancel it there,
        and deliver what can be delivered. The engine frees their slots at its next step."""
        for rid, choice in list(self._live.items()):
            if choice.finish is None:
                choice.finish, choice.cause = ERROR, cause
            self.engine.cancel(rid)
            self._end(rid, ERROR)
        try:
            self._flush()
        except Exception:  # noqa: BLE001 - nothing more can be done for them; the loop goes on
            log.exception("engine thread: could not deliver the failed requests' ends")
            self._dirty.clear()

    def _take_inbox(self) -> None:
        while self._inbox:
            kind, job = self._inbox.popleft()
            if kind == "cancel":
                for choice in job.choices:
                    if choice.rid is not None and choice.finish is None:
                        choice.finish = ABORT
                        self.engine.cancel(choice.rid)
            elif job.gone or self.stopping:
                self._end_unsubmitted(job, ABORT)
            else:
                self._submit(job)

    def _submit(self, job: Job) -> None:
        self._jobs += 1
        try:
            for choice in job.choices:
                choice.rid = self.engine.submit(choice.start_ids, job.length, job.sampling, choice.seed)
                self._live[choice.rid] = choice
        except Exception as e:  # noqa: BLE001 - this job alone could not be submitted
            log.exception("engine thread: could not submit a request")
            cause = f"the request could not be submitted: {type(e).__name__}: {e}"
            for choice in job.choices:
                choice.finish, choice.cause = ERROR, cause
                if choice.rid is not None:
                    self.engine.cancel(choice.rid)
                    self._live.pop(choice.rid, None)
            with self._lock:
                self._reserved -= len(job.choices)
            self._jobs -= 1
            self._dirty[job] = None
            self._urgent[job] = None

    def _end_unsubmitted(self, job: Job, reason: str) -> None:
        for choice in job.choices:
            choice.finish = reason
        with self._lock:
            self._reserved -= len(job.choices)
        self._dirty[job] = None

    def _abort_all(self, reason: str) -> None:
        for choice in list(self._live.values()):
            if choice.finish is None:
                choice.finish = reason
                self._dirty[choice.job] = None
                self.engine.cancel(choice.rid)

    def _dispatch(self, rids, tokens, endings) -> None:
        if len(rids) > 2 * len(self._live):  # a block: several characters per request
            self._dispatch_runs(rids, tokens)
        else:
            self._dispatch_each(rids.tolist(), tokens.tolist())
        self.chars_made += len(rids)
        live = self._live
        for end in endings:
            if end.rid not in live:  # already ended here (a stop string, a failed pass)
                continue
            if end.finish == ERROR:
                self.failed_choices += 1
                live[end.rid].cause = end.cause
            self._end(end.rid, end.finish)

    def _dispatch_each(self, rids: list[int], tokens: list[int]) -> None:
        """Each new character onto its choice's text, in the order made."""
        live, chars = self._live, self.chars
        for rid, token in zip(rids, tokens):
            choice = live.get(rid)
            if choice is None or choice.finish is not None:  # stopped or cancelled: gone at the next step
                continue
            choice.chars.append(chars[token])
            job = choice.job
            self._dirty[job] = None
            if not job.flushed:
                self._urgent[job] = None
            if job.stops:
                self._match_stop(choice)

    def _dispatch_runs(self, rids: np.ndarray, tokens: np.ndarray) -> None:
        """_dispatch_each for a block's characters, a request's run at a time (a stable sort
        keeps each one's in the order made): per request, not per character, but for choices
        with stop strings, which are matched character by character."""
        order = np.argsort(rids, kind="stable")
        rids, tokens = rids[order], self._char_array[tokens[order]]
        edges = np.flatnonzero(rids[1:] != rids[:-1]) + 1
        live = self._live
        for start, stop in zip([0, *edges.tolist()], [*edges.tolist(), len(rids)]):
            choice = live.get(int(rids[start]))
            if choice is None or choice.finish is not None:
                continue
            job = choice.job
            if job.stops:
                for char in tokens[start:stop]:
                    choice.chars.append(char)
                    self._match_stop(choice)
                    if choice.finish is not None:
                        break
            else:
                choice.chars.extend(tokens[start:stop])
            self._dirty[job] = None
            if not job.flushed:
                self._urgent[job] = None

    def _match_stop(self, choice: Choice) -> None:
        text = choice.chars
        tail = "".join(text[-(choice.hold + 1):])
        for stop in choice.job.stops:
            if tail.endswith(stop):
                del text[len(text) - len(stop):]
                choice.finish = STOP
                self.engine.cancel(choice.rid)
                self._urgent[choice.job] = None
                return

    def _end(self, rid: int, reason: str) -> None:
        choice = self._live.pop(rid, None)
        if choice is None:
            return
        if choice.finish is None:
            choice.finish = reason
        job = choice.job
        self._dirty[job] = None
        self._urgent[job] = None
        with self._lock:
            self._reserved -= 1
        if all(c.rid not in self._live for c in job.choices):
            self._jobs -= 1

    def _flush(self, jobs=None) -> None:
        """Deliver every dirty job's new text (and ends), or only `jobs`', to its event loop, one
        call per loop."""
        if jobs is None:
            jobs, self._urgent = list(self._dirty), {}
            self._dirty.clear()
        else:
            for job in jobs:
                self._dirty.pop(job, None)
                self._urgent.pop(job, None)
        if not jobs:
            return
        updates = []
        for job in jobs:
            if job.gone:
                continue
            items = []
            for choice in job.choices:
                # Held back: the last (longest stop - 1) characters, which a stop string may yet
                # cut. A stop string that matches lies wholly in what was held back, so what is
                # delivered is dropped here (the answer keeps it): memory per choice stays small.
                end = len(choice.chars) if choice.finish else max(0, len(choice.chars) - choice.hold)
                if end > 0 or (choice.finish and not choice.reported):
                    items.append((choice.index, "".join(choice.chars[:end]), choice.finish))
                    del choice.chars[:end]
                    choice.reported = choice.finish is not None
            if items:
                job.flushed = True
                updates.append((job, items))
        post(updates)

    def _count_step(self, seconds: float) -> None:
        self.steps += 1
        self.step_seconds += seconds
        bucket = int(np.searchsorted(STEP_BUCKETS, seconds))
        if bucket < len(STEP_BUCKETS):
            self.step_buckets[bucket] += 1


def post(updates) -> None:
    """[(job, items)] to each job's event loop, one call per loop."""
    batches: dict = {}
    for job, items in updates:
        batches.setdefault(job.loop, []).append((job, items))
    for loop, batch in batches.items():
        try:
            loop.call_soon_threadsafe(_deliver, batch)
        except RuntimeError:  # the loop has closed (the server is gone): nobody is waiting
            pass


def _deliver(batch) -> None:
    for job, items in batch:
        job.queue.put_nowait(items)
