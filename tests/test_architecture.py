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

    assert graph.get("services.web.app")
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


# The floor plan, bottom up: a package imports only from its own floor and the floors below.
# core: the ONNX inference core (no web framework, no slides); slides: tiling, a client of the
# core; web: the one Flask app; adapters and runtime: platforms and process supervision.
# Top-level modules (the CLI `services.predict`, the image registry `services.targets`, the
# public `services.app` name) sit above everything.
FLOORS = {"core": 0, "slides": 1, "web": 2, "adapters": 3, "runtime": 3}
WEB_FRAMEWORKS = ("flask", "werkzeug", "gunicorn", "prometheus_client", "apig_wsgi")


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in FLOORS) else None


def test_every_serving_module_lives_on_a_floor() -> None:
    loose = {name for name in services_graph() if name.count(".") == 1 and package_of(name) is None}
    assert loose == {"services.app", "services.predict", "services.targets"}


def test_imports_point_down_the_floors() -> None:
    upward = []
    for module, targets in services_graph().items():
        floor = package_of(module)
        if floor is None:
            continue
        for target in targets:
            other = package_of(target)
            if target != "services" and (other is None or (
                    other != floor and FLOORS[other] >= FLOORS[floor])):
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_the_core_knows_no_web_framework() -> None:
    """training/ and export/ import the core; it must not pull Flask or gunicorn with it."""
    offenders = {module_name(path): sorted(m for m in imports(path)
                                           if m.split(".")[0] in WEB_FRAMEWORKS)
                 for path in (SERVICES / "core").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_training_and_export_use_only_the_core() -> None:
    used = {m for folder in ("training", "export") for path in (REPO_ROOT / folder).rglob("*.py")
            for m in imports(path) if m.startswith("services.")}
    assert used and all(m.startswith("services.core.") for m in used), sorted(used)


def test_one_inference_entry_counts_every_prediction() -> None:
    """Only services/web/inference.py calls the model's predict methods from the web layer and
    the adapters, so every prediction reaches the metrics."""
    callers = sorted(str(path.relative_to(REPO_ROOT))
                     for folder in ("web", "adapters") for path in (SERVICES / folder).rglob("*.py")
                     if any(f".{verb}(" in path.read_text()
                            for verb in ("predict_bytes", "predict_many", "predict_arrays",
                                         "predict_array", "predict_images")))
    assert callers == ["services/web/inference.py"]
