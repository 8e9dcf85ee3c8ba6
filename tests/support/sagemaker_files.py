"""Load the modules in sagemaker/ by file path, and build model.tar.gz the way users do.

sagemaker/ is not a package (it must never shadow the `sagemaker` SDK), so its modules are
loaded with importlib from their files. They import each other by bare name, as they do in
the image (/opt/program): registering each in sys.modules under that name reproduces it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]
SAGEMAKER_DIR = REPO_ROOT / "sagemaker"


def load(name: str) -> ModuleType:
    """sagemaker/NAME.py as module NAME (cached in sys.modules like a normal import)."""
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(
            SAGEMAKER_DIR / f"{name}.py"):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SAGEMAKER_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_package(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python sagemaker/package.py ARGS` as a user runs it (not checked: callers assert)."""
    return subprocess.run([sys.executable, str(SAGEMAKER_DIR / "package.py"), *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          env=script_env())


def package_and_extract(onnx_path: Path, work: Path) -> tuple[Path, Path]:
    """model.tar.gz from package.py, extracted as SageMaker does; (archive, model folder).

    The folder and files are made world-readable: the image runs as a non-root user.
    """
    archive = work / "model.tar.gz"
    result = run_package("--onnx", str(onnx_path), "--out", str(archive))
    if result.returncode != 0:
        raise RuntimeError(f"package.py failed ({result.returncode}):\n{result.stderr}")
    folder = work / "model"
    folder.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    for path in (work, folder, *folder.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return archive, folder


def script_env() -> dict[str, str]:
    # The scripts import `services` / `awsdeploy`; an editable install provides them, and
    # PYTHONPATH keeps a plain checkout working too.
    paths = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
