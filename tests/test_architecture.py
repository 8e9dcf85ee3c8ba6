"""The serving layer's shape, checked from its source: no import cycles, nothing heavy imported,
and the platform entry files stay thin (everything they need is importable code in services/)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

SERVICES = REPO_ROOT / "services"
HEAVY = ("torch", "torchvision", "mlflow", "boto3", "sagemaker")


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
    offenders = {module_name(path): sorted(m for m in imports(path)
                                           if m.split(".")[0] in HEAVY)
                 for path in SERVICES.rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_platform_entry_files_only_delegate() -> None:
    """lambda/handler.py and sagemaker/serve hold no logic: one import from services.adapters."""
    for path in (REPO_ROOT / "lambda" / "handler.py", REPO_ROOT / "sagemaker" / "serve"):
        ours = {m for m in imports(path) if m.split(".")[0] not in ("sys",)}
        assert ours and all(m.startswith("services.adapters.") for m in ours), (path, ours)
        code = [line for line in path.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
        assert len(code) <= 12, f"{path} has {len(code)} lines; keep the entry file thin"
