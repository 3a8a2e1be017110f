"""Choosing the next character from logits: temperature, top-k, top-p, greedy. numpy (and, for
plain rows where it is built, the same rule compiled: _plain.c).

    SamplingConfig.checked(temperature, top_k, top_p, greedy, names=...)   checked once (checks.py)
    SamplingConfig(...).validate()             the same checks for a config built directly
    Settings.of([config, ...])                 per-row settings as arrays (what a decode model takes)
    choose(logits (rows, vocab) float32, settings, uniforms (rows,) float64) -> ids (rows,) int32
    OneRow(vocab, unk_id).set(settings).pick(logits (vocab,), uniform) -> id   the same, one row
    choose_plain(logits, temperature, uniforms, unk_id) -> ids | None   the same for rows without
                                               greedy, top-k or top-p: one call of the compiled rule
                                               (_plain.c, where built), else a third of the operations
    unknown_id(config), mask_unknown(logits, unk_id), broken_rows(logits, unk_id)   the [UNK] rule

This is the project's one sampling rule. The decode model (decode.py) computes the same rule in
ONNX, the web page (web/static/sampling.js) in JavaScript and _plain.c in C (rows without greedy or
cuts); they agree id for id because every step is defined so that each side can do exactly the
same float arithmetic:

  1. greedy rows, and rows whose top_p is not above 0 in float32 (a top_p below the smallest
     float32 probability, about 1.4e-45, rounds to 0): the first index of the largest logit (no
     random number is used).
  2. scaled = (logits - max) / temperature, in float32: at most 0, exactly 0 at the largest
     logit, so no temperature in checks' range (1e-6 .. 1e30, also a subnormal float32) and no
     finite logits can make it +inf or NaN (a tiny temperature only sends the others to -inf).
  3. top-k (0 = off): ids whose scaled logit is below the k-th largest are removed (ties kept).
  4. weights = float32(exp(float64(scaled - max))): exp in float64 rounded to float32, because
     float32 exp differs in the last bit between numpy, onnxruntime and JavaScript, and float64
     exp rounded to float32 does not (in practice). (max is 0 here, so the subtraction is exact.)
  5. top-p (1 = off): probs = weights / total (total = the sequential float32 sum, as in 6); in
     descending order of probability (ties: lower id first), an id is kept while the probability
     of the ids before it is below top_p, so the first is always kept.
  6. cdf = the sequential float32 running sum of the kept weights; the id is the count of
     cdf entries <= uniform * cdf[-1], compared in float64. uniform is in [0, 1), so the id found
     always has positive weight (the largest logit's weight is exp(0) = 1).

The rule is total: for any finite logits (with -inf for masked ids, at least one finite) and any
settings that pass SamplingConfig.validate it returns an id in range, never NaN and never an
exception (tests/test_sampler_total.py checks numpy, the decode graph and the web page on extreme
floats).

Sums are sequential (np.add.accumulate), not numpy's pairwise sum, because ONNX CumSum and a
JavaScript loop add in that order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from . import checks

try:  # the plain rule compiled (_plain.c, which setup.py builds where a C compiler is found)
    import _charrnn_export_plain as _plain
except ImportError:  # pragma: no cover - an install without a compiler: numpy's rule
    _plain = None


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False  # argmax; ignores temperature, top-k and top-p
    # Set by checked(): these settings passed checks.py, so validate() need not run them again.
    checked_once: bool = field(default=False, init=False, compare=False, repr=False)

    @classmethod
    def checked(cls, temperature=1.0, top_k=None, top_p=None, greedy=False,
                names: Mapping[str, str] | None = None) -> "SamplingConfig":
        """The settings after checks.py's checks (the one place their ranges live), or the
        project's argument error naming the field; `names` maps a field to the name its caller
        knows it by (the command line's "--top-k", a request's "top_k")."""
        name = {f: f for f in FIELDS} | dict(names or {})
        config = cls(checks.check_temperature(temperature, name["temperature"]),
                     checks.check_top_k(top_k, name["top_k"]), checks.check_top_p(top_p, name["top_p"]),
                     checks.check_bool(greedy, name["greedy"]))
        object.__setattr__(config, "checked_once", True)
        return config

    def validate(self) -> "SamplingConfig":
        """These settings checked (once: a config from checked() is returned as it is)."""
        if self.checked_once:
            return self
        return SamplingConfig.checked(self.temperature, self.top_k, self.top_p, self.greedy)


FIELDS = ("temperature", "top_k", "top_p", "greedy")


class Settings(NamedTuple):
    """Per-row sampling settings, the decode model's inputs of the same names."""

    temperature: np.ndarray  # (rows,) float32
    top_k: np.ndarray  # (rows,) int64, 0 = off
    top_p: np.ndarray  # (rows,) float32, 1 = off
    greedy: np.ndarray  # (rows,) bool

    @classmethod
    def empty(cls, rows: int) -> "Settings":
        return cls(np.ones(rows, np.float32), np.zeros(rows, np.int64), np.ones(rows, np.float32),
                   np.zeros(rows, bool))

    @classmethod
    def of(cls, configs: Sequence[SamplingConfig]) -> "Settings":
        settings = cls.empty(len(configs))
        for row, config in enumerate(configs):
            settings.set_row(row, config)
        return settings

    def set_row(self, row: int, config: SamplingConfig) -> None:
        self.temperature[row] = config.temperature
        self.top_k[row] = config.top_k or 0
        self.top_p[row] = 1.0 if config.top_p is None else config.top_p
        self.greedy[row] = config.greedy

    def take(self, rows) -> "Settings":
        return Settings(*(a[rows] for a in self))


