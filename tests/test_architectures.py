"""Every consumer with every architecture: a tiny export of each of the contract's specs (gru,
gru_reset_before, lstm, rnn, lstm2, mixed: tests/conftest.py's arch_export, random weights through
cells/, exported by `to-onnx`'s export()) through

    sample          the four runtimes (onnx, savedmodel, keras, litert) give one text for one seed,
                    greedy and sampled: in-process for every spec, and `python -m charrnn_export.sample`
                    as a user runs it (onnx for every spec, all four runtimes for the mixed stack)
    the Python API  Generator.generate / generate_batch
    decode models   decode.onnx (sampling in the graph) id for id against the host sampler, and the
                    export report's own decode parity
    serve           one real server holding every spec; a completion each is Generator's text
    to-web          the page in headless Chromium gives Python's fp32 text, greedy and seeded
    bench           `charrnn-export bench --model DIR --contestants onnx-fp32 onnx-int8` runs
    the benchmark   `python -m benchmarks.architectures --quick` on a tiny text

One export per spec (the fixture caches them per session); one server, one browser for all specs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ORT_WEB, REPO, cli_env, run_cli
from serve_helpers import ServerProcess

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SPECS = ("gru", "gru_reset_before", "lstm", "rnn", "lstm2", "mixed")
RUNTIMES = ("onnx", "savedmodel", "keras", "litert")
LENGTH = 120
SEEDED = dict(temperature=0.9, top_k=12, seed=5)
WAIT_MS = 120_000


@pytest.fixture(scope="module")
def exports(arch_export) -> dict[str, Path]:
    return {spec: Path(arch_export(spec)) for spec in SPECS}


def checkpoint_of(export_dir: Path) -> str:
    """The checkpoint the export was made from (the keras runtime reads the weights themselves)."""
    return json.loads((export_dir / "export_report.json").read_text())["source"]


def architecture_of(export_dir: Path) -> dict:
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(export_dir / "model.onnx")).metadata_props}
    return json.loads(meta["config"])


@pytest.fixture(scope="module")
def litert(exports, tmp_path_factory) -> dict[str, Path]:
    """to-tflite (fp32) of every spec's export."""
    from charrnn_export.tflite_export import to_tflite

    folders = {}
    for spec, export_dir in exports.items():
        folders[spec] = tmp_path_factory.mktemp(f"litert-{spec}") / "litert"
        to_tflite(str(export_dir), folders[spec], precisions=("fp32",))
    return folders


def model_for(runtime: str, spec: str, exports, litert) -> str:
    return {"onnx": str(exports[spec] / "model.onnx"), "savedmodel": str(exports[spec]),
            "keras": checkpoint_of(exports[spec]), "litert": str(litert[spec])}[runtime]


@pytest.fixture(scope="module")
def onnx_generators(exports):
    from charrnn_export import Generator

    return {spec: Generator.load(str(exports[spec] / "model.onnx"), runtime="onnx", sampler="host")
            for spec in SPECS}


def start_of(generator) -> str:
    chars = generator.vocab.chars
    return "".join(chars[i % len(chars)] for i in (13, 40, 50, 1))


# ---------------------------------------------------------------- the description travels


@pytest.mark.parametrize("spec", SPECS)
def test_the_export_records_its_architecture_and_state_size(exports, spec):
    from charrnn_export.cells import Architecture
    from charrnn_export.cells.architecture import state_size_of

    config = architecture_of(exports[spec])
    arch = Architecture.from_config(config)
    assert state_size_of(config) == arch.state_size == config["state_size"]
    assert ("rnn_units" in config) == (len(arch.layers) == 1)
    expected_kinds = {"gru": ["gru"], "gru_reset_before": ["gru"], "lstm": ["lstm"], "rnn": ["rnn"],
                      "lstm2": ["lstm", "lstm"], "mixed": ["lstm", "gru", "rnn"]}[spec]
    assert [layer.kind for layer in arch.layers] == expected_kinds
    if spec == "gru_reset_before":
        assert arch.layers[0].options == {"reset_after": False}


# ---------------------------------------------------------------- sample on every runtime


