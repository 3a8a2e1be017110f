"""The vocabulary: characters in id order, and the one reader of vocab.json.

    Vocab.from_text(text)           ids exactly as the tutorial: sorted(set(text))
    Vocab.load(path) / read_vocab_file(path) -> (Vocab, whether id 0 is StringLookup's [UNK])
    vocab.encode(text) / decode(ids); vocab.unknown(text): the characters without an id

numpy only, so the sampler can use it without TensorFlow.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .files import atomic_write_text


@dataclass(frozen=True)
class Vocab:
    """Characters in id order. Built as the tutorial does, so ids match its checkpoints."""

    chars: tuple[str, ...]

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        return cls(tuple(sorted(set(text))))

    @classmethod
    def from_json(cls, data: str) -> "Vocab":
        chars = json.loads(data)
        if not isinstance(chars, list) or not all(isinstance(c, str) and len(c) == 1 for c in chars):
            raise ValueError("a vocabulary is a JSON list of single characters")
        check_characters(chars)
        return cls(tuple(chars))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocab":
        """A vocab.json (read_vocab_file: StringLookup's [UNK] list is accepted too)."""
        return read_vocab_file(path)[0]

    def to_json(self) -> str:
        return json.dumps(list(self.chars), ensure_ascii=False)

    def save(self, path: str | os.PathLike, root: str | os.PathLike | None = None) -> None:
        atomic_write_text(path, self.to_json() + "\n", root)

    def __len__(self) -> int:
        return len(self.chars)

    @property
    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.chars)}

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of `text` that have no id, in order of appearance."""
        index = self.index
        return list(dict.fromkeys(c for c in text if c not in index))

    def encode(self, text: str) -> np.ndarray:
        missing = self.unknown(text)
        if missing:
            raise DataError(
                f"{len(missing)} character(s) are not in the model's vocabulary: "
                f"{' '.join(repr(c) for c in missing[:20])}; remove them (or use --unknown skip)"
            )
        index = self.index
        return np.fromiter((index[c] for c in text), dtype=np.int32, count=len(text))

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def check_characters(chars) -> None:
    """Raise ValueError for a character no UTF-8 text holds (a lone surrogate: it could never be
    written out or typed in) or one listed twice (two ids for one character)."""
    for position, char in enumerate(chars):
        if "\ud800" <= char <= "\udfff":
            raise ValueError(f"id {position} is a lone surrogate (U+{ord(char):04X}), not a character of any text")
    seen: dict[str, int] = {}
    for position, char in enumerate(chars):
        if char in seen:
            raise ValueError(f"the vocabulary repeats {char!r} (ids {seen[char]} and {position})")
        seen[char] = position


# The current tutorial maps characters to ids with StringLookup(vocabulary=sorted(set(text)),
# mask_token=None), which puts "[UNK]" at id 0 and the characters at 1..N: its embedding has
# N + 1 rows. A vocabulary is a list of single characters, so id 0 gets a character that is
# not in the text and the config records `unk_id: 0`.
UNK_PLACEHOLDERS = ("\ufffd", "\x00")


def with_unknown_slot(chars) -> Vocab:
    placeholder = next(c for c in UNK_PLACEHOLDERS if c not in chars)
    return Vocab((placeholder, *chars))


def read_vocab_file(vocab_path: str | os.PathLike) -> tuple[Vocab, bool]:
    """The one reader of vocab.json: a JSON list of characters in id order; StringLookup's
    get_vocabulary(), which starts with "[UNK]", is accepted too. Returns the vocabulary and
    whether id 0 is [UNK]."""
    try:
        raw = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"vocabulary file not found: {vocab_path}") from None
    except (ValueError, UnicodeDecodeError, IsADirectoryError) as e:
        raise DataError(f"{vocab_path} is not a vocabulary file ({e}); it must be a JSON list of characters") from None
    unk = isinstance(raw, list) and raw[:1] == ["[UNK]"]
    try:
        vocab = Vocab.from_json(json.dumps(raw[1:] if unk else raw))
    except ValueError as e:
        raise DataError(f"{vocab_path} is not a vocabulary file ({e}); it must be a JSON list of characters") from None
    return (with_unknown_slot(vocab.chars), True) if unk else (vocab, False)
