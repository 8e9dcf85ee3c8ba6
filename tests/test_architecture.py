"""The serving layer's shape, checked from its source: no import cycles, nothing heavy imported,
and the platform entry files stay thin (everything they need is importable code in services/)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

SERVICES = REPO_ROOT / "services"
HEAVY = ("torch", "torchvision", "mlflow", "boto3", "botocore", "sagemaker")
AWS_SDK = ("boto3", "botocore")
# The one module that may use the AWS SDK: the Lambda image's S3 entry. Only the Lambda image
# installs boto3 (the `lambda` extra), so it imports it inside functions, never at import time.
S3_ADAPTER = SERVICES / "adapters" / "s3_events.py"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth of the file (function-level imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def import_time_imports(path: Path) -> set[str]:
    """The imports that run when the module is imported: all but those inside functions."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.add(child.module)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def services_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SERVICES.rglob("*.py")}
    return {name: {m for m in imports(path) if m in modules and m != name}
            for name, path in modules.items()}


def test_no_import_cycle_in_services() -> None:
    graph = services_graph()
    state: dict[str, str] = {}  # "visiting" | "done"

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == "done":
            return
        assert state.get(node) != "visiting", f"import cycle: {' -> '.join([*trail, node])}"
        state[node] = "visiting"
        for child in sorted(graph[node]):
            visit(child, [*trail, node])
        state[node] = "done"

    assert graph.get("services.app")
    for module in sorted(graph):
        visit(module, [])


def test_serving_code_imports_nothing_heavy() -> None:
    def allowed(path: Path, module: str) -> bool:
        return path == S3_ADAPTER and module.split(".")[0] in AWS_SDK

    offenders = {module_name(path): sorted(m for m in imports(path)
                                           if m.split(".")[0] in HEAVY and not allowed(path, m))
                 for path in SERVICES.rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_the_s3_adapter_imports_boto3_and_only_lazily() -> None:
    """The Flask and SageMaker images lack boto3: importing services must never need it."""
    assert {m.split(".")[0] for m in imports(S3_ADAPTER)} >= set(AWS_SDK)  # it does use it
    eager = {m for m in import_time_imports(S3_ADAPTER) if m.split(".")[0] in AWS_SDK}
    assert eager == set(), f"{S3_ADAPTER.name} imports {sorted(eager)} at import time"


def test_platform_entry_files_only_delegate() -> None:
    """lambda/handler.py and sagemaker/serve hold no logic: one import from services.adapters."""
    for path in (REPO_ROOT / "lambda" / "handler.py", REPO_ROOT / "sagemaker" / "serve"):
        ours = {m for m in imports(path) if m.split(".")[0] not in ("sys",)}
        assert ours and all(m.startswith("services.adapters.") for m in ours), (path, ours)
        code = [line for line in path.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
        assert len(code) <= 12, f"{path} has {len(code)} lines; keep the entry file thin"
