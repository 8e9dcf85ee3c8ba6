"""Whole-slide benchmark parts: the SYNTHETIC slide, one variant's run over it, the cross-check.

    python -m benchmarks.slides VARIANT SLIDE --out DIR --threads N [--batch-size 32]
        (--onnx MODEL.onnx | --checkpoint best.pt --metadata PROPS.json)
    → one JSON line on stdout: timings, tile counts, memory, the path of the tiles CSV

is one run, in a process of its own: `services.slides.run.analyse_slide` — the CLI's core, the
same function `python -m services.slides` calls — over one slide with one model. The ONNX
variants pass it `services.core.model.InferenceModel`; the PyTorch variant passes an object that
has the same `predict_images`/`predict_array` (InferenceModel's own functions, so the same
preprocessing, softmax and threshold rule) with frozen TorchScript of training's checkpoint
computing the logits (the process imports onnxruntime too, as services.slides.run does, but
builds no session). Peak memory is the process's VmHWM (tests/support/peak_memory.py says
why not ru_maxrss), read after the model is loaded, after WARMUP calls at the run's batch size
and after the slide.

The slides are drawn by tests/support/slides.py: the synthetic generator's tissue (SSA and HP
fields, glass between), written as a tiled pyramidal TIFF at 0.25 µm/px (a 40× scan) with
levels at 4×, 16× and 64× downsampling, as an Aperio 40× scan has. They are SYNTHETIC.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.checks import TOLERANCE

LEVEL0_MPP = 0.25  # µm/px: a 40× scan
CANVAS_MPP = 2.0  # the canvas is drawn at MHIST's scale, one 224-px patch per 448-µm cell
CELL_PX = 224
DOWNSAMPLES = (1, 4, 16, 64)
# Labels may differ only where the reference's P(positive) is within the variant's tolerance
# of the threshold (a rounding difference there legitimately flips a label, see
# benchmarks/checks.py); on top of that, this share of all tiles must agree. INT8's is lower
# because the benchmark's 1-epoch model puts most tiles near its threshold: in a quick run
# every tile's FP32 P(SSA) was within 0.011 of it, and INT8 moved P by up to 0.0043, which
# flipped 1 tile of 27 (96 %).
MIN_LABEL_SHARE = {"fp32": 0.99, "int8": 0.90}
WARMUP = 2  # untimed calls before the slide (see _warm_up)


@dataclass(frozen=True)
class SlideVariant:
    name: str
    label: str
    runtime: str  # "onnxruntime" | "torch"
    precision: str  # which tolerance its answers get against ONNX FP32
    setting: str  # how it is set up, printed beside its numbers


SLIDE_VARIANTS = {v.name: v for v in (
    SlideVariant("ort-int8", "ONNX Runtime INT8", "onnxruntime", "int8",
                 "services.core.model.InferenceModel on the exported QDQ INT8 file, as "
                 "`python -m services.slides` runs it (intra-op N, inter-op 1, no spinning)"),
    SlideVariant("ort-fp32", "ONNX Runtime FP32", "onnxruntime", "fp32",
                 "as INT8, on the exported FP32 file"),
    # Frozen TorchScript: the fastest PyTorch FP32 setting measured on this kind of machine
    # (benchmarks/LATEST.<class>.md, section 1, times it against eager).
    SlideVariant("torchscript-frozen", "PyTorch (frozen TorchScript)", "torch", "fp32",
                 "training's checkpoint → `torch.jit.trace` → `freeze` → "
                 "`optimize_for_inference`, `torch.set_num_threads(N)`; the tiles go through "
                 "InferenceModel's own preprocessing and postprocessing"),
)}
REFERENCE = "ort-fp32"


# --- the synthetic slide ---------------------------------------------------------------------

def layout(cells: int) -> tuple[str, ...]:
    """`cells` × `cells` letters (tests/support/slides.py): SSA in the left half, HP in the
    right, a quarter of the cells glass in a diagonal pattern, so tissue grows with the area."""
    return tuple("".join("." if (7 * r + 3 * c) % 4 == 0 else ("S" if c < cells // 2 else "H")
                         for c in range(cells)) for r in range(cells))


def write_slide(path: Path, side_px: int) -> dict[str, Any]:
    """A side_px × side_px (level 0) SYNTHETIC slide at LEVEL0_MPP; what it is, as a record."""
    from tests.support.slides import GLASS, tissue_canvas, write_pyramid

    started = time.perf_counter()
    k = round(CANVAS_MPP / LEVEL0_MPP)  # level-0 pixels per canvas pixel
    if side_px % k:
        raise ValueError(f"side {side_px} px is not a multiple of {k}")
    cells = side_px // (k * CELL_PX)  # whole 448-µm cells; the rest of the side is glass
    grid = layout(max(cells, 1))
    tissue, _ = tissue_canvas(grid, CELL_PX)
    canvas = np.empty((side_px // k, side_px // k, 3), dtype=np.uint8)
    canvas[:] = GLASS
    canvas[:tissue.shape[0], :tissue.shape[1]] = tissue[:side_px // k, :side_px // k]
    write_pyramid(path, canvas, CANVAS_MPP, LEVEL0_MPP, downsamples=DOWNSAMPLES)
    return {"synthetic": True, "side_px": side_px, "mpp": LEVEL0_MPP,
            "downsamples": list(DOWNSAMPLES), "layout": list(grid),
            "file_mb": round(path.stat().st_size / 1e6, 1),
            "write_s": round(time.perf_counter() - started, 1)}


# --- the worker: one variant over one slide --------------------------------------------------

class _TorchSession:
    """What InferenceModel.predict_array calls (`session.run`), answered by a torch runner."""

    def __init__(self, run) -> None:
        self._run = run

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        (batch,) = feeds.values()  # (N, 3, S, S) float32
        return [self._run(batch)]  # (N, C) logits


class TorchTileModel:
    """PyTorch behind InferenceModel's own preprocessing and postprocessing (its functions,
    not copies): only the logits come from torch."""

    def __init__(self, checkpoint: Path, metadata, threads: int) -> None:
        from benchmarks.variants import BUILDERS
        from services.core.files import sha256_file
        from services.core.model import InferenceModel

        size = metadata.preprocessing.size
        args = argparse.Namespace(checkpoint=checkpoint, threads=threads)
        example = {"check": np.zeros((1, 3, size, size), dtype=np.float32)}  # for tracing
        run, classes = BUILDERS["torchscript-frozen"](args, example)
        if tuple(classes) != tuple(metadata.classes):
            raise ValueError(f"checkpoint classes {classes} ≠ ONNX {list(metadata.classes)}")
        self.metadata, self.path, self.threads = metadata, Path(checkpoint), threads
        self.sha256 = sha256_file(checkpoint)
        self.session = _TorchSession(run)
        self.explainer = None  # no class activation maps: the slide path never asks for them
        # Bound as InferenceModel's own methods, so each tile gets the same checks (quality,
        # not_assessable) whichever runtime computed its logits.
        for name in ("predict_images", "predict_array", "_checked"):
            setattr(self, name, getattr(InferenceModel, name).__get__(self))


def _load_model(args: argparse.Namespace):
    if SLIDE_VARIANTS[args.variant].runtime == "torch":
        from services.core.metadata import ModelMetadata

        metadata = ModelMetadata.from_props(json.loads(Path(args.metadata).read_text()))
        return TorchTileModel(args.checkpoint, metadata, args.threads)
    from services.core.model import InferenceModel

    return InferenceModel(args.onnx, threads=args.threads)


def _warm_up(model, batch_size: int) -> None:
    """WARMUP calls at the run's batch size before the slide, for every variant: a frozen
    TorchScript model profiles and optimises its graph on its first calls, and ORT sizes its
    arena on the first call of a shape; a slide job pays that once, not per tile."""
    size = model.metadata.preprocessing.size
    batch = np.zeros((batch_size, 3, size, size), dtype=np.float32)  # (B, 3, S, S)
    for _ in range(WARMUP):
        model.predict_array(batch)


def worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one variant over one slide (the CLI's core)")
    parser.add_argument("variant", choices=SLIDE_VARIANTS)
    parser.add_argument("slide", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--onnx", type=Path, default=None, help="ONNX file (ORT variants)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="best.pt (PyTorch)")
    parser.add_argument("--metadata", type=Path, default=None,
                        help="JSON of the ONNX FP32 file's metadata_props (PyTorch)")
    args = parser.parse_args(argv)
    from services.slides.run import Options, analyse_slide
    from tests.support.peak_memory import peak_rss_mb

    started = time.perf_counter()
    model = _load_model(args)
    load_s, after_load = time.perf_counter() - started, peak_rss_mb()
    started = time.perf_counter()
    _warm_up(model, args.batch_size)
    warmup_s, after_warmup = time.perf_counter() - started, peak_rss_mb()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    summary = analyse_slide(args.slide, model, Options(batch_size=args.batch_size,
                                                       progress=False), args.out)
    wall = time.perf_counter() - started
    print(json.dumps({
        "variant": args.variant, "load_s": load_s, "wall_s": wall,
        "tiles": summary["tiles"], "timings": summary["timings"],
        "level": summary["analysis"]["level"], "tile_px_read": summary["analysis"][
            "tile_px_read"], "threads": args.threads, "batch_size": args.batch_size,
        "warmup_s": warmup_s, "after_load_rss_mb": after_load,
        "after_warmup_rss_mb": after_warmup, "peak_rss_mb": peak_rss_mb(),
        "tiles_csv": str(args.out / summary["outputs"]["tiles"]),
        "fraction_positive": summary["fraction_positive"],
    }))
    return 0


# --- the cross-check: every variant's tiles against ONNX FP32 --------------------------------

def read_tiles(path: Path, positive_class: str) -> dict[tuple[int, int], tuple[float, str]]:
    """(x, y) → (P(positive), label) from a `<name>.tiles.csv`."""
    column = f"p_{positive_class.lower()}"
    with open(path, newline="", encoding="utf-8") as stream:
        return {(int(r["x"]), int(r["y"])): (float(r[column]), r["label"])
                for r in csv.DictReader(stream)}


def agreement(tiles: dict, reference: dict, precision: str, threshold: float) -> dict[str, Any]:
    """How a variant's tiles compare with the reference's; `ok` is the benchmark's verdict."""
    tol = TOLERANCE[precision]
    problems = []
    if set(tiles) != set(reference):
        problems.append(f"different tiles: {len(set(tiles) ^ set(reference))} not in both")
    common = sorted(set(tiles) & set(reference))
    diffs = [abs(tiles[k][0] - reference[k][0]) for k in common]
    same = sum(tiles[k][1] == reference[k][1] for k in common)
    decided_wrong = [k for k in common if tiles[k][1] != reference[k][1]
                     and abs(reference[k][0] - threshold) > tol]
    worst = max(diffs) if diffs else None
    share = same / len(common) if common else 0.0
    if worst is None or not worst <= tol:  # NaN fails too
        problems.append(f"max |Δp| {worst} > {tol:g} ({precision} tolerance)")
    if decided_wrong:
        problems.append(f"{len(decided_wrong)} labels differ where P is further than {tol:g} "
                        f"from the threshold, first at {decided_wrong[0]}")
    if share < MIN_LABEL_SHARE[precision]:
        problems.append(f"labels agree on {share:.1%} < {MIN_LABEL_SHARE[precision]:.0%} of "
                        "tiles")
    decided = sum(abs(reference[k][0] - threshold) > tol for k in common)
    return {"tiles": len(common), "precision": precision, "tolerance": tol,
            "max_abs_diff": worst, "labels_agree": same, "label_share": share,
            "min_label_share": MIN_LABEL_SHARE[precision], "labels_decided": decided,
            "problems": problems, "ok": not problems}


if __name__ == "__main__":
    sys.exit(worker_main())
