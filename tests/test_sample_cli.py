"""`python -m charrnn_export.sample` and `charrnn-export sample`, run as a user runs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from charrnn_export import Generator
from charrnn_export.generate import ARTIFACTS_ENV

PREFIX = "charrnn-export: error:"
SEPARATOR = "-" * 40


def run(*args, env_extra: dict | None = None, module: str = "charrnn_export.sample", check_rc: int | None = 0):
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", **(env_extra or {})}
    result = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                            encoding="utf-8", env=env, timeout=300)
    if check_rc is not None:
        assert result.returncode == check_rc, result.stderr
    return result


@pytest.fixture(scope="module")
def model(tiny_export) -> Path:  # noqa: F811 - pytest fixture
    return tiny_export / "model.onnx"


@pytest.fixture(scope="module")
def generator(model) -> Generator:
    return Generator.load(str(model))


def test_prints_the_start_then_the_generated_text(model, generator):
    result = run("--model", model, "--start", "ROMEO: ", "--length", 1000, "--seed", 3)
    assert result.stdout == "ROMEO: " + generator.generate("ROMEO: ", 1000, seed=3) + "\n"
    assert "seed 3" in result.stderr and "generated 1000 characters" in result.stderr  # the log: stderr only


def test_same_seed_same_text_and_the_options_reach_the_sampler(model, generator):
    args = ("--model", model, "--length", 300, "--temperature", 0.7, "--top-k", 8, "--top-p", 0.9, "--seed", 11)
    first, second = run(*args).stdout, run(*args).stdout
    assert first == second
    assert first == "ROMEO: " + generator.generate("ROMEO: ", 300, temperature=0.7, top_k=8, top_p=0.9, seed=11) + "\n"
    greedy = run("--model", model, "--length", 200, "--greedy", "--start", "JULIET:").stdout
    assert greedy == "JULIET:" + generator.generate("JULIET:", 200, greedy=True) + "\n"


def test_without_a_seed_it_picks_one_and_says_which(model):
    result = run("--model", model, "--length", 200)
    seed = int(result.stderr.split("seed ")[1].split()[0])
    assert run("--model", model, "--length", 200, "--seed", seed).stdout == result.stdout


def test_num_samples_as_text_with_separators(model, generator):
    result = run("--model", model, "--length", 120, "--num-samples", 3, "--seed", 2)
    texts = generator.generate_batch(["ROMEO: "] * 3, 120, seed=2)
    assert result.stdout == f"{SEPARATOR}\n".join(f"ROMEO: {t}\n" for t in texts)
    assert len(set(texts)) == 3


def test_num_samples_as_json_lines(model, generator):
    result = run("--model", model, "--length", 80, "--num-samples", 4, "--seed", 2, "--json", "--start", "MENENIUS:")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2, 3]
    assert all(line["start"] == "MENENIUS:" and line["seed"] == 2 and line["runtime"] == "onnx" for line in lines)
    assert [line["text"] for line in lines] == generator.generate_batch(["MENENIUS:"] * 4, 80, seed=2)


def test_stream_gives_the_same_text(model):
    args = ("--model", model, "--length", 400, "--seed", 5, "--temperature", 0.9)
    assert run(*args, "--stream").stdout == run(*args).stdout


def test_stream_with_several_samples_is_refused_clearly(model):
    result = run("--model", model, "--stream", "--num-samples", 2, check_rc=2)
    assert result.stderr.startswith(f"{PREFIX} --stream prints one sample")
    assert result.stdout == ""


def test_out_writes_the_file_and_nothing_to_stdout(model, tmp_path):
    out = tmp_path / "sub" / "sample.txt"
    result = run("--model", model, "--length", 200, "--seed", 1, "--out", out)
    assert result.stdout == ""
    assert out.read_text(encoding="utf-8") == run("--model", model, "--length", 200, "--seed", 1).stdout
    assert [p.name for p in out.parent.iterdir()] == ["sample.txt"]  # no temporary file left behind
    streamed = tmp_path / "streamed.txt"
    result = run("--model", model, "--length", 200, "--seed", 1, "--out", streamed, "--stream")
    assert result.stdout == streamed.read_text(encoding="utf-8") == out.read_text(encoding="utf-8")


def test_out_through_a_symlink_replaces_the_target_and_keeps_the_link(model, tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("old\n")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    run("--model", model, "--length", 50, "--seed", 1, "--out", link)
    assert link.is_symlink()
    assert target.read_text(encoding="utf-8") == run("--model", model, "--length", 50, "--seed", 1).stdout


def test_unknown_skip_drops_the_characters_and_says_so(model, generator):
    result = run("--model", model, "--start", "RO€ME✓O: ", "--unknown", "skip", "--length", 100, "--seed", 4)
    assert result.stdout == "ROMEO: " + generator.generate("ROMEO: ", 100, seed=4) + "\n"
    assert "'€' '✓'" in result.stderr


def test_charrnn_export_sample_is_the_same_command(model):
    args = ("--model", model, "--length", 300, "--seed", 9, "--num-samples", 2)
    assert run("sample", *args, module="charrnn_export.cli").stdout == run(*args).stdout
    script = Path(sys.executable).with_name("charrnn-export")
    if script.exists():  # the installed console script
        result = subprocess.run([str(script), "sample", *map(str, args)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert result.stdout == run(*args).stdout
    help_text = run("sample", "--help", module="charrnn_export.cli").stdout
    for flag in ("--runtime", "--top-p", "--num-samples", "--stream", "--unknown", "--vocab", "--device"):
        assert flag in help_text


# ---------------------------------------------------------------- the shipped model


def test_missing_shipped_model_says_to_pass_model(tmp_path):
    result = run("--length", 10, env_extra={ARTIFACTS_ENV: str(tmp_path)}, check_rc=2)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX) and "pass --model" in lines[0], result.stderr
    assert "int8" not in lines[0] and "model.onnx" in lines[0]
    result = run("--model", "int8", "--length", 10, env_extra={ARTIFACTS_ENV: str(tmp_path)}, check_rc=2)
    assert "model.int8.onnx" in result.stderr and "pass --model" in result.stderr


def test_shipped_models_are_the_default(tiny_export):  # noqa: F811
    env = {ARTIFACTS_ENV: str(tiny_export)}  # an export directory holds model.onnx and model.int8.onnx
    default = run("--length", 100, "--seed", 1, env_extra=env)
    explicit = run("--model", tiny_export / "model.onnx", "--length", 100, "--seed", 1)
    assert default.stdout == explicit.stdout
    int8 = run("--model", "int8", "--length", 100, "--seed", 1, env_extra=env)
    assert "model.int8.onnx" in int8.stderr


# ---------------------------------------------------------------- errors: one line, status 2


def corrupt_model(tmp_path) -> Path:
    path = tmp_path / "corrupt.onnx"
    path.write_text("this is a text file, not an ONNX model\n")
    return path


def model_without_vocab(tmp_path, model) -> Path:
    import onnx

    proto = onnx.load(str(model))
    del proto.metadata_props[:]
    path = tmp_path / "novocab.onnx"
    onnx.save(proto, str(path))
    return path


def model_with_wrong_vocab(tmp_path, model) -> Path:
    import onnx

    proto = onnx.load(str(model))
    for entry in proto.metadata_props:
        if entry.key == "vocab":
            entry.value = json.dumps(json.loads(entry.value)[:-1])  # one character short
    path = tmp_path / "wrongvocab.onnx"
    onnx.save(proto, str(path))
    return path


ERROR_CASES = {
    "unknown start chars": (["--start", "ROM€O✓: "], ["'€' '✓'", "--unknown skip"]),
    "unknown chars only, skipped": (["--start", "€✓", "--unknown", "skip"], ["empty"]),
    "empty start": (["--start", ""], ["empty"]),
    "negative length": (["--length", "-1"], ["--length must be >= 0"]),
    "zero temperature": (["--temperature", "0"], ["--temperature"]),
    "negative temperature": (["--temperature", "-0.5"], ["--temperature"]),
    "top-p zero": (["--top-p", "0"], ["--top-p must be in (0, 1]"]),
    "top-p above one": (["--top-p", "1.5"], ["--top-p must be in (0, 1]"]),
    "top-k zero": (["--top-k", "0"], ["--top-k must be >= 1"]),
    "top-k beyond int64": (["--top-k", str(10**20)], ["--top-k must be <= 2**31 - 1"]),
    "length beyond int64": (["--length", str(2**63)], ["--length must be <= 2**40"]),
    "length beyond memory": (["--length", str(2**40)], ["--length 1,099,511,627,776 needs about", "use at most"]),
    "tiny temperature": (["--temperature", "1e-38"], ["--temperature must be in [1e-06, 1e+30]", "greedy"]),
    "huge temperature": (["--temperature", "1e31"], ["--temperature must be in [1e-06, 1e+30]"]),
    "negative seed": (["--seed", "-1"], ["--seed must be in [0, 2**32)"]),
    "seed too large": (["--seed", str(2**32)], ["--seed must be in [0, 2**32)"]),
    "num-samples zero": (["--num-samples", "0"], ["--num-samples"]),
    "num-samples huge": (["--num-samples", "100000000"], ["--num-samples must be in [1, 1,000,000]"]),
    "num-samples beyond memory": (["--num-samples", "1000000", "--length", "100000"], ["--num-samples", "GiB"]),
    "stream and json": (["--stream", "--json"], ["--json"]),
    "vocab with onnx": (["--vocab", "vocab.json"], ["--vocab is for --runtime keras"]),
    "threads zero": (["--threads", "0"], ["--threads"]),
    "missing model": ("missing", ["not found", "--model"]),
    "corrupt model": ("corrupt", ["cannot load", "corrupt.onnx"]),
    "model without vocabulary": ("novocab", ["no vocabulary", "novocab.onnx"]),
    "vocabulary that does not fit the model": ("wrongvocab", ["logits but", "wrongvocab.onnx"]),
    "directory as --out": ("out-dir", ["is a directory"]),
    "pipe as --out": ("out-fifo", ["not a regular file"]),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_are_one_line_with_status_2(case, model, tmp_path):
    args, expected = ERROR_CASES[case]
    if args == "missing":
        args = ["--model", str(tmp_path / "missing.onnx")]
    elif args == "corrupt":
        args = ["--model", str(corrupt_model(tmp_path))]
    elif args == "novocab":
        args = ["--model", str(model_without_vocab(tmp_path, model))]
    elif args == "wrongvocab":
        args = ["--model", str(model_with_wrong_vocab(tmp_path, model))]
    elif args == "out-dir":
        args = ["--out", str(tmp_path)]
    elif args == "out-fifo":  # (a FIFO, not /dev/null: were the check broken, the write would replace it)
        os.mkfifo(tmp_path / "fifo")
        args = ["--out", str(tmp_path / "fifo")]
    if "--model" not in args:
        args = ["--model", str(model), *args]
    result = run(*args, check_rc=2)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(PREFIX + " "), result.stderr
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in lines[0]
    assert result.stdout == ""


def test_same_errors_from_charrnn_export_sample(model):
    result = run("sample", "--model", model, "--top-k", 0, module="charrnn_export.cli", check_rc=2)
    assert result.stderr == f"{PREFIX} --top-k must be >= 1, got 0\n"


def test_bad_flag_values_are_one_line_too(model):
    result = run("--model", model, "--length", "many", check_rc=2)
    assert len(result.stderr.splitlines()) == 1 and "--length" in result.stderr
    result = run("--model", model, "--runtime", "torch", check_rc=2)
    assert len(result.stderr.splitlines()) == 1 and "--runtime" in result.stderr


def test_cuda_without_a_gpu_is_a_clear_error(model):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has onnxruntime's CUDA provider")
    result = run("--model", model, "--device", "cuda", check_rc=2)
    assert result.stderr.startswith(f"{PREFIX} device 'cuda'") and len(result.stderr.splitlines()) == 1
    assert "onnxruntime-gpu" in result.stderr


def test_keras_checkpoint_without_vocab_needs_vocab(tiny_run, model, tmp_path):  # noqa: F811
    weights = tmp_path / "weights.npz"  # a checkpoint on its own: no vocab.json beside it
    shutil.copy(tiny_run / "best.npz", weights)
    result = run("--runtime", "keras", "--model", weights, "--length", 50, "--seed", 1, check_rc=2)
    assert result.stderr.splitlines()[-1] == f"{PREFIX} {weights} holds no vocabulary; pass --vocab vocab.json"
    assert "Traceback" not in result.stderr
    with_vocab = run("--runtime", "keras", "--model", weights, "--vocab", tiny_run / "vocab.json", "--length", 50,
                     "--seed", 1)
    # The same text as the exported model gives (test_runtimes_agree shows the runtimes agree).
    exported = run("--model", model, "--length", 50, "--seed", 1)
    assert with_vocab.stdout == exported.stdout


def test_a_top_p_below_float32s_smallest_is_greedy(model):
    """1e-46 rounds to 0 in float32: greedy (it was an IndexError)."""
    tiny = run("--model", model, "--length", 200, "--top-p", "1e-46", "--seed", 4)
    assert tiny.stdout == run("--model", model, "--length", 200, "--greedy").stdout


def test_stream_to_stdout_alone_keeps_nothing_so_any_length_is_allowed(model):
    """--stream without --out writes to the terminal only: the memory bound on --length does not apply."""
    proc = subprocess.Popen([sys.executable, "-m", "charrnn_export.sample", "--model", str(model), "--stream",
                             "--length", str(2**40), "--seed", "1", "-q"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert len(proc.stdout.read(2000)) == 2000  # it runs and streams
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (mounting needs root; skipped where it is refused)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("stream", [False, True])
def test_a_full_disk_loses_nothing_generated(model, small_disk, stream):
    """200,000 characters do not fit on 64 KiB: one line, exit 2, the text on stdout, the old file kept."""
    out = small_disk / "out.txt"
    out.write_text("the user's old text\n", encoding="utf-8")
    args = ["--model", model, "--length", 200_000, "--seed", 5, "--out", out] + (["--stream"] if stream else [])
    result = run(*args, check_rc=2)
    lines = result.stderr.splitlines()
    assert lines[-1].startswith(PREFIX) and "the disk is full" in lines[-1], result.stderr
    assert "200,000 character(s)" in lines[-1] and "stdout" in lines[-1]
    assert "Traceback" not in result.stderr
    expected = run("--model", model, "--length", 200_000, "--seed", 5).stdout
    assert result.stdout == expected  # every character made, on stdout
    assert out.read_text(encoding="utf-8") == "the user's old text\n"  # atomic: the old file stands
    assert sorted(p.name for p in small_disk.iterdir()) == ["out.txt"]  # no partial file left behind
