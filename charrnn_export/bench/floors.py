"""Floors: this machine's own ceilings for one step, measured beside the contestants.

    measure_floors(matrices, state_size, batch_sizes, threads, device, tf, ort_cuda, scratch, budget_s,
                   export_dir) -> {"matrices", "weights", "by_batch": {batch: {floor: figures}}}
    io_bound_step(step_path, batch, device) -> run_block()   the step on the device, IO binding,
                                                              a CUDA graph on CUDA (20 steps a call)

Per batch size:
    fp32, int8         the step's matrix products alone (Architecture.step_matrices: each layer's
                       kernels, the output kernel), each of an input as wide as its rows: fp32 the
                       fastest of onnxruntime, TensorFlow and numpy; int8 through
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
from ..decode import decode_feeds
from ..sampling import Settings

BLOCK = 20  # steps per timed call of io_bound_step: one device sync per block, not per step


def input_name(rows: int) -> str:
    """The graph input that feeds every matrix with `rows` rows (one input per width)."""
    return f"x{rows}"


def random_matrices(matrices, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(shape) / math.sqrt(shape[0])).astype(np.float32) for shape in matrices]


def matmul_graph(matrices, seed: int):
    """An ONNX graph of the step's matrix products alone: an input (batch, rows) times each matrix."""
    from onnx import TensorProto, helper, numpy_helper

    inits, nodes, outputs = [], [], []
    for i, w in enumerate(random_matrices(matrices, seed)):
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [input_name(w.shape[0]), f"w{i}"], [f"y{i}"]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["batch", w.shape[1]]))
    inputs = [helper.make_tensor_value_info(input_name(rows), TensorProto.FLOAT, ["batch", rows])
              for rows in sorted({rows for rows, _ in matrices})]
    graph = helper.make_graph(nodes, "step_matmuls", inputs, outputs, inits)
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


