"""MkDocs hooks: the pages that describe the serving layer are generated from its own code.

- `<!-- settings-table -->` becomes the table of every serving setting, built from
  `services.web.settings.variables()` (what is read) and `Settings.from_env` (each target's
  defaults). A setting without a description below fails the build, so the table cannot
  fall behind the code.
- `<!-- api-reference -->` becomes the API reference, rendered from the app's own OpenAPI
  document (`services.web.openapi.openapi_spec`) of an app built without a model; the document
  itself is published as `openapi.json` next to the pages.

mkdocs.yml names this file under `hooks:` and excludes it from the site.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # mkdocs imports hooks by path; the project by package
    sys.path.insert(0, str(REPO_ROOT))

SETTINGS_MARKER = "<!-- settings-table -->"
API_MARKER = "<!-- api-reference -->"
OPENAPI_FILE = "openapi.json"
TARGETS = ("http", "lambda", "sagemaker")
TARGET_NAMES = {"http": "Flask", "lambda": "Lambda", "sagemaker": "SageMaker"}
MIB = 1024 * 1024

# Defaults that depend on the machine the server starts on: described, not computed here.
MACHINE_DEFAULTS = {
    "workers": "usable CPUs, at most 4; SageMaker: one per usable CPU",
    "ort_threads": "usable CPUs ÷ (workers × threads), at least 1",
}
BYTE_SETTINGS = frozenset({"max_content_length", "s3_max_object_bytes"})

# What each setting does, by Settings field name. Every name variables() returns needs one.
DESCRIPTIONS: dict[str, str] = {
    "target": "Which target this process serves. The Lambda adapter sets `lambda`, "
              "`sagemaker/serve` sets `sagemaker` (which adds `/ping`, `/invocations`, "
              "`/execution-parameters`).",
    "model_path": "The ONNX file to serve. Required for the Flask container; Lambda bakes "
                  "it at `/opt/model/model.onnx`; SageMaker's `serve` resolves it from "
                  "`SM_MODEL_DIR`.",
    "model_sha256": "Expected sha256 of the model file, checked at load. `sagemaker/serve` "
                    "sets it from the archive's `manifest.json`.",
    "model_dir": "Where SageMaker extracts `model.tar.gz`.",
    "model_required": "With 0 the app starts without a model, `/ready` answers 503 and the "
                      "load is retried every `MODEL_RETRY_SECONDS`.",
    "model_retry_seconds": "Seconds between load attempts when `MODEL_REQUIRED=0`.",
    "max_content_length": "Largest request body in bytes, chunked bodies included (413 "
                          "above). Lambda: 4.5 MB decoded is 6 MB of base64, its synchronous "
                          "payload limit. SageMaker's variable is in MB.",
    "max_batch": "Most images in one `/predict/batch` or JSON `/invocations` batch.",
    "max_image_pixels": "Most decoded pixels in one image (413 above, naming the limit).",
    "api_token": "Bearer token required on every route except `/health`, `/ready`, `/ping` "
                 "and the upload page. Unset: no authentication.",
    "front_server": "`nginx` puts nginx before gunicorn (the Flask and SageMaker images set "
                    "it); `none` runs gunicorn alone.",
    "host": "Address to bind. The Flask image sets `0.0.0.0`.",
    "port": "Port to bind. The Flask image sets 8080.",
    "workers": "gunicorn worker processes; each builds its own ONNX Runtime session.",
    "threads": "Threads per gunicorn worker (above 1: gthread workers). SageMaker uses 2 so "
               "`/ping` answers while an invocation runs.",
    "timeout": "gunicorn worker timeout in seconds; nginx gives up 5 s later.",
    "graceful_timeout": "Seconds a worker has to finish in-flight requests after SIGTERM: "
                        "inside `docker stop`'s 10 s, and inside SageMaker's 30 s.",
    "keepalive": "Seconds gunicorn keeps an idle connection open.",
    "max_requests": "Recycle a worker after this many requests; 0 never recycles.",
    "log_level": "debug, info, warning, error or critical.",
    "ort_threads": "ONNX Runtime intra-op threads per session, sized from the container's "
                   "CPU quota rather than the host's cores.",
    "ort_spinning": "Let ONNX Runtime's intra-op threads busy-wait for work; it only pays off "
                    "when one process owns the CPUs.",
    "cors_allow_origins": "`*` or comma-separated origins. Unset: no CORS headers.",
    "emf_metrics": "With 1 each request's log line is also a CloudWatch embedded-metric-format "
                   "record (latency, inference time).",
    "emf_namespace": "CloudWatch namespace of those metrics.",
    "function_name": "Set by Lambda itself; names the function in logs and metrics.",
    "s3_input": "Lambda's S3 flow: objects created under this `s3://BUCKET/PREFIX` are "
                "classified. Needs `S3_OUTPUT_URI` too.",
    "s3_output": "Where the result of key K is written, as `PREFIX/K.json`. Refused when it "
                 "lies under `S3_INPUT_URI`.",
    "s3_max_object_bytes": "Larger objects get an error result instead of being read.",
}


def _value_text(name: str, value: Any) -> str:
    if value is None or value == ():
        return "unset"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if name in BYTE_SETTINGS and isinstance(value, int):
        mib = value / MIB
        return f"{value} ({mib:g} MiB)" if mib.is_integer() else f"{value}"
    if name == "max_image_pixels" and isinstance(value, int):
        side = math.isqrt(value)
        return f"{value} ({side}²)" if side * side == value else str(value)
    return f"`{value}`" if isinstance(value, str) else str(value)


def _default_text(name: str) -> str:
    from services.web.settings import Settings

    if name in MACHINE_DEFAULTS:
        return MACHINE_DEFAULTS[name]
    if name == "target":
        return "`http`"
    per_target = {t: _value_text(name, getattr(Settings.from_env({"SERVING_TARGET": t}), name))
                  for t in TARGETS}
    if len(set(per_target.values())) == 1:
        return per_target["http"]
    return "; ".join(f"{TARGET_NAMES[t]}: {text}" for t, text in per_target.items())


def settings_table() -> str:
    """The Markdown table of every serving setting, in declaration order."""
    from services.web.settings import variables

    missing = sorted(set(variables()) - set(DESCRIPTIONS))
    if missing:
        raise ValueError(f"docs/hooks.py has no description for the setting(s) {missing}: add "
                         "them to DESCRIPTIONS")
    rows = ["| variable | SageMaker's name (wins on SageMaker) | default | what it does |",
            "|---|---|---|---|"]
    for name, (env, sagemaker_env) in variables().items():
        platform = f"`{sagemaker_env}`" if sagemaker_env else ""
        rows.append(f"| `{env}` | {platform} | {_default_text(name)} | {DESCRIPTIONS[name]} |")
    return "\n".join(rows)


# --- API reference ------------------------------------------------------------------------------

def openapi_document(target: str = "sagemaker") -> dict[str, Any]:
    """The app's own OpenAPI document; no model is loaded (MODEL_REQUIRED off, no MODEL_PATH).
    The SageMaker target serves every route the others do, plus its own three."""
    from services.web.app import create_app
    from services.web.openapi import openapi_spec

    app = create_app({"MODEL_PATH": "", "MODEL_REQUIRED": False, "SERVING_TARGET": target})
    return openapi_spec(app)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _operation_md(path: str, method: str, operation: dict[str, Any], sagemaker_only: bool) -> str:
    lines = [f"### `{method.upper()} {path}`", "", _cell(operation.get("summary", "")) + "."]
    if operation.get("description"):
        lines += ["", _cell(operation["description"])]
    if sagemaker_only:
        lines += ["", "SageMaker target only."]
    if operation.get("security") == []:
        lines += ["", "Open: no token needed even when `MHIST_API_TOKEN` is set."]
    parameters = operation.get("parameters", [])
    if parameters:
        lines += ["", "| parameter | in | description |", "|---|---|---|"]
        lines += [f"| `{p['name']}` | {p['in']} | {_cell(p.get('description', ''))} |"
                  for p in parameters]
    body = operation.get("requestBody")
    if body:
        types = ", ".join(f"`{t}`" for t in body.get("content", {}))
        lines += ["", f"Request body: {types}."]
    responses = operation.get("responses", {})
    if responses:
        lines += ["", "| status | description |", "|---|---|"]
        lines += [f"| {code} | {_cell(r.get('description', ''))} |"
                  for code, r in responses.items()]
    return "\n".join(lines)


def api_reference(document: dict[str, Any] | None = None) -> str:
    """Markdown for every route of the app, from its OpenAPI document."""
    document = document or openapi_document("sagemaker")
    http_paths = set(openapi_document("http")["paths"])
    parts = [f"Generated from the app's own OpenAPI {document['openapi']} document, which is "
             f"also published here as [`{OPENAPI_FILE}`]({OPENAPI_FILE}) and served by every "
             "target at `GET /openapi.json`."]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            parts.append(_operation_md(path, method, operation, path not in http_paths))
    return "\n\n".join(parts)


# --- MkDocs events ------------------------------------------------------------------------------

def on_files(files, config):
    """Publish the OpenAPI document as a file of the site, so pages can link to it."""
    from mkdocs.structure.files import File

    content = json.dumps(openapi_document("sagemaker"), indent=2, ensure_ascii=False) + "\n"
    files.append(File.generated(config, OPENAPI_FILE, content=content))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if SETTINGS_MARKER in markdown:
        markdown = markdown.replace(SETTINGS_MARKER, settings_table())
    if API_MARKER in markdown:
        markdown = markdown.replace(API_MARKER, api_reference())
    return markdown
