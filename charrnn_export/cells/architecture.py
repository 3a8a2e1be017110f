"""The model description: Embedding -> recurrent layers -> Dense, and the packed state's layout.

    LayerSpec(kind, units, options)     one recurrent layer: a registered kind ("gru", "lstm",
                                        "rnn"), its units, its options (gru: reset_after)
    Architecture(vocab_size, embedding_dim, layers)
        .state_size / .state_layout()   the one float32 state [batch, state_size], packed layer by
                                        layer (a layer's width is its kind's: GRU and SimpleRNN units,
                                        LSTM 2 * units, h then c)
        .to_json() / from_json(...)     the form config.json and the ONNX metadata hold
        .describe()                     "gru(512) x1", "lstm(256) -> gru(256)"
        .step_matrices()                the shapes of the matrices one step multiplies by
        .to_config()                    the config an export carries (metadata, config_json)
        from_config(config)             an exported model's config (or a run's): its "architecture",
                                        or, for an old export without one, gru(rnn_units) x1
    state_size_of(config) -> int        the packed state's width from such a config: the one
                                        function every reader of the state width uses

Constructing a LayerSpec checks it (ConfigError: an option was given wrong); from_json checks
every type and key of what it reads (ModelError naming the field: a file was written wrong).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..errors import ConfigError, ModelError
from .registry import KINDS, get_kind, kind_names


def layer_problem(kind, units, options) -> str | None:
    """What is wrong with one layer's description, or None."""
    if not isinstance(kind, str) or kind not in KINDS:
        return f"unknown cell kind {kind!r}; choose one of {', '.join(kind_names())}"
    if type(units) is not int or units < 1:
        return f"units must be a positive integer, not {units!r}"
    if not isinstance(options, dict):
        return f"options must be a mapping, not {type(options).__name__}"
    allowed = get_kind(kind).options
    for name, value in options.items():
        if name not in allowed:
            known = f"it has {', '.join(sorted(allowed))}" if allowed else "it has none"
            return f"{kind} has no option {name!r} ({known})"
        if type(value) is not type(allowed[name]):
            return f"{kind} option {name} must be {type(allowed[name]).__name__}, not {value!r}"
    return None


@dataclass(frozen=True)
class LayerSpec:
    kind: str
    units: int
    options: dict = field(default_factory=dict)  # every option of the kind, defaults filled in

    def __post_init__(self):
        options = dict(self.options or {})
        problem = layer_problem(self.kind, self.units, options)
        if problem:
            raise ConfigError(f"layer {self.kind}({self.units}): {problem}")
        object.__setattr__(self, "options", {**get_kind(self.kind).options, **options})

    def __hash__(self):
        return hash((self.kind, self.units, tuple(sorted(self.options.items()))))

    @property
    def cell(self):
        """The registered CellKind that computes this layer."""
        return get_kind(self.kind)

    @property
    def state_width(self) -> int:
        return self.cell.state_width(self.units)

    def describe(self) -> str:
        defaults = self.cell.options
        changed = [f"{k}={v}" for k, v in sorted(self.options.items()) if v != defaults[k]]
        return f"{self.kind}({', '.join([str(self.units), *changed])})"

    def to_json(self) -> dict:
        return {"kind": self.kind, "units": self.units, **self.options}


@dataclass(frozen=True)
class StateSlot:
    """Where one layer's state lives in the packed state: columns [offset, offset + width)."""

    kind: str
    units: int
    offset: int
    width: int


ARCHITECTURE_KEYS = {"vocab_size", "embedding_dim", "layers", "state_size"}
LAYOUT_KEYS = {"state_offset", "state_width"}


