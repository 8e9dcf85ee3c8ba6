"""Whole-slide inference with an exported ONNX model: tiles at the model's µm/px, tissue only.

    python -m services.slides slide.svs other.ndpi --model artifacts/model.int8.onnx --out results
    python -m services.slides slides/ --model artifacts/model.int8.onnx --out results --mpp 0.25

Per slide: <name>.tiles.csv, <name>.geojson (QuPath), <name>.heatmap.png, <name>.summary.json;
with several slides (or a folder) also slides.summary.csv. A slide that fails is reported on
one line and the others still run. Exit status: 0 all slides done, 1 some failed, 2 usage or
model error. Needs the `slides` extra: pip install -c constraints.txt -e ".[slides,serving]".
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.core.cpus import default_threads
from services.core.errors import ModelLoadError, ServiceError
from services.core.model import InferenceModel

TABLE_NAME = "slides.summary.csv"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m services.slides",
                                description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("slides", nargs="+", type=Path,
                   help="slide files, or folders whose files are all slides")
    p.add_argument("--model", type=Path, required=True, help="ONNX file from export/to_onnx.py")
    p.add_argument("--out", type=Path, required=True, help="output folder (created if needed)")
    p.add_argument("--mpp", type=_positive(float), default=None,
                   help="µm per pixel at level 0, overriding the slide's (for slides that lack "
                        "it or record it wrongly)")
    p.add_argument("--stride", type=_positive(int), default=None,
                   help="pixels between tiles at the model's scale (default: one tile, no "
                        "overlap; half a tile doubles the heatmap's resolution, 4× the work)")
    p.add_argument("--batch-size", type=_positive(int), default=32,
                   help="tiles per inference call (memory grows with it, not with the slide)")
    p.add_argument("--min-tissue", type=_fraction, default=0.5,
                   help="share of tissue a tile needs to be analysed (0..1)")
    p.add_argument("--threads", type=_positive(int), default=None,
                   help="onnxruntime intra-op threads (default: the usable CPUs)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="tqdm progress bar per slide")
    return p


def _positive(kind: type) -> Callable[[str], Any]:
    """An argparse type: `kind(raw)`, refused unless positive and finite."""

    def parse(raw: str) -> Any:
        value = kind(raw)
        if not 0 < value < math.inf:
            raise argparse.ArgumentTypeError(f"must be positive, got {raw}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _fraction(raw: str) -> float:
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {raw}")
    return value


def expand(paths: list[Path]) -> list[Path]:
    """Files as given; a folder contributes its visible files, sorted."""
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        else:
            found.append(path)
    return found


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        from services.slides.run import Options, analyse_slide
    except ImportError as exc:
        print(f"error: {exc}; install the slides extra: "
              "pip install -c constraints.txt -e '.[slides,serving]'", file=sys.stderr)
        return 2
    try:
        model = InferenceModel(args.model, threads=args.threads or default_threads())
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    slides = expand(args.slides)
    if not slides:
        print("error: no slide files found in the paths given", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    options = Options(args.mpp, args.stride, args.batch_size, args.min_tissue, args.progress)
    rows = [_one(path, model, options, args.out, analyse_slide) for path in slides]
    if len(slides) > 1 or any(p.is_dir() for p in args.slides):
        from services.slides.outputs import write_table

        write_table(args.out / TABLE_NAME, rows)
    return 0 if all(row["status"] == "ok" for row in rows) else 1


def _one(path: Path, model: InferenceModel, options: Any, out: Path,
         analyse: Callable[..., dict]) -> dict:
    """Analyse one slide; print one line either way; its row of the summary table."""
    started = time.perf_counter()
    try:
        summary = analyse(path, model, options, out)
    except ServiceError as exc:
        return _failed(path, exc.code, exc.message, started)
    except Exception as exc:  # noqa: BLE001 - one bad slide must not stop the others
        return _failed(path, "unexpected_error", f"{type(exc).__name__}: {exc}", started)
    tiles = summary["tiles"]
    print(f"{path.name}: {tiles['analysed']} tiles analysed ({tiles['background']} background), "
          f"tissue {summary['tissue_area_mm2']:.2f} mm², "
          f"{summary['fraction_positive']:.1%} {summary['positive_class']}, "
          f"{summary['timings']['tiles_per_s']:.0f} tiles/s → {out}")
    return {"slide": path.name, "status": "ok", "error": "",
            "tiles_analysed": tiles["analysed"], "tissue_area_mm2": summary["tissue_area_mm2"],
            "positive_class": summary["positive_class"],
            "fraction_positive": summary["fraction_positive"],
            "max_probability": summary["max_probability"],
            "top_region_mm2": (summary["top_regions"][0]["area_mm2"]
                               if summary["top_regions"] else 0.0),
            "seconds": round(time.perf_counter() - started, 2)}


def _failed(path: Path, code: str, message: str, started: float) -> dict:
    message = " ".join(message.split())
    print(f"error: {path.name}: {message} [{code}]", file=sys.stderr)
    return {"slide": path.name, "status": "error", "error": f"{code}: {message}",
            "seconds": round(time.perf_counter() - started, 2)}


if __name__ == "__main__":
    sys.exit(main())
