"""The seeded random numbers every sampler in the project draws: Python, the ONNX decode models
(which take them as an input) and the web page's JavaScript (web/static/sampling.js) all use this.

Counter-based: uniform number n (n = 0, 1, 2, ...) of the stream with seed s is a pure function
of (s, n), namely output n of SplitMix64 (Steele, Lea and Flood 2014; the generator of Java's
SplittableRandom and the seeder of the xoshiro family) started at state s:

    z = (s + (n + 1) * 0x9E3779B97F4A7C15) mod 2**64
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 mod 2**64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB mod 2**64
    z = z ^ (z >> 31)
    uniform = (z >> 11) / 2**53                     # 53 bits: a float64 in [0, 1), exact

Counter-based because a decode engine hands out numbers for thousands of slots per step: a block
of numbers for any rows is one vectorised numpy pass (far cheaper in numpy than Philox4x32-10,
which was tried first), with no state to carry but a count. JavaScript computes the same with
BigInt.

    uniforms(seeds (rows,), counters (rows, k)) -> (rows, k) float64
    Stream(seed).random(n) -> the next n numbers of one stream
    row_seed(seed, row) -> the seed of row `row` of a batch seeded `seed`

A request draws one number per sampled character (greedy characters draw none). Seeds are
integers in [0, SEED_LIMIT) (checks.py, which checks them). Row i of a batch (generate_batch,
a server request's choices) is seeded row_seed(seed, i) = (seed + i) mod 2**32, so it gives the
same text as a lone request seeded with seed + i.
"""

from __future__ import annotations

import secrets

import numpy as np

from .checks import SEED_LIMIT

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def random_seed() -> int:
    """A fresh seed for a request that gave none (reported back, so the text can be made again)."""
    return secrets.randbits(32)


def row_seed(seed: int, row: int) -> int:
    """The seed of row `row` of a batch seeded `seed`: the rule every batch of requests follows."""
    return (seed + row) % SEED_LIMIT


def splitmix64(seeds, counters) -> np.ndarray:
    """Output `counters` (0-based) of SplitMix64 started at `seeds`; uint64, broadcast."""
    with np.errstate(over="ignore"):
        z = np.asarray(seeds, np.uint64) + (np.asarray(counters, np.uint64) + np.uint64(1)) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def uniforms(seeds, counters) -> np.ndarray:
    """Numbers counters[r, j] of the streams seeds[r]: (rows,) and (rows, k) -> (rows, k) float64."""
    counters = np.asarray(counters, dtype=np.uint64)
    seeds = np.asarray(seeds, dtype=np.uint64).reshape(-1, *([1] * (counters.ndim - 1)))
    return (splitmix64(seeds, counters) >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


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

    start(row, seed) points a row at a new stream; take(rows, counts) returns (len(rows), k)
    numbers: row r's next counts[r] numbers in its first counts[r] columns (the rest 0.0), and
    advances each row by its count only."""

    def __init__(self, rows: int, block: int = 256):
        self.block = block
        self.buffer = np.zeros((rows, block), np.float64)  # numbers base .. base + block - 1 per row
        self.seed = np.zeros(rows, np.uint32)
        self.base = np.zeros(rows, np.int64)
        self.next = np.zeros(rows, np.int64)  # the next number to hand out, counted from 0 per stream
        self.filled = np.zeros(rows, bool)

    def start(self, row: int, seed: int) -> None:
        self.seed[row], self.next[row], self.filled[row] = seed, 0, False

    def take(self, rows: np.ndarray, counts: np.ndarray, k: int, first: np.ndarray | None = None) -> np.ndarray:
        """rows: (n,) indices; counts: (n,) in [0, k]. Row r's numbers go in columns first[r] ..
        first[r] + counts[r] - 1 (first: 0 when not given), zeros elsewhere: (n, k) float64."""
        stale = rows[~self.filled[rows] | (self.next[rows] + k > self.base[rows] + self.block)]
        if stale.size:
            self.refill(stale)
        columns = np.arange(k)
        first = np.zeros(len(rows), np.int64) if first is None else first
        place = (columns >= first[:, None]) & (columns < (first + counts)[:, None])  # (n, k)
        offsets = (self.next[rows] - self.base[rows] - first)[:, None] + columns  # index in the row's block
        flat = np.where(place, rows[:, None] * self.block + offsets, 0)
        values = self.buffer.reshape(-1)[flat]  # one gather
        values[~place] = 0.0
        self.next[rows] += counts
        return values

    def take_one(self, row: int) -> float:
        """take() for one row and one number, with scalar operations (the batch-1 path)."""
        offset = int(self.next[row] - self.base[row])
        if not self.filled[row] or offset >= self.block:
            self.refill(np.array([row]))
            offset = 0
        self.next[row] += 1
        return float(self.buffer[row, offset])

    def take_run(self, row: int, n: int) -> list[float]:
        """The next n numbers of one row as Python floats (a run of batch-1 steps reads them
        one by one); give_back(row, m) returns the last m of them unread."""
        start = int(self.next[row])
        self.next[row] = start + n
        return uniforms(self.seed[row:row + 1], np.arange(start, start + n)[None, :])[0].tolist()

    def give_back(self, row: int, unread: int) -> None:
        self.next[row] -= unread

    def refill(self, rows: np.ndarray) -> None:
        self.base[rows] = self.next[rows]
        self.buffer[rows] = uniforms(self.seed[rows], self.base[rows, None] + np.arange(self.block))
        self.filled[rows] = True
