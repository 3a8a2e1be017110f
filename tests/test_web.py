"""`charrnn-export to-web` in a real browser: the site built from the tiny model, served on
127.0.0.1 with COOP/COEP, driven in headless Chromium (the system's, through Playwright's
executable_path), with onnxruntime-web from the repository's `npm ci` (web/node_modules).

The page's text must be exactly Python's: greedy, and seeded samples under several settings.
Skips (saying why) only where Chromium, Playwright or web/node_modules are missing; under CI
(CI=true) their absence fails instead, since .ci/run installs them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ORT_WEB

from charrnn_export.web import build
from charrnn_export.web.build import build_site
from charrnn_export.web.serve import running

REPO = Path(__file__).resolve().parent.parent
WAIT_MS = 120_000  # Playwright's wait for the page to load or finish: a hang fails, not a slow machine


def generate_in_form(page, **fields: str) -> None:
    """Fill the page's form as a person would (field id -> text), press Generate, wait until done."""
    for field, text in fields.items():
        page.fill(f"#{field}", text)
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('done')", timeout=WAIT_MS)


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_export, browser):
    """The tiny fp32 model's site, served; yields (url, model path, folder)."""
    out = tmp_path_factory.mktemp("site") / "site"
    build_site(str(tiny_export / "model.onnx"), out, ort_web=str(ORT_WEB))
    with running(out) as url:
        yield url, tiny_export / "model.onnx", out


def open_page(browser, url):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.wait_for_selector("body[data-state=ready], body[data-state=error]", timeout=WAIT_MS)
    assert page.get_attribute("body", "data-state") == "ready", page.inner_text("#message")
    page.errors = errors  # uncaught page errors: a test ends by checking there were none
    return page


@pytest.fixture(scope="module")
def page(browser, site):
    page = open_page(browser, site[0])
    yield page
    assert page.errors == []
    page.close()


@pytest.fixture(scope="module")
def python(site):
    from charrnn_export.generate import Generator

    return Generator.load(str(site[1]), runtime="onnx")


def js_generate(page, start, length, options):
    return page.evaluate("([s, n, o]) => charrnn.generate(s, n, o)", [start, length, options])


def start_of(generator) -> str:
    """A start string from the model's own vocabulary (the tiny text's first characters)."""
    return "".join(generator.vocab.chars[i] for i in (13, 40, 50, 1) if i < len(generator.vocab))


def test_greedy_text_is_pythons(page, python):
    start = start_of(python)
    assert js_generate(page, start, 300, {"greedy": True}) == python.generate(start, 300, greedy=True)


SETTINGS = [  # (options for JavaScript, the same for Python)
    ({"seed": 0}, {"seed": 0}),
    ({"seed": 1, "temperature": 0.7, "topK": 5}, {"seed": 1, "temperature": 0.7, "top_k": 5}),
    ({"seed": 7, "temperature": 1.3, "topP": 0.9}, {"seed": 7, "temperature": 1.3, "top_p": 0.9}),
    ({"seed": 2**32 - 1, "temperature": 0.9, "topK": 10, "topP": 0.8},
     {"seed": 2**32 - 1, "temperature": 0.9, "top_k": 10, "top_p": 0.8}),
    ({"seed": 123456, "temperature": 2.0, "topK": 1}, {"seed": 123456, "temperature": 2.0, "top_k": 1}),
]


@pytest.mark.parametrize("js_options, py_options", SETTINGS, ids=lambda o: json.dumps(o))
def test_seeded_sample_is_pythons(page, python, js_options, py_options):
    start = start_of(python)
    assert js_generate(page, start, 400, js_options) == python.generate(start, 400, **py_options)


