"""`charrnn-export to-web` as a command, without a browser: what it writes, what it refuses
(one line, exit 2, nothing touched), and the server's headers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import ORT_WEB, assert_one_line_error, cli_env, run_cli

from charrnn_export.web import build
from charrnn_export.web.serve import running

REPO = Path(__file__).resolve().parent.parent
SITE_FILES = {"index.html", "style.css", "app.js", "charrnn.js", "worker.js", "sampling.js", "onnx-metadata.js",
              "site-config.js", "vocab.json"}


def site_config(folder: Path) -> dict:
    text = (folder / "site-config.js").read_text(encoding="utf-8")
    return json.loads(text[text.index("export default ") + len("export default "):].rstrip().rstrip(";"))


def test_the_default_site_loads_onnxruntime_web_from_the_cdn_with_pinned_hashes(tmp_path, tiny_export):
    out = tmp_path / "site"
    result = run_cli("to-web", "--model", tiny_export, "--out", out)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in out.iterdir()} == SITE_FILES | {"model.onnx", build.SITE_MANIFEST}
    config = site_config(out)
    assert config["model"] == "model.onnx" and config["vocab"] == "vocab.json"
    assert config["ort"]["module"] == build.ORT_CDN + "ort.wasm.bundle.min.mjs"
    assert config["ort"]["moduleIntegrity"] == build.ORT_FILES["module"][1]
    assert config["ort"]["wasmIntegrity"] == build.ORT_FILES["wasm"][1]
    assert "@1.30.0/" in config["ort"]["module"]
    assert (out / "model.onnx").read_bytes() == (tiny_export / "model.onnx").read_bytes()
    from charrnn_export.runtimes.onnx import OnnxRuntime

    assert json.loads((out / "vocab.json").read_text(encoding="utf-8")) == list(
        OnnxRuntime(tiny_export / "model.onnx").vocab.chars)


@pytest.mark.skipif(not ORT_WEB.is_dir(), reason="no local onnxruntime-web: run `npm ci` in web/")
def test_the_pinned_hashes_are_those_of_the_npm_package():
    for name, integrity in build.ORT_FILES.values():
        assert build.sri_sha384((ORT_WEB / name).read_bytes()) == integrity, name


@pytest.mark.skipif(not ORT_WEB.is_dir(), reason="no local onnxruntime-web: run `npm ci` in web/")
def test_a_rebuild_replaces_its_own_files_and_keeps_nothing_stale(tmp_path, tiny_export):
    out = tmp_path / "site"
    assert run_cli("to-web", "--model", tiny_export / "model.int8.onnx", "--out", out, "--ort-web", ORT_WEB).returncode == 0
    assert (out / "ort" / "ort-wasm-simd-threaded.wasm").is_file() and (out / "model.int8.onnx").is_file()
    assert site_config(out)["ort"]["module"] == "ort/ort.wasm.bundle.min.mjs"
    result = run_cli("to-web", "--model", tiny_export, "--out", out)  # now fp32, from the CDN
    assert result.returncode == 0, result.stderr
    assert {p.name for p in out.iterdir()} == SITE_FILES | {"model.onnx", build.SITE_MANIFEST}


def test_a_folder_to_web_did_not_write_is_refused_and_left_alone(tmp_path, tiny_export):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "index.html").write_text("my own page", encoding="utf-8")
    line = assert_one_line_error(run_cli("to-web", "--model", tiny_export, "--out", out))
    assert "did not write (index.html)" in line
    assert [p.name for p in out.iterdir()] == ["index.html"]
    assert (out / "index.html").read_text(encoding="utf-8") == "my own page"
    # A user's file added to a to-web site is foreign too: the site is not rebuilt over it.
    site = tmp_path / "site"
    assert run_cli("to-web", "--model", tiny_export, "--out", site).returncode == 0
    (site / "notes.txt").write_text("keep", encoding="utf-8")
    assert "notes.txt" in assert_one_line_error(run_cli("to-web", "--model", tiny_export, "--out", site))
    assert (site / "notes.txt").read_text(encoding="utf-8") == "keep"


@pytest.mark.parametrize("args, expected", [
    (["--model", "nowhere.onnx"], "nowhere.onnx"),
    (["--ort-web", "."], "--ort-web"),
    (["--port", "8001"], "--port is for --serve"),
    (["--serve", "--port", "70000"], "--port must be in 0..65535"),
])
def test_bad_options_are_one_line_errors_and_write_nothing(tmp_path, tiny_export, args, expected):
    out = tmp_path / "site"
    model = [] if "--model" in args else ["--model", str(tiny_export)]
    assert expected in assert_one_line_error(run_cli("to-web", *model, "--out", out, *args))
    assert not out.exists()


def test_a_file_as_out_is_refused(tmp_path, tiny_export):
    target = tmp_path / "file.txt"
    target.write_text("x", encoding="utf-8")
    assert "is a file" in assert_one_line_error(run_cli("to-web", "--model", tiny_export, "--out", target))
    assert target.read_text(encoding="utf-8") == "x"


def test_the_server_sends_the_isolation_headers_and_module_types(tmp_path, tiny_export):
    build.build_site(str(tiny_export), tmp_path / "site")
    with running(tmp_path / "site") as url:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "charrnn.js") as response:
            headers = response.headers
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        assert headers["Content-Type"].startswith("text/javascript")


def test_serve_serves_the_site_until_interrupted(tmp_path, tiny_export):
    import re
    import signal
    import subprocess

    from conftest import cli_command, cli_env, ctrl_c_works

    out = tmp_path / "site"
    process = subprocess.Popen(cli_command("to-web", "--model", tiny_export, "--out", out, "--serve", "--port", "0"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=REPO,
                               preexec_fn=ctrl_c_works)
    try:
        line = process.stderr.readline()  # the server's first line names its URL
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        with urllib.request.urlopen(url) as response:
            assert b"charrnn" in response.read() and response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            stdout, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:  # never leave the server running
                process.kill()
                process.wait()
    assert process.returncode == 0, stderr
    assert stdout.startswith(f"wrote {out}")


# ---------------------------------------------------------------- links, a full disk, --serve


def tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): (str(p.readlink()) if p.is_symlink() else
                                             p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("link", ["model", "ort"])
def test_a_rebuild_never_writes_through_a_link_out_of_the_site(tmp_path, tiny_export, link):
    """A link in the site to another export's model (or to a folder as ort/) is refused, and
    what it leads to is untouched."""
    site, other = tmp_path / "site", tmp_path / "other"
    other.mkdir()
    (other / "model.onnx").write_bytes(b"another export's model")
    args = ["to-web", "--model", tiny_export, "--out", site] + (["--ort-web", ORT_WEB] if link == "ort" else [])
    if link == "ort" and not ORT_WEB.is_dir():
        pytest.skip("web/node_modules/onnxruntime-web is not installed (cd web && npm ci)")
    assert run_cli(*args).returncode == 0
    name = "model.onnx" if link == "model" else "ort"
    if link == "model":
        (site / name).unlink()
        (site / name).symlink_to(other / "model.onnx")
    else:
        shutil.rmtree(site / name)
        (site / name).symlink_to(other)
    before = tree(tmp_path)
    assert_one_line_error(run_cli(*args), f"{site / name}", "symbolic link", "outside")
    assert tree(tmp_path) == before


def in_a_small_disk(tmp_path: Path, size: str, script: str) -> subprocess.CompletedProcess:
    """Run `script` (sh; $CLI is the command line, $DISK the mount) with a fresh tmpfs of `size`."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare to mount a small tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    command = f'DISK="{disk}"; CLI="{sys.executable} -m charrnn_export.cli"; ' \
              f'mount -t tmpfs -o size={size} tmpfs "$DISK" || exit 77; {script}'
    result = subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True,
                            env=cli_env(), cwd=REPO, timeout=300)
    if result.returncode == 77:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    return result


