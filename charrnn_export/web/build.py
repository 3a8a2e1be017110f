"""`charrnn-export to-web`: write a static site that generates text in the browser.

    build_site(model=None | "fp32" | "int8" | PATH, out, ort_web=None) -> summary dict

The site (everything it needs is in the folder; any static file server works, see serve.py):
    index.html, style.css, app.js   the page
    charrnn.js                      the JavaScript API (load -> generate / stream), see its header
    worker.js, sampling.js, onnx-metadata.js   the Web Worker running the model and the sampling
                                    rule (sampling.py and rng.py ported bit for bit)
    site-config.js                  written here: file names, onnxruntime-web's location and
                                    integrity hashes, the tensor names from contract.py
    MODEL (model.onnx, model.int8.onnx, ...) and vocab.json
    ort/                            onnxruntime-web's two files, only with ort_web (offline)

onnxruntime-web is pinned (ORT_VERSION); the worker fetches its module and WebAssembly binary
with subresource-integrity hashes, from the CDN by default or from ort/ when ort_web names a
local copy (an npm install's node_modules/onnxruntime-web/dist), which must be byte-identical.

The folder's files are listed in SITE_MANIFEST, so building again replaces exactly what an
earlier build wrote; a non-empty folder that to-web did not write is refused. The site is
built in a hidden staging folder inside `out` and then moved into place by renames, so a build
that fails (a full disk) leaves `out` as it was. A link in `out` that leads out of it, where the
site writes or deletes, is refused (files.check_no_link_out): a rebuild never writes through it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from .. import contract
from ..errors import ConfigError, ModelError
from ..errors import WriteError
from ..files import (SITE_MANIFEST, FolderLock, Manifest, atomic_write_bytes, check_no_foreign,
                     check_no_link_out, inside, make_dirs, remove_dirs, staging_dir, write_error)

STATIC = Path(__file__).resolve().parent / "static"
STATIC_FILES = ("index.html", "style.css", "app.js", "charrnn.js", "worker.js", "sampling.js", "onnx-metadata.js")
SITE_CONFIG = "site-config.js"
VOCAB = "vocab.json"

ORT_VERSION = "1.30.0"
ORT_CDN = f"https://cdn.jsdelivr.net/npm/onnxruntime-web@{ORT_VERSION}/dist/"
ORT_DIR = "ort"
# The WebAssembly-only ES-module bundle and its binary; sha384 of the npm package's files.
ORT_FILES = {
    "module": ("ort.wasm.bundle.min.mjs", "sha384-PLWz+nHEVHpjwBsO0YVdvQj6n5814Iv8E3b8FG0Rp/uIAtjFMCKOpP66iPzedrIG"),
    "wasm": ("ort-wasm-simd-threaded.wasm", "sha384-vjBJ1z7qrhkTyYsNqKeF6c7N+nOJSU94czEo+tvZcu8G75JparGq9kB+kTnEUNVM"),
}


def sri_sha384(data: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode("ascii")


def resolve_model(model: str | None) -> tuple[Path, object]:
    """The .onnx file and its loaded runtime (which checks that it is a step model with a vocabulary)."""
    from ..generate import resolve_model_path
    from ..runtimes.onnx import OnnxRuntime

    path = contract.step_model_path(resolve_model_path(model, "onnx"))  # an export directory: its model.onnx
    if not path.is_file():
        raise ModelError(f"--model {model}: no such model file ({path}); give 'fp32', 'int8', an exported "
                         ".onnx file or an export directory")
    return path, OnnxRuntime(path)


def read_ort_web(folder: str) -> dict[str, bytes]:
    """onnxruntime-web's files from a local folder, checked against the pinned hashes."""
    files = {}
    for name, integrity in ORT_FILES.values():
        path = Path(folder) / name
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"--ort-web {folder}: cannot read {name} ({e.strerror or e}); pass onnxruntime-web "
                              f"{ORT_VERSION}'s dist folder, e.g. node_modules/onnxruntime-web/dist after "
                              f"`npm install onnxruntime-web@{ORT_VERSION}`") from None
        if sri_sha384(data) != integrity:
            raise ConfigError(f"--ort-web {folder}: {name} is not onnxruntime-web {ORT_VERSION}'s (its sha384 "
                              f"differs); install onnxruntime-web@{ORT_VERSION} and pass its dist folder")
        files[name] = data
    return files


def write_manifest(out: Path, files: set[str]) -> None:
    """SITE_MANIFEST: the files this site is made of (files.Manifest, as a run's or an export's)."""
    Manifest(out, "site", files, name=SITE_MANIFEST).save()