def test_seeded_sample_is_the_sample_clis(page, site, python):
    start = start_of(python)
    result = subprocess.run([sys.executable, "-m", "charrnn_export.sample", "--model", str(site[1]), "--start", start,
                             "--length", "300", "--seed", "42", "--temperature", "0.8", "--top-k", "12", "--json",
                             "-q"], capture_output=True, text=True, encoding="utf-8", timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    expected = json.loads(result.stdout)["text"]
    assert js_generate(page, start, 300, {"seed": 42, "temperature": 0.8, "topK": 12}) == expected


def test_stream_yields_the_same_characters_one_by_one(page, python):
    start = start_of(python)
    chars = page.evaluate("""async ([s]) => {
        const out = [];
        for await (const ch of charrnn.stream(s, 120, {seed: 5})) out.push(ch);
        return out;
    }""", [start])
    assert len(chars) == 120 and all(len(c) == 1 for c in chars)
    assert "".join(chars) == python.generate(start, 120, seed=5)


def test_a_reader_that_breaks_early_stops_the_generation(page, python):
    start = start_of(python)
    text, run = page.evaluate("""async ([s]) => {
        let text = "";
        for await (const ch of charrnn.stream(s, 1000000, {seed: 3})) { text += ch; if (text.length === 50) break; }
        return [text, charrnn.lastRun];
    }""", [start])
    assert text == python.generate(start, 50, seed=3)
    assert run["stopped"] and 50 <= run["made"] < 1_000_000
    # The worker is free again: the next generation runs and is right.
    assert js_generate(page, start, 40, {"greedy": True}) == python.generate(start, 40, greedy=True)


def test_the_form_generates_pythons_text_and_shows_the_rate(page, python):
    start = start_of(python)
    generate_in_form(page, start=start, length="500", temperature="0.8", **{"top-k": "8", "top-p": "0.95"},
                     seed="2024")
    assert page.inner_text("#shown-start") == start
    expected = python.generate(start, 500, temperature=0.8, top_k=8, top_p=0.95, seed=2024)
    assert page.text_content("#generated") == expected
    assert re.fullmatch(r"500 chars, [\d,]+ chars/s", page.inner_text("#rate"))
    assert page.is_hidden("#message")


def test_stop_stops_and_keeps_the_text_made_so_far(page, python):
    start = start_of(python)
    page.fill("#start", start)
    page.fill("#length", "5000000")
    for field in ("#top-k", "#top-p"):
        page.fill(field, "")
    page.fill("#temperature", "1")
    page.fill("#seed", "99")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#generated').textContent.length >= 200", timeout=WAIT_MS)
    assert page.is_enabled("#stop") and page.is_disabled("#generate")
    page.click("#stop")
    page.wait_for_function("document.body.dataset.state === 'ready'", timeout=WAIT_MS)
    text = page.text_content("#generated")
    run = page.evaluate("charrnn.lastRun")
    assert run["stopped"] and run["made"] == len(text) < 5_000_000
    assert page.inner_text("#status").startswith("stopped")
    assert text == python.generate(start, len(text), seed=99)  # what was made is exactly Python's prefix
    assert page.is_disabled("#stop") and page.is_enabled("#generate")


def test_a_start_outside_the_vocabulary_shows_a_message(page, python):
    page.fill("#start", "ab\u2603c\u00e9")
    page.fill("#length", "10")
    page.click("#generate")
    page.wait_for_selector("#message:not([hidden])", timeout=WAIT_MS)
    message = page.inner_text("#message")
    unknown = [c for c in "\u2603\u00e9" if c not in python.vocab.chars]
    assert unknown and "not in the model's vocabulary" in message
    assert all(json.dumps(c, ensure_ascii=False) in message for c in unknown)
    assert page.get_attribute("body", "data-state") == "ready" and page.is_enabled("#generate")


@pytest.mark.parametrize("options, message", [
    ({"seed": -1}, "seed must be an integer in [0, 2**32)"),
    ({"seed": 2**32}, "seed must be an integer in [0, 2**32)"),
    ({"temperature": 0}, "temperature must be a positive number"),
    ({"topK": 0}, "topK must be an integer >= 1"),
    ({"topP": 1.5}, "topP must be in (0, 1]"),
])
def test_the_api_rejects_bad_options_as_python_does(page, python, options, message):
    error = page.evaluate("""async ([s, o]) => {
        try { await charrnn.generate(s, 10, o); return null; } catch (e) { return [e.name, e.message]; }
    }""", [start_of(python), options])
    assert error is not None and error[0] == "CharRNNError" and message in error[1]


def test_the_sampling_rule_matches_python_on_random_logits(page):
    """choose() and the SplitMix64 stream in sampling.js against sampling.py/rng.py, id for id, on
    logits with ties, -inf rows and every setting; beyond what a trained model's logits reach."""
    from charrnn_export import rng, sampling

    gen = np.random.default_rng(0)
    cases = []
    for i in range(600):
        vocab = int(gen.integers(2, 90))
        logits = (gen.standard_normal(vocab) * [0.1, 1, 5, 30][i % 4]).astype(np.float32)
        if i % 7 == 0:
            logits[gen.integers(0, vocab)] = -np.inf
        if i % 5 == 0:
            logits[: vocab // 2] = logits[0]  # ties
        config = sampling.SamplingConfig(float(gen.choice([0.3, 0.7, 1.0, 1.3, 2.5])), [None, 1, 3, 10, 200][i % 5],
                                         [None, 0.5, 0.9, 0.99, 1.0, 0.1][i % 6], greedy=i % 11 == 0)
        seed = int(gen.integers(0, 2**32))
        stream, settings = rng.Stream(seed), sampling.Settings.of([config])
        ids = [int(sampling.choose(logits[None], settings, np.zeros(1) if config.greedy else stream.random(1))[0])
               for _ in range(3)]
        cases.append({"logits": [float(x) if np.isfinite(x) else None for x in logits], "seed": seed, "ids": ids,
                      "settings": {"temperature": config.temperature, "topK": config.top_k or 0,
                                   "topP": config.top_p or 1.0, "greedy": config.greedy}})
    got = page.evaluate("""async (cases) => {
        const { choose, Stream } = await import("./sampling.js");
        return cases.map((c) => {
            const logits = Float32Array.from(c.logits, (x) => (x === null ? -Infinity : x));
            const stream = new Stream(c.seed);
            return [0, 1, 2].map(() => choose(logits, c.settings, stream));
        });
    }""", cases)
    assert got == [c["ids"] for c in cases]


def with_unk_row(source: Path, target: Path, unk_id: int) -> None:
    """A copy of a model whose config says row `unk_id` is [UNK] (as a current-tutorial export's)."""
    import onnx

    model = onnx.load(str(source))
    for prop in model.metadata_props:
        if prop.key == "config":
            prop.value = json.dumps({**json.loads(prop.value), "unk_id": unk_id})
    onnx.save(model, str(target))


@pytest.mark.parametrize("variant", ["int8", "unk-row"])
def test_other_models_give_pythons_text(browser, tiny_export, tmp_path, variant):
    """The int8 model (onnxruntime-web's integer kernels), and a model with an [UNK] row, which
    neither side may ever sample (its most likely first character is made [UNK] here)."""
    from charrnn_export.generate import Generator

    model = tiny_export / "model.int8.onnx"
    if variant == "unk-row":
        plain = Generator.load(str(tiny_export / "model.onnx"))
        start = start_of(plain)
        unk_id = plain.vocab.index[plain.generate(start, 1, greedy=True)]
        model = tmp_path / "unk.onnx"
        with_unk_row(tiny_export / "model.onnx", model, unk_id)
    python = Generator.load(str(model))
    start = start_of(python)
    build_site(str(model), tmp_path / "site", ort_web=str(ORT_WEB))
    with running(tmp_path / "site") as url:
        page = open_page(browser, url)
        assert js_generate(page, start, 300, {"greedy": True}) == python.generate(start, 300, greedy=True)
        sampled = js_generate(page, start, 300, {"seed": 11, "temperature": 1.5})
        assert sampled == python.generate(start, 300, seed=11, temperature=1.5)
        if variant == "unk-row":
            assert python.vocab.chars[unk_id] not in sampled + python.generate(start, 300, greedy=True)
        assert page.errors == []
        page.close()


def test_served_pages_are_cross_origin_isolated_and_use_threads(browser, site, python):
    """The server's COOP/COEP headers let onnxruntime-web's WebAssembly run on 2 threads, with the
    same text (the threaded kernels split the work, not the sums)."""
    page = open_page(browser, site[0] + "?threads=2")
    assert page.evaluate("[crossOriginIsolated, charrnn.threads, charrnn.crossOriginIsolated]") == [True, 2, True]
    start = start_of(python)
    assert js_generate(page, start, 200, {"seed": 8, "topP": 0.9}) == python.generate(start, 200, seed=8, top_p=0.9)
    assert page.errors == []
    page.close()


def test_the_shipped_model_in_the_page(browser, tmp_path):
    """The shipped fp32 model through the form, as a user sees it; the screenshot is the README's
    (set CHARRNN_EXPORT_WEB_SCREENSHOT=docs/web.png to write it there). fp32: its logits stay within
    5e-6 of Python's for the whole text; the int8 model's can part after a few dozen characters
    (README: to-web), when the two builds round one quantized state value differently."""
    from charrnn_export.generate import Generator

    build_site("fp32", tmp_path / "site", ort_web=str(ORT_WEB))
    with running(tmp_path / "site") as url:
        page = open_page(browser, url)
        page.set_viewport_size({"width": 1000, "height": 760})
        generate_in_form(page, start="ROMEO:", length="600", temperature="0.8", **{"top-k": "20"}, seed="1")
        expected = Generator.load("fp32").generate("ROMEO:", 600, temperature=0.8, top_k=20, seed=1)
        assert page.text_content("#generated") == expected
        page.screenshot(path=str(os.environ.get("CHARRNN_EXPORT_WEB_SCREENSHOT") or tmp_path / "web.png"),
                        full_page=True)
        assert page.errors == []
        page.close()


def test_an_onnxruntime_web_that_fails_its_integrity_hash_is_refused(browser, tiny_export, tmp_path):
    """The worker checks onnxruntime-web against the pinned sha384 (as it does the CDN's copy):
    one changed byte and the page says it could not load, instead of running other code."""
    site = tmp_path / "site"
    build_site(str(tiny_export), site, ort_web=str(ORT_WEB))
    module = site / "ort" / "ort.wasm.bundle.min.mjs"
    module.write_bytes(module.read_bytes() + b"\n// changed\n")
    with running(site) as url:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("body[data-state=error]", timeout=WAIT_MS)
        assert page.inner_text("#status") == "the model could not be loaded"
        assert "ort.wasm.bundle.min.mjs" in page.inner_text("#message")
        assert build.ORT_FILES["module"][1] in page.inner_text("#message")
        assert page.evaluate("window.charrnn === undefined")
        page.close()


def test_load_refuses_a_vocabulary_that_is_not_the_models(page, site, python):
    """load(modelUrl, vocabUrl) checks vocabUrl against the vocabulary in the model's metadata;
    without vocabUrl it uses the metadata's."""
    chars = list(python.vocab.chars)
    (site[2] / "shuffled.json").write_text(json.dumps(chars[1:] + chars[:1]), encoding="utf-8")
    error, vocab = page.evaluate("""async () => {
        const { load } = await import("./charrnn.js");
        let error = null;
        try { await load("model.onnx", "shuffled.json"); } catch (e) { error = [e.name, e.message]; }
        const own = await load("model.onnx");
        own.dispose();
        return [error, own.vocab];
    }""")
    assert error[0] == "CharRNNError" and "shuffled.json is not the vocabulary of" in error[1]
    assert vocab == chars
