"""Section 7: the FP32 and INT8 files — size, load time, accuracy (export_report.json)."""

from __future__ import annotations

from benchmarks.report.records import Precision
from benchmarks.report.text import num, ratio, table


def model_quality_findings(fp32_metrics: dict[str, float | None]) -> list[str]:
    """What the export's metrics say about the model itself (computed conditions only)."""
    found = []
    auc, balanced = fp32_metrics.get("roc_auc"), fp32_metrics.get("balanced_accuracy")
    if auc is not None and auc < 0.5:
        found.append(f"FP32 ROC AUC {auc:.3f} < 0.5: the model ranks the two classes worse "
                     "than chance on these images.")
    if balanced is not None and abs(balanced - 0.5) < 1e-9:
        found.append("FP32 balanced accuracy 0.500: the model gives every image the same "
                     "label.")
    if found:
        found.append("INT8-vs-FP32 accuracy deltas and agreement on such a model do not show "
                     "that INT8 would keep a useful model's quality.")
    return found


def _rows(rec: Precision) -> list[list]:
    rows = [[name.upper(), num(f.size_bytes / 1e6, 1), num(f.load_ms, 0),
             *[num(value, 3) for value in f.metrics.values()]]
            for name, f in (("fp32", rec.fp32), ("int8", rec.int8))]
    deltas = [num((rec.int8.metrics[m] or 0) - (value or 0), 3)
              for m, value in rec.fp32.metrics.items()]
    rows.append(["INT8 vs FP32 (ratio; metric Δ)", ratio(rec.int8.size_bytes, rec.fp32.size_bytes),
                 ratio(rec.int8.load_ms, rec.fp32.load_ms), *deltas])
    return rows


def precision_section(rec: Precision | None) -> str:
    if rec is None:
        return "## 7. FP32 vs INT8\n\nNo data."
    text = [
        "## 7. FP32 vs INT8 (file, load, accuracy from export_report.json)", "",
        table(["file", "size MB", "load ms", *rec.fp32.metrics], _rows(rec)),
        f"\nTop-1 agreement {rec.top1_agreement:.3f}, max |Δp| {rec.max_abs_prob_diff:.3g} on "
        f"{rec.images} SYNTHETIC images of the {rec.split} split."]
    text += [f"\n{line}" for line in model_quality_findings(rec.fp32.metrics)]
    return "\n".join(text)
