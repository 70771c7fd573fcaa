"""A compiled plan's convolutions against ONNX Runtime's, node by node, in one process.

    python benchmarks/tools/plan_vs_ort_nodes.py --arch resnet50 --batch 1 [--tune]

The same torchvision-style model (random weights) is compiled by fastconv on the c backend and
exported through torch.onnx to ONNX Runtime (CPU, 2 threads, sequential).  ONNX Runtime's own
profiler times each of its (fused) nodes; each plan step is timed in sequence with the clock
around it; the two run pass for pass in turn.  Median of --reps forward passes each; the rows
pair a plan step with the ONNX node that ends in the same layer (conv1 + relu, conv3 + add +
relu, ..., the max pool and the classifier), slowest relative first.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import tempfile
import time
import warnings

import numpy as np

import fastconv
from fastconv import nn
from fastconv.bench.machine import cpu_model
from fastconv.interop.torch import to_torch
from fastconv.models.resnet import ARCHS


def _onnx_session(model, x, threads):
    import onnxruntime as ort
    import torch

    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(to_torch(model).eval(), (torch.from_numpy(x),), f, dynamo=False, opset_version=17)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.enable_profiling = True
    # Its workers stop spinning when a run returns, as in `fastconv bench` (onnxruntime_target):
    # left spinning they slow the plan's steps, timed right after.
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    return ort.InferenceSession(f.getvalue(), opts, providers=["CPUExecutionProvider"])


def _onnx_node_times(sess, skip: int) -> dict[str, float]:
    """Each node's median time over the profiled runs after the first ``skip``."""
    path = sess.end_profiling()
    with open(path) as fh:
        events = json.load(fh)
    os.remove(path)
    nodes: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            nodes.setdefault(e["name"][: -len("_kernel_time")], []).append(e["dur"] / 1e3)
    return {name: float(np.median(v[skip:] or v)) for name, v in nodes.items()}


def _step_of(node: str) -> str | None:
    """The plan step an ONNX node (named after its last fused output) ends in."""
    if node.startswith("/relu/"):
        return "conv1"
    if node.startswith(("/maxpool/", "/fc/")):
        return node.split("/")[1]
    m = re.match(r"/(layer\d)/(layer\d\.\d+)/(.*)_output_0", node)
    if not m:
        return None
    block, tail = m.group(2), m.group(3)
    if tail.startswith("downsample"):
        return f"{block}.downsample.0"
    steps = {"relu/Relu": "conv1", "relu_1/Relu": "conv2", "relu_2/Relu": "conv3", "conv3/Conv": "conv3"}
    return f"{block}.{steps[tail]}" if tail in steps else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="resnet50", choices=sorted(ARCHS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--tune",
        action="store_true",
        help="compile as `fastconv resnet --compile` does with Winograd allowed (algorithm timed per "
        "layer); default: every convolution on the GEMM, untimed",
    )
    args = ap.parse_args()
    import torch

    fastconv.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    nn.init.manual_seed(0)
    model = ARCHS[args.arch]().eval()
    x = np.random.default_rng(0).standard_normal((args.batch, 3, 224, 224)).astype(np.float32)
    if args.tune:
        plan = fastconv.compile(model, x.shape, backend="c", winograd=True)
    else:
        plan = fastconv.compile(model, x.shape, backend="c", tune=False)
    sess = _onnx_session(model, x, args.threads)
    feed = {sess.get_inputs()[0].name: x}
    env = plan._env
    for _ in range(3):
        sess.run(None, feed)
        plan(x)
    # Alternated pass by pass, so that both see the same states of a shared host.
    times: dict[str, list[float]] = {s.name: [] for s in plan.steps}
    for _ in range(args.reps):
        sess.run(None, feed)
        env[plan._input] = x
        for s in plan.steps:
            t = time.perf_counter()
            s.run(env)
            times[s.name].append((time.perf_counter() - t) * 1e3)
    ort_ms = _onnx_node_times(sess, skip=3)
    ours = {k: float(np.median(v)) for k, v in times.items()}
    pairs = sorted(
        ((ours[step] / ms, step, ours[step], ms) for node, ms in ort_ms.items() if (step := _step_of(node)) in ours),
        reverse=True,
    )
    print(f"{args.arch}, batch {args.batch}, {args.threads} threads, CPU: {cpu_model()}")
    print(f"plan steps in sequence: {sum(ours.values()):.1f} ms; ONNX Runtime nodes: {sum(ort_ms.values()):.1f} ms")
    print(
        f"matched {len(pairs)} steps: fastconv {sum(p[2] for p in pairs):.1f} ms, ONNX Runtime {sum(p[3] for p in pairs):.1f} ms"
    )
    chosen = {s.name: getattr(s, "choice", "") for s in plan.steps}
    print("| step | fastconv ms | ONNX Runtime ms | ratio | fastconv kernel |\n|---|---|---|---|---|")
    for ratio, step, a, b in pairs:
        print(f"| {step} | {a:.2f} | {b:.2f} | {ratio:.2f}x | {chosen.get(step, '')} |")


if __name__ == "__main__":
    main()