@pytest.mark.parametrize("spec", SPECS)
def test_every_runtime_gives_the_same_text_greedy_and_seeded(exports, litert, onnx_generators, spec):
    from charrnn_export import Generator

    start = start_of(onnx_generators[spec])
    expected = {"greedy": onnx_generators[spec].generate(start, LENGTH, greedy=True),
                "seeded": onnx_generators[spec].generate(start, LENGTH, **SEEDED)}
    assert len(expected["greedy"]) == LENGTH and expected["greedy"] != expected["seeded"]
    for runtime in RUNTIMES[1:]:
        vocab = str(exports[spec] / "vocab.json") if runtime == "keras" else None  # a .weights.h5 holds none
        g = Generator.load(model_for(runtime, spec, exports, litert), runtime=runtime, vocab_path=vocab)
        assert g.generate(start, LENGTH, greedy=True) == expected["greedy"], (spec, runtime)
        assert g.generate(start, LENGTH, **SEEDED) == expected["seeded"], (spec, runtime)


def sample_cli(*args) -> str:
    result = subprocess.run([sys.executable, "-m", "charrnn_export.sample", "--quiet", *map(str, args)], cwd=REPO,
                            capture_output=True, text=True, encoding="utf-8", env=cli_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def seeded_flags(start: str) -> list:
    return ["--start", start, "--length", LENGTH, "--temperature", SEEDED["temperature"], "--top-k", SEEDED["top_k"],
            "--seed", SEEDED["seed"]]


@pytest.mark.parametrize("spec", SPECS)
def test_the_sample_cli_gives_pythons_text(exports, onnx_generators, spec):
    start = start_of(onnx_generators[spec])
    text = sample_cli("--model", exports[spec], *seeded_flags(start))
    assert text == start + onnx_generators[spec].generate(start, LENGTH, **SEEDED) + "\n"


def test_the_sample_cli_on_every_runtime_gives_one_text_for_the_mixed_stack(exports, litert, onnx_generators):
    start = start_of(onnx_generators["mixed"])
    for mode in (["--greedy", "--start", start, "--length", LENGTH], seeded_flags(start)):
        texts = {runtime: sample_cli("--runtime", runtime, "--model", model_for(runtime, "mixed", exports, litert),
                                     *(["--vocab", exports["mixed"] / "vocab.json"] if runtime == "keras" else []),
                                     *map(str, mode)) for runtime in RUNTIMES}
        assert len(set(texts.values())) == 1, texts


# ---------------------------------------------------------------- the API, the engine, the decode models


@pytest.mark.parametrize("spec", SPECS)
def test_generate_batch_rows_are_generates_texts(onnx_generators, spec):
    g = onnx_generators[spec]
    starts = [start_of(g), start_of(g)[:2], start_of(g)[1:]]
    rows = g.generate_batch(starts, 60, temperature=1.1, seed=30)
    assert rows == [g.generate(s, 60, temperature=1.1, seed=30 + i) for i, s in enumerate(starts)]


@pytest.mark.parametrize("spec", SPECS)
def test_the_decode_models_pick_the_host_samplers_ids(exports, onnx_generators, spec):
    from charrnn_export import Generator

    report = json.loads((exports[spec] / "export_report.json").read_text())
    for name in ("decode.onnx", "decode.int8.onnx"):
        assert report["decode"][name]["mismatched_ids"] == 0, (spec, name)
    start = start_of(onnx_generators[spec])
    for model in ("model.onnx", "model.int8.onnx"):
        graph = Generator.load(str(exports[spec] / model), runtime="onnx", sampler="graph")
        host = Generator.load(str(exports[spec] / model), runtime="onnx", sampler="host")
        for kwargs in (dict(greedy=True), SEEDED, dict(top_p=0.8, seed=2)):
            assert graph.generate(start, 200, **kwargs) == host.generate(start, 200, **kwargs), (spec, model, kwargs)


def test_the_gpu_block_graph_of_every_spec_gives_the_host_samplers_ids(exports):
    """BlockDecoder.for_gpu (one native op per layer, 4 steps per call) on the CPU, id for id."""
    import numpy as np

    from charrnn_export.engine import Engine, HostSampler
    from charrnn_export.runtimes.onnx import OnnxRuntime
    from charrnn_export.runtimes.onnx_decode import BlockDecoder
    from charrnn_export.sampling import SamplingConfig

    configs = [SamplingConfig(), SamplingConfig(0.7, top_k=5), SamplingConfig(greedy=True)]
    requests = [(np.array([3, 4, 5], np.int32), 30, config, 50 + i) for i, config in enumerate(configs)]

    def ids(backend):
        engine = Engine(backend)
        rids = [engine.submit(*request) for request in requests]
        made = {}
        while engine.has_work():
            for rid, token, reason in engine.step():
                if reason is None:
                    made.setdefault(rid, []).append(token)
        return [made[rid] for rid in rids]

    for spec in SPECS:
        path = exports[spec] / "model.onnx"
        block = BlockDecoder.for_gpu(path, len(requests), steps=4, precision="fp32", device="cpu")
        assert ids(block) == ids(HostSampler(OnnxRuntime(path), len(requests))), spec


# ---------------------------------------------------------------- serve


def test_one_server_serves_every_architecture_with_generators_text(exports, onnx_generators, tmp_path):
    openai = pytest.importorskip("openai")
    models = [f"{spec}={exports[spec]}" for spec in SPECS]
    with ServerProcess(["--model", *models, "--slots", "8"], tmp_path / "server.log") as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="dummy", max_retries=0, timeout=120)
        for spec in SPECS:
            start = start_of(onnx_generators[spec])
            answer = client.completions.create(model=spec, prompt=start, max_tokens=LENGTH, temperature=0.8, seed=11)
            expected = onnx_generators[spec].generate(start, LENGTH, temperature=0.8, seed=11)
            assert answer.choices[0].text == expected, spec


