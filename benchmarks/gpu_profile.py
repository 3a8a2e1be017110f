"""Where a decode block's GPU time goes: onnxruntime's profiler over the native-GRU fp16 block
graph (no CUDA graph, so each kernel is seen), ops ranked by total time.

    python benchmarks/gpu_profile.py --model artifacts/model.onnx --batch 4096 --steps 16
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="artifacts/model.onnx")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    import onnx
    import onnxruntime as ort

    from benchmarks.gpu_engine import benchmark_control
    from charrnn_export.decode import block_model, decode_model_for
    from charrnn_export.runtimes.onnx import providers_for
    from charrnn_export.step_variants import float16_step, native_gru_step

    if args.device == "cuda":
        ort.preload_dlls()
    model = block_model(decode_model_for(float16_step(native_gru_step(onnx.load(args.model)))), args.steps)
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "block")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=providers_for(args.device))
    b, k = args.batch, args.steps
    control = benchmark_control(b, k)
    feeds = {"token": np.zeros(b, np.int32), "state": np.zeros((b, 1024), np.float32), "control": control}
    for _ in range(5):
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    by_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"].get("op_name", "?")] += e["dur"]
    total = sum(by_op.values())
    print(f"batch {b}, {k} steps per call, 5 calls: {total / 5 / k:.1f} us of kernels per step")
    for op, us in by_op.most_common(15):
        print(f"{op:20s} {us / 5 / k:8.1f} us/step  {100 * us / total:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
