"""MLflow registry access for the ONNX models that export registers (`mhist-resnet18-onnx`).

Used by sagemaker/package.py, which must not import mlflow itself (that folder is serving code).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/]+)|@(?P<alias>[^/]+))?$")


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
    match = _MODELS_URI.match(uri)
    if not match:
        if uri.startswith("runs:/"):
            return uri, {}
        raise ValueError(f"unsupported model URI {uri!r}: use models:/NAME[/VERSION|@ALIAS] "
                         "or runs:/RUN_ID/PATH")
    name = match["name"]
    if match["alias"]:
        found = client.get_model_version_by_alias(name, match["alias"])
    elif match["version"] and match["version"] != "latest":
        found = client.get_model_version(name, match["version"])
    else:
        # Export registers FP32 and INT8 as versions of one name, told apart by a tag.
        candidates = [v for v in client.search_model_versions(f"name='{name}'")
                      if v.tags.get("precision") == precision]
        if not candidates:
            raise ValueError(f"no version of registered model {name!r} has tag "
                             f"precision={precision}: run python export/to_onnx.py first")
        found = max(candidates, key=lambda v: int(v.version))
    tags = {"registered_model": name, "registered_version": str(found.version),
            "run_id": found.run_id, "precision": found.tags.get("precision")}
    return f"models:/{name}/{found.version}", tags
