"""Model-only variants of the same trained weights, each timed in a process of its own.

    python -m benchmarks.variants VARIANT --inputs FILE.npz --threads N \\
        [--checkpoint best.pt] [--onnx model.onnx] [--batches 1,8]

is one worker; `measure()` starts them and interleaves their rounds. Why a process per
variant: each runtime runs as it does in production — an ORT process never loads torch, a
torch process never loads onnxruntime, and none inherits an OpenMP variable that the test
harness or a shell set (machine.production_env) — while the parent still interleaves the
rounds (round r: every variant once, the order rotated by r), so a burst of load from another
job falls on all variants alike. A worker waiting for its turn blocks on a pipe read.

Protocol, one JSON object per line. Worker → parent first: {"ready": true, "setup_s", "info"}.
Parent → worker: {"cmd": "time", "batch": B} → {"seconds": s, "cold_seconds": c}: an untimed
call on the batch-B input then a timed one (s); c is the first call's own time, kept apart;
{"cmd": "check"} → {"probabilities": [[…], …]}, each check image alone (batch 1);
{"cmd": "quit"}. A worker that fails says {"error": "…"} and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import time
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
# Between two timed calls: long enough for the last variant's idle threads (torch's OpenMP
# pool spin-waits for a while after each call by default) to go to sleep before the next
# variant's call, as they would in a process that has the machine to itself.
PAUSE_S = 0.01
Runner = Callable[[np.ndarray], np.ndarray]  # (B, 3, S, S) float32 → (B, C) logits


@dataclass(frozen=True)
class Variant:
    name: str
    label: str  # the report's row name
    runtime: str  # "torch" | "onnxruntime"
    precision: str  # "fp32" | "int8": which tolerance its answers get (benchmarks.checks)
    setting: str  # how it is set up, printed beside its numbers
    modules: tuple[str, ...]  # what must be importable to run it


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("torch-eager", "PyTorch eager", "torch", "fp32",
            "nn.Module from the checkpoint, `torch.inference_mode()`, NCHW", ("torch",)),
    Variant("torch-channels-last", "PyTorch eager, channels_last", "torch", "fp32",
            "as eager, model and input in `torch.channels_last` (the input's conversion is "
            "inside the timed call)", ("torch",)),
    Variant("torchscript-frozen", "TorchScript, frozen", "torch", "fp32",
            "`torch.jit.trace` → `torch.jit.freeze` → `torch.jit.optimize_for_inference`, "
            "`inference_mode()`", ("torch",)),
    Variant("torch-compile", "PyTorch, torch.compile", "torch", "fp32",
            "`torch.compile` (inductor, `freezing`: weights folded and prepacked for oneDNN), "
            "`dynamic=False`, `inference_mode()`; compiled once per batch size at setup",
            ("torch",)),
    Variant("torch-int8", "PyTorch INT8 (PT2E)", "torch", "int8",
            "torchao PT2E: `torch.export` → X86InductorQuantizer default config (u8 "
            "activations, s8 per-channel weights) → 32 training images of calibration → "
            "`torch.compile` (inductor, freezing)", ("torch", "torchao")),
    Variant("ort-fp32", "ONNX Runtime FP32", "onnxruntime", "fp32",
            "services.core.model.InferenceModel: intra-op N, inter-op 1, sequential, spinning off",
            ("onnxruntime",)),
    Variant("ort-int8", "ONNX Runtime INT8", "onnxruntime", "int8",
            "as ORT FP32, on the exported QDQ INT8 file", ("onnxruntime",)),
)}


# --- the worker: one variant, built as it would be deployed ----------------------------------

def _torch_model(args: argparse.Namespace):
    import torch

    from training.checkpoint import load_checkpoint

    torch.set_num_threads(args.threads)
    model, card = load_checkpoint(args.checkpoint)
    return model, list(card["classes"])


def _torch_runner(model, channels_last: bool = False) -> Runner:
    import torch

    def run(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return model(x).numpy()
    return run


def _eager(args, data) -> tuple[Runner, list[str]]:
    model, classes = _torch_model(args)
    return _torch_runner(model), classes


def _channels_last(args, data) -> tuple[Runner, list[str]]:
    import torch

    model, classes = _torch_model(args)
    return _torch_runner(model.to(memory_format=torch.channels_last), True), classes


def _frozen(args, data) -> tuple[Runner, list[str]]:
    import torch

    model, classes = _torch_model(args)
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.from_numpy(data["check"][:1]))
    return _torch_runner(torch.jit.optimize_for_inference(torch.jit.freeze(traced))), classes


def _compiled(args, data) -> tuple[Runner, list[str]]:
    """PyTorch 2's own CPU inference path. Freezing is what makes inductor fast on CPU for
    inference (constant-folded weights, oneDNN-prepacked convolutions); it needs no_grad/
    inference_mode, which the runner uses. The compile happens at the first call of each batch
    size, which worker_main times as setup and records as compile_s."""
    import torch
    import torch._inductor.config as inductor_config

    model, classes = _torch_model(args)
    inductor_config.freezing = True
    return _torch_runner(torch.compile(model, backend="inductor", dynamic=False)), classes


def _one_relu_per_call(model) -> None:
    """torchvision's BasicBlock calls its one nn.ReLU twice; the x86 quantizer's conv+add+relu
    fusion then finds a partition with two outputs and raises "Input partition has more than
    one output node" (pytorch/ao#4478). A second ReLU for the block's output is the same
    function, so the weights and the answers do not change."""
    from torch import nn
    from torchvision.models.resnet import BasicBlock

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu_out(self.bn2(self.conv2(out)) + identity)

    for block in model.modules():
        if isinstance(block, BasicBlock):
            block.relu_out = nn.ReLU(inplace=True)
            block.forward = types.MethodType(forward, block)


def _pt2e_int8(args, data) -> tuple[Runner, list[str]]:
    import torch
    import torch._inductor.config as inductor_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    model, classes = _torch_model(args)
    _one_relu_per_call(model)
    # A batch of 2 with a named batch dimension: an example of 1 would fix the batch to 1.
    example = torch.from_numpy(np.ascontiguousarray(data["check"][:2]))
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(model, (example,), dynamic_shapes=({0: batch},)).module()
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for row in data["calib"]:
            prepared(torch.from_numpy(row[None]))  # (1, 3, S, S)
    converted = convert_pt2e(prepared)
    inductor_config.freezing = True  # weights become constants: what lets inductor fuse INT8
    compiled = torch.compile(converted, dynamic=False)
    return _torch_runner(compiled), classes


def _ort(path_attr: str):
    def build(args, data) -> tuple[Runner, list[str]]:
        from services.core.model import InferenceModel

        model = InferenceModel(getattr(args, path_attr), threads=args.threads)
        meta = model.metadata

        def run(batch: np.ndarray) -> np.ndarray:
            return model.session.run([meta.output_name], {meta.input_name: batch})[0]
        return run, list(meta.classes)
    return build


BUILDERS = {"torch-eager": _eager, "torch-channels-last": _channels_last,
            "torchscript-frozen": _frozen, "torch-compile": _compiled, "torch-int8": _pt2e_int8,
            "ort-fp32": _ort("onnx"), "ort-int8": _ort("onnx")}


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _serve(run: Runner, data, out) -> None:
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "time":
            x = data[f"b{command['batch']}"]
            # The first call after another variant's turn meets caches that variant filled (on
            # 2 CPUs it evicts most of ResNet18's weights): the shortest model suffers most
            # (ORT INT8 10.0 ms cold vs 5.8 ms back to back in run 20261207T102708Z). A server
            # under load calls back to back, so the call timed is the second of two.
            started = time.perf_counter()
            run(x)
            cold = time.perf_counter() - started
            started = time.perf_counter()
            run(x)
            _send(out, {"seconds": time.perf_counter() - started, "cold_seconds": cold})
        elif command["cmd"] == "check":
            rows = [_softmax(run(np.ascontiguousarray(row[None])))[0].tolist()
                    for row in data["check"]]
            _send(out, {"probabilities": rows})
        else:
            return


def _send(out, message: dict) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one model-only variant, driven over stdin")
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("--inputs", type=Path, required=True, help=".npz: b1, b8, check, calib")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--batches", default="1", help="batch sizes to warm up, e.g. 1,8")
    parser.add_argument("--checkpoint", default=None, help="training's best.pt (torch variants)")
    parser.add_argument("--onnx", default=None, help="the ONNX file (ORT variants)")
    args = parser.parse_args(argv)
    # The protocol owns the real stdout; anything a library prints goes to stderr (the log).
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        data = dict(np.load(args.inputs))
        started = time.perf_counter()
        run, classes = BUILDERS[args.variant](args, data)
        built = time.perf_counter()
        first_calls = {}
        for batch in (int(b) for b in args.batches.split(",")):
            call = time.perf_counter()
            run(data[f"b{batch}"])  # first calls (JIT profiling, compiling) are setup too
            first_calls[str(batch)] = time.perf_counter() - call
        setup = time.perf_counter() - started
    except Exception as exc:  # noqa: BLE001 - the parent reports it as the variant's failure
        traceback.print_exc()
        _send(out, {"error": f"{type(exc).__name__}: {exc}"[:2000]})
        return 1
    info = _info(args.variant, classes)
    # Build (load, trace, export, calibrate) and the first calls (where torch.compile and the
    # TorchScript profiler compile) apart, so compile time is never mistaken for latency.
    info.update(build_s=built - started, first_call_s=first_calls)
    _send(out, {"ready": True, "setup_s": setup, "info": info})
    _serve(run, data, out)
    return 0


def _info(variant: str, classes: list[str]) -> dict:
    info: dict = {"classes": classes, "pid": os.getpid()}
    if VARIANTS[variant].runtime == "torch":
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    else:
        import onnxruntime

        info.update(onnxruntime=onnxruntime.__version__)
    return info


# --- the parent: start workers one after the other, interleave their rounds ------------------

class WorkerError(RuntimeError):
    pass


class Worker:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log_path = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.variants", name, *argv], cwd=REPO_ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True)

    def ask(self, command: dict, timeout: float = 300.0) -> dict:
        try:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise WorkerError(self._died()) from None
        return self.read(timeout)

    def read(self, timeout: float) -> dict:
        # One line per command and nothing else on this pipe, so select() sees every reply.
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise WorkerError(f"{self.name}: no answer within {timeout:.0f} s; log "
                              f"{self.log_path}:\n{self._tail()}")
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerError(self._died())
        reply = json.loads(line)
        if "error" in reply:
            raise WorkerError(f"{self.name} failed: {reply['error']}\n{self._tail()}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"cmd": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()

    def _died(self) -> str:
        return f"{self.name} exited with {self.proc.wait(timeout=30)}:\n{self._tail()}"

    def _tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]


def measure(names: list[str], inputs: Path, *, files: dict[str, Path], threads: int,
            batches: tuple[int, ...], rounds: int, warmup: int, env: dict[str, str],
            log_dir: Path, setup_timeout: float = 1800.0) -> dict[str, dict]:
    """name → {"setup_s", "info", "samples": {"1": [s, …]}, "check": [[p, …], …]} or
    {"error": why}. Workers start one at a time (setup_s is then each one's own) and stay up
    until every round is done."""
    results: dict[str, dict] = {name: {"variant": name} for name in names}
    workers: dict[str, Worker] = {}
    common = ["--inputs", str(inputs), "--threads", str(threads),
              "--batches", ",".join(map(str, batches))]
    try:
        for name in names:
            argv = common + ([f"--checkpoint={files['checkpoint']}"]
                             if VARIANTS[name].runtime == "torch"
                             else [f"--onnx={files[VARIANTS[name].precision]}"])
            worker = Worker(name, argv, env, log_dir / f"{name}.log")
            try:
                ready = worker.read(setup_timeout)
            except WorkerError as exc:
                results[name]["error"] = str(exc)
                worker.close()
                continue
            results[name].update(setup_s=ready["setup_s"], info=ready["info"], samples={})
            workers[name] = worker
        for batch in batches:
            _rounds(workers, results, batch, warmup, rounds)
        for name in list(workers):
            reply = _ask(workers, results, name, {"cmd": "check"})
            if reply is not None:
                results[name]["check"] = reply["probabilities"]
    finally:
        for worker in workers.values():
            worker.close()
    return results


def _rounds(workers: dict[str, Worker], results: dict, batch: int, warmup: int,
            rounds: int) -> None:
    command = {"cmd": "time", "batch": batch}
    for name in list(workers):
        for _ in range(warmup):
            _ask(workers, results, name, command)
    samples: dict[str, list[float]] = {name: [] for name in workers}
    cold: dict[str, list[float]] = {name: [] for name in workers}
    for r in range(rounds):
        order = list(workers)
        shift = r % len(order) if order else 0
        for name in order[shift:] + order[:shift]:
            time.sleep(PAUSE_S)
            reply = _ask(workers, results, name, command)
            if reply is not None:
                samples[name].append(reply["seconds"])
                cold[name].append(reply["cold_seconds"])
    for name in workers:
        results[name]["samples"][str(batch)] = samples[name]
        results[name].setdefault("cold_samples", {})[str(batch)] = cold[name]


def _ask(workers: dict[str, Worker], results: dict, name: str, command: dict) -> dict | None:
    """One command; a worker that fails is dropped and its error recorded, the others go on."""
    if name not in workers:
        return None
    try:
        return workers[name].ask(command)
    except WorkerError as exc:
        results[name]["error"] = str(exc)
        workers.pop(name).close()
        return None


if __name__ == "__main__":
    sys.exit(worker_main())
