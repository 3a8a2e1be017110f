"""`to-tflite`: an export's single-step model as LiteRT (TFLite) files, parity-checked, written atomically.

    to_tflite(model, out, precisions=("fp32", "int8"), force=False, atol, seed) -> report dict

Read top to bottom, to_tflite_locked is the recipe: find_source (the export's saved_model/, or
one rebuilt from its model.onnx, as the shipped artifacts/ hold no SavedModel) -> staging
folder -> write_models (litert_step.py converts; the vocabulary and config go into each file's
metadata, and vocab.json beside them for apps that bundle it as an asset) -> check_models ->
litert_report.json -> move_into_place.

The contract is the export's (contract.py): signature `serving_default`, token int32 [batch],
state float32 [batch, S] -> logits float32 [batch, vocab], state_out float32 [batch, S]. S is
read from the source's signature, never assumed.

Parity, on the files as written, through the LiteRT interpreter (runtimes/litert.py), against
the export's fp32 step (onnxruntime on model.onnx, else the SavedModel): every PARITY_CASES
sequence stepped through from a zero state, a batch of random tokens with random states, and a
greedy run of GREEDY_CHARS characters (LiteRT fed the reference's characters). fp32: logits and
state within `atol`, else ParityError listing every failure, and nothing is written. int8
(dynamic-range: int8 weights, float in and out): parity.py's figures for model.int8.onnx
(the max logit difference on the same random sequences), and the gate: top-1 agreement with
fp32 at least contract.INT8_MIN_TOP1_AGREEMENT; the export's own model.int8.onnx, when there
is one, is measured on the same positions beside it.

--out is new, empty, or an earlier to-tflite folder (its `.charrnn-export-litert.json` lists
what it wrote; --force replaces exactly those files). Anything else in it is refused; a link
there that leads out of it is refused (files.check_no_link_out). The files are made in a hidden
staging folder inside --out and moved into place by renames once every check has passed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import contract
from .errors import ConfigError, ModelError, ParityError, WriteError
from .files import (STAGING_PREFIX, FolderLock, atomic_write_text, check_no_link_out, check_relative,
                    check_writable_dir, inside, is_partial_write, make_dirs, remove_dirs, staging_dir, write_error)
from .litert_step import LITERT_FILES, PRECISIONS, saved_model_from_onnx, write_litert_model
from .parity import PARITY_CASES, max_diff, step_through  # the export's own measures, reused

VOCAB = "vocab.json"
REPORT = "litert_report.json"
MANIFEST = ".charrnn-export-litert.json"  # what to-tflite wrote here (apart from run/export manifests)
LOCK = ".charrnn-export.lock"  # files.FolderLock's, held while writing
RANDOM_ROWS = 256  # random (token, state) pairs stepped once
GREEDY_CHARS = 200


@dataclass
class Source:
    """Where the LiteRT files are converted from: a SavedModel, a flat fp32 model.onnx, or both."""

    name: str  # as the user gave it, for messages
    saved_model: Path | None
    onnx: Path | None
    int8_onnx: Path | None


# ---------------------------------------------------------------- to_tflite


def to_tflite(model: str | None, out, precisions=PRECISIONS, force: bool = False, atol: float = contract.DEFAULT_ATOL,
              seed: int = 0) -> dict:
    """Convert the export `model` (a folder, its model.onnx or saved_model/, or None/'fp32'/'int8':
    the shipped model) into `out`; raises ParityError (and writes nothing) above `atol`."""
    precisions = check_precisions(precisions)
    if not (isinstance(atol, float | int) and atol > 0 and np.isfinite(atol)):
        raise ConfigError(f"--atol must be a positive finite number, got {atol}")
    source = find_source(model)
    out = Path(os.path.abspath(out))
    names = {LITERT_FILES[p] for p in precisions} | {VOCAB, REPORT}
    earlier = check_out(out, force)
    check_links(out, earlier | names)

    created = make_dirs(out)
    try:
        with FolderLock(out, f"--out {out}"):
            earlier = check_out(out, force)  # again, now that no other to-tflite can be writing here
            check_links(out, earlier | names)
            return to_tflite_locked(source, out, earlier, precisions, atol, seed)
    finally:
        remove_dirs(created)  # only while empty: a failed conversion into a new folder leaves no folder


def to_tflite_locked(source: Source, out: Path, earlier: set[str], precisions, atol: float, seed: int) -> dict:
    started = time.perf_counter()
    reference = reference_runtime(source)
    with staging_dir(out) as staging:
        try:
            saved_model = source.saved_model or rebuilt_saved_model(source, staging / "source_saved_model")
            files = write_models(saved_model, reference, staging, precisions)
            report = {"source": source.name, "converted_from": "saved_model" if source.saved_model else "model.onnx",
                      "reference": reference.name, "state_size": reference.rnn_units,
                      "vocab_size": reference.vocab_size, "config": reference.config, "atol": atol, "seed": seed,
                      **check_models(staging, files, reference, source, atol, seed),
                      "versions": library_versions()}
            report["seconds"] = round(time.perf_counter() - started, 2)
            atomic_write_text(staging / REPORT, json.dumps(report, indent=2, ensure_ascii=False) + "\n", staging)
            move_into_place(staging, out, earlier, set(files.values()) | {VOCAB, REPORT})
        except WriteError:
            raise  # already one line naming the file
        except OSError as e:
            raise write_error(out, e) from None
    report["out"] = str(out)
    return report


def check_precisions(precisions) -> tuple[str, ...]:
    if isinstance(precisions, str):
        precisions = (precisions,)
    precisions = tuple(dict.fromkeys(precisions or ()))  # in order, once each
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise ConfigError(f"--precision takes {' and/or '.join(PRECISIONS)}, got {' '.join(map(str, unknown)) or 'none'}")
    return precisions


# ---------------------------------------------------------------- the source


def find_source(model: str | None) -> Source:
    """The export `model` names: its SavedModel and/or fp32 model.onnx (and model.int8.onnx)."""
    from .generate import SHIPPED, shipped_model_path

    name = "the shipped model" if model is None or model in SHIPPED else str(model)
    path = shipped_model_path("fp32").parent if model is None or model in SHIPPED else Path(model)
    if path.is_file() and path.suffix == ".onnx":
        int8 = path.with_name("model.int8.onnx") if path.name == "model.onnx" else None
        return Source(name, None, path, int8 if int8 and int8.is_file() else None)
    if (path / "saved_model.pb").is_file():  # the export's saved_model/ itself
        return Source(name, path, None, None)
    if not path.is_dir():
        raise ModelError(f"--model {model}: no such export ({path}); give an export directory from `to-onnx`, its "
                         "model.onnx or saved_model/, or 'fp32'/'int8' for the shipped model")
    saved_model = path / "saved_model"
    onnx, int8 = path / "model.onnx", path / "model.int8.onnx"
    source = Source(name, saved_model if (saved_model / "saved_model.pb").is_file() else None,
                    onnx if onnx.is_file() else None, int8 if int8.is_file() else None)
    if source.saved_model is None and source.onnx is None:
        raise ModelError(f"--model {model}: {path} holds neither saved_model/ nor model.onnx; give an export "
                         "directory written by `charrnn-export to-onnx`")
    return source


def reference_runtime(source: Source):
    """The export's fp32 step that the LiteRT files must agree with: onnxruntime on model.onnx
    (what `sample` runs by default), else TensorFlow on the SavedModel."""
    if source.onnx is not None:
        from .runtimes.onnx import OnnxRuntime

        return OnnxRuntime(source.onnx)
    from .runtimes.savedmodel import SavedModelRuntime

    return SavedModelRuntime(source.saved_model)


def rebuilt_saved_model(source: Source, out_dir: Path) -> Path:
    try:
        return saved_model_from_onnx(source.onnx, out_dir)
    except ModelError as e:
        raise ModelError(f"--model {source.name} has no saved_model/ and its {source.onnx.name} cannot be rebuilt "
                         f"into one ({e}); pass an export directory that holds saved_model/ (`to-onnx` writes it)"
                         ) from None


# ---------------------------------------------------------------- conversion and checks


def write_models(saved_model: Path, reference, staging: Path, precisions) -> dict[str, str]:
    """model.tflite / model.int8.tflite (carrying the vocabulary and config) and vocab.json in
    `staging`; {precision: file name}."""
    metadata = {contract.META_VOCAB: reference.vocab.to_json(), contract.META_CONFIG: json.dumps(reference.config),
                contract.META_PRODUCER: f"charrnn-export {contract.VERSION}"}
    files = {}
    for precision in precisions:
        files[precision] = LITERT_FILES[precision]
        write_litert_model(saved_model, staging / files[precision], precision, metadata, root=staging)
    reference.vocab.save(staging / VOCAB, staging)
    return files


def check_models(staging: Path, files: dict[str, str], reference, source: Source, atol: float, seed: int) -> dict:
    """The written files through the LiteRT interpreter against `reference`: the report's `fp32`
    and `int8` entries. Raises ParityError listing every failure."""
    from .runtimes.litert import LiteRTRuntime

    cases = parity_inputs(reference, seed)
    expected = run_cases(reference, cases)
    figures, failures = {}, []
    for precision, file in files.items():
        litert = LiteRTRuntime(staging / file)
        if litert.vocab.chars != reference.vocab.chars or litert.rnn_units != reference.rnn_units:
            failures.append(f"{file} reads back another vocabulary or state width")
            continue
        got = run_cases(litert, cases)
        entry = {"file": file, "bytes": (staging / file).stat().st_size, **compare(expected, got)}
        if precision == "fp32":
            for quantity in ("logits", "state"):
                if not entry[f"max_{quantity}_diff"] <= atol:  # `not <=` also catches NaN
                    failures.append(f"{file} {quantity} max abs diff {entry[f'max_{quantity}_diff']:.3g} > atol {atol:g}")
        else:
            if not entry["top1_agreement"] >= contract.INT8_MIN_TOP1_AGREEMENT:
                failures.append(f"{file} top-1 agreement with fp32 {entry['top1_agreement']:.2%} < "
                                f"{contract.INT8_MIN_TOP1_AGREEMENT:.0%}")
            if not np.isfinite(entry["max_logits_diff"]):
                failures.append(f"{file} gives non-finite logits")
            if source.int8_onnx is not None:
                entry["model.int8.onnx"] = int8_onnx_figures(source.int8_onnx, cases, expected)
        figures[precision] = entry
    if failures:
        raise ParityError(f"LiteRT parity failed, nothing written: {'; '.join(failures)} (the LiteRT interpreter vs "
                          f"{reference.name} on random sequences, random states and a {GREEDY_CHARS}-character "
                          "greedy run; see --atol)")
    figures["cases"] = {"sequences": [list(c) for c in PARITY_CASES], "random_rows": RANDOM_ROWS,
                        "greedy_chars": GREEDY_CHARS}
    return figures


def parity_inputs(reference, seed: int) -> dict:
    """The inputs every runtime is stepped through: random sequences, random (token, state) rows,
    and the reference's own greedy characters."""
    rng = np.random.default_rng(seed)
    sequences = [rng.integers(0, reference.vocab_size, size=(batch, length), dtype=np.int32)
                 for batch, length in PARITY_CASES]
    tokens = rng.integers(0, reference.vocab_size, size=RANDOM_ROWS, dtype=np.int32)
    states = rng.uniform(-1, 1, size=(RANDOM_ROWS, reference.rnn_units)).astype(np.float32)
    return {"sequences": sequences, "random": (tokens, states), "greedy": greedy_ids(reference)}


