"""Property-based tests: random argument combinations and random bytes as model and text files
at `sample`, `to-onnx`, `train` (tiny sizes), `to-web` and the Python API; an earlier output
whose entries are symbolic links out of the folder; model metadata and run files holding JSON of
the wrong type (or vocabularies with surrogates and repeats).

Every run must end with exit status 0 or 2 (2 with an error line), never a traceback (an
exception escaping `main`), and must change no file outside its output folder, nor a user's
file inside it. The commands run in this process through `cli.main`, so TensorFlow is imported
once rather than per example.

CI runs a few examples per command (a minute or two on 2 cores); a nightly-style run sets
CHARRNN_EXPORT_FUZZ_EXAMPLES (e.g. 500) to run that many of each.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from charrnn_export.errors import CharRNNError  # noqa: E402

SCALE = int(os.environ.get("CHARRNN_EXPORT_FUZZ_EXAMPLES", "0"))


def examples(ci: int) -> settings:
    """`ci` examples normally; CHARRNN_EXPORT_FUZZ_EXAMPLES of them for a nightly-style run."""
    return settings(max_examples=SCALE or ci, deadline=None, derandomize=not SCALE, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def snapshot(root: Path, skip: Path | None = None) -> dict:
    found = {}
    for path in sorted(root.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        found[path.relative_to(root).as_posix()] = path.read_bytes() if path.is_file() else None
    return found


def run_main(argv: list[str]) -> tuple[int, str]:
    """`charrnn-export ARGV` in this process: (exit status, stderr). An exception other than
    SystemExit escapes: that is the traceback a user would see, and fails the test."""
    from charrnn_export.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = main(argv)
        except SystemExit as e:  # argparse: bad flag values, --help
            status = e.code if isinstance(e.code, int) else 2
    return status, stderr.getvalue()


class Sandbox:
    """One example's world: inputs/, out/ (the output folder, maybe holding a user's note) and
    outside/ with a file nothing may touch."""

    def __init__(self, root: Path):
        shutil.rmtree(root, ignore_errors=True)
        self.root = root
        self.inputs = root / "inputs"
        self.out = root / "out"
        (root / "outside").mkdir(parents=True)
        (root / "outside" / "precious.txt").write_text("never touched")
        self.inputs.mkdir()

    def file(self, name: str, data: bytes) -> str:
        path = self.inputs / name
        path.write_bytes(data)
        return str(path)

    def output(self, kind: str, name: str = "") -> str:
        """--out: missing, an empty folder, a folder with a user's note, a file, or below a file."""
        if kind in ("empty", "user-note"):
            self.out.mkdir()
        if kind == "user-note":
            (self.out / "note.txt").write_text("the user's")
        if kind == "a-file":
            self.out.write_text("a user's file")
            return str(self.out)
        if kind == "below-a-file":
            self.out.write_text("a user's file")
            return str(self.out / "x")
        return str(self.out / name) if name else str(self.out)

    def linked_copy(self, earlier: Path, pick: int, to_folder: bool) -> str:
        """--out: a copy of an earlier output of ours (a run, an export, a site) where one entry,
        chosen by `pick`, is a symbolic link to outside/ (or to the precious file in it)."""
        shutil.copytree(earlier, self.out, symlinks=True)
        # Half the time a top-level entry (checkpoints/, model.onnx, ort/), else any one.
        found = self.out.iterdir() if pick % 2 else self.out.rglob("*")
        entries = sorted(p for p in found if not p.name.startswith(".charrnn-export"))
        victim = entries[pick % len(entries)]
        if victim.is_dir() and not victim.is_symlink():
            shutil.rmtree(victim)
        else:
            victim.unlink()
        victim.symlink_to(self.root / "outside" if to_folder else self.root / "outside" / "precious.txt")
        return str(self.out)

    def check(self, before: dict, status: int, stderr: str) -> None:
        assert status in (0, 2), (status, stderr)
        if status == 2:
            assert "error:" in stderr.strip().splitlines()[-1], stderr
        assert "Traceback" not in stderr
        assert snapshot(self.root, skip=self.out) == before, "a file outside the output folder changed"
        note = self.out / "note.txt"
        if self.out.is_dir() and before.get("__note__"):
            assert note.read_text() == "the user's"
        if self.out.is_file() or (self.out.exists() and not self.out.is_dir()):
            assert self.out.read_text() == "a user's file"


