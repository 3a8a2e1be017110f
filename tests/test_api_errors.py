"""The Python API raises the project's own errors, naming the Python argument (never a flag).

Generator.generate / stream / generate_batch / load with wrong types and values (checked by checks.py,
called from generate.py): each raises an
ArgumentTypeError (a TypeError) or ArgumentValueError (a ValueError), both ConfigError, at the
call, and the message starts with the argument's name.
"""

from __future__ import annotations

import pytest

from charrnn_export import Generator
from charrnn_export.errors import ArgumentTypeError, ArgumentValueError, CharRNNError


@pytest.fixture(scope="module")
def generator(tiny_export) -> Generator:
    return Generator.load(str(tiny_export / "model.onnx"))


CALLS = {
    "length str": (dict(length="10"), ArgumentTypeError, "length"),
    "length bool": (dict(length=True), ArgumentTypeError, "length"),
    "length negative": (dict(length=-1), ArgumentValueError, "length"),
    "temperature None": (dict(temperature=None), ArgumentTypeError, "temperature"),
    "temperature zero": (dict(temperature=0.0), ArgumentValueError, "temperature"),
    "top_k float": (dict(top_k=2.5), ArgumentTypeError, "top_k"),
    "top_k zero": (dict(top_k=0), ArgumentValueError, "top_k"),
    "top_p str": (dict(top_p="0.9"), ArgumentTypeError, "top_p"),
    "top_p above one": (dict(top_p=1.5), ArgumentValueError, "top_p"),
    "greedy int": (dict(greedy=1), ArgumentTypeError, "greedy"),
    "seed str": (dict(seed="abc"), ArgumentTypeError, "seed"),
    "seed negative": (dict(seed=-1), ArgumentValueError, "seed"),
    "seed too big": (dict(seed=2**32), ArgumentValueError, "seed"),
    "unknown bogus": (dict(unknown="drop"), ArgumentValueError, "unknown"),
    # Numbers beyond what the sampler's arrays hold (issue 18): bounded where they enter.
    "length 2**63": (dict(length=2**63), ArgumentValueError, "length"),
    "top_k 10**20": (dict(top_k=10**20), ArgumentValueError, "top_k"),
    "temperature 1e-40": (dict(temperature=1e-40), ArgumentValueError, "temperature"),
    "temperature 1e31": (dict(temperature=1e31), ArgumentValueError, "temperature"),
}


def call(generator, method: str, **kwargs):
    args = dict(length=10, seed=1)
    args.update(kwargs)
    if method == "generate_batch":
        return generator.generate_batch(["ROMEO:", "JULIET:"], **args)
    if method == "stream":
        return list(generator.stream("ROMEO:", **args))
    return generator.generate("ROMEO:", **args)


def assert_names_argument(error: BaseException, name: str) -> None:
    assert isinstance(error, CharRNNError)
    assert str(error).startswith(name), str(error)
    assert "--" not in str(error), str(error)


@pytest.mark.parametrize("method", ["generate", "stream", "generate_batch"])
@pytest.mark.parametrize("case", list(CALLS))
def test_wrong_arguments_raise_the_projects_errors_naming_them(case, method, generator):
    kwargs, error_type, name = CALLS[case]
    with pytest.raises(error_type) as caught:
        call(generator, method, **kwargs)
    assert_names_argument(caught.value, name)


@pytest.mark.parametrize("start,error_type,name", [(None, ArgumentTypeError, "start"), (5, ArgumentTypeError, "start"),
                                                    (b"ROMEO", ArgumentTypeError, "start")])
def test_a_start_that_is_not_a_string(start, error_type, name, generator):
    with pytest.raises(error_type) as caught:
        generator.generate(start, 10)
    assert_names_argument(caught.value, name)


@pytest.mark.parametrize("starts", ["ROMEO:", [], ["ROMEO:", 3], None])
def test_generate_batch_needs_a_list_of_strings(starts, generator):
    with pytest.raises((ArgumentTypeError, ArgumentValueError)) as caught:
        generator.generate_batch(starts, 10)
    assert_names_argument(caught.value, "starts")


@pytest.mark.parametrize("kwargs,error_type,name,listed", [
    (dict(runtime="bogus"), ArgumentValueError, "runtime", "onnx, savedmodel, keras"),
    (dict(device="tpu"), ArgumentValueError, "device", "cpu, cuda"),
    (dict(threads="x"), ArgumentTypeError, "threads", ""),
    (dict(threads=-1), ArgumentValueError, "threads", ""),
    (dict(threads=100_000), ArgumentValueError, "threads", "CPU"),
    (dict(path=3), ArgumentTypeError, "path", ""),
])
def test_load_checks_its_arguments_and_lists_the_valid_choices(kwargs, error_type, name, listed, tiny_export):
    kwargs = {"path": str(tiny_export / "model.onnx"), **kwargs}
    with pytest.raises(error_type) as caught:
        Generator.load(**kwargs)
    assert_names_argument(caught.value, name)
    assert listed in str(caught.value)


@pytest.mark.parametrize("sampler", ["host", "graph"])
def test_a_top_p_below_float32s_smallest_is_greedy_on_both_samplers(tiny_export, sampler):
    """top_p=1e-46 was an IndexError in generate; it rounds to 0 in float32 and is greedy."""
    generator = Generator.load(str(tiny_export / "model.onnx"), sampler=sampler)
    greedy = generator.generate("ROMEO:", 100, greedy=True)
    assert generator.generate("ROMEO:", 100, top_p=1e-46, seed=1) == greedy
    assert generator.generate_batch(["ROMEO:", "ROMEO:"], 100, top_p=1e-46, seed=1) == [greedy, greedy]


def test_an_argument_error_names_the_argument_in_param(generator):
    with pytest.raises(ArgumentValueError) as caught:
        generator.generate("ROMEO:", 2**63)
    assert caught.value.param == "length"