def choose(logits: np.ndarray, settings: Settings, uniforms: np.ndarray) -> np.ndarray:
    """One id per row of `logits` (rows, vocab) float32, by the rule in the module docstring."""
    logits = np.asarray(logits, dtype=np.float32)
    rows, vocab = logits.shape
    ids = np.argmax(logits, axis=1).astype(np.int32)  # greedy rows keep this
    sampled = ~settings.greedy & (settings.top_p > 0)  # rule 1: a top_p that rounds to 0 is greedy
    if not sampled.any():
        return ids
    if not sampled.all():
        logits, settings, uniforms = logits[sampled], settings.take(sampled), uniforms[sampled]
    with np.errstate(over="ignore"):  # a tiny temperature sends differences to -inf: meant (rule 2)
        scaled = (logits - logits.max(axis=1, keepdims=True)) / settings.temperature[:, None]  # (rows, vocab) float32
    scaled = cut_top_k(scaled, settings.top_k)
    weights = np.exp((scaled - scaled.max(axis=1, keepdims=True)).astype(np.float64)).astype(np.float32)
    if (settings.top_p < 1).any():
        weights = cut_top_p(weights, settings.top_p)
    cdf = np.add.accumulate(weights, axis=1)  # (rows, vocab) float32, sequential
    threshold = uniforms * cdf[:, -1].astype(np.float64)  # (rows,) below the total: u < 1
    ids[sampled] = np.sum(cdf <= threshold[:, None], axis=1)
    return ids


# Logits below this in magnitude are finite, and the difference of two of them is too (rule 2's
# logits - max cannot overflow float32's 3.4e38): one reduction then stands for broken_rows'
# per-element check and for choose()'s overflow guard.
SAFE_LOGIT = np.float32(1e38)


def plain(config: SamplingConfig, vocab_size: int) -> bool:
    """Settings that draw from the whole distribution: no greedy, no top-k cut, no top-p cut
    (what choose_plain and OneRow's short path take)."""
    top_k, top_p = config.top_k or 0, 1.0 if config.top_p is None else config.top_p
    return not config.greedy and not (0 < top_k < vocab_size) and not np.float32(top_p) < 1


def compiled(logits: np.ndarray) -> bool:
    """Whether the compiled plain rule (_plain.c) takes these logits: it is built, and they are
    float32 in one piece (a runtime may hand back a view)."""
    return _plain is not None and logits.dtype == np.float32 and logits.flags.c_contiguous


def choose_plain(logits: np.ndarray, temperature: np.ndarray | None, uniforms: np.ndarray,
                 unk_id: int | None) -> np.ndarray | None:
    """choose() and broken_rows() together for rows whose settings are all plain(): the ids, by
    the same float arithmetic, or None when a logit is not below SAFE_LOGIT in magnitude (NaN and
    inf included: the caller then takes choose() and broken_rows(), which judge each row).
    logits (rows, vocab) float32 may be changed in place; temperature (rows,) float32, or None
    when every row's is 1 (dividing by 1 changes nothing). Compiled where _plain is built."""
    if compiled(logits):
        ids = np.empty(len(logits), np.int32)
        temperature = None if temperature is None else np.ascontiguousarray(temperature, np.float32)
        judged = _plain.plain_ids(logits, temperature, np.ascontiguousarray(uniforms, np.float64),
                                  -1 if unk_id is None else unk_id, ids)
        return ids if judged else None
    return choose_plain_numpy(logits, temperature, uniforms, unk_id)