OUTPUTS = st.sampled_from(["missing", "empty", "missing", "user-note", "a-file", "below-a-file"])
# An earlier output of ours with one entry (pick) a link out of it, to a folder or to a file.
LINKED = st.tuples(st.integers(0, 10_000), st.booleans())
# Any JSON value, with the near misses that matter (numbers of every size, surrogates, repeats).
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=4)
    | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


def json_text(value) -> str:
    import json

    return json.dumps(value)  # \udXXX escapes for surrogates, NaN and Infinity for floats: Python reads both


def wrong_run_file(run: Path, name: str, value) -> None:
    """Put `value` (JSON) where train wrote `name`: config.json, vocab.json, metrics.jsonl, or the
    meta (or one of its parts) inside best.npz."""
    import json

    import numpy as np

    if name.startswith("best.npz"):
        with np.load(run / "best.npz") as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(str(arrays["meta"]))
        part = name.partition(":")[2]
        arrays["meta"] = np.array(json_text({**meta, part: value} if part else value))
        with open(run / "best.npz", "wb") as f:
            np.savez(f, **arrays)
    else:
        (run / name).write_text(json_text(value) + "\n", encoding="utf-8")


RUN_FILES = st.sampled_from(["config.json", "vocab.json", "metrics.jsonl", "best.npz", "best.npz:metrics",
                             "best.npz:config", "best.npz:position"])
NUMBERS = st.one_of(st.integers(1, 40), st.integers(-3, 70), st.sampled_from(["-1", "0", "1e3", "nan", "x", "", "2.5"]))
SEEDS = st.one_of(st.integers(0, 2**32 - 1), st.integers(-2, 2**33), st.sampled_from(["abc", "-0", "4294967295"]))
FLOATS = st.one_of(st.floats(0.01, 1.0), st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.sampled_from(["nan", "-inf", "0", "1", "abc"]))


def maybe(flag: str, values) -> st.SearchStrategy:
    """[] or [flag, value]: each option absent (twice as likely: most runs should get far) or present.
    `--flag=value`, so that a negative number is a value, not an unknown flag."""
    return st.one_of(st.just([]), st.just([]), values.map(lambda v: [f"{flag}={v}"]))


def switch(flag: str) -> st.SearchStrategy:
    return st.sampled_from([[], [flag]])


@pytest.fixture(scope="module")
def sandbox_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def fixtures_before(tiny_run, tiny_export, tiny_text):
    """The shared tiny run, export and text: the examples read them and must never change them."""
    paths = (tiny_run, tiny_export, tiny_text.parent)
    before = [snapshot(p) for p in paths]
    yield
    assert [snapshot(p) for p in paths] == before


# ---------------------------------------------------------------- sample


@examples(ci=60)
@given(model=st.sampled_from(["tiny", "random-bytes", "missing", "folder", "int8", "wrong-config", "wrong-vocab",
                              "free-state"]),
       model_bytes=st.binary(max_size=600), metadata=JSON, runtime=st.sampled_from(["onnx", "onnx", "onnx", "onnx", "savedmodel", "bogus"]),
       start=st.one_of(st.just("ROMEO: "), st.text(max_size=12)), options=st.tuples(
           maybe("--length", NUMBERS), maybe("--temperature", FLOATS), maybe("--top-k", NUMBERS),
           maybe("--top-p", FLOATS), maybe("--seed", SEEDS), maybe("--num-samples", st.integers(-1, 3)),
           maybe("--threads", st.sampled_from([-1, 0, 1, 2, 64, 100000])),
           maybe("--unknown", st.sampled_from(["error", "skip", "x"])), switch("--greedy"), switch("--stream"),
           switch("--json"), switch("-q")),
       out=st.one_of(st.none(), OUTPUTS))
