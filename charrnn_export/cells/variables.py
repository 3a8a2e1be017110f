"""A checkpoint's variables -> ModelWeights, whatever wrote them, for any stack of registered kinds.

    group_variables(variables) -> {layer path: [(leaf, array), ...]}
    weights_from_variables(variables, source) -> ModelWeights

`variables` are (path, array) pairs as a checkpoint names them, optimizer slots left out:
tf_keras' TF checkpoints (`layer_with_weights-1/cell/kernel`), Keras 3 .weights.h5
(`layers/gru/cell/vars/0`, or `gru/cell/vars/0` for a subclassed model) and tf_keras' .h5
(`gru/gru/gru_cell/kernel:0`). Each recurrent layer is recognised by its kind's `recognise` from
its arrays' shapes (the bias's shape tells a GRU's reset_after), never by its layer name. The
layers are chained in the order their shapes allow, names breaking ties (natural order:
layer_with_weights-2 before -10, gru before gru_1). A layer the registry does not know, a
Bidirectional one above all, is refused by name: dropping it would export another model.
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import ModelError
from .registry import KINDS
from .weights import LayerWeights, ModelWeights


def group_variables(variables: list[tuple[str, np.ndarray]]) -> dict[str, list[tuple[str, np.ndarray]]]:
    groups: dict[str, list[tuple[str, np.ndarray]]] = {}
    for name, array in variables:
        parent, _, leaf = name.rpartition("/")
        if parent.endswith("/vars") or parent == "vars":  # Keras 3: LAYER/vars/N
            parent = parent[: -len("vars")].rstrip("/")
        groups.setdefault(parent, []).append((leaf, np.asarray(array)))
    return groups


def natural_key(path: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def is_bidirectional(path: str) -> bool:
    """Keras names a Bidirectional's cells forward_layer / backward_layer, tf_keras' .h5 forward_gru ..."""
    return any(part.startswith(("forward_", "backward_", "bidirectional")) for part in path.split("/"))


def shapes(items) -> list[tuple[int, ...]]:
    return [tuple(a.shape) for _, a in items]


def recognise_layer(parent: str, items, source: str) -> LayerWeights | None:
    matches = [layer for layer in (kind.recognise(items) for kind in KINDS.values()) if layer is not None]
    if len(matches) > 1:
        raise ModelError(f"{source}: the layer at {parent!r} {shapes(items)} could be any of "
                         f"{', '.join(m.spec.kind for m in matches)}")
    return matches[0] if matches else None


def weights_from_variables(variables: list[tuple[str, np.ndarray]], source: str) -> ModelWeights:
    embeddings, denses, recurrent, unknown = [], [], [], []
    bidirectional = sorted({parent.split("/forward")[0].split("/backward")[0]
                            for parent in group_variables(variables) if is_bidirectional(parent)})
    if bidirectional:
        raise ModelError(f"{source}: the layer at {bidirectional[0]!r} is Bidirectional (a forward and a backward "
                         "cell): a char model generates left to right, so only one-directional GRU, LSTM or "
                         "SimpleRNN layers can be exported")
    for parent, items in sorted(group_variables(variables).items(), key=lambda group: natural_key(group[0])):
        if all(a.ndim == 0 for _, a in items):
            continue  # counters and metric totals
        ndims = [a.ndim for _, a in items]
        layer = recognise_layer(parent, items, source)
        if layer is not None:
            recurrent.append((parent, layer))
        elif ndims == [2]:
            embeddings.append((parent, items[0][1]))
        elif sorted(ndims) == [1, 2]:
            denses.append((parent, sorted((a for _, a in items), key=lambda a: -a.ndim)))
        else:
            unknown.append(f"{parent or '/'} {shapes(items)}")
    problems = [f"weights of no known layer: {'; '.join(unknown)}"] if unknown else []
    for role, found in (("embedding", embeddings), ("dense", denses)):
        if len(found) != 1:
            problems.append(f"{len(found)} {role} layers" + (f" ({', '.join(p for p, _ in found)})" if found else ""))
    if not recurrent:
        problems.append("no recurrent layer (GRU, LSTM or SimpleRNN)")
    if problems:
        raise ModelError(f"{source} does not hold a char model (Embedding -> GRU/LSTM/SimpleRNN layers -> Dense): "
                         + "; ".join(problems))
    (_, embedding), = embeddings
    (_, (dense_kernel, dense_bias)), = denses
    layers = chain_layers(recurrent, embedding.shape[1], dense_kernel.shape[0], source)
    return ModelWeights(embedding, tuple(layers), dense_kernel, dense_bias).check(source)


def chain_layers(recurrent: list[tuple[str, LayerWeights]], embedding_dim: int, output_dim: int,
                 source: str) -> list[LayerWeights]:
    """The layers in model order: each one's kernel reads the previous one's units (the first the
    embedding), the last feeds the dense kernel. Tried in name order, so names settle a tie."""

    def extend(chain, rest, width):
        if not rest:
            return chain if width == output_dim else None
        for i, (_, layer) in enumerate(rest):
            if layer.kernel.shape[0] == width:
                found = extend(chain + [layer], rest[:i] + rest[i + 1:], layer.spec.units)
                if found is not None:
                    return found
        return None

    chain = extend([], recurrent, embedding_dim)
    if chain is None:
        found = ", ".join(f"{p} {layer.spec.describe()} reading {layer.kernel.shape[0]}" for p, layer in recurrent)
        raise ModelError(f"{source}: its recurrent layers ({found}) do not chain from the embedding's "
                         f"{embedding_dim} columns to the dense layer's {output_dim} rows")
    return chain
