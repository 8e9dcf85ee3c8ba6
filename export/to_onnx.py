"""Export the chosen model to ONNX: FP32 (parity-gated) and static INT8 (accuracy-gated).

    python export/to_onnx.py                                  # latest mhist-resnet18 version
    python export/to_onnx.py --model-uri models:/mhist-resnet18@champion --data-dir data/mhist
    python export/to_onnx.py --checkpoint artifacts/best.pt --no-mlflow

Writes OUT/model.onnx, OUT/model.int8.onnx (`--cpu-class portable`, the default; `vnni`:
OUT/model.int8.vnni.onnx) and OUT/export_report.json. Each ONNX file carries
its classes, threshold, preprocessing, precision, provenance and metrics as metadata. Both gates
read the validation split training held out (re-derived from the seed stored with the model);
the test partition is evaluated last, for the report only (export/splits.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from export.calibration import BandTarget, calibrate_export, report_test, summary_lines
from export.convert import OPSET, ExportError, export_fp32, write_metadata
from export.evaluate import (
    accuracy_gate,
    agreement_lines,
    check_parity,
    compare_precisions,
    load_batch,
    onnx_probabilities,
    skill_gate,
)
from export.features import explain_metadata
from export.kernels import (
    EMULATED_CPU,
    QEMU,
    EmulationError,
    emulated_logits,
    kernels,
    needs_avx2_gate,
)
from export.kernels import compare as compare_probabilities
from export.quality_ranges import NoRangesError, quality_ranges
from export.quantize import (
    ImageCalibrationReader,
    QuantSettings,
    int8_file_name,
    pick_calibration_images,
    quantize_int8,
)
from export.source import ModelSource, from_checkpoint, from_mlflow
from export.splits import (
    CALIBRATION_SPLIT,
    GATE_SPLIT,
    REPORT_SPLIT,
    ExportSplits,
    training_splits,
)
from services.core.cpus import CPU_CLASSES, DEFAULT_CLASS, cpu_info
from services.core.files import sha256_file
from services.core.metadata import ModelMetadata
from services.core.model import InferenceModel, softmax
from services.core.preprocessing import PreprocessSpec
from services.core.quality import QualityRanges
from services.core.switches import WORDS_TEXT, parse_switch
from training import input_mpp
from training.data import DatasetError, load_annotations
from training.metrics import format_auc
from training.provenance import DEFAULT_TRACKING_URI, check_tracking_reachable, git_commit


class _HelpFormatter(argparse.RawDescriptionHelpFormatter,
                     argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default."""