def test_sample_never_tracebacks(sandbox_root, fixtures_before, tiny_export, model, model_bytes, metadata, runtime,
                                 start, options, out):
    box = Sandbox(sandbox_root / "sample")
    if model in ("wrong-config", "wrong-vocab", "free-state"):
        path = box.file("model.onnx", b"")
        edited_model(tiny_export / "model.onnx", Path(path), model, metadata)
    else:
        path = {"tiny": str(tiny_export / "model.onnx"), "random-bytes": box.file("model.onnx", model_bytes),
                "missing": str(box.inputs / "none.onnx"), "folder": str(box.inputs), "int8": "int8"}[model]
    if runtime == "savedmodel" and model == "tiny":
        path = str(tiny_export)
    argv = ["sample", "--runtime", runtime, "--model", path, "--start", start]
    if out is not None:
        argv += ["--out", box.output(out, "text.txt")]
    for option in options:
        argv += option
    if "--length" not in argv:
        argv += ["--length", "20"]  # the default 1000 is slow for no gain here
    before = snapshot(box.root, skip=box.out)
    status, stderr = run_main(argv)
    box.check(before, status, stderr)


def edited_model(source: Path, target: Path, kind: str, value) -> None:
    """The tiny model with `value` (JSON) as its config or vocabulary metadata, or its state's width
    left free and `value` as the config's rnn_units."""
    import onnx

    from charrnn_export import contract

    model = onnx.load(str(source))
    key = contract.META_VOCAB if kind == "wrong-vocab" else contract.META_CONFIG
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = json_text({"rnn_units": value} if kind == "free-state" else value)
    if kind == "free-state":
        for info in (*model.graph.input, *model.graph.output):
            if info.name in (contract.STATE, contract.STATE_OUT):
                info.type.tensor_type.shape.dim[1].dim_param = "units"
    onnx.save(model, str(target))


# ---------------------------------------------------------------- to-onnx


@examples(ci=15)
@given(checkpoint=st.sampled_from(["tiny-run", "random-npz", "random-h5", "random-index", "run-of-random-files",
                                   "run-with-a-wrong-file", "run-with-a-wrong-file"]),
       data=st.binary(max_size=600), wrong=st.tuples(RUN_FILES, JSON), text=st.sampled_from([None, "tiny", "random"]),
       vocab=st.sampled_from([None, "random", "run"]), options=st.tuples(
           maybe("--opset", st.integers(10, 20)), maybe("--atol", FLOATS), maybe("--seed", SEEDS),
           maybe("--quantize", st.just("int8")), switch("--force")),
       out=st.one_of(OUTPUTS, LINKED))
def test_to_onnx_never_tracebacks(sandbox_root, fixtures_before, tiny_run, tiny_export, tiny_text, checkpoint, data,
                                  wrong, text, vocab, options, out):
    box = Sandbox(sandbox_root / "to-onnx")
    if checkpoint == "tiny-run":
        path = str(tiny_run)
    elif checkpoint == "run-with-a-wrong-file":
        path = str(shutil.copytree(tiny_run, box.inputs / "run"))
        wrong_run_file(Path(path), *wrong)
    elif checkpoint == "run-of-random-files":
        for name in ("config.json", "vocab.json", "best.npz"):
            box.file(name, data)
        path = str(box.inputs)
    else:
        suffix = {"random-npz": "w.npz", "random-h5": "w.weights.h5", "random-index": "ckpt_1.index"}[checkpoint]
        path = box.file(suffix, data)
        if checkpoint == "random-index":
            path = path[: -len(".index")]
    argv = ["to-onnx", "--checkpoint", path, "--out",
            box.linked_copy(tiny_export, *out) if isinstance(out, tuple) else box.output(out)]
    if text is not None:
        argv += ["--text", str(tiny_text) if text == "tiny" else box.file("text.txt", data)]
    if vocab is not None:
        argv += ["--vocab", str(tiny_run / "vocab.json") if vocab == "run" else box.file("vocab.json", data[::-1])]
    for option in options:
        argv += option
    before = snapshot(box.root, skip=box.out)
    status, stderr = run_main(argv)
    box.check(before, status, stderr)


