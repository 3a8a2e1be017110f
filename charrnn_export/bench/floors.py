"""Floors: this machine's own ceilings for one step, measured beside the contestants.

    measure_floors(units, vocab_size, batch_sizes, threads, device, tf, ort_cuda, scratch, budget_s,
                   export_dir) -> {"widths", "weights", "by_batch": {batch: {floor: figures}}}
    io_bound_step(step_path, batch, device) -> run_block()   the step on the device, IO binding,
                                                              a CUDA graph on CUDA (20 steps a call)

Per batch size:
    fp32, int8         the step's two matrix products alone (state x recurrent kernel, state x output
                       kernel): fp32 the fastest of onnxruntime, TensorFlow and numpy; int8 through
                       onnxruntime's dynamic int8 MatMul, the kernel model.int8.onnx uses. Building
                       those graphs needs the `onnx` package; without it fp32 is numpy's alone.
    decode-fp32/-int8  the export's decode model (step + sampling), one session.run alone: what the
                       decode contestants would reach with no engine around it
    step-cuda-graph    (CUDA) the step model alone with its state on the GPU, IO binding and a CUDA
                       graph: no sampling, no host work (benchmarks/gpu_engine.py times the same)
"""

from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path

import numpy as np

from .. import contract

BLOCK = 20  # steps per timed call of io_bound_step: one device sync per block, not per step


