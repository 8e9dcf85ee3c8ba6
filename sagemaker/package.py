"""Write model.tar.gz for SageMaker (ModelDataUrl) from an exported ONNX file or MLflow.

    python sagemaker/package.py                                   # artifacts/model.int8.onnx
    python sagemaker/package.py --onnx artifacts/model.onnx --out build/model.tar.gz
    python sagemaker/package.py --model-uri models:/mhist-resnet18-onnx --precision int8 \
        --tracking-uri sqlite:///mlflow.db

The archive holds, at its root (SageMaker extracts it into /opt/ml/model):
    model.onnx      the self-describing ONNX file, unchanged
    manifest.json   model_file, sha256, size_bytes, where it came from, the model's metadata
Before writing, the staged model.onnx is loaded with the serving core (services.core.model), the
same check the container runs at start-up, so an archive this script writes is one `serve`
accepts. The archive is byte-reproducible (sorted members, zero mtimes and owners), so the same
model gives the same S3 object.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from services.adapters.sagemaker import MANIFEST_FILE, MODEL_FILE
from services.core.errors import ModelLoadError
from services.core.files import sha256_file
from services.core.model import InferenceModel

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ONNX = REPO_ROOT / "artifacts" / "model.int8.onnx"
REGISTERED_MODEL = "mhist-resnet18-onnx"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--onnx", type=Path, default=None,
                        help="exported ONNX file "
                             f"(default: {DEFAULT_ONNX.relative_to(REPO_ROOT)})")
    source.add_argument("--model-uri", default=None,
                        help=f"MLflow model URI, e.g. models:/{REGISTERED_MODEL}[/VERSION|@ALIAS] "
                             "or runs:/RUN_ID/onnx-int8 (default: use --onnx)")
    parser.add_argument("--precision", choices=("int8", "fp32"), default="int8",
                        help="for models:/NAME or models:/NAME/latest: newest version with this "
                             "precision tag")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI "
                             "(default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--out", type=Path, default=Path("model.tar.gz"),
                        help="archive to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mhist-package-") as tmp:
        try:
            if args.model_uri:
                # mlflow stays out of this folder: the registry code lives with export.
                from export.registry import fetch_onnx_model

                onnx_path, source = fetch_onnx_model(
                    args.model_uri, args.tracking_uri, args.precision, Path(tmp) / "download")
            else:
                onnx_path = args.onnx or DEFAULT_ONNX
                source = {"kind": "file", "path": str(onnx_path)}
            summary = package(onnx_path, args.out, source, Path(tmp) / "stage")
        except (ModelLoadError, FileNotFoundError, ValueError) as exc:
            print(f"package: error: {exc}", file=sys.stderr)
            return 2
    print(json.dumps(summary, indent=2))
    return 0


def package(onnx_path: Path, out: Path, source: dict, stage: Path) -> dict:
    """Stage model.onnx + manifest.json, prove they load, write the archive; returns a summary."""
    if not onnx_path.is_file():
        raise FileNotFoundError(
            f"{onnx_path} does not exist: export a model first (python export/to_onnx.py) "
            "or pass --onnx PATH / --model-uri URI"
        )
    stage.mkdir(parents=True)
    staged = stage / MODEL_FILE
    shutil.copyfile(onnx_path, staged)
    model = InferenceModel(staged, threads=1)  # ModelLoadError if serving could not load it
    digest = sha256_file(staged)
    manifest = {
        "format": 1,
        "model_file": MODEL_FILE,
        "sha256": digest,
        "size_bytes": staged.stat().st_size,
        "source": source,
        "metadata": model.metadata.describe(),
    }
    (stage / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    write_archive(stage, out)
    return {"archive": str(out), "archive_bytes": out.stat().st_size, "model_sha256": digest,
            "name": model.metadata.name, "version": model.metadata.version,
            "precision": model.metadata.precision, "source": source}


def write_archive(folder: Path, out: Path) -> None:
    """tar.gz of the folder's files at the archive root, reproducible byte for byte."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped, \
            tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(folder.iterdir()):
            info = tar.gettarinfo(str(path), arcname=path.name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o644  # readable by the container's non-root user
            with path.open("rb") as handle:
                tar.addfile(info, handle)


if __name__ == "__main__":
    sys.exit(main())
