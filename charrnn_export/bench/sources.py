"""The weights every contestant runs: a checkpoint's Keras weights and an export of the same weights.

    prepare_sources(config, scratch) -> Sources(weights, vocab, export_dir, description)

Without --model the checkpoint is exported (fp32 and int8, step and decode models) into the
scratch folder first, which needs TensorFlow; with --model the export is read as it is, and only
the TensorFlow contestants read the checkpoint. --quick without a checkpoint makes a tiny random
one here.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cells import Architecture
from ..vocab import Vocab
from ..errors import ModelError
from .config import EXPORT_FILES, FULL_SIZE, QUICK_CHARS, BenchConfig

log = logging.getLogger("charrnn_export.bench")


@dataclass
class Sources:
    weights: object | None  # cells.ModelWeights, for the TF contestants
    vocab: Vocab
    export_dir: Path
    description: dict = field(default_factory=dict)


def tiny_random_checkpoint(folder: Path, seed: int) -> Path:
    """A tiny untrained model as a checkpoint .npz with its vocab.json: --quick without --checkpoint."""
    from ..cells import Architecture, LayerSpec
    from ..cells.weights import random_weights
    from ..checkpoints import save_checkpoint

    vocab = Vocab.from_text(QUICK_CHARS)
    rng = np.random.default_rng(seed)
    architecture = Architecture(len(vocab), 16, (LayerSpec("gru", 64),))

    def draw(shape, role: str, fan_in: int) -> np.ndarray:
        # Scaled by fan-in so the untrained model's logits spread like a trained one's.
        scale = {"bias": 10, "dense_bias": 10}.get(role, fan_in)
        return rng.standard_normal(shape) / math.sqrt(scale) * (3 if role == "dense_kernel" else 1)

    weights = random_weights(architecture, draw)
    path = folder / "best.npz"
    save_checkpoint(path, weights, {"note": "bench --quick: random weights"})
    vocab.save(folder / "vocab.json")
    return path


def prepare_sources(config: BenchConfig, scratch: Path) -> Sources:
    """The Keras weights and an export of the same weights (made here unless --model is given)."""
    from ..checkpoints import load_any_checkpoint

    checkpoint = config.checkpoint
    if checkpoint is None and config.quick and config.model is None:
        checkpoint = str(tiny_random_checkpoint(scratch, config.seed))
        log.info("bench --quick: a tiny random model (16-dim embedding, 64 units)")
    loaded = load_any_checkpoint(checkpoint) if checkpoint is not None else None
    vocab_path = config.vocab
    if loaded is not None and loaded.vocab is None and vocab_path is None and config.text is not None:
        from ..data import load_text

        vocab_path = str(scratch / "vocab.json")  # a vocabulary alone: export need not read the text
        Vocab.from_text(load_text(config.text)[0]).save(vocab_path)

    if config.model is not None:
        export_dir = Path(config.model)
    else:
        from ..export import export

        export_dir = scratch / "export"
        log.info(f"exporting {loaded.source} (fp32 and int8) to a temporary folder ...")
        started = time.perf_counter()
        export(checkpoint, str(export_dir), vocab_path=vocab_path, quantize="int8", seed=config.seed)
        log.info(f"exported in {time.perf_counter() - started:.0f} s")
    # decode.onnx may be missing from an export made before decode models: those contestants are
    # skipped with a note (contestants.skip_reason); the rest must be there.
    missing = [f for c, f in EXPORT_FILES.items()
               if c in config.contestants and not c.startswith("decode-") and not (export_dir / f).is_file()]
    if missing:
        raise ModelError(f"--model {export_dir} lacks {', '.join(missing)}; export it with "
                         "`charrnn-export to-onnx --quantize int8`, or leave those contestants out")

    from ..runtimes.onnx import OnnxRuntime

    probe = OnnxRuntime(export_dir / "model.onnx") if (export_dir / "model.onnx").is_file() else None
    vocab = probe.vocab if probe is not None else Vocab.load(export_dir / "vocab.json")
    export_config = dict(probe.config) if probe is not None else {}
    if loaded is not None:
        described = loaded.weights.architecture()
        if export_config and Architecture.from_config(export_config, f"--model {export_dir}") != described:
            raise ModelError(f"--model {export_dir} ({Architecture.from_config(export_config).describe()}) is not "
                             f"the model of --checkpoint {loaded.source} ({described.describe()}); export that "
                             "checkpoint, or drop --model")
        if len(vocab) != loaded.weights.vocab_size:
            raise ModelError(f"--model {export_dir} has {len(vocab)} characters, the checkpoint "
                             f"{loaded.weights.vocab_size}")
    # The architecture's config (to_config): vocab_size, embedding_dim, architecture, state_size
    # (and rnn_units for one layer), what the report and the floors read.
    if loaded is not None:
        model_config = loaded.weights.architecture().to_config()
    elif export_config:
        model_config = Architecture.from_config(export_config, f"--model {export_dir}").to_config()
    else:
        model_config = {}
    description = {
        "checkpoint": loaded.source if loaded is not None else None,
        "checkpoint_kind": loaded.kind if loaded is not None else None,
        "export_dir": str(config.model) if config.model is not None else "(exported to a temporary folder)",
        "config": model_config,
        "full_size": all(model_config.get(k) == v for k, v in FULL_SIZE.items()),
        "random_weights": checkpoint is not None and config.checkpoint is None,
    }
    return Sources(loaded.weights if loaded is not None else None, vocab, export_dir, description)
