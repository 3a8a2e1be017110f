"""The page at / of `charrnn-export serve`, in headless Chromium (the system's, driven by
Playwright through executable_path; never `playwright install`): text streams in and is the
seeded request's text."""

from __future__ import annotations


import pytest
from conftest import chromium_browser
from serve_helpers import ServerProcess

from charrnn_export import Generator

MODEL = "tiny"
WAIT_MS = 120_000  # a hang fails the test; a slow machine does not


@pytest.fixture(scope="module")
def page(tiny_export, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-page") / "server.log"
    with chromium_browser() as browser, \
            ServerProcess(["--model", f"{MODEL}={tiny_export}", "--slots", "8", "--max-length", "20000"], log) as server:
        page = browser.new_page()
        page.goto(server.url + "/", timeout=WAIT_MS)
        yield page


def test_the_page_streams_the_seeded_text(page, tiny_export):
    page.wait_for_selector(f"#model option[value='{MODEL}']", state="attached", timeout=WAIT_MS)
    page.fill("#start", "JULIET:")
    page.fill("#length", "8000")
    page.fill("#seed", "21")
    page.evaluate("document.getElementById('temperature').value = '0.7'")
    # Record the generated text's length at every change, to see it arrive in pieces.
    page.evaluate("""() => { window.seen = [];
        new MutationObserver(() => window.seen.push(document.getElementById('output').textContent.length))
            .observe(document.getElementById('output'), {subtree: true, characterData: true, childList: true}); }""")
    page.click("#go")
    page.wait_for_selector("#output[data-done='true']", timeout=WAIT_MS)
    text = page.text_content("#output")
    expected = Generator.load(str(tiny_export)).generate("JULIET:", 8000, temperature=0.7, seed=21)
    assert text == "JULIET:" + expected
    lengths = page.evaluate("window.seen")
    assert int(page.get_attribute("#output", "data-events")) > 1
    assert any(len("JULIET:") < n < len(text) for n in lengths)  # some text showed before the end
    assert "finish: length" in page.text_content("#status") and "seed 21" in page.text_content("#status")


def test_the_page_shows_an_error_message(page):
    page.fill("#start", "JULIET: \u20ac")
    page.click("#go")
    page.wait_for_selector("#status.error", timeout=WAIT_MS)
    assert "does not know" in page.text_content("#status")