# ---------------------------------------------------------------- to-web in Chromium


def test_the_page_gives_pythons_fp32_text_for_every_architecture(exports, onnx_generators, browser, tmp_path):
    from charrnn_export.web.build import build_site
    from charrnn_export.web.serve import running

    for spec in SPECS:
        out = tmp_path / spec
        build_site(str(exports[spec] / "model.onnx"), out, ort_web=str(ORT_WEB))
        with running(out) as url:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
            page.wait_for_selector("body[data-state=ready], body[data-state=error]", timeout=WAIT_MS)
            assert page.get_attribute("body", "data-state") == "ready", (spec, page.inner_text("#message"))
            g = onnx_generators[spec]
            start = start_of(g)
            generate = "([s, n, o]) => charrnn.generate(s, n, o)"
            assert page.evaluate(generate, [start, 200, {"greedy": True}]) == g.generate(start, 200, greedy=True), spec
            js = {"seed": SEEDED["seed"], "temperature": SEEDED["temperature"], "topK": SEEDED["top_k"]}
            assert page.evaluate(generate, [start, 200, js]) == g.generate(start, 200, **SEEDED), spec
            assert page.evaluate("charrnn.units") == architecture_of(exports[spec])["state_size"]
            assert errors == [], (spec, errors)
            page.close()


# ---------------------------------------------------------------- bench and the architectures benchmark


@pytest.mark.parametrize("spec", ["lstm", "mixed"])
def test_bench_runs_on_the_export(exports, spec, tmp_path):
    result = run_cli("bench", "--model", exports[spec], "--contestants", "onnx-fp32", "onnx-int8",
                     "--batch-sizes", "1", "4", "--chars", "20", "--min-steps", "5", "--repeats", "1",
                     "--warmup", "1", "--greedy-chars", "10", "--device", "cpu", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    results = json.loads(next(tmp_path.glob("*-latest.json")).read_text())
    rows = results["devices"]["cpu"]["rows"]
    assert {(row["contestant"], row["batch"]) for row in rows} == {(c, b) for c in ("onnx-fp32", "onnx-int8")
                                                                 for b in (1, 4)}
    assert all(row["chars_per_s"] > 0 for row in rows)


def test_the_architectures_benchmark_quick_run(tiny_text, tmp_path):
    archs = ["gru-x2", "lstm-x1"]
    result = subprocess.run([sys.executable, "-m", "benchmarks.architectures", "--quick", "--archs", *archs,
                             "--data", str(tiny_text), "--out", str(tmp_path)], cwd=REPO, capture_output=True,
                            text=True, encoding="utf-8", env=cli_env(), timeout=600)
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "architectures-quick-latest.json").read_text())
    assert [row["name"] for row in results["rows"]] == archs
    for row in results["rows"]:
        assert f"{row['name']}: {row['architecture']} ({row['parameters']:,} parameters)" in result.stdout
        assert abs(row["parameters"] - results["settings"]["params"]) < 0.2 * results["settings"]["params"]
        assert row["training"]["steps"] == results["settings"]["steps"]
        assert row["training"]["val_loss"] > 0 and row["training"]["chars_per_s"] > 0
        assert row["export"]["stream_val_loss_fp32"] > 0 and row["export"]["stream_val_loss_int8"] > 0
        assert set(row["generation"]) == {"fp32_batch1", "fp32_batch256", "int8_batch1", "int8_batch256"}
    assert results["rows"][0]["architecture"].startswith("gru(") and results["rows"][0]["architecture"].endswith("x2")
    table = [line for line in (tmp_path / "architectures-quick-latest.md").read_text().splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(archs)  # the header, then a row per architecture