def greedy_ids(runtime) -> np.ndarray:
    """GREEDY_CHARS characters the runtime picks greedily, from the first real character of its vocabulary."""
    unk = runtime.config.get("unk_id")
    token = 1 if unk == 0 and runtime.vocab_size > 1 else 0
    ids, state = [token], runtime.zero_state(1)
    for _ in range(GREEDY_CHARS):
        logits, state = runtime.step(np.array([ids[-1]], np.int32), state)
        ids.append(int(np.argmax(logits[0])))
    return np.array(ids, np.int32)[None, :]  # (1, GREEDY_CHARS + 1): the start and the picks


def run_cases(runtime, cases: dict) -> dict:
    """Logits and states of `runtime` on every input of `cases` (greedy: fed the reference's ids)."""
    results = {f"sequence {i}": step_through(runtime, tokens) for i, tokens in enumerate(cases["sequences"])}
    results["random"] = runtime.step(*cases["random"])
    results["greedy"] = step_through(runtime, cases["greedy"][:, :-1])
    return results


def compare(expected: dict, got: dict) -> dict:
    """Max abs differences of logits and state over every case, and how often the top-1 choices agree."""
    logits_diff = max(max_diff(expected[k][0], got[k][0]) for k in expected)
    state_diff = max(max_diff(expected[k][1], got[k][1]) for k in expected)
    agree = total = 0
    for key in expected:
        picked, wanted = np.argmax(got[key][0], axis=-1), np.argmax(expected[key][0], axis=-1)
        agree, total = agree + int(np.sum(picked == wanted)), total + picked.size
    greedy = np.argmax(got["greedy"][0][0], axis=-1) == np.argmax(expected["greedy"][0][0], axis=-1)
    return {"max_logits_diff": logits_diff, "max_state_diff": state_diff, "top1_agreement": agree / total,
            "max_logits_diff_sequences": max(max_diff(expected[k][0], got[k][0]) for k in expected
                                             if k.startswith("sequence")),
            "greedy_agreement": int(np.sum(greedy)), "greedy_first_difference": first_false(greedy)}


