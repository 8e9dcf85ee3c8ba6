"""The front door and the documentation site: README.md stays short and its links resolve, the
MkDocs site builds with --strict (broken links, anchors and snippet includes fail it), and
neither holds development-machine paths or issue numbers."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
README_MAX_LINES = 200
FORBIDDEN = ("../shared", "FIELD-NOTES", "issue #")
# [text](target) with a target that is not a URL, a mail address or an in-page anchor.
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def load_hooks() -> ModuleType:
    """docs/hooks.py, the MkDocs hooks that generate the settings table and the API reference."""
    spec = importlib.util.spec_from_file_location("mhist_docs_hooks", DOCS / "hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _doc_files() -> list[Path]:
    return [README, REPO_ROOT / "mkdocs.yml", *sorted(DOCS.rglob("*.md"))]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out


def test_the_site_builds_strictly(site: Path) -> None:
    for page in ("index.html", "serving/index.html", "aws/index.html", "slides/index.html",
                 "training/index.html", "mlflow-team/index.html", "benchmarks/index.html",
                 "tests/index.html", "decisions/index.html", "openapi.json"):
        assert (site / page).is_file(), page
    assert not (site / "hooks.py").exists()


def test_generated_parts_are_in_the_site(site: Path) -> None:
    serving = (site / "serving" / "index.html").read_text()
    assert "<!-- settings-table -->" not in serving and "<!-- api-reference -->" not in serving
    assert "SAGEMAKER_MODEL_SERVER_WORKERS" in serving and "/predict/region" in serving
    for latest in sorted((REPO_ROOT / "benchmarks").glob("LATEST.*.md")):  # one per CPU class
        run = re.search(r"^# MHIST benchmarks — (\S+)", latest.read_text(), re.MULTILINE)
        assert run, f"benchmarks/{latest.name} lost its title"
        assert run.group(1) in (site / "benchmarks" / "index.html").read_text(), latest.name


def test_openapi_page_is_the_apps_document(site: Path) -> None:
    import json

    from openapi_spec_validator import validate

    document = json.loads((site / "openapi.json").read_text())
    validate(document)
    assert {"/predict", "/predict/batch", "/predict/region", "/invocations"} <= set(
        document["paths"])


def test_readme_is_a_front_door() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    assert "make demo" in text and "make test" in text  # .ci/run calls `make test`
    assert "SYNTHETIC" in text


@pytest.mark.parametrize("path", _doc_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_no_machine_paths_or_issue_numbers(path: Path) -> None:
    text = path.read_text()
    for phrase in FORBIDDEN:
        assert phrase not in text, f"{path.relative_to(REPO_ROOT)} mentions {phrase!r}"


def test_readme_links_resolve() -> None:
    targets = [t for t in _LINK.findall(README.read_text())
               if not re.match(r"^(https?:|mailto:|#)", t)]
    assert targets, "README.md links to no docs page"
    missing = [t for t in targets if not (REPO_ROOT / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_settings_table_lists_every_variable() -> None:
    from services.web.settings import variables

    table = load_hooks().settings_table()
    for env, sagemaker_env in variables().values():
        assert f"`{env}`" in table
        if sagemaker_env:
            assert f"`{sagemaker_env}`" in table
