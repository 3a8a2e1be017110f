"""The decode engine: a fixed number of slots advanced together, one model call per step.

    engine = Engine(backend, capacity=256)
    rid = engine.submit(start_ids, length, SamplingConfig(...), seed)   # any thread
    engine.cancel(rid)                                                   # any thread
    for rid, token, reason in engine.step(): ...                         # one thread

A request takes a free slot at the next step (the lowest free one, so busy slots stay packed at
the front and a CPU backend computes only rows [0, highest busy + 1)). Each step feeds every busy
slot one token, whether it is still reading its start string or already generating, in one
backend call; a slot whose token was its start string's last character or a generated one gets
its next character back. A finished or cancelled request frees its slot at once and a waiting
one takes it in the next step (continuous batching).

step() returns events (request id, token id, None) for each new character and (request id, -1,
reason) when a request ends: reason is "length", "cancelled" or "nonfinite" (the model's logits
were NaN or infinite). Each slot draws its random numbers from its request's own seeded stream
(rng.py), so a request's text does not depend on what else is in the batch.

Backends (one interface, `decode(rows, tokens, settings, uniforms, reset) -> (ids, check)`,
state kept inside, `capacity` rows):
  HostSampler(runtime, capacity)   any step runtime (onnx, savedmodel, keras) + sampling.choose
  runtimes.onnx_decode.OnnxDecoder  a decode model (sampling in the graph), CPU or CUDA
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from .rng import Blocks
from .sampling import SamplingConfig, Settings, choose

LENGTH, CANCELLED, NONFINITE = "length", "cancelled", "nonfinite"
_NO_IDS = np.zeros(0, np.int64)


@dataclass
class _Request:
    id: int
    start_ids: np.ndarray  # (n,) int32, n >= 1
    length: int
    sampling: SamplingConfig
    seed: int


class HostSampler:
    """A step runtime's logits sampled on the host by sampling.choose."""

    def __init__(self, runtime, capacity: int):
        self.runtime, self.capacity = runtime, capacity
        self.vocab, self.config = runtime.vocab, runtime.config
        self.state = runtime.zero_state(capacity)  # (capacity, units)
        self.unk_id = runtime.config.get("unk_id")
        self.name = f"{runtime.name} step + numpy sampler"

    def decode(self, rows, tokens, settings, uniforms, reset):
        state = self.state[:rows]
        if reset.any():
            state[reset] = 0.0
        logits, new_state = self.runtime.step(tokens, state)
        self.state[:rows] = new_state
        if self.unk_id is not None:  # a current-tutorial model's [UNK] row is never sampled
            logits[:, self.unk_id] = -np.inf
            check = np.sum(logits[:, :self.unk_id] - logits[:, :self.unk_id], axis=1)
        else:
            check = np.sum(logits - logits, axis=1)  # 0, or NaN where a logit is not finite
        return choose(logits, settings, uniforms), check


