"""The seeded random numbers every sampler in the project draws: Python, the ONNX decode models
(which take them as an input) and the web page's JavaScript (web/charrnn.js) all use this.

Counter-based: uniform number n (n = 0, 1, 2, ...) of the stream with seed s is a pure function
of (s, n), namely Philox4x32-10 (Salmon et al. 2011, the generator of cuRAND and Random123) with
key (s, 0) and counter (n, 0, 0, 0). Its first two output words w0, w1 make one float64 in
[0, 1): ((w0 >> 5) * 2**26 + (w1 >> 6)) / 2**53, exact in Python and JavaScript.

Counter-based rather than a sequential generator because a decode engine refills many slots'
numbers at once: a block of numbers for any rows is one vectorised numpy pass, with no state
to carry but a count. It uses only 32-bit words (the multiply's high half is taken from a
64-bit product), so JavaScript reproduces it with 16-bit halves.

    uniforms(seeds (rows,), counters (rows, k)) -> (rows, k) float64
    Stream(seed).random(n) -> the next n numbers of one stream

A request draws one number per sampled character (greedy characters draw none). Seeds are
integers in [0, 2**32). `generate_batch` seeds row i with (seed + i) mod 2**32, so its row i
gives the same text as a lone request seeded with seed + i.
"""

from __future__ import annotations

import secrets

import numpy as np

SEED_LIMIT = 2**32
_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)
_LOW = np.uint64(0xFFFFFFFF)


def random_seed() -> int:
    """A fresh seed for a request that gave none (reported back, so the text can be made again)."""
    return secrets.randbits(32)


def philox4x32(counter: tuple, key: tuple) -> tuple:
    """Philox4x32-10 on arrays of uint32 words: counter (c0, c1, c2, c3), key (k0, k1)."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint32) for c in counter)
    k0, k1 = (np.asarray(k, dtype=np.uint32) for k in key)
    with np.errstate(over="ignore"):
        for round_ in range(10):
            if round_:
                k0, k1 = k0 + _W0, k1 + _W1
            p0 = _M0 * c0.astype(np.uint64)  # exact: both factors < 2**32
            p1 = _M1 * c2.astype(np.uint64)
            hi0, lo0 = (p0 >> np.uint64(32)).astype(np.uint32), (p0 & _LOW).astype(np.uint32)
            hi1, lo1 = (p1 >> np.uint64(32)).astype(np.uint32), (p1 & _LOW).astype(np.uint32)
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def uniforms(seeds, counters) -> np.ndarray:
    """Numbers counters[r, j] of the streams seeds[r]: (rows,) and (rows, k) -> (rows, k) float64."""
    counters = np.asarray(counters, dtype=np.uint32)
    seeds = np.broadcast_to(np.asarray(seeds, dtype=np.uint32).reshape(-1, *([1] * (counters.ndim - 1))),
                            counters.shape)
    zero = np.zeros(counters.shape, np.uint32)
    w0, w1, _, _ = philox4x32((counters, zero, zero, zero), (seeds, zero))
    return ((w0 >> np.uint32(5)).astype(np.float64) * 67108864.0 + (w1 >> np.uint32(6))) / 9007199254740992.0


class Stream:
    """One seeded stream, read in order."""

    def __init__(self, seed: int):
        self.seed, self.count = seed, 0

    def random(self, size: int) -> np.ndarray:
        out = uniforms([self.seed], np.arange(self.count, self.count + size)[None, :])[0]
        self.count += size
        return out


class Blocks:
    """Numbers for a batch of rows (slots), made a block at a time so that a step costs one read.

    start(row, seed) points a row at a new stream; take(rows) returns the next number of each of
    those rows' streams (rows: an index array or mask) and advances only them."""

    def __init__(self, rows: int, block: int = 256):
        self.block = block
        self.buffer = np.zeros((rows, block), np.float64)  # (rows, block) the numbers ahead
        self.seed = np.zeros(rows, np.uint32)
        self.made = np.zeros(rows, np.int64)  # numbers made so far per row (the next block's start)
        self.pos = np.full(rows, block, np.int64)  # next unread column; == block: refill first

    def start(self, row: int, seed: int) -> None:
        self.seed[row], self.made[row], self.pos[row] = seed, 0, self.block

    def take(self, rows: np.ndarray) -> np.ndarray:
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows
        empty = rows[self.pos[rows] >= self.block]
        if empty.size:
            self.refill(empty)
        cols = self.pos[rows]
        self.pos[rows] = cols + 1
        return self.buffer[rows, cols]

    def refill(self, rows: np.ndarray) -> None:
        counters = self.made[rows, None] + np.arange(self.block)  # (rows, block)
        self.buffer[rows] = uniforms(self.seed[rows], counters)
        self.made[rows] += self.block
        self.pos[rows] = 0
