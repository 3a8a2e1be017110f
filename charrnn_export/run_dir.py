"""A run directory on disk: its files, its manifest, and the rules for starting, resuming or
starting over in it.

    RunDir(path)                               the paths of config.json, vocab.json, checkpoints/,
                                               best.npz, metrics.jsonl, and the manifest
    prepare_run_dir(run, stored, resume, force) -> whether training resumes from a checkpoint
    undo_failed_start(run)                     a run that fails before its first checkpoint leaves nothing

Only a folder that is empty, missing, or holds this project's run (its manifest says so) is
written; --force removes only what the manifest lists (files.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from .cells import Architecture
from .checkpoints import json_type
from .errors import CharRNNError, ConfigError
from .files import MANIFEST, Manifest, atomic_write_text, check_no_link_out, foreign_entries

class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.vocab = self.path / "vocab.json"
        self.checkpoints = self.path / "checkpoints"
        self.best = self.path / "best.npz"
        self.metrics = self.path / "metrics.jsonl"
        self.manifest: Manifest | None = None  # read by prepare_run_dir
        self.started = False  # this process began writing the run (see undo_failed_start)

    def checkpoint_path(self, epoch: int, step: int) -> Path:
        return self.checkpoints / f"ckpt-e{epoch:03d}-s{step:08d}.npz"

    def newest_checkpoint(self) -> Path | None:
        found = sorted(self.checkpoints.glob("ckpt-e*-s*.npz"), key=lambda p: int(p.stem.split("-s")[-1]))
        return found[-1] if found else None

    def read_metrics(self) -> list[dict]:
        if not self.metrics.exists():
            return []
        try:
            rows = [json.loads(line) for line in self.metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"{self.metrics} is corrupt ({e}); pass --force to start the run over") from None
        if not all(isinstance(r, dict) and isinstance(r.get("global_step"), int) for r in rows):
            raise ConfigError(f"{self.metrics} is corrupt (a line that is not train's metrics object); "
                              "pass --force to start the run over")
        return rows

    def write_metrics(self, rows: list[dict]) -> None:
        self.record(self.metrics)
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in rows), self.path)

    def record(self, *paths: Path) -> None:
        """Add files about to be written (and the folders they are in) to the run's manifest."""
        names = [p.relative_to(self.path).as_posix() for p in paths]
        dirs = tuple(d.as_posix() for n in names for d in Path(n).parents if d != Path("."))
        self.manifest.add(*names, dirs=dirs)

    def holds_run(self) -> bool:
        return self.config.exists()

    def check_links(self) -> None:
        """Refuse, before any work, a run whose files or checkpoints/ are links out of the folder:
        training (and --force) would write or delete there (files.check_no_link_out)."""
        for path in (self.config, self.vocab, self.checkpoints, self.best, self.metrics, self.path / MANIFEST):
            check_no_link_out(path, self.path)


