"""PyTorch baseline of the Flask service (benchmarks only — never a serving target).

Same request decoding (services.web.payload) and preprocessing (services.core.preprocessing) as the
ONNX service; the difference under test is torch + a TorchScript file instead of onnxruntime +
an ONNX file. The TorchScript file carries the model card as the extra file `card.json`.
PyTorch at its best for a CPU server: the traced module is frozen and optimized for inference
when it loads (torch.jit.freeze + optimize_for_inference: BatchNorm folded into the convs,
oneDNN layouts), which the benchmarks measured as the fastest FP32 torch on their CPU.

Environment: MODEL_PATH (/opt/model/model.pt), TORCH_NUM_THREADS (default: usable CPUs //
WEB_CONCURRENCY), TORCH_FREEZE (1; 0 serves the traced module as it is), plus gunicorn's own
PORT and WEB_CONCURRENCY. No OpenMP variable is set: torch's own defaults.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from services.core.errors import ServiceError
from services.core.preprocessing import PreprocessSpec, preprocess_bytes
from services.web.payload import single_image

CARD_FILE = "card.json"


def load_torchscript(path: str, freeze: bool = True) -> tuple[torch.jit.ScriptModule, dict]:
    """(module in eval mode, frozen and optimized unless `freeze` is False, model card) from a
    file saved with `_extra_files={"card.json"}`."""
    extra = {CARD_FILE: ""}
    module = torch.jit.load(path, map_location="cpu", _extra_files=extra).eval()
    if freeze:
        module = torch.jit.optimize_for_inference(torch.jit.freeze(module))
    return module, json.loads(extra[CARD_FILE])


def _freeze() -> bool:
    return os.environ.get("TORCH_FREEZE", "1").strip() not in ("0", "false", "no")


def _threads() -> int:
    raw = os.environ.get("TORCH_NUM_THREADS", "").strip()
    if raw:
        return int(raw)
    workers = int(os.environ.get("WEB_CONCURRENCY") or 1)
    return max(1, len(os.sched_getaffinity(0)) // max(1, workers))


def predict(module: torch.jit.ScriptModule, card: dict, batch: np.ndarray) -> dict:
    """(1, 3, S, S) float32 → the ONNX service's prediction JSON (label, probabilities, …)."""
    with torch.inference_mode():
        probs = torch.softmax(module(torch.from_numpy(batch)), dim=1)[0].tolist()  # (C,)
    classes = card["classes"]
    positive = card["positive_class"]
    p_pos = probs[classes.index(positive)]
    negative = next(c for c in classes if c != positive)
    return {
        "label": positive if p_pos >= card["threshold"] else negative,
        "probabilities": dict(zip(classes, probs, strict=True)),
        "threshold": card["threshold"],
        "model": {"name": "mhist-resnet18", "version": card.get("version"),
                  "precision": "fp32-torch"},
    }


def create_app() -> Flask:
    torch.set_num_threads(_threads())
    module, card = load_torchscript(os.environ.get("MODEL_PATH", "/opt/model/model.pt"),
                                    freeze=_freeze())
    spec = PreprocessSpec.from_dict(card["preprocessing"])
    app = Flask(__name__)

    @app.get("/health")
    def health():
        return jsonify({"status": "ok", "torch": torch.__version__,
                        "threads": torch.get_num_threads(), "frozen": _freeze()})

    @app.post("/predict")
    def predict_route():
        batch = preprocess_bytes(single_image(request), spec)[None]  # (1, 3, S, S)
        return jsonify(predict(module, card, batch))

    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError):
        return jsonify(exc.to_dict()), exc.status_code

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        return jsonify({"error": {"code": code, "message": exc.description}}), exc.code

    return app