def _switch(raw: str) -> bool:
    value = parse_switch(raw)
    if value is None:
        raise argparse.ArgumentTypeError(f"{raw!r} is not {WORDS_TEXT}")
    return value


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=_HelpFormatter
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--model-uri",
        default="models:/mhist-resnet18/latest",
        help="MLflow model URI: models:/NAME/VERSION|latest, models:/NAME@ALIAS, runs:/ID/model",
    )
    src.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="a training checkpoint (best.pt) instead of an MLflow model",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="MHIST folder the model was trained on: its validation split feeds the gates, the "
        "rest of train calibrates INT8, test is evaluated last (default: the training run's)",
    )
    p.add_argument("--out", type=Path, default=Path("artifacts"), help="output folder")
    p.add_argument(
        "--mpp",
        type=float,
        default=None,
        help="microns per pixel of the network input, stored as mhist.mpp for whole-slide "
        "inference (default: the training run's --mpp, else MHIST's 2.0 µm/px × 224 / input size)",
    )
    p.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI),
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    p.add_argument(
        "--experiment", default="mhist", help="MLflow experiment for the export run"
    )
    p.add_argument(
        "--registered-model",
        default="mhist-resnet18-onnx",
        help="registered model name for the ONNX files",
    )
    p.add_argument(
        "--mlflow",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="log and register the ONNX files in MLflow",
    )
    p.add_argument(
        "--parity-images", type=int, default=32, help="validation images for the parity gate"
    )
    p.add_argument(
        "--parity-tolerance",
        type=float,
        default=1e-4,
        help="max abs difference of probabilities, ONNX FP32 vs PyTorch",
    )
    p.add_argument(
        "--calibration-size",
        type=int,
        default=128,
        help="images to calibrate INT8 on, from the train partition minus the validation split",
    )
    p.add_argument(
        "--calibration-seed", type=int, default=0, help="seed for picking calibration images"
    )
    p.add_argument(
        "--calibration-method",
        choices=["MinMax", "Entropy", "Percentile"],
        default="MinMax",
        help="activation range calibration",
    )
    p.add_argument(
        "--cpu-class",
        choices=list(CPU_CLASSES),
        default=DEFAULT_CLASS,
        help="the CPUs the INT8 file is for: portable (7-bit weights, reduce_range: correct on "
        "every CPU, AVX2-only ones included) or vnni (full 8-bit weights, closer to FP32: x86 "
        "with AVX-512 VNNI, AVX-VNNI or AMX, Arm with the dot product; the server refuses it "
        "elsewhere). Recorded in the file's mhist.quantization",
    )
    p.add_argument(
        "--avx2-gate-images",
        type=int,
        default=24,
        help="validation images the INT8 gates also judge under AVX2 kernels (qemu-x86_64 "
        "-cpu Haswell, about 2-3 s an image at 224 px) when the file is portable and this "
        "machine has VNNI; 0: only this machine's kernels",
    )
    p.add_argument(
        "--eval-limit",
        type=int,
        default=0,
        help="cap on images for FP32 vs INT8, on validation (gate) and test (report) (0 = all)",
    )
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=1.0,
        help="INT8 may lose at most this many accuracy percentage points vs FP32",
    )
    p.add_argument(
        "--min-agreement",
        type=float,
        default=0.95,
        help="INT8 must give FP32's label on at least this share of the validation images",
    )
    p.add_argument(
        "--min-skill-z",
        type=float,
        default=1.645,
        help="the FP32 model must beat chance on validation by this many standard errors for "
        "the split's class counts, in ROC AUC and balanced accuracy (1.645: one-sided 5 %%)",
    )
    p.add_argument(
        "--allow-degraded",
        nargs="?",
        const=True,
        default=False,
        type=_switch,
        metavar="true|false",
        help="export anyway when the skill gate or the INT8 accuracy gate fails; the report "
        "records which gate was overridden (a value, for MLproject's entry point: "
        "--allow-degraded false)",
    )
    p.add_argument(
        "--quality-ranges",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="record the training images' focus, tissue and stain ranges (mhist.quality) so "
        "serving warns about blurry, mostly-background or oddly stained inputs",
    )
    p.add_argument(
        "--temperature-scaling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fit a temperature on each file's validation logits and serve softmax(logits / T) "
        "(mhist.calibration); labels are unchanged",
    )
    band = p.add_mutually_exclusive_group()
    band.add_argument(
        "--uncertain-target-accuracy",
        type=float,
        default=None,
        help="answer 'uncertain' in the narrowest band around the threshold that leaves this "
        "accuracy on the other validation images (e.g. 0.95); default: no band",
    )
    band.add_argument(
        "--uncertain-coverage",
        type=float,
        default=None,
        help="answer 'uncertain' in the widest band that still answers this share of the "
        "validation images (e.g. 0.9); default: no band",
    )
    return p


