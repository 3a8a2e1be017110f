"""The decode engine: a fixed number of slots advanced together, one model call per step.

    engine = Engine(backend, capacity=256)
    rid = engine.submit(start_ids, length, SamplingConfig(...), seed)   # any thread
    engine.cancel(rid)                                                   # any thread
    for rid, token, reason in engine.step(): ...                         # one thread

A request takes a free slot at the next step (the lowest free one, so busy slots stay packed at
the front and a CPU backend computes only rows [0, highest busy + 1)). Each step feeds every busy
slot its next token, whether it is still reading its start string or already generating, in one
backend call; a slot whose token was its start string's last character or a generated one gets
its next character back. A finished or cancelled request frees its slot at once and a waiting
one takes it in the next step (continuous batching).

A backend may run several model steps per call (`backend.steps`, K): a GPU backend runs K steps
in one captured graph, the sampled ids fed back on the device, so the host is heard from once per
K characters. The engine then plans K sub-steps per slot: the start characters to force, and one
random number for each character it will sample. With K = 1 (the CPU backends) a step is one
character; but while no busy slot of a BlockBackend (the host sampler) is greedy or cut, the
engine asks for a block of several steps in one call (as many as the busy slot that needs most
still needs, at most block_steps; start strings are fed and ends fall inside it), each id fed
back in the backend, and a step then returns up to that many characters per slot: the same ids,
with the engine's per-step work done once per block. A request that arrives meanwhile joins at
the next call.

step() returns events (request id, token id, None) for each new character and (request id, -1,
reason) when a request ends: reason is "length", "cancelled", "nonfinite" (the model's logits
were NaN or infinite) or "failed" (only with isolate_failures=True: see below).

Whoever drives an engine (the Python API, the server's thread, the benchmarks) does it through
one driver here, so that every one of them reads an end the same way:

    rids = submit_rows(engine, [start_ids, ...], length, sampling, seed)   row i: rng.row_seed(seed, i)
    for rids, tokens, endings in drive(engine): ...      until no work is left; or step_once(engine)
    for rid, token in drive_tokens(engine, check): ...   the same, a character at a time
    an Ending: (request id, finish "length" | "abort" | "error", cause: why an "error" ended)

A server must outlive whatever one request does to the backend. With `isolate_failures=True`
(the server's engine) nothing raised while admitting a request or calling the backend escapes
step(): a request whose settings the backend cannot take ends alone, a backend call that raises
ends the requests that were in that call (their state inside the backend is unknown; waiting
requests and later ones run as usual), and an id outside the vocabulary ends its own request.
Each such request ends with "failed" and `engine.causes[request id]` says why. Without it (the
Python API's engines) a backend error propagates to the caller, as any exception does. Each slot draws its random numbers from its request's own seeded stream
(rng.py), so a request's text does not depend on what else is in the batch, nor on K.

Backends: the DecodeBackend protocol (below): `decode(rows, forced, last, settings, uniforms,
reset) -> ids (rows, K)` with the state kept inside, and `capacity`, `steps`, `vocab`, `config`;
a OneRowBackend also has `decode_one`, the batch-1 fast path (and may have `decode_run`, the same
for a run of characters: HostSampler's, which Engine.run_alone takes while a request generates
alone). backend_factory(...) is the one
place that chooses among them:
  host_sampler.HostSampler(runtime, capacity)   any step runtime (onnx, savedmodel, keras, litert) +
                                        sampling.choose; blocks, in lanes on onnxruntime's CPU
  runtimes.onnx_decode.OnnxDecoder      a decode model (sampling in the graph) on the CPU
  runtimes.onnx_decode.BlockDecoder     K decode steps per call, state and ids on the device (CUDA)
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Protocol, Sequence, runtime_checkable

import numpy as np

from .contract import MODEL_FILES
from .errors import ModelError
from .host_sampler import HostSampler
from .rng import Blocks, row_seed
from .sampling import SamplingConfig, Settings, plain
from .vocab import Vocab

log = logging.getLogger("charrnn_export")

LENGTH, CANCELLED, NONFINITE, FAILED = "length", "cancelled", "nonfinite", "failed"
# The finish reason an end means to a client (OpenAI's "length"; "abort" and "error" as vLLM's).
FINISH_LENGTH, FINISH_ABORT, FINISH_ERROR = "length", "abort", "error"
FINISH = {LENGTH: FINISH_LENGTH, CANCELLED: FINISH_ABORT, NONFINITE: FINISH_ERROR, FAILED: FINISH_ERROR}
NONFINITE_CAUSE = "the model produced NaN or infinite logits, so no character can be chosen: the model is broken"
_NO_IDS = np.zeros(0, np.int64)
PLAIN_T1, PLAIN_SCALED, CUT = 0, 1, 2  # a slot's settings, as Engine.slot_kind counts them


@dataclass
class _Request:
    id: int
    start_ids: np.ndarray  # (n,) int32, n >= 1
    length: int
    sampling: SamplingConfig
    seed: int


# ---------------------------------------------------------------- the backends


@runtime_checkable
class DecodeBackend(Protocol):
    """What the engine needs of a backend. `typing.Protocol`: a backend need not inherit from it,
    only have these members (tests/test_engine.py checks every backend with isinstance)."""

    capacity: int  # rows it holds state for
    steps: int  # K: model steps per decode call
    vocab: Vocab
    config: dict  # the model's config (its metadata)

    def decode(self, rows: int, forced: np.ndarray, last: np.ndarray, settings: Settings, uniforms: np.ndarray,
               reset: np.ndarray) -> np.ndarray:
        """rows [0, rows): forced (rows, K) int32 start characters to feed (-1: feed back `last`),
        last (rows,) int32, settings per row, uniforms (rows, K), reset (rows,) zeroes a row's state
        first -> ids (rows, K) int32, -1 where the logits were not finite. The state stays inside."""
        ...


@runtime_checkable
class OneRowBackend(DecodeBackend, Protocol):
    """A one-step backend with a fast path for a single generating row (batch 1)."""

    def decode_one(self, token: int, settings: Settings, uniform: float, fresh: bool) -> int:
        """decode() for row 0 alone, generating (no reset, no forced token): the id, or -1.
        fresh: the settings are a new request's (the backend may cache per-request work)."""
        ...