class Engine:
    def __init__(self, backend, capacity: int | None = None):
        self.backend = backend
        self.capacity = capacity = capacity or backend.capacity
        assert capacity <= backend.capacity, "the backend holds fewer rows than the engine's slots"
        self.vocab = backend.vocab
        self._lock = threading.Lock()
        self._waiting: deque[_Request] = deque()
        self._cancels: set[int] = set()
        self._next_id = 0
        # Per slot. request == -1: free.
        self.request = np.full(capacity, -1, np.int64)
        self.tokens = np.zeros(capacity, np.int32)  # the token each slot feeds next
        self.left = np.zeros(capacity, np.int64)  # characters still to generate
        self.emitting = np.zeros(capacity, bool)  # fed its whole start string: samples each step
        self.reset = np.zeros(capacity, bool)
        self.uniforms = np.zeros(capacity, np.float64)
        self.settings = Settings.empty(capacity)
        self.random = Blocks(capacity)
        self._start: dict[int, tuple[np.ndarray, int]] = {}  # slot -> (start ids, next index)
        self.busy_count = 0
        self.high = 0  # rows [0, high) hold every busy slot

    # ------------------------------------------------------------ any thread

    def submit(self, start_ids, length: int, sampling: SamplingConfig, seed: int) -> int:
        """Queue a request; it joins the batch at the next step. start_ids: at least one id."""
        start_ids = np.asarray(start_ids, dtype=np.int32)
        assert start_ids.ndim == 1 and start_ids.size >= 1, "a request needs at least one start id"
        with self._lock:
            rid = self._next_id
            self._next_id += 1
            self._waiting.append(_Request(rid, start_ids, int(length), sampling, int(seed)))
        return rid

    def cancel(self, rid: int) -> None:
        """End a request (waiting or running) at the next step; its slot is free for that step."""
        with self._lock:
            self._cancels.add(rid)

    @property
    def waiting_count(self) -> int:
        return len(self._waiting)

    def has_work(self) -> bool:
        return self.busy_count > 0 or bool(self._waiting) or bool(self._cancels)

    # ------------------------------------------------------------ the engine's thread

    def step(self) -> list[tuple[int, int, str | None]]:
        """One step; events as (request id, token id, None) and (request id, -1, reason)."""
        rids, tokens, ended = self.step_arrays()
        events = list(zip(rids.tolist(), tokens.tolist(), [None] * len(rids)))
        events.extend((rid, -1, reason) for rid, reason in ended)
        return events

    def step_arrays(self) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
        """step() without a tuple per character, for large batches: (request ids (k,), their
        new token ids (k,), [(request id, reason) for each request that ended])."""
        ended: list[tuple[int, str]] = []
        self._apply_cancels(ended)
        self._admit(ended)
        if not self.busy_count:
            return _NO_IDS, _NO_IDS, ended
        rows = self.high
        self._feed_start_strings()
        emitting = self.emitting[:rows]
        sampled = emitting & ~self.settings.greedy[:rows]
        uniforms = self.uniforms[:rows]
        uniforms[:] = 0.0
        if sampled.any():
            uniforms[sampled] = self.random.take(sampled)
        settings = Settings(*(a[:rows] for a in self.settings))
        ids, check = self.backend.decode(rows, self.tokens[:rows], settings, uniforms, self.reset[:rows])
        self.reset[:rows] = False
        rids, tokens = self._collect(ids, check, emitting, ended)
        return rids, tokens, ended

    def _apply_cancels(self, events) -> None:
        if not self._cancels:
            return
        with self._lock:
            cancels, self._cancels = self._cancels, set()
            kept = deque(r for r in self._waiting if r.id not in cancels)
            dropped = [r.id for r in self._waiting if r.id in cancels]
            self._waiting = kept
        for rid in dropped:
            events.append((rid, CANCELLED))
        for slot in np.flatnonzero(np.isin(self.request[:self.high], list(cancels))):
            events.append((int(self.request[slot]), CANCELLED))
            self._free(int(slot))

    def _admit(self, events) -> None:
        while self._waiting and self.busy_count < self.capacity:
            with self._lock:
                request = self._waiting.popleft()
            if request.length <= 0:
                events.append((request.id, LENGTH))
                continue
            slot = int(np.argmax(self.request < 0))  # the lowest free slot
            self.request[slot] = request.id
            self.left[slot] = request.length
            self.emitting[slot] = False
            self.reset[slot] = True
            self.settings.set_row(slot, request.sampling)
            self.random.start(slot, request.seed)
            self._start[slot] = (request.start_ids, 0)
            self.busy_count += 1
            self.high = max(self.high, slot + 1)

    def _feed_start_strings(self) -> None:
        for slot, (ids, index) in list(self._start.items()):
            self.tokens[slot] = ids[index]
            if index + 1 == len(ids):
                del self._start[slot]
                self.emitting[slot] = True  # its last start character: the step's output is its first
            else:
                self._start[slot] = (ids, index + 1)

    def _collect(self, ids, check, emitting, ended) -> tuple[np.ndarray, np.ndarray]:
        rows = np.flatnonzero(emitting)
        if check is not None:
            bad = rows[np.isnan(check[rows])]
            for slot in bad.tolist():
                ended.append((int(self.request[slot]), NONFINITE))
                self._free(slot)
            if bad.size:
                rows = rows[self.request[rows] >= 0]
        new = ids[rows]
        self.tokens[rows] = new
        self.left[rows] -= 1
        rids = self.request[rows]
        for slot in rows[self.left[rows] == 0].tolist():
            ended.append((int(self.request[slot]), LENGTH))
            self._free(slot)
        return rids, new

    def _free(self, slot: int) -> None:
        self.request[slot] = -1
        self.emitting[slot] = False
        self._start.pop(slot, None)
        self.busy_count -= 1
        if slot + 1 == self.high:
            busy = np.flatnonzero(self.request[:self.high] >= 0)
            self.high = int(busy[-1]) + 1 if busy.size else 0
