"""MkDocs hooks: the pages that describe the serving layer are generated from its own code.

- `<!-- settings-table -->` becomes the table of every serving setting, built from the one
  declaration of each in services/web/settings.py (`describe`: variable, per-target default,
  description), so the table cannot fall behind the code.
- `<!-- api-reference -->` becomes the API reference, rendered from the app's own OpenAPI
  document (`services.web.openapi.openapi_spec`) of an app built without a model; the document
  itself is published as `openapi.json` next to the pages.
- `<!-- quality-flag-table -->` becomes the counts of held-out images with input quality
  warnings, original and perturbed, computed now by tests/support/quality.py from a synthetic
  sample made like the test fixture's (a few seconds); tests/test_quality.py asserts bounds on
  the same counts and that they are the fixture's.

mkdocs.yml names this file under `hooks:` and excludes it from the site.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # mkdocs imports hooks by path; the project by package
    sys.path.insert(0, str(REPO_ROOT))

SETTINGS_MARKER = "<!-- settings-table -->"
API_MARKER = "<!-- api-reference -->"
QUALITY_MARKER = "<!-- quality-flag-table -->"
OPENAPI_FILE = "openapi.json"


def settings_table() -> str:
    """The Markdown table of every serving setting, in declaration order, from the one
    declaration of each (services.web.settings.describe)."""
    from services.web.settings import describe

    rows = ["| variable | default | read by | SageMaker's name (wins there) | what it does |",
            "|---|---|---|---|---|"]
    for row in describe():
        platform = f"`{row['sagemaker']}`" if row["sagemaker"] else ""
        rows.append(f"| `{row['variable']}` | {_cell(row['default'])} | {row['read_by']} | "
                    f"{platform} | {_cell(row['doc'])} |")
    return "\n".join(rows)


def quality_flag_table() -> str:
    """The held-out images' quality warnings, and the bounds tests/test_quality.py asserts."""
    # The repository first: run as `mkdocs`, its folder is on sys.path after site-packages,
    # where another distribution's top-level `tests` package would shadow ours.
    if sys.path[0] != str(REPO_ROOT):
        sys.path.insert(0, str(REPO_ROOT))
    from tests.support.quality import (
        MAX_ORIGINALS_FLAGGED,
        MIN_PERTURBED_FLAGGED,
        markdown_table,
        sample_held_out,
    )

    held = sample_held_out()
    return (f"Measured when this page was built, on the test fixture's synthetic sample: ranges "
            f"learned from its {held.fit_images} fit images at the fixture model's input size, "
            f"each of the other {len(held.paths)} images (the validation split and the test "
            f"partition) sent as it is and perturbed. `tests/test_quality.py` asserts the same "
            f"counts: at most {MAX_ORIGINALS_FLAGGED:.0%} of the originals with a warning, at "
            f"least {MIN_PERTURBED_FLAGGED:.0%} of each perturbation with its own.\n\n"
            + markdown_table(held))


# --- API reference ------------------------------------------------------------------------------

def openapi_document(target: str = "sagemaker") -> dict[str, Any]:
    """The app's own OpenAPI document; no model is loaded (MODEL_REQUIRED off, no MODEL_PATH).
    The SageMaker target serves every route the others do, plus its own three."""
    from services.web.app import create_app
    from services.web.openapi import openapi_spec

    # With a token set, as a deployment that takes one: the document then shows the bearer
    # scheme and the 401s (without MHIST_API_TOKEN a server omits both).
    app = create_app({"MODEL_PATH": "", "MODEL_REQUIRED": False, "SERVING_TARGET": target,
                      "MHIST_API_TOKEN": "documentation"})
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
    flask_paths = set(openapi_document("flask")["paths"])
    parts = [f"Generated from the app's own OpenAPI {document['openapi']} document, which is "
             f"also published here as [`{OPENAPI_FILE}`]({OPENAPI_FILE}) and served by every "
             "target at `GET /openapi.json`."]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            parts.append(_operation_md(path, method, operation, path not in flask_paths))
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
    if QUALITY_MARKER in markdown:
        markdown = markdown.replace(QUALITY_MARKER, quality_flag_table())
    if API_MARKER in markdown:
        markdown = markdown.replace(API_MARKER, api_reference())
    return markdown
