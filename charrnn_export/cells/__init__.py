"""The model description and one module per recurrent cell kind.

    architecture.py   LayerSpec, Architecture: Embedding -> layers -> Dense, the packed state's layout
    weights.py        LayerWeights, ModelWeights: the arrays, in Keras' layout
    kind.py           CellKind: what every kind provides
    registry.py       the registry of kinds, filled by their modules
    gru.py lstm.py rnn.py   the kinds: each owns everything that knows its gates
    reference.py      the numpy step of the whole stack (float64), the reference for the others
    keras_model.py    the Keras model of an architecture; ModelWeights read back from a Keras model
    tf_step.py        the flat TensorFlow step of the whole stack (the exported step)
    onnx_step.py      the step with one native ONNX op per layer (the device graph)
    variables.py      a checkpoint's (path, array) pairs -> ModelWeights

Every module of this package is imported here, so a kind's module registers its kind just by
being in the folder: a new kind is one new file. numpy only at import.
"""

import importlib
import pkgutil

from .architecture import Architecture, LayerSpec, StateSlot
from .kind import CellKind
from .registry import get_kind, kind_names
from .weights import LayerWeights, ModelWeights

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Architecture", "LayerSpec", "StateSlot", "CellKind", "get_kind", "kind_names", "LayerWeights",
           "ModelWeights"]
