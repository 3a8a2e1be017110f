"""The CPU decode backend: a step runtime's logits sampled on the host (sampling.choose and its
compiled plain rule), one model step per character.

    HostSampler(runtime, capacity)     the engine's backend over any step runtime
    PlainStep(runtime, capacity)       runtimes.onnx.BoundStep's interface over a runtime's step()

Three paths, the same ids on each (row i's text does not depend on which one made it):
  decode                            one step of the batch (the engine's general path: any settings)
  decode_one / decode_run           one row alone (batch 1), with per-call work done once per run
  decode_block                      HOST_BLOCK_STEPS steps of a batch whose rows all sample plainly, each
                                    id fed back here: the engine hears from the backend once per
                                    block, and the batch's rows are split into lanes

Lanes: at large batches onnxruntime's threads share every kernel of a step and meet after each
one, a dozen times per character; giving each thread its own rows, its own one-thread session
and its own sampling, meeting once per block, is faster (benchmarks/sampler_overhead.py measures
it). Below MIN_LANE_ROWS rows a lane, one session's threads are faster: each core then reads only
its share of the weights, which stays in its cache, where a lane reads all of them. The numbers are
the same: every product of the step and the int8 model's activation scale are per row.

Meeting once per block means waiting for the slowest lane, and a lane is slowed whenever anything
else takes its core for a while (a server's event loop, another process): with the rows split
once, the other lanes would idle for as long as that took. So a lane that has finished its rows
asks for more (Pieces), and the next lane to end a sub-step with rows and sub-steps to spare gives
it the back half of its rows from the next sub-step on. Rows are independent, so which lane steps
a row changes none of its numbers; and while no lane is slowed, nothing is split.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, NamedTuple

import numpy as np

from .checks import available_cpus
from .decode import tokens_to_feed
from .sampling import OneRow, Settings, broken_rows, choose, choose_plain, mask_unknown, unknown_id

HOST_BLOCK_STEPS = 16  # characters per decode_block: a new request waits at most this many steps to join
MIN_LANE_ROWS = 16  # rows per lane below which one session's threads are faster
STEAL_ROWS = 2 * MIN_LANE_ROWS  # a lane gives half its rows away only when it has this many or more
MAX_PIECE_STEPS = 512  # step objects kept for pieces of rows (each binds its rows' buffers once)

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def lane_executor() -> ThreadPoolExecutor:
    """The threads that run lanes other than the caller's: one pool for the process, made on first use."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=available_cpus(), thread_name_prefix="charrnn-lane")
        return _executor


