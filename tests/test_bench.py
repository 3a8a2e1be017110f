"""The benchmark suite runs end to end and writes well-formed results. No timing is asserted:
the numbers depend on the machine; the tests check that they exist and are reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import repo
from charrnn_export import bench
from charrnn_export.commands import bench as bench_command
from charrnn_export.errors import ConfigError, ParityError

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROW_KEYS = {"contestant", "precision", "batch", "steps", "chars_per_run", "ms_per_step", "ms_median", "ms_p10",
            "ms_p90", "chars_per_s", "priming_ms_median", "speedup", "floor_ms", "floor_ratio"}


def run_module(module: str, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def read_outputs(out: Path, name: str) -> tuple[dict, str]:
    stamped = sorted(out.glob(f"{name}-2*.json"))
    assert len(stamped) == 1, sorted(p.name for p in out.iterdir())
    for suffix in ("json", "md", "png"):
        assert stamped[0].with_suffix(f".{suffix}").is_file()
        assert (out / f"{name}-latest.{suffix}").read_bytes() == stamped[0].with_suffix(f".{suffix}").read_bytes()
    assert (out / f"{name}-latest.png").read_bytes()[:8] == PNG_MAGIC
    return json.loads(stamped[0].read_text()), stamped[0].with_suffix(".md").read_text()


@pytest.fixture(scope="module")
def quick_generation(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = run_module("benchmarks.generation", "--quick", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_quick_generation_writes_json_markdown_and_png(quick_generation):
    out, result = quick_generation
    results, markdown = read_outputs(out, "generation-quick")
    assert {"machine", "model", "settings", "devices", "targets", "command", "date"} <= set(results)
    assert {"cpu", "cores", "versions", "load_average"} <= set(results["machine"])
    assert {"numpy", "onnxruntime", "tensorflow"} <= set(results["machine"]["versions"])
    assert "benchmarks.generation --quick" in results["command"]
    cpu = results["devices"]["cpu"]
    rows = {(r["contestant"], r["batch"]) for r in cpu["rows"]}
    batches = results["settings"]["batch_sizes"]
    expected = {("tutorial", 1)} | {(c, b) for c in bench.CONTESTANTS[1:] for b in batches}
    assert rows == expected
    for row in cpu["rows"]:
        assert ROW_KEYS <= set(row)
        assert row["chars_per_s"] > 0 and row["ms_p10"] <= row["ms_median"] <= row["ms_p90"]
        assert row["steps"] == results["settings"]["steps_by_batch"][str(row["batch"])]
    for batch in map(str, batches):
        assert {"fp32", "int8"} <= set(cpu["floors"]["by_batch"][batch])
    check = cpu["greedy_check"]
    assert all(check["results"][c]["identical"] for c in ("tf-function", "savedmodel", "onnx-fp32"))
    assert 0.0 <= check["int8_teacher_forced_top1"] <= 1.0
    # No GPU here (or one): either way the results say so, never a blank.
    cuda = results["devices"]["cuda"]
    assert cuda["available"] or cuda["note"] == bench.NO_GPU
    assert len(results["targets"]) == 4
    # The markdown: a table with one line per row, the floors, the GPU line and the targets.
    assert "| contestant | batch | steps | ms/step |" in markdown
    assert markdown.count("| onnx-fp32 |") == len(batches)
    assert "x floor" in markdown and "Greedy agreement" in markdown and "## Targets" in markdown
    if not cuda["available"]:
        assert bench.NO_GPU in markdown
    assert "| contestant | batch |" in result.stdout  # the table goes to stdout, the log to stderr


def test_cli_bench_subcommand_is_registered():
    from charrnn_export.cli import build_parser

    args = build_parser().parse_args(["bench", "--quick", "--batch-sizes", "1", "--contestants", "onnx-fp32"])
    assert args.func is bench_command.run_bench
    config = bench_command.config_from_args(args)
    assert config.quick and config.batch_sizes == (1,) and config.contestants == ("onnx-fp32",)


def test_checkpoint_required_for_the_tensorflow_contestants():
    with pytest.raises(ConfigError, match="--checkpoint"):
        bench.BenchConfig().validate()
    bench.BenchConfig(model="some/export", contestants=("onnx-fp32", "onnx-int8")).validate()  # no TF: fine


def test_every_contestant_in_a_row_takes_the_same_steps():
    config = bench.BenchConfig(chars=500, min_steps=50)
    assert [config.steps(b) for b in (1, 8, 64, 256)] == [500, 62, 50, 50]


def test_fp32_contestants_that_disagree_are_refused():
    precision = {"tutorial": "fp32", "onnx-fp32": "fp32", "onnx-int8": "int8"}
    texts = {"tutorial": "the king", "onnx-fp32": "the kind", "onnx-int8": "thy kin"}
    with pytest.raises(ParityError, match="onnx-fp32 differs from tutorial at character 7"):
        bench.compare_greedy(texts, precision)
    texts["onnx-fp32"] = "the king"
    check = bench.compare_greedy(texts, precision)  # int8 may differ: reported, not refused
    assert check["results"]["onnx-int8"]["first_difference"] == 2
    assert check["results"]["onnx-fp32"]["identical"]


def test_results_md_is_built_from_the_latest_results(quick_generation, tmp_path):
    out, _ = quick_generation
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    (results_dir / "generation-latest.json").write_bytes((out / "generation-quick-latest.json").read_bytes())
    path = repo.refresh_results_md(results_dir)
    text = path.read_text()
    assert path == tmp_path / "RESULTS.md"
    assert "## Generation benchmark" in text and "### CPU" in text and "results/generation-latest.png" in text
    assert "Not measured yet: run `python -m benchmarks.training`" in text


def test_quick_training_benchmark(tmp_path):
    result = run_module("benchmarks.training", "--quick", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    results, markdown = read_outputs(tmp_path, "training-quick")
    for side in (results["fit"]["loop"], results["project"]["loop"], results["project"]["train_step"]):
        assert side["steps"] == results["settings"]["steps"] and side["chars_per_s"] > 0
    assert results["project_over_fit"] > 0
    assert "| model.fit (tutorial) |" in markdown and "| project train(): whole loop |" in markdown


class FakeTensorFlow:
    def __init__(self, gpus):
        self.config = type("config", (), {"list_physical_devices": staticmethod(lambda kind: gpus)})


def test_gpu_table_or_a_line_that_says_why_not(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    devices, notes = bench.available_devices(FakeTensorFlow([]), "auto")
    assert devices == ["cpu"] and notes["cuda"] == bench.NO_GPU
    with pytest.raises(ConfigError, match="no GPU"):
        bench.available_devices(FakeTensorFlow([]), "cuda")
    devices, notes = bench.available_devices(FakeTensorFlow(["GPU:0"]), "auto")
    assert devices == ["cpu", "cuda"] and "cuda" not in notes


# Runs `charrnn-export bench ARGS` with TensorFlow unimportable, as in a plain `pip install .`.
WITHOUT_TENSORFLOW = """
import sys
sys.modules["tensorflow"] = None  # `import tensorflow` now raises ImportError
from charrnn_export.cli import main
rc = main(sys.argv[1:])
sys.exit(rc)
"""


def test_bench_of_an_export_runs_without_tensorflow_with_the_engine_contestants(tiny_export, tmp_path):
    contestants = ("onnx-fp32", "onnx-int8", "decode-fp32", "decode-int8")
    result = subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW, "bench", "--model", str(tiny_export), "--quick",
                             "--contestants", *contestants, "--batch-sizes", "1", "8", "--out", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=240,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "generation-quick-latest.json").read_text())
    cpu = results["devices"]["cpu"]
    assert {(r["contestant"], r["batch"]) for r in cpu["rows"]} == {(c, b) for c in contestants for b in (1, 8)}
    assert cpu["greedy_check"]["results"]["decode-fp32"]["identical"]  # the engine's two samplers agree
    assert "tensorflow" not in results["machine"]["versions"] or results["settings"]["tf_intra_op_threads"] is None
    for row in cpu["floors"]["by_batch"].values():
        assert row["decode-fp32"]["chars_per_s"] > 0 and row["decode-int8"]["chars_per_s"] > 0
    assert "| decode-fp32 | 8 |" in result.stdout and "Whole-step floors" in result.stdout


def test_the_command_leaves_results_md_to_the_repository(tmp_path):
    result = subprocess.run([sys.executable, "-m", "charrnn_export.cli", "bench", "--quick", "--results-md",
                             "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "python -m benchmarks.generation --results-md" in result.stderr
    assert not any(tmp_path.iterdir())


BAD_FLAGS = {
    "batch beyond the bound": (["--batch-sizes", "100000000"], "--batch-sizes must be in [1, 65,536]"),
    "batch zero": (["--batch-sizes", "1", "0"], "--batch-sizes must be in [1, 65,536], got 0"),
    "negative seed": (["--seed", "-1"], "--seed must be in [0, 2**32)"),
    "seed whose repeats pass 2**32": (["--seed", str(2**32 - 1)], "use --seed <= 4294967294"),
    "chars beyond int64": (["--chars", str(10**20)], "--chars must be in [1, 1,099,511,627,776]"),
    "repeats": (["--repeats", "100000"], "--repeats must be in [1, 1,000]"),
    "tiny temperature": (["--temperature", "1e-38"], "--temperature must be in [1e-06, 1e+30]"),
    "out under a file": (["--out", "README.md/results"], "README.md"),
}


@pytest.mark.parametrize("case", list(BAD_FLAGS))
def test_every_flag_is_checked_before_anything_is_measured(case, tmp_path):
    """One line, exit 2, before the tiny model is even made (nothing on stdout, nothing written)."""
    args, fragment = BAD_FLAGS[case]
    out = [] if "--out" in args else ["--out", str(tmp_path / "results")]
    result = subprocess.run([sys.executable, "-m", "charrnn_export.cli", "bench", "--quick", *args, *out], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("charrnn-export: error: ") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "results").exists()


def test_a_start_outside_the_vocabulary_is_refused_before_measuring(tmp_path):
    result = subprocess.run([sys.executable, "-m", "charrnn_export.cli", "bench", "--quick", "--start", "€",
                             "--contestants", "onnx-fp32", "--out", str(tmp_path / "results")], cwd=REPO,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith(
        "charrnn-export: error: --start '€'"), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "results").exists()


def test_batch_sizes_that_do_not_fit_in_memory_are_refused(monkeypatch):
    from charrnn_export import checks

    monkeypatch.setattr(checks, "available_memory", lambda: 64 * 2**20)  # a 64 MiB machine
    with pytest.raises(ConfigError, match=r"^--batch-sizes 4,096 needs about .*use at most 128"):
        bench.BenchConfig.quick_defaults(batch_sizes=(1, 4096)).validate()


def test_sampler_overhead_times_the_engine_against_the_bare_step_and_records_it(tiny_export, tmp_path):
    """benchmarks/sampler_overhead.py on the tiny model: a row per batch size, and its --results-md
    section (here written to a results folder of the test's) in the RESULTS.md beside it."""
    import argparse

    from benchmarks import sampler_overhead

    model = str(tiny_export / "model.int8.onnx")
    script = subprocess.run([sys.executable, "benchmarks/sampler_overhead.py", "--model", model, "--batch-sizes", "1",
                             "3", "--repeats", "1", "--length", "30"], cwd=REPO, capture_output=True, text=True,
                            timeout=240)
    assert script.returncode == 0, script.stderr[-3000:]
    rows = [line.split() for line in script.stdout.splitlines() if line.split()[:1] in (["1"], ["3"])]
    assert [row[0] for row in rows] == ["1", "3"] and all(float(row[1]) > 0 and float(row[2]) > 0 for row in rows)
    env = sampler_overhead.environment(model, None)
    result = {"batch": 1, "bare_step": {"median_us": 10.0, "min_us": 9.0, "max_us": 11.0},
              "generator_step": {"median_us": 10.5, "min_us": 10.0, "max_us": 12.0},
              "time_to_first_char": {"median_us": 900.0}, "chars_per_s": 95238.0}
    args = argparse.Namespace(repeats=1, length=30)
    section = sampler_overhead.record(env, {"temperature": 1.0}, args, [result], out=tmp_path / "results")
    assert section.name.startswith("overhead-int8-2")
    assert "| 1 | 10.0 (9.0-11.0) | 10.5 (10.0-12.0) | 1.050x |" in section.read_text()
    assert "## The engine against the bare step: int8" in (tmp_path / "RESULTS.md").read_text()
