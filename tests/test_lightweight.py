"""The onnx sampling path is light: numpy, onnxruntime and the standard library, never
TensorFlow, Keras, tf2onnx or the onnx package. Checked in fresh interpreters, from sys.modules."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("tensorflow", "keras", "tf_keras", "tf2onnx", "onnx", "h5py", "matplotlib", "tqdm")
ALLOWED = {"numpy", "onnxruntime", "charrnn_export", "_charrnn_export_plain"}  # the last: ours, compiled (setup.py)

# Runs `python -m charrnn_export.sample ARGS` in this interpreter, then prints the names of every
# module that was imported, as JSON, on the last line of stderr (stdout carries the sample).
SAMPLE_THEN_LIST_MODULES = textwrap.dedent("""
    import json, runpy, sys
    args = json.loads(sys.argv[1])
    sys.argv = ["charrnn_export.sample", *args]
    try:
        runpy.run_module("charrnn_export.sample", run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as e:
        status = e.code
    print(json.dumps({"status": status, "modules": sorted(sys.modules)}), file=sys.stderr)
""")


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def modules_after(code: str) -> set[str]:
    result = run_python(code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))")
    return set(json.loads(result.stdout.splitlines()[-1]))


def top_level(modules) -> set[str]:
    return {name.split(".")[0] for name in modules}


def assert_light(modules: set[str], what: str) -> None:
    heavy = sorted(name for name in modules if top_level([name]) & set(HEAVY))
    assert not heavy, f"{what} imported {heavy}"
    # Anything beyond what numpy and onnxruntime import themselves must be stdlib or ours.
    baseline = modules_after("import numpy, numpy.random, onnxruntime")  # numpy.random loads Cython's runtime
    extra = top_level(modules - baseline) - set(sys.stdlib_module_names) - ALLOWED
    assert not extra, f"{what} imported packages other than numpy, onnxruntime and the standard library: {extra}"


def test_sample_cli_with_onnx_imports_no_tensorflow_keras_tf2onnx_or_onnx(tiny_export):  # noqa: F811
    args = ["--runtime", "onnx", "--model", str(tiny_export / "model.onnx"), "--start", "ROMEO: ",
            "--length", "200", "--seed", "1", "--num-samples", "2", "--top-k", "10"]
    result = run_python(SAMPLE_THEN_LIST_MODULES, json.dumps(args))
    report = json.loads(result.stderr.splitlines()[-1])
    assert report["status"] == 0, result.stderr
    assert result.stdout.startswith("ROMEO: ") and len(result.stdout) > 400  # it really sampled
    modules = set(report["modules"])
    assert {"onnxruntime", "numpy", "charrnn_export.generate", "charrnn_export.runtimes.onnx"} <= modules
    assert_light(modules, "python -m charrnn_export.sample --runtime onnx")


def test_sample_cli_stream_and_out_are_light_too(tiny_export, tmp_path):  # noqa: F811
    args = ["--model", str(tiny_export), "--length", "100", "--seed", "1", "--stream", "--out", str(tmp_path / "a.txt")]
    result = run_python(SAMPLE_THEN_LIST_MODULES, json.dumps(args))
    report = json.loads(result.stderr.splitlines()[-1])
    assert report["status"] == 0, result.stderr
    assert_light(set(report["modules"]), "sample --stream --out")


def test_python_api_with_onnx_is_light(tiny_export):  # noqa: F811
    code = (f"from charrnn_export import Generator\n"
            f"g = Generator.load({str(tiny_export / 'model.onnx')!r}, runtime='onnx')\n"
            f"assert len(g.generate('ROMEO: ', 100, seed=1)) == 100\n"
            f"assert len(g.generate_batch(['A', 'BB'], 50, top_p=0.9)) == 2")
    assert_light(modules_after(code), "Generator.load(..., runtime='onnx').generate(...)")


@pytest.mark.parametrize("code", ["import charrnn_export", "from charrnn_export import Generator",
                                  "from charrnn_export import Generator, SamplingConfig\n"
                                  "import charrnn_export.sample, charrnn_export.runtimes"])
def test_importing_the_package_imports_no_tensorflow(code):
    modules = modules_after(code)
    assert not top_level(modules) & set(HEAVY), sorted(top_level(modules) & set(HEAVY))


def test_the_check_itself_can_fail():
    """assert_light notices a heavy package, and any package that is not stdlib, numpy or onnxruntime."""
    with pytest.raises(AssertionError, match="'onnx'"):
        assert_light(modules_after("import charrnn_export, onnx"), "importing onnx")
    with pytest.raises(AssertionError, match="google"):
        assert_light(modules_after("import charrnn_export, google.protobuf"), "importing protobuf")


@pytest.mark.parametrize("entry", ["charrnn_export.cli", "charrnn_export.sample"])
def test_a_bad_flag_for_the_keras_runtime_is_reported_before_tensorflow_is_imported(entry):
    # `charrnn-export sample` once imported TensorFlow for every non-onnx runtime before the flags
    # were checked; both entry points must now fail on --temperature 0 with TensorFlow untouched.
    args = (["sample"] if entry.endswith("cli") else []) + ["--runtime", "keras", "--model", "x", "--temperature", "0"]
    code = textwrap.dedent(f"""
        import sys
        from {entry} import main
        status = main({args!r})
        print(status, "tensorflow" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr
    assert result.stderr.startswith("charrnn-export: error: --temperature"), result.stderr