def choose_plain_numpy(logits: np.ndarray, temperature: np.ndarray | None, uniforms: np.ndarray,
                       unk_id: int | None) -> np.ndarray | None:
    """choose_plain in numpy (logits changed in place)."""
    if not max(logits.max(), -logits.min()) < SAFE_LOGIT:
        return None
    if unk_id is not None:
        logits[:, unk_id] = -np.inf
    np.subtract(logits, logits.max(axis=1, keepdims=True), out=logits)  # rule 2: at most 0
    if temperature is not None:
        with np.errstate(over="ignore"):  # a tiny temperature sends differences to -inf: meant
            np.divide(logits, temperature[:, None], out=logits)
    # Rule 4 (the largest scaled value is exactly 0) and rule 6: float64 exp, each weight rounded
    # to float32 as accumulate's dtype casts it, then sequential float32 sums.
    cdf = np.add.accumulate(np.exp(logits, dtype=np.float64), axis=1, dtype=np.float32)
    return np.count_nonzero(cdf <= (uniforms * cdf[:, -1])[:, None], axis=1).astype(np.int32)


class OneRow:
    """choose() for one row at a time, with its settings fixed: the same rule and the same
    float arithmetic, on buffers made once. At batch 1 a generator calls the sampler once per
    character, and choose()'s thirty small array operations, each with numpy's per-call cost,
    weigh as much as the model's step; this does a third as many, in place, and for plain
    settings one call of the compiled rule (_plain.c) where it is built. Rows with a top-k or
    top-p cut go through choose() itself (the cuts are rare and their sort dominates anyway)."""

    def __init__(self, vocab_size: int, unk_id: int | None):
        self.unk_id = unk_id
        self.unk = -1 if unk_id is None else unk_id  # as _plain takes it
        self.scaled = np.empty(vocab_size, np.float32)
        self.exp64 = np.empty(vocab_size, np.float64)
        self.cdf = np.empty(vocab_size, np.float32)
        self.settings = Settings.empty(1)
        self.greedy = self.plain = False
        self.temperature = np.float32(1.0)
        self.temperature_value = 1.0

    def set(self, settings: Settings, row: int = 0) -> "OneRow":
        """Take row `row` of `settings` as the settings of every following pick."""
        self.settings = Settings(*(a[row:row + 1].copy() for a in settings))
        temperature, top_k, top_p, greedy = (a[0] for a in self.settings)
        self.greedy = bool(greedy) or not top_p > 0  # rule 1
        vocab = self.scaled.shape[0]
        self.plain = not self.greedy and not (0 < top_k < vocab) and not top_p < 1
        self.temperature = np.float32(temperature)
        self.temperature_value = float(self.temperature)  # exact: a float32 as a Python float
        return self

    def pick(self, logits: np.ndarray, uniform: float) -> int:
        """The id for `logits` (vocab,) float32 (may be changed in place: [UNK] masked), or -1 when
        they are not all finite ([UNK] aside), as broken_rows and choose() decide together."""
        if self.plain and _plain is not None:
            try:
                token = _plain.plain_id(logits, uniform, self.temperature_value, self.unk)
            except (BufferError, TypeError, ValueError):  # not float32 in one piece, as compiled() tells
                token = -2
            if token >= 0:
                return token
            if token == -1:
                return self._pick_judged(logits, uniform)  # a logit not below SAFE_LOGIT
        if not max(logits.max(), -logits.min()) < SAFE_LOGIT:  # one check for finite and not huge
            return self._pick_judged(logits, uniform)
        if self.unk_id is not None:
            logits[self.unk_id] = -np.inf
        return self._pick_finite(logits, uniform)

    def _pick_judged(self, logits: np.ndarray, uniform: float) -> int:
        """pick() for logits that may be huge or not finite: broken_rows' judgment first."""
        unk = self.unk_id
        if unk is not None:
            logits[unk] = 0.0  # not judged (broken_rows), then never sampled (mask_unknown)
        if not np.isfinite(logits).all():
            return -1
        if unk is not None:
            logits[unk] = -np.inf
        with np.errstate(over="ignore"):  # logits - max may overflow to -inf, as in choose(): meant
            return self._pick_finite(logits, uniform)

    def _pick_finite(self, logits: np.ndarray, uniform: float) -> int:
        if self.greedy:
            return int(logits.argmax())
        if not self.plain:
            return int(choose(logits[None], self.settings, np.array([uniform]))[0])
        scaled, cdf = self.scaled, self.cdf
        np.subtract(logits, logits.max(), out=scaled)
        if self.temperature < 1:  # rule 2, as in choose(): only a temperature below 1 can overflow
            with np.errstate(over="ignore"):
                np.divide(scaled, self.temperature, out=scaled)
        elif self.temperature != 1:
            np.divide(scaled, self.temperature, out=scaled)
        # Rule 4: the largest scaled value is exactly 0, so choose()'s "- max" changes nothing;
        # accumulate's dtype rounds each float64 weight to float32 before the float32 sums (rule 6).
        np.exp(scaled, out=self.exp64, dtype=np.float64)
        np.add.accumulate(self.exp64, out=cdf, dtype=np.float32)
        # cdf never decreases, so the count of entries <= the threshold is a binary search's.
        return int(cdf.searchsorted(uniform * float(cdf[-1]), side="right"))


