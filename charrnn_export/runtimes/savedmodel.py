"""The exported SavedModel's step signature through TensorFlow.

The signature is `serving_default(token int32 [batch], state float32 [batch, S]) ->
{logits, state_out}`; the vocabulary is the asset assets/vocab.json (the `vocab_json`
variable holds the same list) and the config is the `config_json` variable. S, the packed
state's width, is the config's (cells.architecture.state_size_of), checked against the signature.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import contract
from ..cells.architecture import state_size_of
from ..vocab import Vocab
from ..errors import ModelError
from ..tfsetup import tensorflow_for


class SavedModelRuntime:
    name = "savedmodel"

    def __init__(self, path, threads: int | None = None, device: str = "cpu"):
        path = Path(path)
        if path.is_dir() and (path / "saved_model").is_dir():
            path = path / "saved_model"  # an export directory
        if not (path / "saved_model.pb").is_file():
            raise ModelError(f"no SavedModel at {path}; pass --model with an export's saved_model/ directory")
        tf, self.device = tensorflow_for(threads, device)
        self.tf = tf
        try:
            self.loaded = tf.saved_model.load(str(path))
            self.signature = self.loaded.signatures[contract.SIGNATURE]
        except (KeyError, OSError, ValueError, tf.errors.OpError) as e:
            raise ModelError(f"cannot load SavedModel {path} ({str(e).splitlines()[0][:200]})") from None
        vocab_file = path / "assets" / "vocab.json"
        try:
            self.vocab = Vocab.load(vocab_file) if vocab_file.exists() else Vocab.from_json(
                self.loaded.vocab_json.numpy().decode())
            self.config = json.loads(self.loaded.config_json.numpy().decode())
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise ModelError(f"SavedModel {path} lacks its vocabulary or config ({e}); export it again with "
                             "`charrnn-export to-onnx`") from None
        # rnn_units is the Runtime protocol's name for the packed state's width S (state_size).
        self.rnn_units = self.state_size = state_size_of(self.config, f"SavedModel {path}: its config")
        self.vocab_size = len(self.vocab)
        self.check_signature(path)

    def check_signature(self, path: Path) -> None:
        """The step contract (contract.py), checked at load: a float `token` or more logits than
        characters would otherwise fail, or pick ids with no character, in the middle of sampling."""
        inputs = self.signature.structured_input_signature[1]  # {name: TensorSpec}
        outputs = self.signature.structured_outputs
        if set(inputs) != {contract.TOKEN, contract.STATE} or not {contract.LOGITS, contract.STATE_OUT} <= set(outputs):
            raise ModelError(f"SavedModel {path} is not a charrnn-export step model (inputs {sorted(inputs)}, outputs "
                             f"{sorted(outputs)}); export it again")
        for name, expected in ((contract.TOKEN, self.tf.int32), (contract.STATE, self.tf.float32)):
            if inputs[name].dtype != expected:
                raise ModelError(f"SavedModel {path}: input `{name}` is {inputs[name].dtype.name}, the step contract "
                                 f"says {expected.name}; export it again")
        state_width = inputs[contract.STATE].shape[-1]
        if state_width is not None and state_width != self.rnn_units:
            raise ModelError(f"SavedModel {path}: its signature's state is {state_width} wide but its config says "
                             f"{'state_size' if 'state_size' in self.config else 'rnn_units'} {self.rnn_units}; "
                             "export it again")
        width = outputs[contract.LOGITS].shape[-1]
        if width is not None and width != self.vocab_size:
            raise ModelError(f"SavedModel {path} has {width} logits but {self.vocab_size} characters in its "
                             "vocabulary; export it again")

    def zero_state(self, batch: int) -> np.ndarray:
        return np.zeros((batch, self.rnn_units), dtype=np.float32)

    def step(self, tokens: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.tf.device(self.device):
            out = self.signature(token=self.tf.constant(tokens, self.tf.int32), state=self.tf.constant(state))
        return out[contract.LOGITS].numpy(), out[contract.STATE_OUT].numpy()
