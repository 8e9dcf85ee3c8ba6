"""Log the exported files to MLflow and register them as `mhist-resnet18-onnx`."""

from __future__ import annotations

from pathlib import Path

import onnx

from export.calibration import flat_metrics
from training.tracking import log_params, start_run, tag_version


def log_export(
    tracking_uri: str,
    experiment: str,
    registered_name: str,
    files: dict[str, Path],
    report: dict,
    report_path: Path,
    source_run_id: str | None,
) -> dict:
    """One MLflow run holding both ONNX models, each registered as a version of the same name.

    FP32 and INT8 versions are told apart by the version tag `precision`.
    """
    import mlflow

    tags = {
        "stage": "export",
        "source_run_id": source_run_id or "",
        "source_uri": report["source"]["uri"],
        "gate_split": report["int8"]["gate"]["split"],
    }
    registered: dict[str, str] = {}
    with start_run(tracking_uri, experiment, "onnx-export", tags) as run:
        log_params({f"quant_{k}": v for k, v in report["int8"]["settings"].items()})
        mlflow.log_metrics(_flat_metrics(report))
        mlflow.log_artifact(str(report_path))
        # Reliability diagrams and coverage-vs-accuracy curves (export/calibration.py).
        calibration_dir = report_path.parent / "calibration"
        if calibration_dir.is_dir():
            mlflow.log_artifacts(str(calibration_dir), artifact_path="calibration")
        for precision, path in files.items():
            info = mlflow.onnx.log_model(
                onnx.load(str(path)),
                name=f"onnx-{precision}",
                registered_model_name=registered_name,
                save_as_external_data=False,
            )
            version = str(info.registered_model_version)
            version_tags = {"precision": precision, "sha256": report["files"][precision]["sha256"]}
            if source_run_id:
                version_tags["source_run_id"] = source_run_id
            tag_version(registered_name, version, version_tags)
            registered[precision] = version
    return {"run_id": run.info.run_id, "registered_model": registered_name, "versions": registered}


def _flat_metrics(report: dict) -> dict[str, float]:
    """Gate numbers (validation split) unprefixed; the reported-only test evaluation as test_*."""
    int8 = report["int8"]["comparison"]
    final = report.get("test_evaluation") or {}
    tested = {
        f"test_{precision}_{key}": final[precision][key]
        for precision in ("fp32", "int8")
        for key in ("accuracy", "roc_auc")
        if final and final[precision].get(key) is not None
    }
    agreement = _agreement_metrics(int8, final)
    return tested | agreement | flat_metrics(report.get("calibration")) | {
        "parity_max_abs_diff": report["parity"]["max_abs_diff"],
        "int8_accuracy_drop_pp": int8["accuracy_drop_pp"],
        "int8_top1_agreement": int8["top1_agreement"],
        "fp32_size_mb": report["files"]["fp32"]["size_bytes"] / 1e6,
        "int8_size_mb": report["files"]["int8"]["size_bytes"] / 1e6,
        "export_seconds": report["timings"]["total_s"],
    }


def _agreement_metrics(validation: dict, test: dict) -> dict[str, float]:
    """AUC and accuracy of the annotator-agreement groups: fp32_split_roc_auc, test_int8_…"""
    out = {}
    for split_prefix, comparison in (("", validation), ("test_", test)):
        for precision, metrics in (comparison or {}).get("agreement", {}).items():
            for group in ("agree", "split"):
                for key in ("roc_auc", "accuracy"):
                    value = metrics["groups"][group][key]
                    if value is not None:
                        out[f"{split_prefix}{precision}_{group}_{key}"] = value
    return out