def check_out(out: Path) -> set[str]:
    """Refuse a file, or a folder holding anything to-web did not write; return what it wrote."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder (new, empty, or an earlier to-web site)")
    if not out.exists():
        return set()
    manifest = Manifest.read(out, SITE_MANIFEST)
    check_no_foreign(out, manifest, f"--out {out}", "to-web never overwrites them: choose a new or empty folder")
    return manifest.files if manifest is not None else set()


def site_config(model_name: str, local_ort: bool) -> str:
    base = f"{ORT_DIR}/" if local_ort else ORT_CDN
    config = {
        "model": model_name,
        "vocab": VOCAB,
        "ort": {"version": ORT_VERSION,
                "module": base + ORT_FILES["module"][0], "moduleIntegrity": ORT_FILES["module"][1],
                "wasm": base + ORT_FILES["wasm"][0], "wasmIntegrity": ORT_FILES["wasm"][1]},
        # The tensor and metadata names of contract.py, so the JavaScript never spells them itself.
        "contract": {"token": contract.TOKEN, "state": contract.STATE, "logits": contract.LOGITS,
                     "stateOut": contract.STATE_OUT, "metaVocab": contract.META_VOCAB,
                     "metaConfig": contract.META_CONFIG},
    }
    return ("// Written by `charrnn-export to-web`: where the model and onnxruntime-web are (URLs relative to\n"
            "// this file), the pinned integrity hashes, and the model contract's names.\n"
            f"export default {json.dumps(config, indent=2)};\n")


def build_site(model: str | None, out: str | os.PathLike, ort_web: str | None = None) -> dict:
    """Write the site into `out`; returns {out, model, files, ort}. Checks everything before writing."""
    model_path, runtime = resolve_model(model)
    ort_files = read_ort_web(ort_web) if ort_web is not None else {}
    out = Path(os.path.abspath(out))
    earlier = check_out(out)

    contents: dict[str, bytes] = {name: (STATIC / name).read_bytes() for name in STATIC_FILES}
    contents[SITE_CONFIG] = site_config(model_path.name, bool(ort_files)).encode("utf-8")
    contents[VOCAB] = (runtime.vocab.to_json() + "\n").encode("utf-8")
    contents[model_path.name] = model_path.read_bytes()
    for name, data in ort_files.items():
        contents[f"{ORT_DIR}/{name}"] = data
    if len(contents) != len(STATIC_FILES) + 3 + len(ort_files):
        raise ConfigError(f"--model {model_path}: its file name clashes with one of the site's files; rename it")
    check_links(out, earlier | set(contents))

    created = make_dirs(out)
    try:
        with FolderLock(out, f"--out {out}"):
            earlier = check_out(out)  # again, now that no other to-web can be writing here
            check_links(out, earlier | set(contents))
            with staging_dir(out) as staging:
                try:
                    for name, data in contents.items():
                        atomic_write_bytes(staging / name, data, staging)
                    move_site_into_place(staging, out, earlier, set(contents))
                except WriteError:
                    raise
                except OSError as e:
                    raise write_error(out, e) from None
    finally:
        remove_dirs(created)  # only while empty: a failed build into a new folder leaves no folder
    return {"out": str(out), "model": str(model_path), "files": sorted(contents),
            "ort": f"onnxruntime-web {ORT_VERSION} " + (f"from {ort_web} (copied)" if ort_files else "from the CDN")}


def check_links(out: Path, names) -> None:
    """Refuse a link in `out` leading out of it where the site writes or deletes."""
    for name in sorted(names):
        check_no_link_out(out / name, out)


def move_site_into_place(staging: Path, out: Path, earlier: set[str], names: set[str]) -> None:
    """Rename the staged files into `out` (a rename replaces a file, never writes into it), then
    remove what an earlier build wrote that this one does not. Write-ahead: the manifest names
    old and new files before anything moves, so a kill mid-way leaves nothing a later build
    would not recognise as its own."""
    write_manifest(out, earlier | names)
    for name in sorted(names):
        target = out / name
        make_dirs(target.parent, root=out)
        os.replace(staging / name, target)
    for name in sorted(earlier - names):  # an earlier build's model or ort/ files
        path = out / name
        if inside(path.parent, out) and (path.is_symlink() or path.is_file()):
            path.unlink()  # a link itself, never its target
    ort = out / ORT_DIR
    if not any(n.startswith(f"{ORT_DIR}/") for n in names) and ort.is_dir() and not ort.is_symlink() \
            and not any(ort.iterdir()):
        ort.rmdir()
    write_manifest(out, names)