@dataclass(frozen=True)
class Architecture:
    vocab_size: int
    embedding_dim: int
    layers: tuple[LayerSpec, ...]

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        for name in ("vocab_size", "embedding_dim"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"{name} must be a positive integer, not {value!r}")
        if not self.layers or not all(isinstance(layer, LayerSpec) for layer in self.layers):
            raise ConfigError("an architecture needs one or more recurrent layers (LayerSpec)")

    @property
    def state_size(self) -> int:
        return sum(layer.state_width for layer in self.layers)

    def state_layout(self) -> tuple[StateSlot, ...]:
        slots, offset = [], 0
        for layer in self.layers:
            slots.append(StateSlot(layer.kind, layer.units, offset, layer.state_width))
            offset += layer.state_width
        return tuple(slots)

    @property
    def output_units(self) -> int:
        """The width of what the Dense layer reads: the last layer's h."""
        return self.layers[-1].units

    def step_matrices(self) -> tuple[tuple[int, int], ...]:
        """The (rows, columns) of every matrix one step multiplies by, in the step's order: each
        layer's input kernel but the first's (the flat step folds that one into a lookup), each
        layer's recurrent kernel, the Dense kernel."""
        shapes, input_dim = [], self.embedding_dim
        for i, layer in enumerate(self.layers):
            weights = layer.cell.weight_shapes(layer, input_dim)
            shapes += ([weights["kernel"]] if i > 0 else []) + [weights["recurrent_kernel"]]
            input_dim = layer.units
        return tuple(shapes) + ((self.output_units, self.vocab_size),)

    def describe(self) -> str:
        if len(set(self.layers)) == 1:
            return f"{self.layers[0].describe()} x{len(self.layers)}"
        return " -> ".join(layer.describe() for layer in self.layers)

    def to_json(self) -> dict:
        """vocab_size, embedding_dim, the layers, and the state layout (each layer's offset and
        width, and the total), so that a reader of the metadata needs no kind to unpack the state."""
        layers = [{**layer.to_json(), "state_offset": slot.offset, "state_width": slot.width}
                  for layer, slot in zip(self.layers, self.state_layout())]
        return {"vocab_size": self.vocab_size, "embedding_dim": self.embedding_dim, "layers": layers,
                "state_size": self.state_size}

    def to_json_string(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    @classmethod
    def from_json(cls, data, source: str = "architecture") -> "Architecture":
        """An Architecture from to_json's dict (or its JSON text); ModelError naming the first thing
        wrong. The layout fields are optional, and checked against the layers when present."""
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except ValueError as e:
                raise ModelError(f"{source}: the architecture is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ModelError(f"{source}: the architecture must be a JSON object, not {type(data).__name__}")
        unknown = sorted(set(data) - ARCHITECTURE_KEYS)
        if unknown:
            raise ModelError(f"{source}: unknown architecture field {unknown[0]!r}")
        for name in ("vocab_size", "embedding_dim"):
            value = data.get(name)
            if type(value) is not int or value < 1:
                raise ModelError(f"{source}: {name} must be a positive integer, not {value!r}")
        entries = data.get("layers")
        if not isinstance(entries, list) or not entries:
            raise ModelError(f"{source}: layers must be a non-empty list, not {entries!r}")
        layers = [layer_from_json(entry, f"{source}: layer {i}") for i, entry in enumerate(entries)]
        architecture = cls(data["vocab_size"], data["embedding_dim"], tuple(layers))
        check_layout(architecture, data, entries, source)
        return architecture

    def to_config(self) -> dict:
        """The config an exported model carries (ONNX metadata, the SavedModel's config_json):
        vocab_size, embedding_dim, the architecture with its state layout (to_json) and
        state_size. A single layer also keeps the fields older readers read: rnn_units, rnn_type
        (its kind) and its options (a GRU's reset_after). from_config reads it back."""
        config = {"vocab_size": self.vocab_size, "embedding_dim": self.embedding_dim,
                  "architecture": self.to_json(), "state_size": self.state_size}
        if len(self.layers) == 1:
            (layer,) = self.layers
            config.update({"rnn_units": layer.units, "rnn_type": layer.kind, **layer.options})
        return config

    @classmethod
    def from_config(cls, config, source: str = "config") -> "Architecture":
        """The architecture an exported model's config (or a run's config.json) describes: its
        "architecture" entry, or, for an export older than architectures (vocab_size, embedding_dim,
        rnn_units only), a single GRU of rnn_units, reset_after as recorded (Keras' default True)."""
        if not isinstance(config, dict):
            raise ModelError(f"{source}: the config must be a JSON object, not {type(config).__name__}")
        if "architecture" in config:
            architecture = cls.from_json(config["architecture"], source)
        else:
            reset_after = config.get("reset_after", True)
            if type(reset_after) is not bool:
                raise ModelError(f"{source}: reset_after must be true or false, not {reset_after!r}")
            for name in ("vocab_size", "embedding_dim", "rnn_units"):
                value = config.get(name)
                if type(value) is not int or value < 1:
                    raise ModelError(f"{source}: {name} must be a positive integer, not {value!r}")
            architecture = cls(config["vocab_size"], config["embedding_dim"],
                               (LayerSpec("gru", config["rnn_units"], {"reset_after": reset_after}),))
        for name in ("vocab_size", "embedding_dim"):
            if name in config and config[name] != getattr(architecture, name):
                raise ModelError(f"{source}: {name} is {config[name]!r} but its architecture says "
                                 f"{getattr(architecture, name)}")
        if "rnn_units" in config and len(architecture.layers) == 1 and config["rnn_units"] != architecture.layers[0].units:
            raise ModelError(f"{source}: rnn_units is {config['rnn_units']!r} but its architecture says "
                             f"{architecture.describe()}")
        state_size_of(config, source, architecture)
        return architecture


def state_size_of(config, source: str = "config", architecture: "Architecture | None" = None) -> int:
    """The packed state's width S from a model's config: "state_size", else (an export older than
    architectures, one GRU) "rnn_units". Checked against `architecture` (or the config's own
    "architecture") when there is one: a reader may trust the number it returns."""
    if not isinstance(config, dict):
        raise ModelError(f"{source}: the config must be a JSON object, not {type(config).__name__}")
    name = "state_size" if "state_size" in config else "rnn_units"
    value = config.get(name)
    if type(value) is not int or value < 1:
        raise ModelError(f"{source}: {name} must be a positive integer, not {value!r}")
    if architecture is None and "architecture" in config:
        architecture = Architecture.from_json(config["architecture"], source)
    if architecture is not None and value != architecture.state_size:
        raise ModelError(f"{source}: {name} is {value} but its architecture "
                         f"({architecture.describe()}) has a state {architecture.state_size} wide")
    units = config.get("rnn_units")
    if (name == "state_size" and units is not None and architecture is not None and len(architecture.layers) == 1
            and units != architecture.layers[0].units):
        raise ModelError(f"{source}: rnn_units is {units!r} but its architecture is {architecture.describe()}")
    return value


def layer_from_json(entry, where: str) -> LayerSpec:
    if not isinstance(entry, dict):
        raise ModelError(f"{where} must be a JSON object, not {entry!r}")
    options = {k: v for k, v in entry.items() if k not in {"kind", "units"} | LAYOUT_KEYS}
    problem = layer_problem(entry.get("kind"), entry.get("units"), options)
    if problem:
        raise ModelError(f"{where}: {problem}")
    return LayerSpec(entry["kind"], entry["units"], options)


def check_layout(architecture: Architecture, data: dict, entries: list, source: str) -> None:
    """Recorded offsets and widths must be the ones the layers imply: a reader may trust either."""
    if "state_size" in data and data["state_size"] != architecture.state_size:
        raise ModelError(f"{source}: state_size is {data['state_size']!r} but the layers need "
                         f"{architecture.state_size}")
    for i, (entry, slot) in enumerate(zip(entries, architecture.state_layout())):
        for key, expected in (("state_offset", slot.offset), ("state_width", slot.width)):
            if key in entry and (type(entry[key]) is not int or entry[key] != expected):
                raise ModelError(f"{source}: layer {i} {key} is {entry[key]!r}, expected {expected}")