@runtime_checkable
class BlockBackend(DecodeBackend, Protocol):
    """A one-step backend that can also run several steps for rows that all sample plainly."""

    block_steps: int  # the most steps the engine asks of one decode_block

    def decode_block(self, rows: int, forced: np.ndarray, last: np.ndarray, temperature: np.ndarray | None,
                     uniforms: np.ndarray, reset: np.ndarray) -> np.ndarray:
        """decode() for k = uniforms.shape[1] sub-steps of rows that all sample plainly
        (temperature (rows,) or None when every one is 1): forced (rows, k), last (rows,), reset
        (rows,) as decode takes them -> ids (rows, k) int32, -1 from where a row's logits were
        not finite."""
        ...


SAMPLERS = ("auto", "graph", "host")  # decode model in onnxruntime, or numpy on the host
BLOCK_STEPS = 16  # characters per GPU call (BlockDecoder); benchmarks/gpu_engine.py measures others


def backend_factory(step, runtime: str = "onnx", sampler: str = "host", device: str = "cpu",
                    threads: int | None = None, gpu_precision: str = "fp16") -> Callable[[int], DecodeBackend]:
    """capacity -> a new backend: the one place a backend is chosen for a loaded step runtime.

    HostSampler (the step + sampling.choose) for sampler 'host', for any runtime but onnx, and
    for 'auto' on the CPU (the faster there; the text is the same); on CUDA a BlockDecoder (the
    native-op graph, BLOCK_STEPS steps per call, state and ids on the GPU); on the CPU with
    'graph' (or 'auto' where one is found) an OnnxDecoder over the decode model beside the step
    model. 'graph' without a decode model is a ModelError."""
    if runtime != "onnx" or sampler == "host" or (sampler == "auto" and device == "cpu"):
        return lambda capacity: HostSampler(step, capacity)
    from .runtimes.onnx_decode import BlockDecoder, OnnxDecoder, find_decode_model

    if device == "cuda":
        flat = gpu_step_model(step.path)
        if gpu_precision == "fp16":
            log.warning("device 'cuda': the GPU graph computes in fp16 (twice the fp32 speed); its text can part "
                        "from the CPU's after a rounding difference; gpu_precision='fp32' keeps the CPU's text")
        return lambda capacity: BlockDecoder.for_gpu(flat, capacity, steps=BLOCK_STEPS, precision=gpu_precision)
    decode_path = find_decode_model(step.path)
    if decode_path is None:
        if sampler == "graph":
            raise ModelError(f"no decode model beside {step.path}; write one with `charrnn-export to-onnx`, "
                             "or use sampler='host'")
        return lambda capacity: HostSampler(step, capacity)
    return lambda capacity: OnnxDecoder(decode_path, capacity, device=device, threads=threads)