def prepare_run_dir(run: RunDir, stored: dict, resume: bool, force: bool, resumable=()) -> bool:
    """Check RUN_DIR against the config; return True when training resumes from a checkpoint.

    Only a folder that is empty, missing, or holds this project's run (its manifest says so) is
    written; anything else is refused whatever the flags, since --force removes only what the
    manifest lists.
    """
    if run.path.exists() and not run.path.is_dir():
        raise ConfigError(f"--out {run.path} is a file; pass a directory")
    run.check_links()
    run.manifest = Manifest.read(run.path)
    if run.manifest is not None and run.manifest.kind != "run":
        raise ConfigError(f"--out {run.path} holds a charrnn-export {run.manifest.kind}, not a run; choose another --out")
    legacy = run.manifest is None and run.holds_run()  # written before manifests, or by another tool
    if resume and not run.holds_run():
        raise ConfigError(f"--resume: {run.path} holds no run (no config.json); drop --resume to start one")
    # A user's files beside our run are left alone; a folder without our manifest is written
    # only when empty (or to resume a run from before manifests, below).
    foreign = foreign_entries(run.path, run.manifest) if run.manifest is None else []
    if foreign and not (legacy and resume):
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ConfigError(
            f"--out {run.path} holds files charrnn-export did not write ({shown}); it never writes among "
            "them nor deletes them, even with --force: choose an empty or new directory")
    if not run.holds_run():
        return False
    if force:
        return False
    if run.newest_checkpoint() is None and not legacy:
        return False  # our run that never finished an epoch: nothing in it is worth keeping
    try:
        previous = json.loads(run.config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"{run.config} is corrupt; pass --force to start the run over") from None
    if not isinstance(previous, dict):
        raise ConfigError(f"{run.config} is corrupt (a JSON {json_type(previous)}, not an object); "
                          "pass --force to start the run over")
    previous = as_current_config(previous)
    differences = sorted(
        k for k in set(previous) | set(stored)
        if k not in resumable and k not in DERIVED and previous.get(k) != stored.get(k)
    )
    if differences:
        shown = ", ".join(f"{k}: {previous.get(k)!r} -> {stored.get(k)!r}" for k in differences[:4])
        raise ConfigError(
            f"{run.path} holds a run with a different config ({shown}{models_compared(previous, stored)}); "
            "pass --force to overwrite it or choose another --out"
        )
    if not resume:
        raise ConfigError(f"{run.path} already holds this run; pass --resume to continue it or --force to start over")
    if legacy:
        run.manifest = adopt_legacy_run(run)
    return run.newest_checkpoint() is not None


# config.json fields computed from the others (compared through them: their differences say more).
DERIVED = ("architecture", "state_size")
# A config.json from before architectures trained one GRU and said so with rnn_type.
OLD_RUN_FIELDS = {"cell": "gru", "layers": 1}


def as_current_config(config: dict) -> dict:
    """A run's config.json in today's fields: one written before --cell and --layers is gru x1."""
    if "cell" in config or "layers" in config:
        return config
    old = {k: v for k, v in config.items() if k != "rnn_type"}
    return {**OLD_RUN_FIELDS, **old}


def models_compared(previous: dict, stored: dict) -> str:
    """"; the run's model is gru(32) x1, this one lstm(32) x1" when the architectures differ, else ""."""
    try:
        before = Architecture.from_config(previous, "config.json").describe()
        after = Architecture.from_config(stored, "config").describe()
    except CharRNNError:  # a hand-edited config.json: the field-by-field list above says enough
        return ""
    return f"; the run's model is {before}, this one {after}" if before != after else ""


def adopt_legacy_run(run: RunDir) -> Manifest:
    """A run written before manifests, resumed with the config it was made with (so it is ours):
    record its files under the names `train` gives them, so a later --force can remove them."""
    manifest = Manifest(run.path, "run")
    names = [p for p in (run.config, run.vocab, run.best, run.metrics) if p.is_file()]
    names += sorted(run.checkpoints.glob("ckpt-e*-s*.npz"))
    run.manifest = manifest
    run.record(*names)
    manifest.save()
    return manifest


def remove_partial_writes(run: RunDir) -> None:
    """Delete the temporary files of atomic writes that a kill cut short (see files.atomic_write_bytes)."""
    names = [f".{f.name}.*.tmp" for f in (run.config, run.vocab, run.best, run.metrics)]
    for stale in [*(p for n in names for p in run.path.glob(n)), *run.checkpoints.glob(".ckpt-e*-s*.npz.*.tmp")]:
        stale.unlink(missing_ok=True)


def start_over(run: RunDir) -> None:
    """Remove every file an earlier run recorded (never anything else), then begin a new manifest."""
    if run.manifest is not None:
        run.manifest.remove_all()
    run.manifest = Manifest.create(run.path, "run")


def undo_failed_start(run: RunDir) -> None:
    """A run that stops before its first checkpoint (bad data for the model, a full disk, Ctrl-C)
    leaves nothing: its config.json and vocab.json alone would only block the next try."""
    if run.started and run.manifest is not None and run.newest_checkpoint() is None:
        run.manifest.remove_all()
