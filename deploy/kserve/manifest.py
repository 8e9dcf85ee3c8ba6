"""KServe manifests for the Flask image, written and checked against KServe's own SDK classes.

    python deploy/kserve/manifest.py generate --image REGISTRY/mhist-flask:TAG \\
        [--model artifacts/model.int8.onnx | --cpu-class portable|vnni] [--out FILE]
    python deploy/kserve/manifest.py check FILE

Two documents: a ServingRuntime (`mhist-onnx`) that runs the Flask image and speaks the Open
Inference Protocol (protocolVersions [v2]), and an InferenceService whose predictor asks for
that runtime with `protocolVersion: v2`, probes the v2 health routes, requests the CPU and
memory one pod of two gunicorn workers needs, and scales on concurrency (Knative, KServe's
default Serverless mode). A `vnni` INT8 file (full 8-bit weights) would crash-loop on a CPU
without AVX-512 VNNI, where the server refuses it at start: its pods are kept to nodes that
Node Feature Discovery labels as having it.

`check` reads every document into the classes of the KServe Python SDK (kserve.models, with
the Kubernetes client's for the pod fields): an unknown or misspelled field, a wrong type, a
missing required field is an error naming its path, and the objects written back must equal
the file. The SDK cannot be installed beside this project's pins (kserve 0.21.0 wants pandas
< 3 and psutil < 6, which mlflow and the sagemaker SDK here have at 3.1 and 7.2), so its wheel
(and the Kubernetes client's) is fetched by pip, hash-checked, and only the model classes are
imported, from a cache outside the repository (MHIST_KSERVE_SDK_DIR, default
~/.cache/mhist/kserve-sdk).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNTIME_NAME = "mhist-onnx"
SERVICE_NAME = "mhist-classifier"
MODEL_FORMAT = "mhist-onnx"
CONTAINER_PORT = 8080  # services/targets.py: the Flask image's port
# The pinned SDK wheels: (file name, sha256). pip verifies the hashes as it downloads.
SDK_WHEELS = {
    "kserve==0.21.0": (
        "kserve-0.21.0-py3-none-any.whl",
        "df9bc5888704d9085015e08f1a8fced5ff0698f3becc6212d4e7b8234c71623b",
    ),
    "kubernetes==37.0.3": (
        "kubernetes-37.0.3-py2.py3-none-any.whl",
        "99a4d2154a884793e308e994a8808a64e548a17f2f525d52919eed1d9c2c58fe",
    ),
}
# One pod: two gunicorn workers with one ORT thread each (the layout the throughput benchmark
# found best on two vCPUs); an INT8 ResNet18 worker stays near 250 MB resident.
RESOURCES = {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "1Gi"}}
ENV = {"WEB_CONCURRENCY": "2", "ORT_INTRA_OP_THREADS": "1"}  # services/web/settings.py
# Node Feature Discovery's label for AVX-512 VNNI: what a `vnni` INT8 file needs on x86 (the
# server reads CPUID the same way, services/core/cpus.py).
VNNI_NODES = {
    "kubernetes.io/arch": "amd64",
    "feature.node.kubernetes.io/cpu-cpuid.AVX512VNNI": "true",
}


class ManifestError(ValueError):
    """A manifest that does not fit KServe's classes; the message names the path."""


# --- generate ---------------------------------------------------------------------------------


def probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": CONTAINER_PORT},
        "periodSeconds": period_s,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def serving_runtime(image: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": {"name": RUNTIME_NAME},
        "spec": {
            "supportedModelFormats": [{"name": MODEL_FORMAT, "version": "1", "autoSelect": True}],
            "protocolVersions": ["v2"],
            "containers": [
                {
                    "name": "kserve-container",
                    "image": image,
                    "ports": [{"containerPort": CONTAINER_PORT, "protocol": "TCP"}],
                    "env": [{"name": k, "value": v} for k, v in ENV.items()],
                    "resources": RESOURCES,
                }
            ],
        },
    }


def inference_service(
    cpu_class: str, min_replicas: int, max_replicas: int, concurrency: int
) -> dict[str, Any]:
    predictor: dict[str, Any] = {
        "minReplicas": min_replicas,
        "maxReplicas": max_replicas,
        "scaleMetric": "concurrency",
        "scaleTarget": concurrency,  # requests in flight per pod before another starts
        "model": {
            "modelFormat": {"name": MODEL_FORMAT},
            "runtime": RUNTIME_NAME,
            "protocolVersion": "v2",
            "resources": RESOURCES,
            # The model is baked into the image: no storageUri, no storage initializer.
            "readinessProbe": probe("/v2/health/ready", 5, 3),
            "livenessProbe": probe("/v2/health/live", 10, 3),
        },
    }
    if cpu_class == "vnni":
        predictor["nodeSelector"] = VNNI_NODES
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": SERVICE_NAME, "labels": {"mhist/cpu-class": cpu_class}},
        "spec": {"predictor": predictor},
    }