def gpu_step_model(step_path: Path) -> Path:
    """The fp32 step model to build the GPU graph from: int8 (MatMulInteger) crashes
    onnxruntime's CUDA provider, so an int8 model's fp32 sibling is used, and one line says so."""
    if step_path.name != MODEL_FILES["int8"]:
        return step_path
    fp32 = step_path.with_name(MODEL_FILES["fp32"])
    if not fp32.is_file():
        raise ModelError(f"device 'cuda' cannot run the int8 model {step_path} (onnxruntime's CUDA provider "
                         "fails on MatMulInteger) and there is no model.onnx beside it; use the fp32 model")
    log.warning("device 'cuda': int8 does not run on onnxruntime's CUDA provider; using %s (fp32 weights)", fp32)
    return fp32


def decode_run(backend: OneRowBackend, token: int, settings: Settings, uniforms: list[float],
               fresh: bool) -> Iterator[int]:
    """decode_one for each number in turn, each id fed back: what run_alone asks of a backend
    without a decode_run of its own."""
    for uniform in uniforms:
        token = backend.decode_one(token, settings, uniform, fresh)
        fresh = False
        yield token


class BackendFault(RuntimeError):
    """The backend gave an id outside the vocabulary: a fault of the backend or its sampler."""


class Engine:
    def __init__(self, backend, capacity: int | None = None, isolate_failures: bool = False):
        self.backend = backend
        self.isolate_failures = isolate_failures
        self.causes: dict[int, str] = {}  # request id -> why it ended "failed" (the caller pops it)
        self.capacity = capacity = capacity or backend.capacity
        assert capacity <= backend.capacity, "the backend holds fewer rows than the engine's slots"
        self.vocab = backend.vocab
        self.vocab_size = len(backend.vocab)
        self.k = k = backend.steps
        self._one_row = k == 1 and isinstance(backend, OneRowBackend)  # its decode_one serves batch 1
        self._lock = threading.Lock()
        self._waiting: deque[_Request] = deque()
        self._cancels: set[int] = set()
        self._next_id = 0
        # Per slot. request == -1: free.
        self.request = np.full(capacity, -1, np.int64)
        self.last = np.zeros(capacity, np.int32)  # the id each slot sampled last
        self.left = np.zeros(capacity, np.int64)  # characters still to generate
        self.to_read = np.zeros(capacity, np.int64)  # start characters not yet fed
        self.reset = np.zeros(capacity, bool)
        self._blocks = k == 1 and isinstance(backend, BlockBackend)  # decode_block: several steps per call
        self._most_steps = backend.block_steps if self._blocks else k  # sub-steps a call may plan
        self.forced = np.full((capacity, self._most_steps), -1, np.int32)  # start characters to feed this call
        self.settings = Settings.empty(capacity)
        self.random = Blocks(capacity, block=max(256, 4 * self._most_steps))
        self._start: dict[int, tuple[np.ndarray, int]] = {}  # slot -> (start ids, next index)
        self.busy_count = 0
        self.high = 0  # rows [0, high) hold every busy slot
        # Busy slots whose settings are not plain (greedy, a top-k or top-p cut), and those with a
        # temperature other than 1: counted as requests come and go, so that a step can tell
        # without looking at the rows whether a block applies.
        self.slot_kind = np.zeros(capacity, np.int8)  # per slot: PLAIN_T1, PLAIN_SCALED or CUT
        self.kind_count = [0, 0, 0]
        self._one_rid, self._one_greedy = -1, False  # the request _step_one last ran, and its greedy flag
        self._carried: list[tuple[int, str]] = []  # ends run_alone found, for the next step_arrays
        # Called (on the stepping thread) just before the backend call of a step of the batch
        # (decode or decode_block), once the step's plan is made: the server's scheduler hands out
        # the step before's characters then, so that doing so does not hold up the plan (both
        # need the GIL; the backend mostly does not).
        self.on_backend_call: Callable[[], None] | None = None

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
        return self.busy_count > 0 or bool(self._waiting) or bool(self._cancels) or bool(self._carried)

    # ------------------------------------------------------------ the engine's thread

    def step(self) -> list[tuple[int, int, str | None]]:
        """One step; events as (request id, token id, None) and (request id, -1, reason)."""
        rids, tokens, ended = self.step_arrays()
        events = list(zip(rids.tolist(), tokens.tolist(), [None] * len(rids)))
        events.extend((rid, -1, reason) for rid, reason in ended)
        return events

    def step_arrays(self) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
        """step() without a tuple per character, for large batches: (request ids (n,), their
        new token ids (n,), in the order made, and [(request id, reason)] for each that ended)."""
        ended, self._carried = self._carried, []
        self._apply_cancels(ended)
        self._admit(ended)
        if not self.busy_count:
            return _NO_IDS, _NO_IDS, ended
        if not self.isolate_failures:
            return self._advance(ended)
        try:
            return self._advance(ended)
        except Exception as e:  # noqa: BLE001 - the backend call failed: its requests end, the engine runs on
            self._fail_busy(ended, f"{type(e).__name__}: {e}")
            return _NO_IDS, _NO_IDS, ended

    def _advance(self, ended):
        """One backend call for every busy slot, and its characters."""
        if self.high == 1 and self._one_row and not self._start:
            return self._step_one(ended)
        if self._blocks and not self.kind_count[CUT]:
            return self._step_planned(ended, self._block_length(), block=True)
        return self._step_planned(ended, self.k)

    def _block_length(self) -> int:
        """The sub-steps of a block: as many as the busy slot with the most still to feed and
        make needs, at most the backend's block_steps (a request that arrives meanwhile waits
        that long to join)."""
        rows = self.high
        need = np.maximum(self.to_read[:rows] - 1, 0) + self.left[:rows]
        return int(min(need[self.request[:rows] >= 0].max(), self.backend.block_steps))

    def _step_planned(self, ended, k: int, block: bool = False):
        """k sub-steps of every busy slot in one backend call: decode, or for a block (every
        busy slot plain, the host sampler) decode_block. A slot whose start string or length
        ends inside the call is fed what it is fed (the next start character, its last id)
        and its extra ids are not used."""
        rows = self.high
        busy = self.request[:rows] >= 0
        self._feed_start_strings(k)
        # Sub-step j of a slot makes a character when its token is the last start character or
        # a generated one, i.e. from j = to_read - 1 on, for as many characters as it has left.
        first = np.maximum(self.to_read[:rows] - 1, 0)  # (rows,)
        counts = np.where(busy, np.clip(k - first, 0, self.left[:rows]), 0)
        steps = np.arange(k)
        emit = (steps >= first[:, None]) & (steps < (first + counts)[:, None])  # (rows, k)
        uniforms = self._uniforms(rows, first, counts, k)
        forced, last, reset = self.forced[:rows, :k], self.last[:rows], self.reset[:rows]
        if self.on_backend_call is not None:
            self.on_backend_call()
        if block:
            temperature = self.settings.temperature[:rows] if self.kind_count[PLAIN_SCALED] else None
            ids = self.backend.decode_block(rows, forced, last, temperature, uniforms, reset)
        else:
            settings = Settings(*(a[:rows] for a in self.settings))
            ids = self.backend.decode(rows, forced, last, settings, uniforms, reset)
        self.reset[:rows] = False
        self.to_read[:rows] = np.maximum(self.to_read[:rows] - k, 0)
        return self._collect(ids, emit, counts, ended)

    def _step_one(self, ended):
        """step_arrays for one slot (row 0) that is generating, on a one-step backend: the same
        numbers and ids as the general path, with a handful of scalar operations instead of
        thirty array ones (at batch 1 the engine's own cost is what shows next to the model's)."""
        rid = int(self.request[0])
        fresh, self._one_rid = rid != self._one_rid, rid
        if fresh:
            self._one_greedy = bool(self.settings.greedy[0])
        uniform = 0.0 if self._one_greedy else self.random.take_one(0)
        token = self.backend.decode_one(int(self.last[0]), self.settings, uniform, fresh)
        if token < 0 or token >= self.vocab_size:
            self._end_broken(0, token, ended)
            return _NO_IDS, _NO_IDS, ended
        self.last[0] = token
        self.left[0] -= 1
        if self.left[0] == 0:
            ended.append((rid, LENGTH))
            self._free(0)
        return np.array([rid]), np.array([token]), ended

    def alone(self) -> int:
        """The request id that run_alone would run now, or -1."""
        if (self.high == 1 and self._one_row and not self._start and not self._waiting and not self._cancels
                and not self._carried):
            return int(self.request[0])
        return -1

    def run_alone(self, chunk: int = 256) -> Iterator[int]:
        """step_arrays, one step per id yielded, while one request generates alone in slot 0 of a
        one-row backend and nothing waits or is cancelled: the same ids, with no arrays made per
        step (at batch 1 the engine's own cost is what shows beside the model's). Its end, when it
        comes here, is reported by the next step_arrays; the slot's arrays are brought up to date
        when it returns or is dropped (no step may run while it is paused at a yield)."""
        rid = self.alone()
        if rid < 0:
            return
        fresh, self._one_rid = rid != self._one_rid, rid
        if fresh:
            self._one_greedy = bool(self.settings.greedy[0])
        run = getattr(self.backend, "decode_run", None) or partial(decode_run, self.backend)
        vocab_size = self.vocab_size
        token, left = int(self.last[0]), int(self.left[0])
        while left and not self._waiting and not self._cancels:
            numbers = [0.0] * min(left, chunk) if self._one_greedy else self.random.take_run(0, min(left, chunk))
            unread = len(numbers)
            ids = run(token, self.settings, numbers, fresh)
            fresh = False
            try:
                for made in ids:
                    unread -= 1
                    if made < 0 or made >= vocab_size:
                        self._end_broken(0, made, self._carried)
                        return
                    token, left = made, left - 1
                    if not left:
                        self._carried.append((rid, LENGTH))
                        self._free(0)
                    yield token
                    if self._waiting or self._cancels:
                        return
            finally:  # also when the caller drops this generator at a yield
                ids.close()  # the backend's state is its own again
                self.last[0], self.left[0] = token, left
                if unread and not self._one_greedy:
                    self.random.give_back(0, unread)

    def _uniforms(self, rows: int, first: np.ndarray, counts: np.ndarray, k: int) -> np.ndarray:
        """(rows, k): each sampled character's number at the sub-step that makes it."""
        uniforms = np.zeros((rows, k), np.float64)
        sampled = np.flatnonzero((counts > 0) & ~self.settings.greedy[:rows])
        if sampled.size:
            uniforms[sampled] = self.random.take(sampled, counts[sampled], k, first[sampled])
        return uniforms

    def _apply_cancels(self, ended) -> None:
        if not self._cancels:
            return
        with self._lock:
            cancels, self._cancels = self._cancels, set()
            dropped = [r.id for r in self._waiting if r.id in cancels]
            self._waiting = deque(r for r in self._waiting if r.id not in cancels)
        ended.extend((rid, CANCELLED) for rid in dropped)
        for slot in np.flatnonzero(np.isin(self.request[:self.high], list(cancels))).tolist():
            ended.append((int(self.request[slot]), CANCELLED))
            self._free(slot)

    def _admit(self, ended) -> None:
        while self._waiting and self.busy_count < self.capacity:
            with self._lock:
                request = self._waiting.popleft()
            if request.length <= 0:
                ended.append((request.id, LENGTH))
                continue
            slot = int(np.argmax(self.request < 0))  # the lowest free slot
            try:  # first, so that a request the rows cannot take leaves its slot free
                self.settings.set_row(slot, request.sampling)
                self.random.start(slot, request.seed)
            except Exception as e:  # noqa: BLE001 - only this request's settings failed
                if not self.isolate_failures:
                    raise
                self.causes[request.id] = f"{type(e).__name__}: {e}"
                ended.append((request.id, FAILED))
                continue
            self.request[slot] = request.id
            self._count_kind(slot, request.sampling)
            self.left[slot] = request.length
            self.to_read[slot] = len(request.start_ids)
            self.reset[slot] = True
            self._start[slot] = (request.start_ids, 0)
            self.busy_count += 1
            self.high = max(self.high, slot + 1)

    def _feed_start_strings(self, k: int) -> None:
        """Write the start characters of this call's k sub-steps into `forced` (-1 elsewhere: feed back)."""
        for slot, (ids, index) in list(self._start.items()):
            chunk = ids[index:index + k]
            self.forced[slot, :len(chunk)] = chunk
            self.forced[slot, len(chunk):] = -1
            if index + k >= len(ids):
                del self._start[slot]  # its last start character is fed in this step
            else:
                self._start[slot] = (ids, index + k)

    def _collect(self, ids, emit, counts, ended):
        """The call's characters in the order made (sub-step by sub-step) as (request ids, token
        ids, ended); a slot whose id is -1 or outside the vocabulary keeps the characters it made
        before it and ends there."""
        rows, k = self.high, ids.shape[1]
        made = np.flatnonzero(counts)
        if k == 1:
            order_rows, order_tokens = made, ids[made, 0]
        else:
            sub, row = np.nonzero(emit.T)  # in the order made: sub-step by sub-step
            order_rows, order_tokens = row, ids[row, sub]
        rids = self.request[order_rows]
        bad = (order_tokens < 0) | (order_tokens >= self.vocab_size)
        if bad.any():
            keep = np.ones(len(order_rows), bool)
            position = np.arange(len(order_rows))
            for at in np.flatnonzero(bad).tolist():
                slot = int(order_rows[at])
                if self.request[slot] < 0:
                    continue  # ended at an earlier sub-step of this call
                keep &= ~((order_rows == slot) & (position >= at))
                self._end_broken(slot, int(order_tokens[at]), ended)
            made = made[self.request[made] >= 0]
            rids, order_tokens = rids[keep], order_tokens[keep]
        if made.size:
            self.last[made] = ids[made, k - 1]
            self.left[made] -= counts[made]
        for slot in made[self.left[made] == 0].tolist():
            ended.append((int(self.request[slot]), LENGTH))
            self._free(slot)
        self.forced[:rows] = -1
        return rids, order_tokens, ended

    def _end_broken(self, slot: int, token: int, ended) -> None:
        """A slot's id was -1 (its logits were not finite) or outside the vocabulary (token)."""
        rid = int(self.request[slot])
        if token < 0:
            ended.append((rid, NONFINITE))
        else:
            cause = f"the backend gave id {token}, outside the vocabulary of {self.vocab_size}"
            if not self.isolate_failures:
                raise BackendFault(cause)
            self.causes[rid] = cause
            ended.append((rid, FAILED))
        self._free(slot)

    def _fail_busy(self, ended, cause: str) -> None:
        """A backend call raised: end every request it held, and leave every slot free and clean."""
        for slot in np.flatnonzero(self.request[:self.high] >= 0).tolist():
            rid = int(self.request[slot])
            self.causes[rid] = cause
            ended.append((rid, FAILED))
            self._free(slot)
        self.forced[:] = -1
        self._one_rid = -1

    def _count_kind(self, slot: int, sampling: SamplingConfig) -> None:
        if not plain(sampling, self.vocab_size):
            kind = CUT
        else:
            kind = PLAIN_T1 if np.float32(sampling.temperature) == 1 else PLAIN_SCALED
        self.slot_kind[slot] = kind
        self.kind_count[kind] += 1

    def _free(self, slot: int) -> None:
        self.kind_count[self.slot_kind[slot]] -= 1
        self.request[slot] = -1
        self._start.pop(slot, None)
        self.to_read[slot] = 0
        self.busy_count -= 1
        if slot + 1 == self.high:
            busy = np.flatnonzero(self.request[:self.high] >= 0)
            self.high = int(busy[-1]) + 1 if busy.size else 0


