"""The registry of cell kinds: a dict filled by each kind's module when it is imported.

    register(kind)      called once by each kind's module (gru.py, lstm.py, rnn.py)
    get_kind(name)      the registered kind, or ConfigError naming the kinds there are
    kind_names()        the registered names, sorted
    kind_of_keras_class("LSTM") -> the kind, or None

Nothing here imports a kind: the package's __init__ imports every module of the package, so a
new kind is one new file that calls register(). What a kind provides is kind.py's CellKind.
"""

from __future__ import annotations

from ..errors import ConfigError

KINDS: dict = {}  # name -> CellKind


def register(kind):
    if kind.name in KINDS:
        raise AssertionError(f"cell kind {kind.name!r} is registered twice")
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str):
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown cell kind {name!r}; choose one of {', '.join(kind_names())}") from None


def kind_names() -> list[str]:
    return sorted(KINDS)


def kind_of_keras_class(class_name: str):
    return next((k for k in KINDS.values() if k.keras_class == class_name), None)