def documents(
    image: str, cpu_class: str, min_replicas: int = 1, max_replicas: int = 4, concurrency: int = 4
) -> list[dict[str, Any]]:
    return [
        serving_runtime(image),
        inference_service(cpu_class, min_replicas, max_replicas, concurrency),
    ]


def render(docs: list[dict[str, Any]]) -> str:
    header = (
        "# Generated by deploy/kserve/manifest.py (see docs/kserve.md); checked against "
        "the KServe SDK's classes.\n"
    )
    return header + yaml.safe_dump_all(docs, sort_keys=False)


def cpu_class_of(model: Path) -> str:
    """The CPU class the file's INT8 weights need; `portable` for FP32 (any CPU)."""
    from services.core.cpus import model_cpu_class
    from services.core.model import InferenceModel

    needed = model_cpu_class(InferenceModel(model, threads=1).metadata.quantization)
    return needed or "portable"


# --- check ------------------------------------------------------------------------------------


def sdk_dir() -> Path:
    return Path(
        os.environ.get("MHIST_KSERVE_SDK_DIR", Path.home() / ".cache" / "mhist" / "kserve-sdk")
    )


def fetch_sdk(folder: Path) -> Path:
    """The SDK wheels unpacked under `folder`/site (downloaded once, hash-checked)."""
    site = folder / "site"
    if (site / "kserve" / "models").is_dir() and (site / "kubernetes" / "client").is_dir():
        return site
    folder.mkdir(parents=True, exist_ok=True)
    requirements = folder / "requirements.txt"
    requirements.write_text(
        "".join(f"{spec} --hash=sha256:{digest}\n" for spec, (_, digest) in SDK_WHEELS.items())
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--require-hashes",
            "-r",
            str(requirements),
            "-d",
            str(folder),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"cannot fetch the KServe SDK wheels ({', '.join(SDK_WHEELS)}) with "
            f"pip: {result.stderr.strip()[-800:]}"
        )
    for name, digest in SDK_WHEELS.values():
        wheel = folder / name
        if hashlib.sha256(wheel.read_bytes()).hexdigest() != digest:
            raise RuntimeError(f"{wheel} does not have the pinned sha256 {digest}")
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    return site


def sdk_models(site: Path) -> dict[str, type]:
    """{class name: class} of kserve.models and kubernetes.client.models, imported without
    the packages' own __init__ (which would pull the model server: FastAPI, uvicorn, ...)."""
    if str(site) not in sys.path:
        sys.path.insert(0, str(site))
    for package in ("kserve", "kubernetes"):
        if package not in sys.modules:
            stub = types.ModuleType(package)
            stub.__path__ = [str(site / package)]
            sys.modules[package] = stub
    import kserve.models as kserve_models
    from kubernetes.client import models as kubernetes_models

    return _SdkClasses((kserve_models, kubernetes_models))


class _SdkClasses(dict):
    """Class name → SDK class, looked up on first use: the Kubernetes client's models module
    imports its ~800 classes lazily (module __getattr__), so they are not in its namespace."""

    def __init__(self, modules: tuple[types.ModuleType, ...]) -> None:
        super().__init__()
        self._modules = modules

    def __missing__(self, name: str) -> type:
        for module in self._modules:
            found = getattr(module, name, None)
            if isinstance(found, type) and hasattr(found, "openapi_types"):
                self[name] = found
                return found
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        try:
            self[name]  # type: ignore[index]
        except KeyError:
            return False
        return True


ROOT_CLASSES = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
}
_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "object": (str, int, float, bool, dict, list),  # IntOrString, Quantity, free-form
}


def check_document(document: Any, classes: dict[str, type]) -> Any:
    """The SDK object for one document; ManifestError naming the first path that is wrong."""
    if not isinstance(document, dict):
        raise ManifestError("a document is not a mapping")
    key = (document.get("apiVersion"), document.get("kind"))
    if key not in ROOT_CLASSES:
        raise ManifestError(f"apiVersion/kind {key} is not one of {sorted(ROOT_CLASSES)}")
    built = _typed(document, ROOT_CLASSES[key], "$", classes)
    lost = _lost(document, _plain(built, classes), "$")
    if lost:  # the SDK may add its defaults (a model's name ""), never drop or change a value
        raise ManifestError(f"{key[1]}: {lost} does not survive a round trip through the SDK")
    return built