# ---------------------------------------------------------------- train


# --rnn-units: one number for every layer, or a comma list per layer; and what a user mistypes.
UNITS = st.one_of(st.integers(1, 4).map(str), st.integers(-1, 0).map(str),
                  st.lists(st.one_of(st.integers(1, 4), st.integers(-1, 0)), min_size=1, max_size=3).map(
                      lambda units: ",".join(map(str, units))),
                  st.sampled_from(["4,", ",4", "4,,4", "4,x", " 4, 4", "4;4", "1e1", "", "2,2,2,2,2,2,2,2,2"]))
CELLS = st.sampled_from(["gru", "lstm", "rnn", "GRU", "transformer", ""])


@examples(ci=20)
@given(data=st.one_of(st.just(None), st.binary(max_size=3000)), sizes=st.tuples(
           *(st.one_of(st.integers(1, 4), st.integers(1, 4), st.integers(-1, 0)) for _ in range(3))),
       architecture=st.tuples(UNITS, maybe("--cell", CELLS), maybe("--layers", NUMBERS)),
       options=st.tuples(
           maybe("--val-fraction", FLOATS), maybe("--seed", SEEDS), maybe("--dropout", FLOATS),
           maybe("--learning-rate", FLOATS), maybe("--clip-norm", FLOATS),
           maybe("--lr-schedule", st.sampled_from(["cosine", "constant", "step"])), switch("--resume"),
           switch("--force")),
       out=st.one_of(OUTPUTS, LINKED, st.tuples(RUN_FILES, JSON)))
def test_train_never_tracebacks(sandbox_root, fixtures_before, tiny_run, tiny_text, data, sizes, architecture,
                                options, out):
    """Any sizes, any architecture flags (--cell, --layers, --rnn-units N or N,N,...), any data and
    run folder (--resume of the tiny run with another architecture among them): one line or success."""
    box = Sandbox(sandbox_root / "train")
    text = str(tiny_text) if data is None else box.file("text.txt", data)
    embedding_dim, seq_length, batch_size = sizes
    units, cell, layers = architecture
    if isinstance(out, tuple) and isinstance(out[0], int):
        out_dir = box.linked_copy(tiny_run, *out)
    elif isinstance(out, tuple):  # the tiny run, to resume, with one of its files of the wrong JSON type
        out_dir = str(shutil.copytree(tiny_run, box.out))
        wrong_run_file(box.out, *out)
    else:
        out_dir = box.output(out, "run")
    argv = ["train", "--data", text, "--out", out_dir, "--embedding-dim", str(embedding_dim),
            f"--rnn-units={units}", *cell, *layers, "--seq-length", str(seq_length), "--batch-size", str(batch_size),
            "--epochs", "1", "--max-steps", "2"]
    for option in options:
        argv += option
    before = snapshot(box.root, skip=box.out)
    status, stderr = run_main(argv)
    box.check(before, status, stderr)


@examples(ci=8)
@given(out=LINKED, flags=st.sampled_from([["--force"], ["--resume"], ["--resume", "--force"], []]))
def test_train_never_writes_through_a_link_out_of_its_run(sandbox_root, fixtures_before, tiny_run, tiny_text, out,
                                                          flags):
    """The run's own config (so --force and --resume get past every other check) in a copy of the
    run where one entry is a link out of it."""
    import json

    box = Sandbox(sandbox_root / "train-links")
    out_dir = box.linked_copy(tiny_run, *out)
    config = json.loads((tiny_run / "config.json").read_text(encoding="utf-8"))
    argv = ["train", "--data", str(tiny_text), "--out", out_dir, "--max-steps", str(config.get("max_steps") or 2),
            *(f"--{k.replace('_', '-')}={config[k]}" for k in ("embedding_dim", "rnn_units", "seq_length",
                                                              "batch_size", "learning_rate", "epochs", "seed")),
            *flags]
    before = snapshot(box.root, skip=box.out)
    status, stderr = run_main(argv)
    box.check(before, status, stderr)


