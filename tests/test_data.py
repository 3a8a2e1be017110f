"""The data pipeline: loading (file, URL, cache, sha256), the tutorial's vocabulary, the split and batches."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading

import numpy as np
import pytest
from conftest import SHAKESPEARE, TINY_ARGS, closed_port, make_chinese_text, make_text, run_cli

from charrnn_export import contract, data
from charrnn_export.data import (
    check_enough_text, epoch_batches, load_text, min_train_chars, split_train_val, steps_in_epoch, validation_windows,
)
from charrnn_export.errors import DataError
from charrnn_export.vocab import Vocab

# ---------------------------------------------------------------- loading


def test_load_text_from_a_local_file(tmp_path):
    text = make_text(3_000) + "é中\n"
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    loaded, sha = load_text(str(path))
    assert loaded == text
    assert sha == hashlib.sha256(text.encode("utf-8")).hexdigest()


class Server:
    """http.server on 127.0.0.1 in a thread, serving `directory`; counts the GET requests it answers."""

    def __init__(self, directory):
        self.requests = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                if self.path == "/truncated.txt":  # promises 1000 bytes, sends 10, hangs up
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b"0123456789")
                    self.close_connection = True
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=directory))
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A served directory holding corpus.txt, and an empty cache directory in $CHARRNN_EXPORT_CACHE."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "corpus.txt").write_text(make_text(2_000), encoding="utf-8")
    cache = tmp_path / "cache"
    monkeypatch.setenv("CHARRNN_EXPORT_CACHE", str(cache))
    server = Server(root)
    yield server, root, cache
    server.stop()


def test_url_is_downloaded_once_then_read_from_the_cache(served):
    server, root, cache = served
    url = f"{server.url}/corpus.txt"
    expected = (root / "corpus.txt").read_text(encoding="utf-8")

    text, sha = load_text(url)
    assert text == expected
    assert server.requests == ["/corpus.txt"]
    cached = list(cache.iterdir())
    assert len(cached) == 1 and cached[0].read_text(encoding="utf-8") == expected
    assert cached[0].name.endswith("corpus.txt")

    server.stop()  # the second call must not need the server at all
    assert load_text(url) == (text, sha)
    assert server.requests == ["/corpus.txt"]


def test_known_url_with_a_wrong_sha256_is_refused_and_not_cached(served, monkeypatch):
    server, _, cache = served
    url = f"{server.url}/corpus.txt"
    wrong = "0" * 64
    monkeypatch.setitem(contract.KNOWN_SHA256, url, wrong)  # data.KNOWN_SHA256 is the same dict
    assert data.KNOWN_SHA256[url] == wrong
    with pytest.raises(DataError) as e:
        load_text(url)
    message = str(e.value)
    assert url in message and wrong in message and "--data FILE" in message
    assert not cache.exists() or not [p for p in cache.iterdir() if p.name.endswith("corpus.txt")]


def test_cached_copy_with_a_wrong_sha256_is_downloaded_again(served, monkeypatch):
    server, root, cache = served
    url = f"{server.url}/corpus.txt"
    good = (root / "corpus.txt").read_bytes()
    monkeypatch.setitem(contract.KNOWN_SHA256, url, hashlib.sha256(good).hexdigest())
    load_text(url)
    (cached,) = cache.iterdir()
    cached.write_bytes(b"damaged")
    text, _ = load_text(url)
    assert text.encode("utf-8") == good
    assert cached.read_bytes() == good
    assert server.requests == ["/corpus.txt", "/corpus.txt"]


def test_unreachable_url_names_the_url_and_says_to_pass_data_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARRNN_EXPORT_CACHE", str(tmp_path / "cache"))
    url = f"http://127.0.0.1:{closed_port()}/shakespeare.txt"
    with pytest.raises(DataError) as e:
        load_text(url)
    assert url in str(e.value) and "pass --data FILE" in str(e.value)


@pytest.mark.parametrize("name", ["missing.txt", "truncated.txt"])
def test_http_errors_and_cut_downloads_are_data_errors(served, name):
    server, _, cache = served
    url = f"{server.url}/{name}"
    with pytest.raises(DataError) as e:
        load_text(url)
    assert url in str(e.value) and "pass --data FILE" in str(e.value)
    assert not cache.exists() or not list(cache.iterdir())


def test_unwritable_cache_is_a_data_error(served, monkeypatch, tmp_path):
    server, _, _ = served
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    monkeypatch.setenv("CHARRNN_EXPORT_CACHE", str(not_a_dir / "cache"))
    with pytest.raises(DataError, match="CHARRNN_EXPORT_CACHE"):
        load_text(f"{server.url}/corpus.txt")


# ---------------------------------------------------------------- vocabulary


def test_vocab_is_sorted_set_of_the_text():
    text = "hello world\nHELLO!"
    vocab = Vocab.from_text(text)
    assert list(vocab.chars) == sorted(set(text))
    assert "".join(vocab.chars) == "\n !EHLOdehlorw" and len(vocab) == 14
    assert (vocab.index["\n"], vocab.index[" "], vocab.index["H"], vocab.index["w"]) == (0, 1, 4, 13)
    ids = vocab.encode(text)
    assert ids.dtype == np.int32 and vocab.decode(ids) == text
    assert Vocab.from_json(vocab.to_json()) == vocab


def test_tutorial_vocabulary_on_tiny_shakespeare():
    if not SHAKESPEARE.exists():
        pytest.skip(f"{SHAKESPEARE} is not here")
    text, sha = load_text(str(SHAKESPEARE))
    assert sha == contract.TUTORIAL_SHA256 and len(text) == contract.TUTORIAL_CHARS
    index = Vocab.from_text(text).index
    assert len(index) == 65
    assert (index["\n"], index[" "], index["A"], index["F"], index["a"], index["z"]) == (0, 1, 13, 18, 39, 64)


def test_chinese_vocab_round_trips_through_json(tmp_path):
    text = make_chinese_text(500)
    vocab = Vocab.from_text(text)
    vocab.save(tmp_path / "vocab.json")
    assert "中" in (tmp_path / "vocab.json").read_text(encoding="utf-8")  # stored as characters, not escapes
    again = Vocab.load(tmp_path / "vocab.json")
    assert again == vocab and again.decode(again.encode(text)) == text


def test_chinese_text_trains_through_the_cli(tmp_path):
    text = make_chinese_text(2_000)
    path = tmp_path / "中文.txt"
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    result = run_cli("train", "--data", path, "--out", out, "--epochs", "1", *TINY_ARGS)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "vocab.json").read_text(encoding="utf-8")) == sorted(set(text))
    assert Vocab.load(out / "vocab.json") == Vocab.from_text(text)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["vocab_size"] == len(set(text)) and config["data"] == str(path)
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert row["epoch"] == 1 and np.isfinite(row["val_loss"])


# ---------------------------------------------------------------- split and batches


def test_validation_is_the_last_fraction():
    ids = np.arange(1000, dtype=np.int32)
    train, val = split_train_val(ids, 0.1)
    assert np.array_equal(train, np.arange(900)) and np.array_equal(val, np.arange(900, 1000))
    train, val = split_train_val(ids, 0.25)
    assert len(train) == 750 and val[0] == 750 and val[-1] == 999
    with pytest.raises(DataError):
        split_train_val(ids, 0.0)


def test_training_batches_never_touch_validation_positions():
    # Each id is its position in the text, so a batch shows exactly where its characters came from.
    ids = np.arange(3_000, dtype=np.int32)
    train, val = split_train_val(ids, 0.1)
    seq, batch = 16, 8
    seen = set()
    for epoch in range(6):
        for x, y in epoch_batches(train, seq, batch, seed=3, epoch=epoch):
            assert x.shape == y.shape == (batch, seq)
            assert np.array_equal(y, x + 1)  # targets are the inputs shifted by one character
            assert y.max() < len(train)  # ... and never reach into the validation text
            seen.update(np.unique(x).tolist())
    assert max(seen) < val[0] and len(seen) > 0.9 * len(train)  # the epochs cover the training text
    windows = validation_windows(val, seq)
    assert windows.shape == (len(val) // (seq + 1), seq + 1)
    assert np.array_equal(windows.ravel(), val[: windows.size])  # in order, not overlapping


def test_batch_order_depends_only_on_seed_and_epoch():
    train = np.arange(5_000, dtype=np.int32)

    def batches(seed, epoch, start=0):
        return [x for x, _ in epoch_batches(train, 16, 8, seed=seed, epoch=epoch, start=start)]

    first = batches(0, 2)
    assert all(np.array_equal(a, b) for a, b in zip(first, batches(0, 2), strict=True))
    assert not np.array_equal(np.stack(first[:5]), np.stack(batches(0, 3)[:5]))  # another epoch
    assert not np.array_equal(np.stack(first[:5]), np.stack(batches(1, 2)[:5]))  # another seed
    # A resumed epoch starts at its batch `start` and repeats the rest of the order.
    assert all(np.array_equal(a, b) for a, b in zip(first[7:], batches(0, 2, start=7), strict=True))
    assert len(first) == steps_in_epoch(train, 16, 8, 0, 2)


def test_enough_text_is_exactly_one_batch_plus_one_validation_window():
    seq, batch = 16, 8
    need = min_train_chars(seq, batch)
    ok_train, ok_val = np.arange(need), np.arange(seq + 1)
    check_enough_text(ok_train, ok_val, seq, batch)
    for epoch in range(20):  # every epoch offset still leaves a whole batch
        assert steps_in_epoch(ok_train, seq, batch, seed=0, epoch=epoch) >= 1
    with pytest.raises(DataError, match="text too short"):
        check_enough_text(ok_train[:-1], ok_val, seq, batch)
    with pytest.raises(DataError, match="text too short"):
        check_enough_text(ok_train, ok_val[:-1], seq, batch)