def matmul_graph(units: int, widths: tuple[int, ...], seed: int):
    """An ONNX graph of the step's matrix products alone: state (batch, units) times each weight."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes, outputs = [], [], []
    for i, width in enumerate(widths):
        w = (rng.standard_normal((units, width)) / math.sqrt(units)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", ["state", f"w{i}"], [f"y{i}"]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["batch", width]))
    graph = helper.make_graph(nodes, "step_matmuls",
                              [helper.make_tensor_value_info("state", TensorProto.FLOAT, ["batch", units])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def time_call(fn, budget_s: float, min_calls: int = 10) -> float:
    """Seconds per call of fn() (total time / calls, as the contestants' ms/step), after a
    warm-up, over about budget_s seconds."""
    for _ in range(3):
        fn()
    calls = 0
    t0 = time.perf_counter()
    deadline = t0 + budget_s
    while calls < min_calls or time.perf_counter() < deadline:
        fn()
        calls += 1
        if calls >= 20_000:
            break
    return (time.perf_counter() - t0) / calls


def matmul_methods(units: int, widths, threads, device: str, tf, ort_cuda: bool, scratch: Path) -> dict:
    """precision -> library -> fn(state): the ways this machine can compute the two products."""
    import onnxruntime as ort

    from ..runtimes.onnx import session_options

    methods: dict[str, dict[str, object]] = {"fp32": {}, "int8": {}}
    if importlib.util.find_spec("onnx") is not None:  # a plain install has onnxruntime but not onnx
        import onnx

        fp32_path, int8_path = scratch / "floor.fp32.onnx", scratch / "floor.int8.onnx"
        onnx.save(matmul_graph(units, widths, seed=1), str(fp32_path))
        if device == "cpu":
            from ..step_model import quantize_int8

            quantize_int8(fp32_path, int8_path)  # the same dynamic int8 MatMuls as model.int8.onnx
            for precision, path in (("fp32", fp32_path), ("int8", int8_path)):
                session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
                methods[precision]["onnxruntime"] = lambda x, session=session: session.run(None, {"state": x})
        elif ort_cuda:
            session = ort.InferenceSession(str(fp32_path), session_options(threads),
                                           providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            methods["fp32"]["onnxruntime"] = lambda x: session.run(None, {"state": x})
    rng = np.random.default_rng(0)
    weights = [(rng.standard_normal((units, w)) / math.sqrt(units)).astype(np.float32) for w in widths]
    if tf is not None and (device == "cpu" or tf.config.list_physical_devices("GPU")):
        methods["fp32"]["tensorflow"] = tensorflow_products(tf, weights, device)
    if device == "cpu":
        methods["fp32"]["numpy"] = lambda x: [x @ w for w in weights]
    return methods


def tensorflow_products(tf, weights, device: str):
    tf_device = "/GPU:0" if device == "cuda" else "/CPU:0"
    with tf.device(tf_device):
        tf_weights = [tf.constant(w) for w in weights]

    @tf.function
    def tf_products(x):
        return [tf.matmul(x, w) for w in tf_weights]

    def run_tf(x):
        with tf.device(tf_device):
            return [y.numpy() for y in tf_products(tf.constant(x))]  # numpy out, as a runtime's step

    return run_tf


def decode_step(path: Path, batch: int, units: int, threads, device: str):
    """One session.run of the decode model at `batch` (sampling at temperature 1), numpy in and out."""
    from ..runtimes.onnx import load_session

    session = load_session(path, threads, device)
    rng = np.random.default_rng(0)
    feeds = {contract.TOKEN: np.zeros(batch, np.int32),
             contract.STATE: rng.standard_normal((batch, units)).astype(np.float32),
             contract.TEMPERATURE: np.ones(batch, np.float32), contract.TOP_K: np.zeros(batch, np.int64),
             contract.TOP_P: np.ones(batch, np.float32), contract.GREEDY: np.zeros(batch, bool),
             contract.UNIFORM: rng.random(batch), contract.RESET: np.zeros(batch, bool)}
    outputs = [contract.NEXT_TOKEN, contract.STATE_OUT, contract.LOGIT_CHECK]
    return lambda: session.run(outputs, feeds)


def io_bound_step(step_path: Path, batch: int, device: str):
    """run_block(): BLOCK steps of the step model alone, its state ping-ponged between two device
    buffers (IO binding), a CUDA graph on CUDA, then one sync through a tiny copy back."""
    import onnxruntime as ort

    from ..runtimes.onnx import load_session

    graphs = device == "cuda"
    session = load_session(Path(step_path), None, device, cuda_graph=graphs)
    state_shape, logits_shape = session.get_inputs()[1].shape, session.get_outputs()[0].shape
    units = state_shape[1] if isinstance(state_shape[1], int) else 1024
    vocab = logits_shape[1] if isinstance(logits_shape[1], int) else 65
    token = ort.OrtValue.ortvalue_from_numpy(np.zeros(batch, np.int32), device, 0)
    states = [ort.OrtValue.ortvalue_from_numpy(np.zeros((batch, units), np.float32), device, 0) for _ in range(2)]
    logits = ort.OrtValue.ortvalue_from_shape_and_type([batch, vocab], np.float32, device, 0)
    runs = []
    for direction in (0, 1):
        binding = session.io_binding()
        binding.bind_ortvalue_input(contract.TOKEN, token)
        binding.bind_ortvalue_input(contract.STATE, states[direction])
        binding.bind_ortvalue_output(contract.STATE_OUT, states[1 - direction])
        binding.bind_ortvalue_output(contract.LOGITS, logits)
        options = ort.RunOptions()
        if graphs:
            options.add_run_config_entry("gpu_graph_id", str(direction + 1))
        runs.append((binding, options))

    def run_block():
        for i in range(BLOCK):
            session.run_with_iobinding(*runs[i % 2])  # BLOCK is even: the state ends where it started
        token.numpy()

    return run_block


def measure_floors(units: int, vocab_size: int, batch_sizes, threads: int | None, device: str, tf,
                   ort_cuda: bool, scratch: Path, budget_s: float, export_dir: Path | None = None) -> dict:
    """Per batch size: the seconds of each floor (module docstring) and the rates the matrix
    products imply (GB/s of weights: the memory floor at batch 1; GFLOP/s: the compute floor at
    large batches)."""
    widths = (3 * units, vocab_size)  # the recurrent kernel (z, r, h gates) and the output layer
    methods = matmul_methods(units, widths, threads, device, tf, ort_cuda, scratch)
    rng = np.random.default_rng(0)
    floors = {"widths": list(widths), "weights": units * sum(widths), "by_batch": {}, "notes": []}
    if importlib.util.find_spec("onnx") is None:
        floors["notes"].append("no int8 floor, and fp32 through numpy alone: the products' ONNX graphs need the "
                               "onnx package (pip install onnx)")
    for batch in batch_sizes:
        state = rng.standard_normal((batch, units)).astype(np.float32)
        row = {}
        for precision, fns in methods.items():
            if not fns:
                continue
            by_method = {name: time_call(lambda fn=fn: fn(state), budget_s) for name, fn in fns.items()}
            best = min(by_method, key=by_method.get)
            row[precision] = floor_figures(by_method[best], batch, units, widths, 4 if precision == "fp32" else 1)
            row[precision]["via"] = best
            row[precision]["ms_by_method"] = {name: seconds * 1e3 for name, seconds in by_method.items()}
        if export_dir is not None:
            row.update(step_floors(export_dir, batch, units, threads, device, budget_s))
        floors["by_batch"][str(batch)] = row
    return floors


def step_floors(export_dir: Path, batch: int, units: int, threads, device: str, budget_s: float) -> dict:
    """The whole-step floors of the export's models at `batch` (those whose files are there)."""
    row = {}
    decode_files = {"decode-fp32": "decode.onnx"} if device == "cuda" else {"decode-fp32": "decode.onnx",
                                                                               "decode-int8": "decode.int8.onnx"}
    for name, file in decode_files.items():
        if (export_dir / file).is_file():
            seconds = time_call(decode_step(export_dir / file, batch, units, threads, device), budget_s)
            row[name] = {"ms": seconds * 1e3, "chars_per_s": batch / seconds, "via": "onnxruntime session.run"}
    if device == "cuda" and (export_dir / "model.onnx").is_file():
        seconds = time_call(io_bound_step(export_dir / "model.onnx", batch, device), budget_s, min_calls=3) / BLOCK
        row["step-cuda-graph"] = {"ms": seconds * 1e3, "chars_per_s": batch / seconds,
                                  "via": "onnxruntime IO binding + CUDA graph"}
    return row


def floor_figures(seconds: float, batch: int, units: int, widths, bytes_per_weight: int) -> dict:
    weights = units * sum(widths)
    return {
        "ms": seconds * 1e3,
        "weights_gb_per_s": weights * bytes_per_weight / seconds / 1e9,
        "gflop_per_s": 2.0 * batch * weights / seconds / 1e9,
        "chars_per_s": batch / seconds,
    }