def main(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    timings: dict[str, float] = {}
    band_target = _band_target(args)  # a bad target fails before any work
    if args.checkpoint is None or args.mlflow:
        check_tracking_reachable(args.tracking_uri)  # TrackingUnreachable is a ValueError
    if not 0.0 <= args.min_agreement <= 1.0:
        raise ValueError(f"--min-agreement {args.min_agreement:g} is a share of images: give a "
                         "number between 0 and 1 (default 0.95)")
    source = _load_source(args)
    spec = PreprocessSpec.from_dict(source.card["preprocessing"])
    mpp = _model_mpp(args.mpp, source.card, spec)
    data_dir = args.data_dir or Path(source.card.get("config", {}).get("data_dir", ""))
    # The training run's own split: gates on validation, calibration on the rest of train.
    splits = training_splits(_records(data_dir), source.card)
    args.out.mkdir(parents=True, exist_ok=True)
    fp32_path, int8_path = args.out / "model.onnx", args.out / int8_file_name(args.cpu_class)
    t = time.perf_counter()
    quality, quality_report = _quality(args.quality_ranges, splits, spec)
    timings["quality_s"] = time.perf_counter() - t

    t = time.perf_counter()
    export_fp32(source.model, spec.size, fp32_path)
    write_metadata(fp32_path, _metadata(source, spec, "fp32", {}, mpp, quality))
    timings["export_s"] = time.perf_counter() - t

    t = time.perf_counter()
    fp32 = InferenceModel(fp32_path)
    parity = check_parity(
        source.model,
        fp32,
        load_batch([r.path for r in splits.validation[: args.parity_images]], spec),
        args.parity_tolerance,
        GATE_SPLIT,
    )
    timings["parity_s"] = time.perf_counter() - t
    print(
        f"parity: max |Δp| {parity.max_abs_diff:.2e} on {parity.images} {parity.split} images "
        f"(tolerance {parity.tolerance:g}) — passed"
    )
    try:
        skill = _skill(fp32, splits.validation, spec, source.card, args)
    except ExportError:
        fp32_path.unlink()  # nobody should serve a model that failed its gate
        raise

    t = time.perf_counter()
    calibration = pick_calibration_images(
        [r.path for r in splits.calibration], args.calibration_size, args.calibration_seed
    )
    settings = QuantSettings.for_class(
        args.cpu_class,
        calibration_method=args.calibration_method,
        calibration_images=len(calibration),
        calibration_seed=args.calibration_seed,
    )
    quantize_int8(
        fp32_path,
        int8_path,
        ImageCalibrationReader(calibration, spec, fp32.metadata.input_name),
        settings,
    )
    write_metadata(int8_path, _metadata(source, spec, "int8", settings.to_dict(), mpp, quality))
    timings["quantize_s"] = time.perf_counter() - t

    t = time.perf_counter()
    int8 = InferenceModel(int8_path)
    comparison = _compare(fp32, int8, splits.validation, spec, source.card, args.eval_limit)
    comparison["kernels"] = kernels(cpu_info())
    timings["evaluate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    avx2 = _avx2_gate(fp32, int8, splits.validation, spec, source.card, args)
    timings["avx2_gate_s"] = time.perf_counter() - t

    # Temperature and band from validation, into the files' metadata (before their sha256).
    t = time.perf_counter()
    onnx_files = {"fp32": fp32_path, "int8": int8_path}
    probability_calibration = calibrate_export(
        onnx_files, splits.validation, spec, args.temperature_scaling, band_target,
        args.out / "calibration",
    )
    timings["calibrate_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started
    report = _report(
        args, source, data_dir, splits, parity, settings, comparison, fp32_path, int8_path, timings
    )
    report["calibration"] = probability_calibration
    report["skill"] = skill
    report["input_quality"] = quality_report
    report["int8"]["avx2_gate"] = avx2
    report_path = args.out / "export_report.json"
    gates = [(comparison, report["int8"]["gate"])]
    if "comparison" in avx2:  # the same gate again, on the kernels of AVX2-only CPUs
        gates.append((avx2["comparison"], avx2))
    for judged, entry in gates:
        try:
            warning = accuracy_gate(
                judged, args.max_accuracy_drop, args.allow_degraded, args.min_agreement
            )
        except ExportError:
            int8_path.unlink()  # nobody should serve a file that failed its gate
            entry["passed"] = False
            report_path.write_text(json.dumps(report, indent=2))
            raise
        entry.update(warning=warning, passed=warning is None, overridden=warning is not None)
    # The final evaluation, after every gate: the only step that reads the test partition.
    # Its numbers are reported and logged; nothing is decided on them.
    t = time.perf_counter()
    report["test_evaluation"] = {
        **_compare(fp32, int8, splits.test, spec, source.card, args.eval_limit, REPORT_SPLIT),
        "gates": False,
    }
    report_test(probability_calibration, onnx_files, splits.test, spec, args.out / "calibration")
    timings["test_evaluation_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started
    report["timings"] = {k: round(v, 3) for k, v in timings.items()}
    report_path.write_text(json.dumps(report, indent=2))
    if args.mlflow:
        report["mlflow"] = _log(args, source, report, report_path, fp32_path, int8_path)
        report_path.write_text(json.dumps(report, indent=2))
    _print_summary(report)
    return report


def _band_target(args: argparse.Namespace) -> BandTarget | None:
    if args.uncertain_target_accuracy is None and args.uncertain_coverage is None:
        return None
    return BandTarget(args.uncertain_target_accuracy, args.uncertain_coverage)


def _quality(
    enabled: bool, splits: ExportSplits, spec: PreprocessSpec
) -> tuple[QualityRanges | None, dict]:
    """Input quality ranges from the fit split, with the validation split's flag rates."""
    if not enabled:
        return None, {"enabled": False}
    try:
        ranges, report = quality_ranges(
            splits.calibration, splits.validation, spec, CALIBRATION_SPLIT, GATE_SPLIT
        )
    except NoRangesError as exc:  # e.g. blank images: the model is still exported, unchecked
        print(f"WARNING: no input quality ranges recorded ({exc}); serving will not check "
              "inputs")
        return None, {"enabled": False, "skipped": str(exc)}
    flagged = report[GATE_SPLIT]
    print(
        f"input quality ranges from {len(splits.calibration)} {CALIBRATION_SPLIT} images; "
        f"{flagged['flagged']} of {flagged['images']} {GATE_SPLIT} images would be flagged "
        f"({', '.join(f'{k} {v}' for k, v in flagged['by_code'].items())})"
    )
    return ranges, {"enabled": True, **report}


def _load_source(args: argparse.Namespace) -> ModelSource:
    if args.checkpoint is not None:
        return from_checkpoint(args.checkpoint)
    return from_mlflow(args.model_uri, args.tracking_uri)


def _records(data_dir: Path) -> list:
    if not str(data_dir):
        raise DatasetError(
            "no data folder: pass --data-dir (the MHIST folder with annotations.csv)"
        )
    records = load_annotations(data_dir)
    if not any(r.partition == "test" for r in records) or not any(
        r.partition == "train" for r in records
    ):
        raise DatasetError(
            f"{data_dir}: export needs train images (validation gates, calibration) and test "
            "images (final evaluation)"
        )
    return records


def _model_mpp(given: float | None, card: dict, spec: PreprocessSpec) -> float:
    """The input's µm/px: --mpp, else the training run's, else derived as MHIST's."""
    mpp = given if given is not None else (card.get("config") or {}).get("mpp")
    mpp = float(mpp) if mpp is not None else input_mpp(spec.resize_size)
    if not 0.0 < mpp < float("inf"):
        raise ValueError(f"--mpp must be a positive number of microns per pixel, got {mpp}")
    return mpp


def _metadata(
    source: ModelSource, spec: PreprocessSpec, precision: str, quantization: dict, mpp: float,
    quality: QualityRanges | None = None,
) -> ModelMetadata:
    card = source.card
    return ModelMetadata(
        classes=tuple(card["classes"]),
        positive_class=card["positive_class"],
        threshold=float(card["threshold"]),
        preprocessing=spec,
        precision=precision,
        name=source.registered_model or "mhist-resnet18",
        version=source.registered_version or "unregistered",
        provenance={
            "source_uri": source.uri,
            "mlflow_run_id": source.run_id,
            "registered_model": source.registered_model,
            "registered_version": source.registered_version,
            "training_git_commit": card.get("git_commit"),
            "export_git_commit": git_commit(),
            "threshold_rule": card.get("threshold_rule"),
            "synthetic_data": bool((card.get("dataset") or {}).get("synthetic", False)),
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        metrics=card.get("metrics", {}),
        quantization=quantization,
        mpp=mpp,
        # The same fp32 fc weights in both files, so FP32 and INT8 draw comparable maps.
        explain=explain_metadata(source.model),
        quality=quality,
    )


def _compare(
    fp32: InferenceModel,
    int8: InferenceModel,
    records: list,
    spec: PreprocessSpec,
    card: dict,
    limit: int,
    split: str = GATE_SPLIT,
) -> dict:
    chosen = records[:limit] if limit else records
    return compare_precisions(
        fp32,
        int8,
        load_batch([r.path for r in chosen], spec),
        np.array([int(r.label == card["positive_class"]) for r in chosen]),
        split,
        votes=np.array([r.votes for r in chosen]),
    )


def _avx2_gate(fp32: InferenceModel, int8: InferenceModel, records: list,
               spec: PreprocessSpec, card: dict, args: argparse.Namespace) -> dict:
    """The first --avx2-gate-images validation images under AVX2 kernels (export/kernels.py),
    against FP32 on this machine; the report entry ("not needed" / "not run" say why not)."""
    info = cpu_info()
    if not needs_avx2_gate(args.cpu_class, info):
        why = (f"this machine ({info.cpu_class or 'unknown'} class) has the kernels a "
               f"{args.cpu_class} file is judged on")
        if args.cpu_class != "portable" and info.cpu_class != args.cpu_class:
            why = (f"this machine has no VNNI: the {args.cpu_class} file was judged on its "
                   "AVX2 kernels, where full-range sums saturate (harsher than the CPUs it is for)")
        return {"status": "not needed", "reason": why}
    if args.avx2_gate_images <= 0:
        return {"status": "not run", "reason": "--avx2-gate-images 0"}
    chosen = records[: args.avx2_gate_images]
    batch = load_batch([r.path for r in chosen], spec)
    meta = int8.metadata
    try:
        logits, seen, seconds = emulated_logits(
            int8.path, batch, meta.input_name, meta.output_name,
            timeout=120 + 15 * len(chosen))
    except EmulationError as exc:
        print(f"WARNING: the portable INT8 file was not judged on AVX2 kernels: {exc}")
        return {"status": "not run", "reason": str(exc)}
    emulated = softmax(logits.astype(np.float64))
    native = onnx_probabilities(int8, batch)
    labels = np.array([int(r.label == card["positive_class"]) for r in chosen])
    result = compare_probabilities(
        onnx_probabilities(fp32, batch), emulated, labels, meta.threshold, meta.positive_index,
        f"{GATE_SPLIT} (AVX2 kernels: {QEMU} -cpu {EMULATED_CPU})")
    result["kernels"] = kernels(seen, f"{QEMU} -cpu {EMULATED_CPU}")
    # A portable file gives the same numbers on either kernel family; report how far it is.
    result["max_abs_diff_to_native_int8"] = float(np.abs(emulated - native).max())
    print(f"AVX2 kernels ({QEMU} -cpu {EMULATED_CPU}, {len(chosen)} {GATE_SPLIT} images, "
          f"{seconds:.0f} s): agreement with FP32 {result['top1_agreement']:.3f}, mean |ΔP| "
          f"{result['mean_abs_positive_diff']:.4f}, max |Δ| to this machine's INT8 "
          f"{result['max_abs_diff_to_native_int8']:.2e}")
    return {"status": "run", "images": len(chosen), "seconds": round(seconds, 1),
            "comparison": result}


def _skill(fp32: InferenceModel, records: list, spec: PreprocessSpec, card: dict,
           args: argparse.Namespace) -> dict:
    """The skill gate on every validation image (not --eval-limit's cap: a floor judged on a
    dozen images would need a margin no model reaches)."""
    meta = fp32.metadata
    probabilities = onnx_probabilities(fp32, load_batch([r.path for r in records], spec))
    labels = np.array([int(r.label == card["positive_class"]) for r in records])
    entry = skill_gate(labels, probabilities[:, meta.positive_index], meta.threshold,
                       args.min_skill_z, args.allow_degraded, GATE_SPLIT)
    verdict = "OVERRIDDEN by --allow-degraded" if entry["overridden"] else "passed"
    shown = ", ".join(
        f"{name} {entry[name]:.3f} {'>' if entry[name] > bound else '≤'} {bound:.3f}"
        for name, bound in entry["bounds"].items())
    print(f"skill: {shown} on {entry['images']} {entry['split']} images — {verdict}")
    return entry


def _report(
    args,
    source,
    data_dir,
    splits: ExportSplits,
    parity,
    settings,
    comparison,
    fp32_path,
    int8_path,
    timings,
) -> dict:
    fp32_size, int8_size = fp32_path.stat().st_size, int8_path.stat().st_size
    return {
        "source": {
            "uri": source.uri,
            "run_id": source.run_id,
            "registered_model": source.registered_model,
            "registered_version": source.registered_version,
        },
        "data_dir": str(data_dir),
        "allow_degraded": args.allow_degraded,
        "synthetic_data": bool((source.card.get("dataset") or {}).get("synthetic", False)),
        "opset": OPSET,
        "splits": splits.to_dict(),
        "parity": parity.to_dict(),
        "int8": {
            "settings": settings.to_dict(),
            "calibration_split": CALIBRATION_SPLIT,
            "comparison": comparison,
            "gate": {
                "split": comparison["split"],
                "max_accuracy_drop_pp": args.max_accuracy_drop,
                "min_top1_agreement": args.min_agreement,
                "passed": True,
            },
        },
        "files": {
            "fp32": _file_info(fp32_path),
            "int8": _file_info(int8_path),
        },
        "int8_to_fp32_size": int8_size / fp32_size,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "cpu": cpu_info().to_dict(),
        "versions": _versions(),
    }


def _file_info(path: Path) -> dict:
    t = time.perf_counter()
    InferenceModel(path)
    load_s = time.perf_counter() - t
    return {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "load_s": round(load_s, 4),
    }


def _versions() -> dict:
    import onnx
    import onnxruntime
    import torch

    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _log(args, source, report, report_path, fp32_path, int8_path) -> dict:
    from export.tracking import log_export

    return log_export(
        args.tracking_uri,
        args.experiment,
        args.registered_model,
        {"fp32": fp32_path, "int8": int8_path},
        report,
        report_path,
        source.run_id,
    )


def _print_summary(report: dict) -> None:
    cmp_ = report["int8"]["comparison"]
    files = report["files"]
    synthetic = " (SYNTHETIC sample data)" if report["synthetic_data"] else ""
    print(
        f"export done{synthetic}: FP32 {files['fp32']['size_bytes'] / 1e6:.1f} MB, "
        f"INT8 {files['int8']['size_bytes'] / 1e6:.1f} MB "
        f"({100 * report['int8_to_fp32_size']:.0f} %); "
        f"accuracy FP32 {cmp_['fp32']['accuracy']:.3f} vs INT8 {cmp_['int8']['accuracy']:.3f}, "
        f"agreement {cmp_['top1_agreement']:.3f} on {cmp_['images']} {cmp_['split']} images"
    )
    seen = cmp_.get("kernels") or {}
    avx2 = report["int8"].get("avx2_gate") or {}
    print(f"INT8 file for CPU class {report['int8']['settings']['cpu_class']}: gated on this "
          f"machine's kernels ({seen.get('cpu_class')} class: {' '.join(seen.get('features', []))})"
          + (f" and on AVX2 kernels ({avx2['comparison']['kernels']['where']}, "
             f"{avx2['images']} images)" if avx2.get("status") == "run" else
             f"; AVX2 kernels {avx2.get('status', 'not run')}: {avx2.get('reason', '')}"))
    final = report.get("test_evaluation")
    if final:
        print(
            f"final evaluation (reported, gates nothing) on {final['images']} test images: "
            f"FP32 accuracy {final['fp32']['accuracy']:.3f}, AUC {format_auc(final['fp32'])}; "
            f"INT8 accuracy {final['int8']['accuracy']:.3f}, AUC {format_auc(final['int8'])}"
        )
    for line in agreement_lines(cmp_) + agreement_lines(final):
        print(line)
    for line in summary_lines(report.get("calibration")):
        print(line)
    if report["int8"]["gate"].get("warning"):
        print(f"WARNING (--allow-degraded): {report['int8']['gate']['warning']}")
    if report["skill"].get("message"):
        print(f"WARNING (--allow-degraded): {report['skill']['message']}")
    if "mlflow" in report:
        print(
            f"registered {report['mlflow']['registered_model']} "
            f"versions {report['mlflow']['versions']}"
        )


def cli(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        main(args)
    except (ExportError, DatasetError, FileNotFoundError, ValueError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