# ---------------------------------------------------------------- the driver


class Ending(NamedTuple):
    """A request that ended: its finish reason (FINISH) and, for "error", why."""

    rid: int
    finish: str
    cause: str | None


def submit_rows(engine: Engine, starts: Sequence, length: int, sampling: SamplingConfig, seed: int) -> list[int]:
    """One request per start (ids), all with `length` and `sampling`; row i seeded row_seed(seed, i)."""
    return [engine.submit(ids, length, sampling, row_seed(seed, row)) for row, ids in enumerate(starts)]


def step_once(engine: Engine) -> tuple[np.ndarray, np.ndarray, list[Ending]]:
    """One engine step: (request ids (n,), their new token ids (n,), in the order made, and the
    requests that ended, each as an Ending)."""
    rids, tokens, ended = engine.step_arrays()
    return rids, tokens, [ending(engine, rid, reason) for rid, reason in ended]


def drive(engine: Engine) -> Iterator[tuple[np.ndarray, np.ndarray, list[Ending]]]:
    """step_once until every request submitted (before or while it runs) has ended."""
    while engine.has_work():
        yield step_once(engine)


def drive_tokens(engine: Engine, check: Callable[[list[Ending]], None]) -> Iterator[tuple[int, int]]:
    """drive() as (request id, token id) for each character in the order made, each step's
    endings handed to `check` (which may raise). While one request generates alone its
    characters come from engine.run_alone: the same ids, without a step's arrays."""
    while engine.has_work():
        rid = engine.alone()
        if rid >= 0:
            for token in engine.run_alone():
                yield rid, token
        rids, tokens, endings = step_once(engine)
        yield from zip(rids.tolist(), tokens.tolist())
        check(endings)


def ending(engine: Engine, rid: int, reason: str) -> Ending:
    """The engine's end reason as a finish reason and its cause (engine.causes is emptied of it)."""
    cause = engine.causes.pop(rid, None)
    if reason == NONFINITE:
        cause = NONFINITE_CAUSE
    elif reason == FAILED:
        cause = f"generation failed: {cause}"
    return Ending(rid, FINISH[reason], cause)