def matmul_methods(matrices, threads, device: str, tf, ort_cuda: bool, scratch: Path) -> dict:
    """precision -> library -> fn(inputs): the ways this machine can compute the products;
    inputs maps input_name(rows) to a (batch, rows) array."""
    import onnxruntime as ort

    from ..runtimes.onnx import session_options

    methods: dict[str, dict[str, object]] = {"fp32": {}, "int8": {}}
    if importlib.util.find_spec("onnx") is not None:  # a plain install has onnxruntime but not onnx
        import onnx

        fp32_path, int8_path = scratch / "floor.fp32.onnx", scratch / "floor.int8.onnx"
        onnx.save(matmul_graph(matrices, seed=1), str(fp32_path))
        if device == "cpu":
            from ..step_model import quantize_int8

            quantize_int8(fp32_path, int8_path)  # the same dynamic int8 MatMuls as model.int8.onnx
            for precision, path in (("fp32", fp32_path), ("int8", int8_path)):
                session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
                methods[precision]["onnxruntime"] = lambda x, session=session: session.run(None, x)
        elif ort_cuda:
            session = ort.InferenceSession(str(fp32_path), session_options(threads),
                                           providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            methods["fp32"]["onnxruntime"] = lambda x: session.run(None, x)
    weights = random_matrices(matrices, seed=0)
    if tf is not None and (device == "cpu" or tf.config.list_physical_devices("GPU")):
        methods["fp32"]["tensorflow"] = tensorflow_products(tf, weights, device)
    if device == "cpu":
        methods["fp32"]["numpy"] = lambda x: [x[input_name(w.shape[0])] @ w for w in weights]
    return methods


def tensorflow_products(tf, weights, device: str):
    tf_device = "/GPU:0" if device == "cuda" else "/CPU:0"
    with tf.device(tf_device):
        tf_weights = [(input_name(w.shape[0]), tf.constant(w)) for w in weights]

    @tf.function
    def tf_products(x):
        return [tf.matmul(x[name], w) for name, w in tf_weights]

    def run_tf(x):
        with tf.device(tf_device):
            # numpy out, as a runtime's step
            return [y.numpy() for y in tf_products({name: tf.constant(a) for name, a in x.items()})]

    return run_tf


def decode_step(path: Path, batch: int, state_size: int, threads, device: str):
    """One session.run of the decode model at `batch` (sampling at temperature 1), numpy in and out."""
    from ..runtimes.onnx import load_session

    session = load_session(path, threads, device)
    rng = np.random.default_rng(0)
    feeds = decode_feeds(np.zeros(batch, np.int32), rng.standard_normal((batch, state_size)).astype(np.float32),
                         Settings.empty(batch), rng.random(batch))  # temperature 1, no cuts
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
    state_size = state_shape[1] if isinstance(state_shape[1], int) else 1024
    vocab = logits_shape[1] if isinstance(logits_shape[1], int) else 65
    token = ort.OrtValue.ortvalue_from_numpy(np.zeros(batch, np.int32), device, 0)
    states = [ort.OrtValue.ortvalue_from_numpy(np.zeros((batch, state_size), np.float32), device, 0) for _ in range(2)]
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


def measure_floors(matrices, state_size: int, batch_sizes, threads: int | None, device: str, tf,
                   ort_cuda: bool, scratch: Path, budget_s: float, export_dir: Path | None = None) -> dict:
    """Per batch size: the seconds of each floor (module docstring) and the rates the matrix
    products imply (GB/s of weights: the memory floor at batch 1; GFLOP/s: the compute floor at
    large batches). `matrices`: the step's (Architecture.step_matrices), `state_size` its state's width."""
    matrices = [tuple(shape) for shape in matrices]
    methods = matmul_methods(matrices, threads, device, tf, ort_cuda, scratch)
    rng = np.random.default_rng(0)
    weights = sum(rows * columns for rows, columns in matrices)
    floors = {"matrices": [list(shape) for shape in matrices], "weights": weights, "by_batch": {}, "notes": []}
    if importlib.util.find_spec("onnx") is None:
        floors["notes"].append("no int8 floor, and fp32 through numpy alone: the products' ONNX graphs need the "
                               "onnx package (pip install onnx)")
    for batch in batch_sizes:
        inputs = {input_name(rows): rng.standard_normal((batch, rows)).astype(np.float32)
                  for rows in sorted({rows for rows, _ in matrices})}
        row = {}
        for precision, fns in methods.items():
            if not fns:
                continue
            by_method = {name: time_call(lambda fn=fn: fn(inputs), budget_s) for name, fn in fns.items()}
            best = min(by_method, key=by_method.get)
            row[precision] = floor_figures(by_method[best], batch, weights, 4 if precision == "fp32" else 1)
            row[precision]["via"] = best
            row[precision]["ms_by_method"] = {name: seconds * 1e3 for name, seconds in by_method.items()}
        if export_dir is not None:
            row.update(step_floors(export_dir, batch, state_size, threads, device, budget_s))
        floors["by_batch"][str(batch)] = row
    return floors


def step_floors(export_dir: Path, batch: int, state_size: int, threads, device: str, budget_s: float) -> dict:
    """The whole-step floors of the export's models at `batch` (those whose files are there)."""
    row = {}
    decode_files = {"decode-fp32": "decode.onnx"} if device == "cuda" else {"decode-fp32": "decode.onnx",
                                                                               "decode-int8": "decode.int8.onnx"}
    for name, file in decode_files.items():
        if (export_dir / file).is_file():
            seconds = time_call(decode_step(export_dir / file, batch, state_size, threads, device), budget_s)
            row[name] = {"ms": seconds * 1e3, "chars_per_s": batch / seconds, "via": "onnxruntime session.run"}
    if device == "cuda" and (export_dir / "model.onnx").is_file():
        seconds = time_call(io_bound_step(export_dir / "model.onnx", batch, device), budget_s, min_calls=3) / BLOCK
        row["step-cuda-graph"] = {"ms": seconds * 1e3, "chars_per_s": batch / seconds,
                                  "via": "onnxruntime IO binding + CUDA graph"}
    return row


def floor_figures(seconds: float, batch: int, weights: int, bytes_per_weight: int) -> dict:
    """`weights`: how many weights the products read."""
    return {
        "ms": seconds * 1e3,
        "weights_gb_per_s": weights * bytes_per_weight / seconds / 1e9,
        "gflop_per_s": 2.0 * batch * weights / seconds / 1e9,
        "chars_per_s": batch / seconds,
    }