def test_a_full_disk_leaves_no_half_made_site_and_the_retry_works(tmp_path, tiny_export):
    """On a new folder, nothing stays; over an earlier site, that site stays whole; with space
    again, the same command succeeds."""
    script = (f'$CLI to-web --model "{tiny_export}" --out "$DISK/site" >/dev/null || exit 10; '
              'sha256sum "$DISK"/site/* "$DISK"/site/.c* > "$DISK/../before"; '
              'cat /dev/zero > "$DISK/filler" 2>/dev/null; '
              f'$CLI to-web --model "{tiny_export}" --out "$DISK/site" 2>"$DISK/../error" && exit 11; '
              'sha256sum "$DISK"/site/* "$DISK"/site/.c* | cmp - "$DISK/../before" || exit 12; '
              'ls -A "$DISK/site" > "$DISK/../listing"; '
              f'$CLI to-web --model "{tiny_export}" --out "$DISK/new" 2>>"$DISK/../error" && exit 13; '
              'test -e "$DISK/new" && exit 14; '
              'rm "$DISK/filler"; '
              f'$CLI to-web --model "{tiny_export}" --out "$DISK/site" || exit 15')
    result = in_a_small_disk(tmp_path, "1m", script)
    assert result.returncode == 0, (result.returncode, result.stderr)
    errors = (tmp_path / "error").read_text().splitlines()
    assert len(errors) == 2 and all("the disk is full" in line for line in errors), errors
    listing = set((tmp_path / "listing").read_text().split())
    assert listing == SITE_FILES | {"model.onnx", build.SITE_MANIFEST}, listing


def test_serve_with_the_port_taken_fails_before_building(tmp_path, tiny_export):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("to-web", "--model", tiny_export, "--out", tmp_path / "site", "--serve", "--port", port)
    assert_one_line_error(result, f"port {port}", "in use")
    assert not (tmp_path / "site").exists()


def test_serve_stopped_by_sigterm_exits_0(tmp_path, tiny_export):
    import re
    import signal

    from conftest import cli_command, cli_env

    process = subprocess.Popen(cli_command("to-web", "--model", tiny_export, "--out", tmp_path / "site", "--serve",
                                           "--port", "0"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=cli_env(), cwd=REPO)
    try:
        line = process.stderr.readline()
        assert re.search(r"http://127\.0\.0\.1:\d+/", line), line
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:  # never leave the server running
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert stderr.strip() == "stopped"