def _lost(original: Any, written: Any, path: str) -> str | None:
    """The first path of `original` that `written` drops or changes; None when none is."""
    if isinstance(original, dict):
        if not isinstance(written, dict):
            return path
        for key, value in original.items():
            if key not in written:
                return f"{path}.{key}"
            found = _lost(value, written[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(original, list):
        if not isinstance(written, list) or len(written) != len(original):
            return path
        return next(
            (
                f
                for i, (a, b) in enumerate(zip(original, written, strict=True))
                if (f := _lost(a, b, f"{path}[{i}]"))
            ),
            None,
        )
    return None if original == written and type(original) is type(written) else path


def _typed(value: Any, kind: str, path: str, classes: dict[str, type]) -> Any:
    # kserve's classes write list[X] and dict(str, X); the Kubernetes client's (pydantic since
    # v35) List[X] and Dict[str, X].
    for prefix in ("list[", "List["):
        if kind.startswith(prefix) and kind.endswith("]"):
            if not isinstance(value, list):
                raise ManifestError(f"{path}: expected a list, got {type(value).__name__}")
            item = kind[len(prefix) : -1]
            return [_typed(v, item, f"{path}[{i}]", classes) for i, v in enumerate(value)]
    for prefix, end in (("dict(str, ", ")"), ("Dict[str, ", "]")):
        if kind.startswith(prefix) and kind.endswith(end):
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise ManifestError(f"{path}: expected a mapping with string keys")
            item = kind[len(prefix) : -1]
            return {k: _typed(v, item, f"{path}.{k}", classes) for k, v in value.items()}
    if kind in _PRIMITIVES:
        if not isinstance(value, _PRIMITIVES[kind]) or (kind == "int" and isinstance(value, bool)):
            raise ManifestError(f"{path}: expected {kind}, got {type(value).__name__} {value!r}")
        return value
    if kind not in classes:
        raise ManifestError(f"{path}: the SDK has no type {kind}")
    return _object(value, classes[kind], path, classes)


def _object(value: Any, cls: type, path: str, classes: dict[str, type]) -> Any:
    if not isinstance(value, dict):
        raise ManifestError(f"{path}: expected a {cls.__name__} mapping, got {value!r}")
    by_json = {json_name: attribute for attribute, json_name in cls.attribute_map.items()}
    unknown = sorted(set(value) - set(by_json))
    if unknown:
        raise ManifestError(f"{path}: {cls.__name__} has no field {unknown[0]!r}")
    arguments = {
        by_json[k]: _typed(v, cls.openapi_types[by_json[k]], f"{path}.{k}", classes)
        for k, v in value.items()
    }
    try:
        return cls(**arguments)  # the SDK's own checks: required fields, allowed values
    except ValueError as exc:
        raise ManifestError(f"{path}: {cls.__name__}: {exc}") from None


def _plain(value: Any, classes: dict[str, type]) -> Any:
    """An SDK object back to the JSON it stands for (by its attribute_map; unset fields out)."""
    if isinstance(value, list):
        return [_plain(v, classes) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v, classes) for k, v in value.items()}
    if type(value).__name__ in classes and hasattr(value, "attribute_map"):
        return {
            json_name: _plain(getattr(value, attribute), classes)
            for attribute, json_name in value.attribute_map.items()
            if getattr(value, attribute) is not None
        }
    return value


def check_text(text: str, site: Path | None = None) -> list[Any]:
    """Every document of a manifest checked; ManifestError on the first that does not fit."""
    classes = sdk_models(site or fetch_sdk(sdk_dir()))
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ManifestError(f"not YAML: {exc}") from None
    if not docs:
        raise ManifestError("the manifest holds no document")
    return [check_document(d, classes) for d in docs]


# --- command line -----------------------------------------------------------------------------


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="write the ServingRuntime + InferenceService")
    gen.add_argument("--image", required=True, help="the Flask image with the model baked in")
    which = gen.add_mutually_exclusive_group()
    which.add_argument("--model", type=Path, help="read the CPU class from this ONNX file")
    which.add_argument(
        "--cpu-class",
        choices=("portable", "vnni"),
        default="portable",
        help="the INT8 file's CPU class (default portable; FP32 is portable)",
    )
    gen.add_argument("--min-replicas", type=int, default=1, help="pods kept (default 1)")
    gen.add_argument("--max-replicas", type=int, default=4, help="most pods (default 4)")
    gen.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="requests in flight per pod before scaling out (default 4)",
    )
    gen.add_argument("--out", type=Path, help="file to write (default: stdout)")
    check = commands.add_parser("check", help="check a manifest against the KServe SDK")
    check.add_argument("manifest", type=Path)
    return parser


def main(args: argparse.Namespace) -> int:
    try:
        if args.command == "check":
            docs = check_text(args.manifest.read_text())
            print(
                f"{args.manifest}: {len(docs)} document(s) fit the KServe SDK's classes "
                f"({', '.join(type(d).__name__ for d in docs)})"
            )
            return 0
        if not 0 <= args.min_replicas <= args.max_replicas or args.max_replicas < 1:
            raise ManifestError(
                f"--min-replicas {args.min_replicas} and --max-replicas "
                f"{args.max_replicas}: need 0 <= min <= max and max >= 1"
            )
        if args.concurrency < 1:
            raise ManifestError(f"--concurrency {args.concurrency}: need at least 1")
        cpu_class = cpu_class_of(args.model) if args.model else args.cpu_class
        text = render(
            documents(args.image, cpu_class, args.min_replicas, args.max_replicas, args.concurrency)
        )
        check_text(text)
        if args.out:
            args.out.write_text(text)
        else:
            sys.stdout.write(text)
        return 0
    except (ManifestError, RuntimeError, OSError) as exc:
        print(f"manifest: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))  # services.core for --model, when run as a script
    sys.exit(main(get_args_parser().parse_args()))
