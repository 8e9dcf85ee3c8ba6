"""MLflow model registry access: `models:/` URIs resolved to one version, ONNX models fetched.

export/source.py resolves the trained model (`mhist-resnet18`) with `resolve_version`;
sagemaker/package.py fetches an ONNX model (`mhist-resnet18-onnx`) with `fetch_onnx_model` and
must not import mlflow itself (that folder is serving code), so mlflow is imported only inside
the functions here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from training.provenance import DEFAULT_TRACKING_URI

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/]+)|@(?P<alias>[^/]+))?$")


def resolve_version(
    client: MlflowClient, uri: str, hint: str, tags: dict[str, str] | None = None
) -> ModelVersion | None:
    """models:/NAME, /latest, /VERSION or @ALIAS → the registry's ModelVersion.

    None for runs:/ URIs (no registry involved). NAME and /latest mean the newest version
    carrying all `tags`; `hint` ends the error raised when there is none (what to run first).
    """
    match = MODELS_URI.match(uri)
    if not match:
        if uri.startswith("runs:/"):
            return None
        raise ValueError(f"unsupported model URI {uri!r}: use models:/NAME[/VERSION|@ALIAS] "
                         "or runs:/RUN_ID/PATH")
    name = match["name"]
    if match["alias"]:
        return client.get_model_version_by_alias(name, match["alias"])
    if match["version"] and match["version"] != "latest":
        return client.get_model_version(name, match["version"])
    wanted = tags or {}
    candidates = [v for v in client.search_model_versions(f"name='{name}'")
                  if all(v.tags.get(key) == value for key, value in wanted.items())]
    if not candidates:
        tagged = "".join(f" tagged {key}={value}" for key, value in wanted.items())
        raise ValueError(f"no registered model {name!r}{tagged} in this tracking store: {hint}")
    return max(candidates, key=lambda v: int(v.version))


def fetch_onnx_model(uri: str, tracking_uri: str | None, precision: str,
                      dest: Path) -> tuple[Path, dict]:
    """Download a logged ONNX model; returns its .onnx path and a provenance dict."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    # models:/ URIs are resolved through the registry URI, which otherwise defaults to
    # ./mlflow.db whatever tracking_uri says.
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        resolved, version_tags = _resolve(client, uri, precision)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=resolved,
                                                         dst_path=str(dest)))
    except MlflowException as exc:
        raise ValueError(f"cannot fetch {uri} from {tracking_uri}: {exc.message}") from None
    flavor = Model.load(str(local)).flavors.get("onnx")
    if not flavor:
        raise ValueError(f"{resolved} is not an ONNX model (no onnx flavor in its MLmodel)")
    onnx_path = local / flavor["data"]
    source = {"kind": "mlflow", "model_uri": resolved, "requested_uri": uri, **version_tags}
    return onnx_path, source


def _resolve(client, uri: str, precision: str) -> tuple[str, dict]:
    """models:/NAME, /latest, /VERSION or @ALIAS → models:/NAME/VERSION plus its tags."""
    # Export registers FP32 and INT8 as versions of one name, told apart by a tag.
    found = resolve_version(client, uri, "run python export/to_onnx.py first",
                            tags={"precision": precision})
    if found is None:
        return uri, {}
    tags = {"registered_model": found.name, "registered_version": str(found.version),
            "run_id": found.run_id, "precision": found.tags.get("precision")}
    return f"models:/{found.name}/{found.version}", tags
