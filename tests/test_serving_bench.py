"""benchmarks.serving: both load generators against the real server on a tiny model, and the report's
fields (the CPU each side took, the light client's rows, RESULTS.md's section); not its speed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, assert_one_line_error, cli_env, missing


def run_benchmark(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.serving", *map(str, args)], capture_output=True,
                          text=True, encoding="utf-8", env=env or cli_env(), timeout=600, cwd=REPO)


def test_wrk_and_python_clients_report_chars_and_each_sides_cpu(tiny_export, tmp_path):
    if shutil.which("wrk") is None:
        missing("wrk is not installed: apt-get install wrk")
    out = tmp_path / "results"
    done = run_benchmark("--model", tiny_export, "--streams", 4, "--duration", 2, "--max-tokens", 40,
                         "--client", "wrk", "python", "--no-naive", "--out", out, "--results-md")
    assert done.returncode == 0, done.stderr
    [saved] = [p for p in out.glob("serving-*.json")]
    result = json.loads(saved.read_text())
    assert result["clients"] == ["wrk", "python"] and result["machine"]["wrk"].startswith("wrk")
    [row] = result["rows"]
    assert row["engine"]["streams"] == 4 and row["engine"]["chars_per_s"] > 0
    for client in ("wrk", "python"):
        measured = row[client]
        assert measured["client"] == client and measured["streams"] == 4
        assert measured["errors"] == {}, measured
        assert measured["requests"] > 0 and measured["chars_per_s"] > 0 and measured["server_counted_chars_per_s"] > 0
        assert measured["client_cpu_s"] > 0 and measured["server_cpu_s"] > 0
        for share in ("client_cpu_share", "server_cpu_share"):  # a share of wall x cores: never more than all of it
            assert 0 < measured[share] <= 1.05, (share, measured)
        whole = measured["wall_s"] * measured["cores"]
        assert measured["client_cpu_share"] == pytest.approx(measured["client_cpu_s"] / whole, abs=1e-3)
    assert row["wrk"]["chars_per_s"] == row["wrk"]["server_counted_chars_per_s"]  # wrk's figure is the server's count
    assert row["wrk"]["response_p50_ms"] > 0 and row["wrk"]["ttfc_p50_ms"] is None
    assert row["python"]["ttfc_p50_ms"] > 0
    section = (REPO / out / "serving-latest.md").read_text()
    assert section in (tmp_path / "RESULTS.md").read_text()  # --results-md: RESULTS.md beside --out
    assert "| 4 | wrk |" in section and "| 4 | python |" in section and "client CPU" in section
    assert f"command: `python -m benchmarks.serving --model {tiny_export}" in section
    assert (out / result["png"]).stat().st_size > 0


def test_asking_for_wrk_without_it_is_a_one_line_error(tmp_path):
    done = run_benchmark("--client", "wrk", "--streams", 4, "--out", tmp_path / "results",
                         env=cli_env(PATH=str(tmp_path)))  # a PATH with no wrk on it
    assert_one_line_error(done, "--client wrk", "apt-get install wrk", "--client python")
    assert not (tmp_path / "results").exists()