# ---------------------------------------------------------------- to-web


@pytest.fixture(scope="module")
def earlier_site(tmp_path_factory, tiny_export) -> Path:
    from charrnn_export.web.build import build_site

    site = tmp_path_factory.mktemp("site") / "site"
    build_site(str(tiny_export), site)
    return site


@examples(ci=15)
@given(model=st.sampled_from(["tiny", "random-bytes", "missing", "wrong-config", "wrong-vocab", "free-state"]),
       model_bytes=st.binary(max_size=300), metadata=JSON,
       ort_web=st.sampled_from([None, None, "inputs", "missing"]), port=maybe("--port", NUMBERS),
       out=st.one_of(OUTPUTS, LINKED, LINKED))
def test_to_web_never_tracebacks(sandbox_root, fixtures_before, tiny_export, earlier_site, model, model_bytes,
                                 metadata, ort_web, port, out):
    box = Sandbox(sandbox_root / "to-web")
    if model in ("wrong-config", "wrong-vocab", "free-state"):
        path = box.file("model.onnx", b"")
        edited_model(tiny_export / "model.onnx", Path(path), model, metadata)
    else:
        path = {"tiny": str(tiny_export), "random-bytes": box.file("model.onnx", model_bytes),
                "missing": str(box.inputs / "none.onnx")}[model]
    out_dir = box.linked_copy(earlier_site, *out) if isinstance(out, tuple) else box.output(out)
    argv = ["to-web", "--model", path, "--out", out_dir, *port]  # --port without --serve: refused, no server
    if ort_web is not None:
        argv += ["--ort-web", str(box.inputs) if ort_web == "inputs" else str(box.inputs / "none")]
    before = snapshot(box.root, skip=box.out)
    status, stderr = run_main(argv)
    box.check(before, status, stderr)


# ---------------------------------------------------------------- the Python API

ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-5, 2**33), st.floats(allow_nan=True),
                      st.text(max_size=8), st.binary(max_size=4), st.lists(st.text(max_size=4), max_size=3))


@examples(ci=80)
@given(method=st.sampled_from(["generate", "stream", "generate_batch"]), start=ANY_VALUE,
       kwargs=st.dictionaries(st.sampled_from(["length", "temperature", "top_k", "top_p", "greedy", "seed",
                                               "unknown"]), ANY_VALUE, max_size=4))
def test_the_api_raises_only_the_projects_errors(api_generator, method, start, kwargs):
    kwargs.setdefault("length", 5)
    if isinstance(kwargs["length"], int) and not isinstance(kwargs["length"], bool):
        kwargs["length"] = min(kwargs["length"], 40)  # an arbitrary length is valid, but slow
    try:
        if method == "stream":
            list(api_generator.stream(start, **kwargs))
        elif method == "generate_batch":
            api_generator.generate_batch(start, **kwargs)
        else:
            api_generator.generate(start, **kwargs)
    except CharRNNError:
        pass  # the project's own error: what the API promises for a wrong argument


@examples(ci=25)
@given(path=st.sampled_from(["random-bytes", "missing", "tiny", None, 3]), data=st.binary(max_size=300),
       runtime=ANY_VALUE | st.sampled_from(["onnx", "keras", "savedmodel"]),
       threads=ANY_VALUE, device=ANY_VALUE | st.just("cpu"))
def test_load_raises_only_the_projects_errors(sandbox_root, tiny_export, path, data, runtime, threads, device):
    from charrnn_export import Generator

    if path == "random-bytes":
        path = str(sandbox_root / "random.onnx")
        Path(path).write_bytes(data)
    elif path == "missing":
        path = str(sandbox_root / "missing.onnx")
    elif path == "tiny":
        path = str(tiny_export / "model.onnx")
    try:
        Generator.load(path, runtime=runtime, threads=threads, device=device)
    except CharRNNError:
        pass


@pytest.fixture(scope="module")
def api_generator(tiny_export):
    from charrnn_export import Generator

    return Generator.load(str(tiny_export / "model.onnx"))