def unknown_id(config: Mapping) -> int | None:
    """The id a sampler must never pick, from a model's config: a current-tutorial model's [UNK]
    (its `unk_id`, which export writes), or None for a model without one."""
    return config.get("unk_id")


def mask_unknown(logits: np.ndarray, unk_id: int | None) -> np.ndarray:
    """`logits` (rows, vocab) with the [UNK] column set to -inf, in place, so that it is never
    sampled (unk_id None: unchanged)."""
    if unk_id is not None:
        logits[:, unk_id] = -np.inf
    return logits


def broken_rows(logits: np.ndarray, unk_id: int | None) -> np.ndarray:
    """(rows,) bool: rows whose logits are not all finite, the [UNK] column aside (it is masked)."""
    finite = np.isfinite(logits)
    if unk_id is not None:
        finite[:, unk_id] = True
    return ~finite.all(axis=1)


def cut_top_k(scaled: np.ndarray, top_k: np.ndarray) -> np.ndarray:
    """Remove (-inf) the ids below each row's k-th largest scaled logit; k = 0 or >= vocab: none."""
    vocab = scaled.shape[1]
    active = (top_k > 0) & (top_k < vocab)
    if not active.any():
        return scaled
    descending = -np.sort(-scaled, axis=1)  # (rows, vocab)
    k = np.where(active, top_k, vocab)  # an inactive row's "k-th" is its smallest: removes nothing
    kth = np.take_along_axis(descending, (k - 1)[:, None].astype(np.int64), axis=1)  # (rows, 1)
    return np.where(scaled < kth, np.float32(-np.inf), scaled)


def cut_top_p(weights: np.ndarray, top_p: np.ndarray) -> np.ndarray:
    """Keep, per row, the most probable ids until the probability before them reaches top_p."""
    total = np.add.accumulate(weights, axis=1)[:, -1:]  # (rows, 1) sequential float32 sum
    probs = weights / total
    order = np.argsort(-probs, axis=1, kind="stable")  # descending; ties: lower id first
    sorted_probs = np.take_along_axis(probs, order, axis=1)
    before = np.add.accumulate(sorted_probs, axis=1) - sorted_probs  # mass of the more probable ids
    keep_sorted = before < top_p[:, None]  # float32 comparison; the first id is always kept
    keep = np.empty_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=1)
    return np.where(keep, weights, np.float32(0.0))


def softmax_reference(logits: np.ndarray, config: SamplingConfig) -> np.ndarray:
    """The distribution the rule samples from, in float64, written independently of choose():
    for the statistical tests. (vocab,) logits -> (vocab,) probabilities."""
    x = np.asarray(logits, dtype=np.float64)
    x = (x - x.max()) / config.temperature
    if config.top_k is not None and config.top_k < len(x):
        x = np.where(x < np.sort(x)[::-1][config.top_k - 1], -np.inf, x)
    p = np.exp(x - x.max())
    p /= p.sum()
    if config.top_p is not None and config.top_p < 1:
        order = np.argsort(-p, kind="stable")
        before = np.cumsum(p[order]) - p[order]
        keep = np.zeros(len(p), bool)
        keep[order[before < config.top_p]] = True
        p = np.where(keep, p, 0.0)
        p /= p.sum()
    return p
