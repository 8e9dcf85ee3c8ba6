"""One cold process: start → imports → model load → first prediction, then print JSON and exit.

    python -m benchmarks.probe TARGET --model FILE --image PNG [--threads N]

Run by benchmarks/test_coldstart.py as a fresh subprocess per measurement; the parent notes
time.monotonic() before spawning, and the monotonic clock is shared by all processes, so
`done_at - spawned_at` is process start → first prediction. Nothing heavy is imported at the
top of this file: each target imports exactly what its real process would.

TARGET: ort (services.core.model core); every serving target of services/targets.py, by protocol —
an `http` one is the one app (services.web.app.create_app with the entry's settings target, its
model resolved from its model folder by the SageMaker adapter when the entry mounts one) and
its test client POSTing to the entry's predict_path; a `lambda-runtime` one is the Lambda
adapter's handler (services.adapters.aws_lambda.make_handler: INIT) invoked with an API
Gateway v2 event; then torch-eager (training checkpoint → torchvision ResNet18) and
torchscript-frozen (the baseline image's way: TorchScript, frozen and optimized at load).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from services.targets import TARGETS as SERVING_TARGETS

REPO_ROOT = Path(__file__).resolve().parents[1]
TORCH_PROBES = ("torch-eager", "torchscript-frozen")
ONNX_PROBES = ("ort", *SERVING_TARGETS)
TARGETS = (*ONNX_PROBES, *TORCH_PROBES)


def _ort(args: argparse.Namespace, image: bytes, marks: dict) -> dict:
    from services.core.model import InferenceModel

    marks["imported_at"] = time.monotonic()
    model = InferenceModel(args.model, threads=args.threads)
    marks["loaded_at"] = time.monotonic()
    return model.predict_bytes(image)


def _app_config(args: argparse.Namespace) -> dict:
    """Settings overrides (services.web.settings field names) for the target's app: its settings
    target, the model and the thread count. A target that mounts its model folder gets the
    file and sha256 resolved as its container does (services.adapters.sagemaker); the caller
    then passes a file inside that folder."""
    spec = SERVING_TARGETS[args.target]
    config = {"TARGET": spec.name, "MODEL_PATH": args.model,
              "ORT_THREADS": args.threads}
    if spec.model_mount is not None:
        from services.adapters.sagemaker import resolve_model

        path, digest = resolve_model(Path(args.model).parent)
        config.update(MODEL_PATH=str(path), MODEL_SHA256=digest)
    return config


def _http_app(args: argparse.Namespace, image: bytes, marks: dict) -> dict:
    from services.web.app import create_app

    marks["imported_at"] = time.monotonic()
    app = create_app(_app_config(args))
    marks["loaded_at"] = time.monotonic()
    path = SERVING_TARGETS[args.target].predict_path
    reply = app.test_client().post(path, data=image, content_type="image/png")
    if reply.status_code != 200:
        raise SystemExit(f"{args.target} {path} answered {reply.status_code}: "
                         f"{reply.data[:300]!r}")
    return reply.get_json()


def _lambda_runtime(args: argparse.Namespace, image: bytes, marks: dict) -> dict:
    from services.adapters.aws_lambda import make_handler
    from tests.support.events import make_v2_event

    marks["imported_at"] = time.monotonic()
    # make_handler() is what lambda/handler.py runs at import: Lambda's INIT (model load).
    handler = make_handler(_app_config(args))
    marks["loaded_at"] = time.monotonic()
    path = SERVING_TARGETS[args.target].predict_path
    event = make_v2_event(method="POST", path=path, headers={"content-type": "image/png"},
                          body=image, binary=True)
    response = handler(event, None)
    if response.get("statusCode") != 200:
        raise SystemExit(f"{args.target} handler answered {response.get('statusCode')}: "
                         f"{str(response.get('body'))[:300]}")
    return json.loads(response["body"])


PROTOCOL_RUNNERS = {"http": _http_app, "lambda-runtime": _lambda_runtime}


def _no_driver(args: argparse.Namespace, image: bytes, marks: dict) -> dict:
    protocol = SERVING_TARGETS[args.target].protocol
    raise SystemExit(f"{args.target}: no in-process probe for protocol {protocol!r}; add one "
                     "to benchmarks/probe.py's PROTOCOL_RUNNERS")


def _torch_eager(args: argparse.Namespace, image: bytes, marks: dict) -> dict:
    import torch

    from services.core.preprocessing import PreprocessSpec, preprocess_bytes
    from training.checkpoint import load_checkpoint

    marks["imported_at"] = time.monotonic()
    torch.set_num_threads(args.threads)
    model, card = load_checkpoint(args.model)
    marks["loaded_at"] = time.monotonic()
    batch = preprocess_bytes(image, PreprocessSpec.from_dict(card["preprocessing"]))[None]
    with torch.inference_mode():
        probs = torch.softmax(model(torch.from_numpy(batch)), dim=1)[0].tolist()
    return {"probabilities": dict(zip(card["classes"], probs, strict=True))}


def _torchscript(args: argparse.Namespace, image: bytes, marks: dict) -> dict:
    import torch

    sys.path.insert(0, str(REPO_ROOT / "benchmarks" / "baseline"))
    from app import load_torchscript, predict

    from services.core.preprocessing import PreprocessSpec, preprocess_bytes

    marks["imported_at"] = time.monotonic()
    torch.set_num_threads(args.threads)
    module, card = load_torchscript(args.model, freeze=True)
    marks["loaded_at"] = time.monotonic()
    batch = preprocess_bytes(image, PreprocessSpec.from_dict(card["preprocessing"]))[None]
    return predict(module, card, batch)


RUNNERS = {"ort": _ort,
           **{name: PROTOCOL_RUNNERS.get(spec.protocol, _no_driver)
              for name, spec in SERVING_TARGETS.items()},
           "torch-eager": _torch_eager, "torchscript-frozen": _torchscript}


def main(argv: list[str] | None = None) -> int:
    marks = {"main_at": time.monotonic()}
    parser = argparse.ArgumentParser(description="one cold start → first prediction")
    parser.add_argument("target", choices=TARGETS)
    parser.add_argument("--model", required=True, help="ONNX file, checkpoint or TorchScript")
    parser.add_argument("--image", required=True, type=Path, help="the image to predict")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads")
    args = parser.parse_args(argv)
    image = args.image.read_bytes()
    prediction = RUNNERS[args.target](args, image, marks)
    marks["done_at"] = time.monotonic()
    heavy = sorted(m for m in ("torch", "torchvision", "mlflow", "onnxruntime") if m in sys.modules)
    print(json.dumps({"target": args.target, "prediction": prediction, "marks": marks,
                      "heavy_modules": heavy}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