def first_false(flags: np.ndarray) -> int | None:
    misses = np.flatnonzero(~flags)
    return int(misses[0]) if len(misses) else None


def int8_onnx_figures(path: Path, cases: dict, expected: dict) -> dict:
    """The export's own int8 model on the same positions, for comparison (not gated here)."""
    from .runtimes.onnx import OnnxRuntime

    figures = compare(expected, run_cases(OnnxRuntime(path), cases))
    return {k: figures[k] for k in ("max_logits_diff", "max_logits_diff_sequences", "top1_agreement",
                                    "greedy_agreement")}


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("tensorflow", "ai-edge-litert", "onnxruntime"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


# ---------------------------------------------------------------- --out


def read_manifest(out: Path) -> set[str] | None:
    """The files an earlier to-tflite wrote in `out`; None when it wrote none there."""
    path = out / MANIFEST
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("tool") != "charrnn-export" or record.get("kind") != "litert":
            raise ValueError("not a to-tflite manifest")
        return {check_relative(str(name)) for name in record["files"]}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise ConfigError(f"{path} is damaged ({e}); what to-tflite wrote in {out} is unknown, so nothing there "
                          "will be replaced: choose another --out") from None


def write_manifest(out: Path, files: set[str]) -> None:
    record = {"tool": "charrnn-export", "kind": "litert", "files": sorted(files)}
    atomic_write_text(out / MANIFEST, json.dumps(record, indent=1) + "\n", out)


def check_out(out: Path, force: bool) -> set[str]:
    """Refuse a file, a folder holding anything to-tflite did not write, or an earlier to-tflite
    folder without --force; return what the earlier one wrote. Creates nothing."""
    check_writable_dir(out, f"--out {out}")
    if not out.exists():
        return set()
    earlier = read_manifest(out)
    tops = {Path(name).parts[0] for name in earlier or ()} | {MANIFEST, LOCK}
    foreign = sorted(p.name for p in out.iterdir() if p.name not in tops and not is_partial_write(p.name)
                     and not p.name.startswith(STAGING_PREFIX))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ConfigError(f"--out {out} holds files that to-tflite did not write ({shown}); it never writes among "
                          "them nor deletes them, even with --force: choose a new or empty folder")
    if earlier and not force:
        raise ConfigError(f"--out {out} holds an earlier to-tflite conversion; pass --force to replace it or choose "
                          "another folder")
    return earlier or set()


def check_links(out: Path, names) -> None:
    """Refuse a link in `out` leading out of it where to-tflite writes or deletes."""
    for name in sorted(names):
        check_no_link_out(out / name, out)


def move_into_place(staging: Path, out: Path, earlier: set[str], names: set[str]) -> None:
    """Rename the staged files into `out`, then remove what an earlier conversion wrote that this
    one does not (model.int8.tflite after --precision fp32). Write-ahead: the manifest names old
    and new files before anything moves, so a kill mid-way leaves nothing a later --force would
    not recognise as its own."""
    check_links(out, earlier | names)  # before anything moves or is deleted
    write_manifest(out, earlier | names)
    for name in sorted(names):
        os.replace(staging / name, out / name)
    for name in sorted(earlier - names):
        path = out / name
        if inside(path.parent, out) and (path.is_symlink() or path.is_file()):
            path.unlink()  # a link itself, never its target
    write_manifest(out, names)
