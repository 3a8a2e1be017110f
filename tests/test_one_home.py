"""Each rule has one home that every user reads: a command's flag defaults are its stage's options
fields, the JavaScript page's bounds are checks.py's, and the small shared rules (row seeds,
validated sampling settings, the [UNK] mask, an export folder's model file, the GPU graph's
`control` columns) give the same answer wherever they are used."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from charrnn_export import checks, contract
from charrnn_export.errors import ArgumentValueError
from charrnn_export.rng import row_seed
from charrnn_export.sampling import SamplingConfig, Settings, broken_rows, mask_unknown, unknown_id

STATIC = Path(__file__).resolve().parent.parent / "charrnn_export" / "web" / "static"


def flag_defaults(parser: argparse.ArgumentParser) -> dict:
    """dest -> default of every flag (help and version aside)."""
    return {a.dest: a.default for a in parser._actions if a.default is not argparse.SUPPRESS}


def compared(defaults: dict, options, skip=()) -> list[str]:
    """The flags named after an options field, each asserted to default to that field."""
    fields = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    names = [name for name in defaults if name in fields and name not in skip]
    drift = {name: (defaults[name], fields[name]) for name in names if defaults[name] != fields[name]}
    assert not drift, f"flag defaults differ from {type(options).__name__}'s fields (flag, field): {drift}"
    return names


def test_sample_flags_default_to_sample_options():
    from charrnn_export.commands.sample import build_parser
    from charrnn_export.generate import DEFAULTS

    names = compared(flag_defaults(build_parser()), DEFAULTS)
    assert len(names) >= 12, names  # every flag that drives generation, not a handful


def test_sample_choices_are_the_constants_they_name():
    from charrnn_export.commands.sample import build_parser
    from charrnn_export.generate import DEFAULTS, GPU_PRECISIONS, SAMPLERS

    choices = {a.dest: tuple(a.choices) for a in build_parser()._actions if a.choices}
    assert choices == {"runtime": contract.RUNTIMES, "device": contract.DEVICES, "unknown": checks.UNKNOWN_MODES}
    for field, allowed in (("runtime", contract.RUNTIMES), ("device", contract.DEVICES), ("sampler", SAMPLERS),
                           ("gpu_precision", GPU_PRECISIONS), ("unknown", checks.UNKNOWN_MODES)):
        assert getattr(DEFAULTS, field) in allowed


def test_bench_flags_default_to_bench_config_or_to_the_mode():
    from charrnn_export.bench.config import QUICK, BenchConfig
    from charrnn_export.commands.bench import add_bench_arguments

    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    defaults = flag_defaults(parser)
    names = compared(defaults, BenchConfig(), skip=QUICK)
    assert len(names) >= 10, names
    # The fields --quick shortens default to None: the config's value for the mode then applies.
    assert {name: defaults[name] for name in QUICK} == dict.fromkeys(QUICK)


def test_train_flags_default_to_train_config():
    from charrnn_export.commands.train import add_train_parser
    from charrnn_export.train import TrainConfig

    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers())
    train = parser._subparsers._group_actions[0].choices["train"]
    assert len(compared(flag_defaults(train), TrainConfig())) >= 15


def test_serve_flags_default_to_serve_options():
    from charrnn_export.commands.serve import add_serve_parser
    from charrnn_export.generate import DEFAULTS, SAMPLERS
    from charrnn_export.serve.options import ServeOptions

    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers())
    serve = parser._subparsers._group_actions[0].choices["serve"]
    flags = flag_defaults(serve)
    options = ServeOptions()
    # --api-key defaults to $CHARRNN_EXPORT_API_KEY (None, the field's value, when it is not set).
    assert set(compared(flags, options, skip=("api_key",))) == {"slots", "queue", "max_event_rate"}
    renamed = {"max_length": options.limits.max_length, "flush_ms": options.flush_interval * 1000,
               "timeout": options.request_timeout, "threads": DEFAULTS.threads, "sampler": DEFAULTS.sampler}
    assert {name: flags[name] for name in renamed} == renamed
    sampler = next(a for a in serve._actions if a.dest == "sampler")
    assert tuple(sampler.choices) == SAMPLERS


def test_the_scheduler_and_the_app_serve_as_the_command_does():
    import inspect

    from charrnn_export.serve.options import ServeOptions
    from charrnn_export.serve.scheduler import Scheduler

    defaults = inspect.signature(Scheduler).parameters
    assert defaults["max_event_rate"].default == ServeOptions.max_event_rate
    assert defaults["flush_interval"].default == ServeOptions.flush_interval


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to import the page's sampling.js")
def test_the_pages_bounds_are_checks_bounds():
    script = (f"import * as s from {json.dumps((STATIC / 'sampling.js').as_uri())};"
              "console.log(JSON.stringify([s.SEED_LIMIT, s.MIN_TEMPERATURE, s.MAX_TEMPERATURE, s.TOP_K_LIMIT,"
              " s.LENGTH_LIMIT, s.seedProblem(-1), s.seedProblem(2 ** 32 - 1)]))")
    out = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    *bounds, negative, largest = json.loads(out.stdout)
    assert bounds == [checks.SEED_LIMIT, checks.MIN_TEMPERATURE, checks.MAX_TEMPERATURE, checks.TOP_K_LIMIT,
                      checks.LENGTH_LIMIT]
    assert "[0, 2**32)" in negative and largest is None  # the same range as checks.check_seed's
    # charrnn.js reads the bounds from sampling.js, and writes none of its own.
    api = (STATIC / "charrnn.js").read_text()
    assert "from \"./sampling.js\"" in api and "2 ** 31" not in api and "1e-6;" not in api


def test_row_seeds_wrap_at_the_seed_limit():
    assert [row_seed(5, row) for row in range(3)] == [5, 6, 7]
    assert row_seed(checks.SEED_LIMIT - 1, 1) == 0


def test_a_checked_config_is_not_checked_again_and_a_built_one_is():
    config = SamplingConfig.checked(0.5, 3, 0.9, names={"top_k": "--top-k"})
    assert config.validate() is config and config == SamplingConfig(0.5, 3, 0.9)
    with pytest.raises(ArgumentValueError) as error:
        SamplingConfig.checked(0.5, 0, names={"top_k": "--top-k"})
    assert error.value.param == "--top-k" and str(error.value).startswith("--top-k ")
    with pytest.raises(ArgumentValueError) as error:
        SamplingConfig(top_p=2.0).validate()  # built directly: checks.py's checks run
    assert error.value.param == "top_p"


def test_the_unknown_mask_hides_the_unk_column_and_no_other():
    logits = np.array([[1.0, np.nan, 2.0], [np.inf, 0.0, 1.0]], np.float32)
    assert unknown_id({"unk_id": 1}) == 1 and unknown_id({}) is None
    np.testing.assert_array_equal(broken_rows(logits, 1), [False, True])  # [UNK]'s NaN does not count
    np.testing.assert_array_equal(broken_rows(logits, None), [True, True])
    masked = mask_unknown(logits.copy(), 1)
    assert np.isneginf(masked[:, 1]).all() and masked[0, 2] == 2.0
    np.testing.assert_array_equal(mask_unknown(logits[:1, [0, 2]].copy(), None), [[1.0, 2.0]])


def test_an_export_folder_means_its_model_file(tmp_path):
    assert contract.model_file(tmp_path, "int8") == tmp_path / "model.int8.onnx"
    assert contract.step_model_path(tmp_path) == tmp_path / "model.onnx"
    assert contract.step_model_path(tmp_path / "other.onnx") == tmp_path / "other.onnx"
    assert set(contract.DECODE_FILES) == set(contract.MODEL_FILES.values())


def test_the_control_columns_are_named_once():
    from charrnn_export import decode
    from charrnn_export.decode import CONTROL_COLUMNS, control_width, forced_column, uniform_column
    from charrnn_export.runtimes import onnx_decode
    from charrnn_export.runtimes.onnx_decode import control_block, idle_control

    # One layout: the block graph (decode.block_model) and the rows the decoder fills read the same names.
    assert onnx_decode.control_width is decode.control_width and onnx_decode.CONTROL_COLUMNS is CONTROL_COLUMNS

    settings = Settings.of([SamplingConfig(0.5, 3, 0.9), SamplingConfig(greedy=True)])
    reset = np.array([True, False])
    uniforms, forced = np.full((2, 4), 0.25), np.array([[7, -1, -1, -1], [-1, -1, -1, -1]])
    control = control_block(settings, reset, uniforms, forced)
    assert control.shape == (2, control_width(4)) == (2, len(CONTROL_COLUMNS) + 8)
    values = {**settings._asdict(), contract.RESET: reset}
    for column, name in enumerate(CONTROL_COLUMNS):
        np.testing.assert_array_equal(control[:, column], values[name].astype(np.float64))
    np.testing.assert_array_equal(control[:, [uniform_column(s) for s in range(4)]], uniforms)
    np.testing.assert_array_equal(control[:, [forced_column(s, 4) for s in range(4)]], forced)
    assert forced_column(3, 4) == control_width(4) - 1 and uniform_column(0) == len(CONTROL_COLUMNS)
    idle = idle_control(3, 4, reset=True)
    assert idle[:, CONTROL_COLUMNS.index(contract.TEMPERATURE)].tolist() == [1.0] * 3
    assert idle[:, CONTROL_COLUMNS.index(contract.TOP_P)].tolist() == [1.0] * 3
    assert idle[:, CONTROL_COLUMNS.index(contract.RESET)].tolist() == [1.0] * 3


def test_the_engine_driver_reads_every_end_the_same_way(tiny_export):
    """drive/step_once: what the Python API, the server and the benchmarks read an engine through."""
    from charrnn_export.engine import FINISH_ABORT, FINISH_LENGTH, Engine, HostSampler, drive, step_once, submit_rows
    from charrnn_export.generate import Generator
    from charrnn_export.runtimes.onnx import OnnxRuntime

    engine = Engine(HostSampler(OnnxRuntime(tiny_export / "model.onnx"), 4), 4)
    sampling = SamplingConfig.checked(0.8)
    rids = submit_rows(engine, [[1, 2], [3], [4, 5, 6]], 20, sampling, seed=7)
    first = step_once(engine)
    engine.cancel(rids[2])
    made: dict[int, list[int]] = {rid: [] for rid in rids}
    finishes = {}
    for step in [first, *drive(engine)]:
        for rid, token in zip(*(a.tolist() for a in step[:2])):
            made[rid].append(token)
        finishes.update({end.rid: (end.finish, end.cause) for end in step[2]})
    assert finishes == {rids[0]: (FINISH_LENGTH, None), rids[1]: (FINISH_LENGTH, None),
                        rids[2]: (FINISH_ABORT, None)}
    # Row i is seeded row_seed(7, i): the text Generator.generate makes with seed 7 + i.
    generator = Generator.load(str(tiny_export / "model.onnx"), sampler="host")
    chars = generator.vocab.chars
    assert "".join(chars[t] for t in made[rids[1]]) == generator.generate(chars[3], 20, temperature=0.8, seed=8)


def test_to_web_reads_and_refuses_through_the_one_manifest_reader(tmp_path):
    from charrnn_export.errors import ConfigError
    from charrnn_export.files import SITE_MANIFEST, Manifest, check_no_foreign
    from charrnn_export.web import build

    build.write_manifest(tmp_path, {"index.html", "ort/ort.wasm"})
    (tmp_path / "index.html").write_text("ours")
    assert Manifest.read(tmp_path, SITE_MANIFEST).files == {"index.html", "ort/ort.wasm"} == build.check_out(tmp_path)
    assert Manifest.read(tmp_path) is None  # a site's manifest is not a run's or an export's
    (tmp_path / "notes.txt").write_text("the user's")
    with pytest.raises(ConfigError, match=r"holds files charrnn-export did not write \(notes.txt\)"):
        build.check_out(tmp_path)
    with pytest.raises(ConfigError, match=r"^--out x holds files charrnn-export did not write \(notes.txt\); fix$"):
        check_no_foreign(tmp_path, Manifest.read(tmp_path, SITE_MANIFEST), "--out x", "fix")
    (tmp_path / SITE_MANIFEST).write_text('{"tool": "charrnn-export", "kind": "export", "files": []}')
    with pytest.raises(ConfigError, match="damaged"):  # an export's record under the site's name
        build.check_out(tmp_path)
