"""One cold process: start → imports → model load → first prediction, then print JSON and exit.

    python -m benchmarks.probe TARGET --model FILE --image PNG [--threads N]

Run by benchmarks/test_coldstart.py as a fresh subprocess per measurement; the parent notes
time.monotonic() before spawning, and the monotonic clock is shared by all processes, so
`done_at - spawned_at` is process start → first prediction. Nothing heavy is imported at the
top of this file: each target imports exactly what its real process would.

TARGET: ort (services.model core), flask (services.app factory + test client), sagemaker
(sagemaker/inference_app.py), lambda (lambda/handler.py, an API Gateway v2 event), torch-eager
(training checkpoint → torchvision ResNet18), torchscript (the baseline image's way).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("ort", "flask", "sagemaker", "lambda", "torch-eager", "torchscript")


def _ort(args: argparse.Namespace, image: bytes, marks: dict) -> dict:
    from services.model import InferenceModel

    marks["imported_at"] = time.monotonic()
    model = InferenceModel(args.model, threads=args.threads)
    marks["loaded_at"] = time.monotonic()
    return model.predict_bytes(image)


def _flask(args: argparse.Namespace, image: bytes, marks: dict) -> dict:
    from services.app import create_app

    marks["imported_at"] = time.monotonic()
    app = create_app({"MODEL_PATH": args.model, "ORT_INTRA_OP_THREADS": args.threads})
    marks["loaded_at"] = time.monotonic()
    reply = app.test_client().post("/predict", data=image, content_type="image/png")
    if reply.status_code != 200:
        raise SystemExit(f"flask /predict answered {reply.status_code}: {reply.data[:300]!r}")
    return reply.get_json()


def _sagemaker(args: argparse.Namespace, image: bytes, marks: dict) -> dict:
    # SageMaker's model folder holds model.onnx; the caller passes that folder's file.
    os.environ["SM_MODEL_DIR"] = str(Path(args.model).parent)
    os.environ["MHIST_ORT_THREADS"] = str(args.threads)
    os.environ["SAGEMAKER_MODEL_SERVER_WORKERS"] = "1"
    sys.path.insert(0, str(REPO_ROOT / "sagemaker"))
    import inference_app

    marks["imported_at"] = time.monotonic()
    app = inference_app.create_app()
    marks["loaded_at"] = time.monotonic()
    reply = app.test_client().post("/invocations", data=image, content_type="image/png")
    if reply.status_code != 200:
        raise SystemExit(f"sagemaker /invocations answered {reply.status_code}: "
                         f"{reply.data[:300]!r}")
    return reply.get_json()


def _lambda(args: argparse.Namespace, image: bytes, marks: dict) -> dict:
    os.environ["MODEL_PATH"] = args.model
    os.environ["ORT_INTRA_OP_THREADS"] = str(args.threads)
    sys.path.insert(0, str(REPO_ROOT / "lambda"))
    from tests.support.events import make_v2_event

    marks["imported_at"] = time.monotonic()  # handler's import IS Lambda's INIT (model load)
    import handler

    marks["loaded_at"] = time.monotonic()
    event = make_v2_event(method="POST", path="/predict", headers={"content-type": "image/png"},
                          body=image, binary=True)
    response = handler.handler(event, None)
    if response.get("statusCode") != 200:
        raise SystemExit(f"lambda handler answered {response.get('statusCode')}: "
                         f"{str(response.get('body'))[:300]}")
    return json.loads(response["body"])


def _torch_eager(args: argparse.Namespace, image: bytes, marks: dict) -> dict:
    import torch

    from services.preprocessing import PreprocessSpec, preprocess_bytes
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

    from services.preprocessing import PreprocessSpec, preprocess_bytes

    marks["imported_at"] = time.monotonic()
    torch.set_num_threads(args.threads)
    module, card = load_torchscript(args.model)
    marks["loaded_at"] = time.monotonic()
    batch = preprocess_bytes(image, PreprocessSpec.from_dict(card["preprocessing"]))[None]
    return predict(module, card, batch)


RUNNERS = {"ort": _ort, "flask": _flask, "sagemaker": _sagemaker, "lambda": _lambda,
           "torch-eager": _torch_eager, "torchscript": _torchscript}


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