def lane_bounds(rows: int, lanes: int) -> list[tuple[int, int]]:
    """rows [0, rows) as `lanes` runs of consecutive rows, as even as they go."""
    edges = [rows * i // lanes for i in range(lanes + 1)]
    return list(zip(edges[:-1], edges[1:]))


class At(NamedTuple):
    """Which of a step's two state buffers holds some rows' state (BoundStep.follow reads it)."""

    turn: int


class Pieces:
    """One block's rows among its lanes. Each lane starts on its own run of rows; one that has
    finished asks for more (take), and the next lane to end a sub-step with rows and sub-steps to
    spare gives it the back half of its rows, from the next sub-step on (give)."""

    def __init__(self, lanes: int):
        self.asking = 0  # lanes waiting in take(); read by the others without the lock, as a hint
        self._given: deque = deque()  # (start, stop, first sub-step, At) handed over, not yet taken
        self._running = lanes  # lanes stepping rows
        self._failed = False
        self._changed = threading.Condition()

    def wanted(self) -> bool:
        return self.asking > len(self._given)

    def give(self, piece: tuple) -> None:
        with self._changed:
            self._given.append(piece)
            self._changed.notify()

    def take(self) -> tuple | None:
        """For a lane whose rows are done: rows another lane gives it, or None once no lane is
        stepping rows (or one failed)."""
        with self._changed:
            self._running -= 1
            while not self._given and self._running and not self._failed:
                self.asking += 1
                self._changed.wait()
                self.asking -= 1
            if self._given and not self._failed:
                self._running += 1
                return self._given.popleft()
            self._changed.notify_all()
            return None

    def fail(self) -> None:
        """A lane raised while stepping rows: the others take no more."""
        with self._changed:
            self._failed = True
            self._running -= 1
            self._changed.notify_all()


class PlainStep:
    """runtimes.onnx.BoundStep's interface over any runtime's step(): `tokens` to fill, run(rows)
    -> logits of rows [0, rows), `state` the state after it."""

    def __init__(self, runtime, capacity: int):
        self.runtime = runtime
        self.tokens = np.zeros(capacity, np.int32)
        self.state = runtime.zero_state(capacity)  # (capacity, S)

    def run(self, rows: int) -> np.ndarray:
        logits, new_state = self.runtime.step(self.tokens[:rows], self.state[:rows])
        if rows == len(self.state) and new_state.flags.writeable and new_state.shape == self.state.shape:
            self.state = new_state  # every row: keep the runtime's fresh array rather than copy it back
        else:
            self.state[:rows] = new_state
        return logits

    def lane(self, runtime, start: int, stop: int) -> "PlainLane":
        """The step of rows [start, stop) on `runtime` (a one-thread copy), into these rows' state."""
        return PlainLane(self, runtime, start, stop)

    def follow(self, other) -> None:
        """Nothing to take up: the state lives in one array (BoundStep's two take turns)."""


class PlainLane:
    """PlainStep.lane: rows [start, stop) of a PlainStep, stepped by another runtime, their state
    written back into the parent's (which may have taken a new array since: it is read each run)."""

    def __init__(self, parent: PlainStep, runtime, start: int, stop: int):
        self.parent, self.runtime, self.start = parent, runtime, start
        self.tokens = parent.tokens[start:stop]

    def run(self, rows: int) -> np.ndarray:
        rows_of = slice(self.start, self.start + rows)
        logits, new_state = self.runtime.step(self.tokens[:rows], self.parent.state[rows_of])
        self.parent.state[rows_of] = new_state
        return logits

    def follow(self, other) -> None:
        """As PlainStep.follow."""


class HostSampler:
    """A step runtime's logits sampled on the host by sampling.choose. The step runs through the
    runtime's bound_step where it has one (onnxruntime: buffers bound once), else through its
    step() (PlainStep); decode_block splits a large batch into lanes where the runtime has
    lane_sessions (onnxruntime on the CPU, OpenVINO)."""

    steps = 1
    block_steps = HOST_BLOCK_STEPS

    def __init__(self, runtime, capacity: int):
        self.runtime, self.capacity = runtime, capacity
        self.vocab, self.config = runtime.vocab, runtime.config
        bound = getattr(runtime, "bound_step", None)
        self.stepper = bound(capacity) if bound is not None else PlainStep(runtime, capacity)
        self.unk_id = unknown_id(runtime.config)
        self.name = f"{runtime.name} step + host sampler"
        self._one = OneRow(len(self.vocab), self.unk_id)  # decode_one's sampler, set per request
        self._lanes: tuple[tuple[int, int], list] = ((0, 0), [])  # (rows, lane count) -> its lanes, the last used
        self._sessions: list = []  # the lanes' sessions (runtime.lane_sessions), as _lanes_for took them
        self._piece_steps: dict[tuple[int, int, int], object] = {}  # (lane, start, stop) -> its step

    @property
    def state(self) -> np.ndarray:
        """(capacity, S): every row's state (rows past the last busy one hold nothing in use)."""
        return self.stepper.state

    # ------------------------------------------------------------ one step of a batch

    def decode(self, rows, forced, last, settings, uniforms, reset):
        if reset.any():
            self.state[:rows][reset] = 0.0
        logits = self._step(rows, tokens_to_feed(forced, last))
        broken = broken_rows(logits, self.unk_id)
        ids = choose(mask_unknown(logits, self.unk_id), settings, uniforms[:, 0])
        ids[broken] = -1
        return ids[:, None]

    def _choose_plain(self, logits, temperature, uniforms) -> np.ndarray:
        """The ids for rows that all sample plainly, -1 where a row's logits are not finite."""
        ids = choose_plain(logits, temperature, uniforms, self.unk_id)
        if ids is None:  # a logit that is huge or not finite: the rule's own per-row checks
            broken = broken_rows(logits, self.unk_id)
            settings = Settings.empty(len(logits))
            if temperature is not None:
                settings.temperature[:] = temperature
            ids = choose(mask_unknown(logits, self.unk_id), settings, uniforms)
            ids[broken] = -1
        return ids

    def _step(self, rows: int, tokens: np.ndarray) -> np.ndarray:
        """One model step for rows [0, rows) (their state kept here): the logits."""
        self.stepper.tokens[:rows] = tokens
        return self.stepper.run(rows)

    # ------------------------------------------------------------ a block of steps

    def decode_block(self, rows: int, forced: np.ndarray, last: np.ndarray, temperature: np.ndarray | None,
                     uniforms: np.ndarray, reset: np.ndarray) -> np.ndarray:
        """k = uniforms.shape[1] steps of rows [0, rows) that all sample plainly, in one call: at
        sub-step j a row is fed forced[:, j] (a start character) where it is >= 0, else the id it
        made at j - 1 (`last` at j = 0); reset rows start from the zero state. ids (rows, k)
        int32; a row whose logits were not finite gets -1 and is fed id 0 after it (the engine
        ends it at its first -1)."""
        k = uniforms.shape[1]
        if reset.any():
            self.state[:rows][reset] = 0.0
        ids = np.empty((rows, k), np.int32)
        numbers = np.ascontiguousarray(uniforms.T)  # (k, rows): each sub-step's numbers in one piece
        plan = np.ascontiguousarray(forced.T) if (forced[:, 1:] >= 0).any() else None  # (k, rows)
        self.stepper.tokens[:rows] = tokens_to_feed(forced, last)
        lanes = self._lanes_for(rows)
        if not lanes:
            self._run_rows(self.stepper, 0, rows, 0, temperature, numbers, plan, ids)
            return ids
        end = At((getattr(self.stepper, "turn", 0) + k) % 2)  # where every row's state is after k steps
        for lane, _, _ in lanes:
            lane.follow(self.stepper)
        pieces, pool = Pieces(len(lanes)), lane_executor()
        others = [pool.submit(self._run_lane, index, lane, pieces, temperature, numbers, plan, ids)
                  for index, lane in enumerate(lanes) if index]
        try:
            self._run_lane(0, lanes[0], pieces, temperature, numbers, plan, ids)
        finally:  # every lane is done with the buffers before this returns or raises
            errors = [future.exception() for future in others]
        for error in errors:
            if error is not None:
                raise error
        self.stepper.follow(end)
        return ids

    def _lanes_for(self, rows: int) -> list:
        """[(lane step, start, stop)] splitting rows [0, rows) among threads, or [] for one
        thread's worth (the step's own session then runs them)."""
        sessions = getattr(self.runtime, "lane_sessions", None)
        if sessions is None or not hasattr(self.stepper, "lane"):
            return []
        count = min(self.runtime.lane_count(), rows // MIN_LANE_ROWS)
        if count < 2:
            return []
        key, lanes = self._lanes
        if key != (rows, count):
            self._sessions = sessions(count)
            lanes = [(self._piece_step(lane, start, stop), start, stop)
                     for lane, (start, stop) in enumerate(lane_bounds(rows, count))]
            self._lanes = ((rows, count), lanes)
        return lanes

    def _piece_step(self, lane: int, start: int, stop: int):
        """The step of rows [start, stop) on lane `lane`'s session (made once, kept)."""
        key = (lane, start, stop)
        step = self._piece_steps.get(key)
        if step is None:
            if len(self._piece_steps) >= MAX_PIECE_STEPS:
                self._piece_steps.clear()
            step = self._piece_steps[key] = self.stepper.lane(self._sessions[lane], start, stop)
        return step

    def _run_lane(self, index: int, lane: tuple, pieces: Pieces, temperature, numbers, plan, ids) -> None:
        """Lane `index`: its own rows, then any rows another lane gives it, until none is left."""
        step, start, stop = lane
        try:
            piece = (start, stop, 0, step)
            while piece is not None:
                start, stop, first, where = piece
                step = self._piece_step(index, start, stop)
                step.follow(where)
                self._run_rows(step, start, stop, first, temperature, numbers, plan, ids, (index, pieces))
                piece = pieces.take()
        except BaseException:
            pieces.fail()
            raise

    def _run_rows(self, step, start: int, stop: int, first: int, temperature, numbers: np.ndarray, plan,
                  ids: np.ndarray, lane: tuple[int, Pieces] | None = None) -> None:
        """Rows [start, stop) through sub-steps [first, k) on `step`, whose tokens are these rows'
        (sub-step `first`'s fed already); plan (k, rows): the start characters to feed, or None.
        In a lane (its index and the block's Pieces), after a sub-step that another lane asks
        for work, the back half of the rows goes to it, and this lane goes on with the front half."""
        steps = numbers.shape[0]
        rows, feed = stop - start, step.tokens
        rows_temperature = None if temperature is None else np.ascontiguousarray(temperature[start:stop])
        for j in range(first, steps):
            made = self._choose_plain(step.run(rows), rows_temperature, numbers[j, start:stop])
            ids[start:stop, j] = made
            if made.min() < 0:
                made = np.maximum(made, 0)  # any id will do: the row ends at its -1
            if plan is not None and j + 1 < len(plan):
                forced = plan[j + 1, start:stop]
                made = np.where(forced >= 0, forced, made)
            feed[:rows] = made
            if lane is not None and j + 1 < steps and rows >= STEAL_ROWS and lane[1].wanted():
                middle = start + rows // 2
                lane[1].give((middle, stop, j + 1, At(getattr(step, "turn", 0))))
                front = self._piece_step(lane[0], start, middle)
                front.follow(step)
                step, stop, rows = front, middle, middle - start
                feed = step.tokens
                rows_temperature = None if temperature is None else rows_temperature[:rows]

    # ------------------------------------------------------------ one row alone

    def decode_run(self, token: int, settings, uniforms: list[float], fresh: bool) -> Iterator[int]:
        """decode_one for each number in turn, each id fed back: the same ids, with the per-call
        work done once per run (at batch 1 each Python call, with caches the step has just
        emptied, shows beside the model's step)."""
        if fresh:
            self._one.set(settings)
        run, pick, feed = self.stepper.run, self._one.pick, self.stepper.tokens
        for uniform in uniforms:
            feed[0] = token
            token = pick(run(1)[0], uniform)
            yield token

    def decode_one(self, token: int, settings, uniform: float, fresh: bool) -> int:
        """decode() for row 0 alone, generating (no reset, no forced token): the id, or -1.
        The same step and the same rule, with the per-call array work done once per request."""
        if fresh:
            self._one.set(settings)
        self.stepper.tokens[0] = token
        return self._one.pick(self.stepper.run(1)[0], uniform)
