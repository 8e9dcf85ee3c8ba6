"""Predict image files with an exported ONNX model, from the command line (no server).

python -m services.predict --model artifacts/model.int8.onnx image1.png image2.png
python -m services.predict --format text --model ... image.png   # rounded, for people
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from services.core.cpus import add_cpu_class_argument
from services.core.errors import ModelLoadError
from services.core.model import InferenceModel
from services.core.quality import SYNTHETIC_TRAINING


def human_line(path: Path, result: dict) -> str:
    """`name: decision (label …), P(class) as percentages with 1 decimal, threshold to 3 (its
    scale)`, then one indented line per input warning, in words."""
    if "error" in result:
        return f"{path.name}: error {result['error']['code']}: {result['error']['message']}"
    shown = ", ".join(f"P({c}) {100 * p:.1f} %" for c, p in result["probabilities"].items())
    decision = result.get("decision", result["label"])
    scale = result.get("threshold_scale", "raw")
    lines = [f"{path.name}: {decision} (label {result['label']}); {shown}; threshold "
             f"{result['threshold']:.3f} ({scale})"]
    lines += [f"  warning {w['code']}: {w['message']}" for w in result.get("warnings") or ()
              if w["code"] != SYNTHETIC_TRAINING]
    return "\n".join(lines)


def notices(results: list[dict]) -> list[str]:
    """The model's own warnings (synthetic training data), once for the run, not per image."""
    found = {w["code"]: w["message"] for r in results for w in r.get("warnings") or ()
             if w["code"] == SYNTHETIC_TRAINING}
    return [f"NOTICE ({code}): {message}" for code, message in found.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument(
        "--model", type=Path, required=True, help="ONNX file from export/to_onnx.py"
    )
    parser.add_argument(
        "images", nargs="+", type=Path, help="image files (PNG, JPEG, TIFF, BMP, WebP)"
    )
    parser.add_argument(
        "--format", choices=("json", "text"), default="json",
        help="json: one full-precision JSON line per image (the API's answer); text: one "
        "rounded line per image for people, then its input warnings in words (the model's "
        "synthetic-training notice once, on stderr)",
    )
    add_cpu_class_argument(parser)
    args = parser.parse_args(argv)
    try:
        model = InferenceModel(args.model, cpu_class=args.cpu_class)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        print(f"error: no such image file: {', '.join(missing)}", file=sys.stderr)
        return 2
    results = model.predict_many([p.read_bytes() for p in args.images])
    if args.format == "text":  # on stderr: stdout stays the images' lines
        for line in notices(results):
            print(line, file=sys.stderr)
    for path, result in zip(args.images, results, strict=True):
        print(json.dumps({"file": str(path), **result}) if args.format == "json"
              else human_line(path, result))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
