"""Whole-slide inference with an exported ONNX model: tiles at the model's µm/px, tissue only.

    python -m services.slides slide.svs other.ndpi --model artifacts/model.int8.onnx --out results
    python -m services.slides slides/ --model artifacts/model.int8.onnx --out results --mpp 0.25

Per slide: <name>.tiles.csv, <name>.geojson (QuPath), <name>.heatmap.png, <name>.summary.json,
<name> its stem (its file name, then its folders joined by '_', where stems collide); with
several slides (or a folder) also slides.summary.csv. A folder contributes the files in it, not
its subfolders; what is skipped is named on a `warning:` line and in the table. A slide that
fails is reported on one line and the others still run. Exit status: 0 all slides done, 1 some
failed, 2 usage or model error. Needs the `slides` extra:
pip install -c constraints.txt -e ".[slides,serving]".
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.core.cpus import add_cpu_class_argument, default_threads
from services.core.errors import ModelLoadError, ServiceError
from services.core.model import InferenceModel
from services.slides.outputs import printable, shown, write_table

TABLE_NAME = "slides.summary.csv"
# Most level pixels one slide may make the CLI read (the thumbnail's level whole, every tile at
# the tiles' level), in gigapixels. A real slide reads its pyramid's coarse levels: a 40× scan of
# a whole 25×75 mm slide (10^5 × 3·10^5 px at level 0) reads ~2 Gpx for a 2 µm/px model and
# ~0.1 Gpx for its thumbnail. A 68 KB TIFF can declare 200,000² px in one level: 80 Gpx, read at
# ~4 Mpx/s (0.24 s a 1024² block, measured), i.e. hours. A real slide beyond the bound (no
# pyramid, or a fine --stride) gets a message naming --max-gigapixels.
MAX_GIGAPIXELS = 10.0
MAX_STRIDE = 100_000  # model pixels: 20 cm at 2 µm/px, beyond any slide
MAX_BATCH = 4096  # tiles per call: ~2.5 GB of float32 input at 224 px already
MAX_THREADS = 1024


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m services.slides",
                                description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("slides", nargs="+", type=Path,
                   help="slide files, or folders whose files are all slides (subfolders are "
                        "skipped: name them too)")
    p.add_argument("--model", type=Path, required=True, help="ONNX file from export/to_onnx.py")
    p.add_argument("--out", type=Path, required=True, help="output folder (created if needed)")
    p.add_argument("--mpp", type=_positive(float), default=None,
                   help="µm per pixel at level 0, overriding the slide's (for slides that lack "
                        "it or record it wrongly)")
    p.add_argument("--stride", type=_positive(int, MAX_STRIDE), default=None,
                   help="pixels between tiles at the model's scale (default: one tile, no "
                        "overlap; half a tile doubles the heatmap's resolution, 4× the work)")
    p.add_argument("--batch-size", type=_positive(int, MAX_BATCH), default=32,
                   help="tiles per inference call (memory grows with it, not with the slide)")
    p.add_argument("--min-tissue", type=_fraction, default=0.5,
                   help="share of tissue a tile needs to be analysed (0..1)")
    p.add_argument("--threads", type=_positive(int, MAX_THREADS), default=None,
                   help="onnxruntime intra-op threads (default: the usable CPUs)")
    p.add_argument("--max-gigapixels", type=_positive(float), default=MAX_GIGAPIXELS,
                   help="most pixels (in 10^9) one slide may make the CLI read, thumbnail and "
                        "tiles; a slide declaring more fails before any pixel is read")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="tqdm progress bar per slide")
    add_cpu_class_argument(p)
    return p


def _positive(kind: type, most: float = math.inf) -> Callable[[str], Any]:
    """An argparse type: `kind(raw)`, refused unless positive, finite and at most `most`."""

    def parse(raw: str) -> Any:
        try:
            value = kind(raw)
        except (ValueError, OverflowError):  # int(): not a number, or over 4300 digits
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"must be {what}, got {_clip(raw)}") from None
        if not 0 < value < math.inf:
            raise argparse.ArgumentTypeError(f"must be positive, got {_clip(raw)}")
        if value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most:g}, got {_clip(raw)}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _clip(raw: str) -> str:
    """A value as an error message quotes it: escaped, and at most ~40 characters."""
    return printable(raw if len(raw) <= 40 else f"{raw[:20]}...({len(raw)} characters)")


def _fraction(raw: str) -> float:
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {_clip(raw)}")
    return value


@dataclass(frozen=True)
class Entry:
    """One path the arguments name: a slide to analyse, or one skipped with the reason."""

    path: Path
    skipped: str = ""
    output: str = ""  # the <name> of its output files


def expand(paths: list[Path]) -> list[Entry]:
    """Files as given; a folder contributes its files, sorted. Subfolders, hidden files,
    things that are not files and a file named twice are kept as skipped entries."""
    entries: list[Entry] = []
    seen: dict[Path, Path] = {}
    for given in paths:
        found = [given]
        if given.is_dir():
            found = sorted(given.iterdir())
        for path in found:
            reason = _skip_reason(path, given)
            if not reason and path.exists():
                first = seen.setdefault(path.resolve(), path)
                if first is not path:
                    reason = f"the same file as {shown(str(first))}, analysed once"
            entries.append(Entry(path, reason))
    return entries


def _skip_reason(path: Path, given: Path) -> str:
    if path is given:
        return ""  # named by the user: analysed, or fails as no_such_file
    if path.name.startswith("."):
        return "hidden (its name starts with '.')"
    if path.is_dir():
        if path.with_suffix(".mrxs").is_file():
            return f"the data folder of {shown(path.name + '.mrxs')}, read through it"
        return "a folder: its files are not searched; pass it as an argument to analyse them"
    if not path.is_file():
        return "not a regular file"
    return ""


def output_names(paths: list[Path]) -> list[str]:
    """A distinct output name per slide, readable and the same for the same inputs: the stem,
    else the file name, else the file name after its folders joined with '_', one more folder
    at a time, until no other slide's name equals it (case-insensitively: macOS, Windows and
    an S3 sync fold case). Characters a file name should not hold become '_'."""
    names: list[str | None] = [None] * len(paths)
    parts = [path.resolve().parts[1:] for path in paths]
    for depth in range(max((len(p) for p in parts), default=0) + 1):
        pending = [i for i, name in enumerate(names) if name is None]
        if not pending:
            break
        taken = {name.casefold() for name in names if name is not None}
        labels = {i: _safe(paths[i].stem if depth == 0 else "_".join(parts[i][-depth:]))
                  for i in pending}
        counts = Counter(label.casefold() for label in labels.values())
        for i, label in labels.items():
            if counts[label.casefold()] == 1 and label.casefold() not in taken:
                names[i] = label
    taken = {name.casefold() for name in names if name is not None}
    for i in sorted((i for i, name in enumerate(names) if name is None), key=lambda i: paths[i]):
        label, n = _safe("_".join(parts[i])), 2  # paths equal but for case or odd characters
        while f"{label}-{n}".casefold() in taken:
            n += 1
        names[i] = f"{label}-{n}"
        taken.add(names[i].casefold())
    return [name or "" for name in names]


def _safe(label: str) -> str:
    return "".join(c if c.isprintable() and c not in "/\\" else "_" for c in label) or "_"


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        from services.slides.reader import MPP_RANGE
        from services.slides.run import Options, analyse_slide
    except ImportError as exc:
        print(f"error: {exc}; install the slides extra: "
              "pip install -c constraints.txt -e '.[slides,serving]'", file=sys.stderr)
        return 2
    if args.mpp is not None and not MPP_RANGE[0] <= args.mpp <= MPP_RANGE[1]:
        parser.error(f"argument --mpp: must be between {MPP_RANGE[0]:g} and {MPP_RANGE[1]:g} "
                     f"µm per pixel (0.25 at 40×, 0.5 at 20×), got {args.mpp:g}")
    problem = _out_problem(args.out)
    if problem:
        print(f"error: --out {shown(str(args.out))}: {problem}", file=sys.stderr)
        return 2
    try:
        model = InferenceModel(args.model, threads=args.threads or default_threads(),
                               cpu_class=args.cpu_class)
    except ModelLoadError as exc:
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return 2
    entries = expand(args.slides)
    for entry in entries:
        if entry.skipped:
            print(f"warning: skipped {shown(str(entry.path))}: {entry.skipped}", file=sys.stderr)
    slides = [entry.path for entry in entries if not entry.skipped]
    if not slides:
        print("error: no slide files found in the paths given", file=sys.stderr)
        return 2
    names = dict(zip(slides, output_names(slides), strict=True))
    options = Options(args.mpp, args.stride, args.batch_size, args.min_tissue, args.progress,
                      args.max_gigapixels)
    rows = [_skipped(entry) if entry.skipped
            else _one(entry.path, names[entry.path], model, options, args.out, analyse_slide)
            for entry in entries]
    if len(entries) > 1 or any(p.is_dir() for p in args.slides):
        write_table(args.out / TABLE_NAME, rows)
    return 0 if all(row["status"] in ("ok", "skipped") for row in rows) else 1


def _out_problem(out: Path) -> str:
    """Why the output folder cannot be used ('' when it can), after creating it if needed."""
    if out.exists() and not out.is_dir():
        return "exists and is not a folder; name a folder (it is created if needed)"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create the folder: {printable(exc.strerror or str(exc))}"
    if not os.access(out, os.W_OK | os.X_OK):
        return "the folder is not writable by this user"
    return ""


def _one(path: Path, name: str, model: InferenceModel, options: Any, out: Path,
         analyse: Callable[..., dict]) -> dict:
    """Analyse one slide; print one line either way; its row of the summary table."""
    started = time.perf_counter()
    try:
        summary = analyse(path, model, options, out, name)
    except ServiceError as exc:
        return _failed(path, name, exc.code, exc.message, started)
    except Exception as exc:  # noqa: BLE001 - one bad slide must not stop the others
        return _failed(path, name, "unexpected_error", f"{type(exc).__name__}: {exc}", started)
    tiles = summary["tiles"]
    print(f"{shown(path.name)}: {tiles['analysed']} tiles analysed ({tiles['background']} "
          f"background), tissue {summary['tissue_area_mm2']:.2f} mm², "
          f"{_positive_share(summary)}, "
          f"{summary['timings']['tiles_per_s']:.0f} tiles/s → {shown(str(out / name))}.*")
    return {"slide": path.name, "path": str(path), "output": name, "status": "ok", "error": "",
            "tiles_analysed": tiles["analysed"], "tissue_area_mm2": summary["tissue_area_mm2"],
            "positive_class": summary["positive_class"],
            "fraction_positive": summary["fraction_positive"],
            "assessable_share": summary["assessable"]["share"],
            "decision": summary["assessable"]["decision"],
            "max_probability": summary["max_probability"],
            "top_region_mm2": (summary["top_regions"][0]["area_mm2"]
                               if summary["top_regions"] else 0.0),
            "seconds": round(time.perf_counter() - started, 2)}


def _positive_share(summary: dict) -> str:
    """'12.5% SSA (97% of tiles assessable)', or what made the slide not assessable."""
    checked = summary["assessable"]
    share = checked["share"]
    kept = "" if share is None else f" ({share:.0%} of tiles assessable)"
    if summary["fraction_positive"] is None:
        reasons = sorted({w["code"] for w in checked["warnings"]} | set(checked["by_reason"]))
        return f"not assessable ({', '.join(reasons) or 'no tile passed the checks'}){kept}"
    return f"{summary['fraction_positive']:.1%} {summary['positive_class']}{kept}"


def _failed(path: Path, name: str, code: str, message: str, started: float) -> dict:
    message = printable(message)
    print(f"error: {shown(path.name)}: {message} [{code}]", file=sys.stderr)
    return {"slide": path.name, "path": str(path), "output": name, "status": "error",
            "error": f"{code}: {message}", "seconds": round(time.perf_counter() - started, 2)}


def _skipped(entry: Entry) -> dict:
    return {"slide": entry.path.name, "path": str(entry.path), "status": "skipped",
            "error": entry.skipped}


if __name__ == "__main__":
    sys.exit(main())
