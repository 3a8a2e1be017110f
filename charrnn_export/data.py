"""Text in, ids out: load or download the text, build the tutorial's vocabulary, split, batch.

numpy only, so the sampler can use `Vocab` without TensorFlow.
    load_text(source) -> str            a local UTF-8 file or an http(s)/file URL (cached, sha256-checked)
    Vocab.from_text(text)               ids exactly as the tutorial: sorted(set(text)) (vocab.py)
    split_train_val(ids, fraction)      the last `fraction` of the text is validation
    epoch_batches(...)                  (inputs, targets) windows in a seeded, repeatable order
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np

from .contract import KNOWN_SHA256
from .errors import DataError
from .files import atomic_write_bytes


# ---------------------------------------------------------------- hashing


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- loading text


def is_url(source: str) -> bool:
    return urllib.parse.urlparse(str(source)).scheme in ("http", "https", "file")


def cache_dir() -> Path:
    return Path(os.environ.get("CHARRNN_EXPORT_CACHE", Path.home() / ".cache" / "charrnn-export"))


def load_text_bytes(source: str, flag: str = "--data") -> tuple[bytes, str]:
    """Return the raw bytes of `source` and a short name for messages; `flag` is the option that
    named it, so that a message says what to pass (train: --data, to-onnx: --text)."""
    source = str(source)
    what = "data" if flag == "--data" else "text"
    if is_url(source):
        return fetch_url(source, flag), source
    path = Path(source)
    try:
        if not path.exists():
            raise DataError(f"{what} file not found: {source}; pass {flag} with an existing UTF-8 text file")
        if path.is_dir():
            raise DataError(f"{what} path is a directory: {source}; pass {flag} with a UTF-8 text file")
        return path.read_bytes(), source
    except OSError as e:  # unreadable: permissions, a name too long, an I/O error
        raise DataError(f"cannot read {what} file {source} ({e.strerror or e}); "
                        f"pass {flag} with a readable UTF-8 text file") from None


def decode_text(data: bytes, name: str, flag: str = "--data") -> str:
    what = "data" if flag == "--data" else "text"
    if not data:
        raise DataError(f"{what} file is empty: {name}; pass {flag} with a non-empty UTF-8 text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{what} file is not UTF-8: {name} (invalid byte at offset {e.start}); "
            "convert it with e.g. `iconv -t UTF-8` and try again"
        ) from None


def load_text(source: str, flag: str = "--data") -> tuple[str, str]:
    """Return (text, sha256 of its bytes) for a local file or a URL."""
    data, name = load_text_bytes(source, flag)
    text = decode_text(data, name, flag)
    return text, sha256_bytes(data)


def fetch_url(url: str, flag: str = "--data") -> bytes:
    """Download `url` once into the cache; reuse the cached copy while its sha256 is right."""
    expected = KNOWN_SHA256.get(url)
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    target = cache_dir() / f"{sha256_bytes(url.encode())[:12]}-{name}"
    if target.exists():
        data = target.read_bytes()
        if expected is None or sha256_bytes(data) == expected:
            return data
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise DataError(f"could not download {url} ({reason}); pass {flag} FILE with a local copy") from None
    if expected is not None and sha256_bytes(data) != expected:
        raise DataError(
            f"downloaded {url} but its sha256 is {sha256_bytes(data)}, expected {expected}; "
            f"pass {flag} FILE with a good copy"
        )
    try:
        atomic_write_bytes(target, data)
    except OSError as e:
        raise DataError(f"cannot write the download cache {target} ({e.strerror or e}); set "
                        f"CHARRNN_EXPORT_CACHE to a writable directory or pass {flag} FILE") from None
    return data


# ---------------------------------------------------------------- split and batches


def split_train_val(ids: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The last `val_fraction` of the text is validation; training never sees it."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    n_val = int(round(len(ids) * val_fraction))
    return ids[: len(ids) - n_val], ids[len(ids) - n_val :]


def check_enough_text(train_ids, val_ids, seq_length: int, batch_size: int) -> None:
    need_train = min_train_chars(seq_length, batch_size)
    if len(train_ids) < need_train or len(val_ids) < seq_length + 1:
        raise DataError(
            f"text too short: training needs {need_train} characters (one batch of {batch_size} x "
            f"{seq_length + 1}, plus room for the epoch offset) and validation {seq_length + 1}, got "
            f"{len(train_ids)} and {len(val_ids)}; use more text or a smaller --batch-size/--seq-length"
        )


def min_train_chars(seq_length: int, batch_size: int) -> int:
    return batch_size * (seq_length + 1) + seq_length


def epoch_windows(train_ids: np.ndarray, seq_length: int, seed: int, epoch: int) -> np.ndarray:
    """All (seq_length + 1)-character windows of one epoch, shuffled.

    Each epoch starts its windows at a different seeded offset, so later epochs see other
    cuts of the text than the tutorial's fixed chunks; the order depends only on (seed, epoch),
    which is what makes a resumed run repeat an uninterrupted one.
    """
    rng = np.random.default_rng([seed, epoch])
    window = seq_length + 1
    offset = int(rng.integers(0, window)) if len(train_ids) >= 2 * window else 0
    n_windows = (len(train_ids) - offset) // window
    windows = train_ids[offset : offset + n_windows * window].reshape(n_windows, window)
    return windows[rng.permutation(n_windows)]


def steps_in_epoch(train_ids: np.ndarray, seq_length: int, batch_size: int, seed: int, epoch: int) -> int:
    return len(epoch_windows(train_ids, seq_length, seed, epoch)) // batch_size


def epoch_batches(
    train_ids: np.ndarray, seq_length: int, batch_size: int, seed: int, epoch: int, start: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(inputs, targets), each (batch, seq_length), from batch index `start` on; drops the remainder."""
    windows = epoch_windows(train_ids, seq_length, seed, epoch)
    for b in range(start, len(windows) // batch_size):
        chunk = windows[b * batch_size : (b + 1) * batch_size]
        yield chunk[:, :-1], chunk[:, 1:]


def validation_windows(val_ids: np.ndarray, seq_length: int) -> np.ndarray:
    """Non-overlapping (seq_length + 1) windows of the validation text, in order."""
    window = seq_length + 1
    n_windows = len(val_ids) // window
    return val_ids[: n_windows * window].reshape(n_windows, window)
