"""Benchmark fixtures: the benchmark's own model from the REAL pipeline, images, results folder.

The model is trained the way tests/conftest.py trains its fixture model — `training/train.py`
then `export/to_onnx.py`, run as a user runs them — but at the real input size (224 px), so
latencies mean something: 1 epoch, `--weights none`, on a few hundred SYNTHETIC images. It is
built once per session (or reused from MHIST_BENCH_CACHE=DIR across sessions).

Speed is recorded, never asserted. Answers are: every variant's answers on the check images
are compared with the ONNX FP32 reference (benchmarks.checks), and a wrong one fails its
benchmark. At the end of the session benchmarks.report writes summary.md and plots; a report
that cannot be written fails the run.

With MHIST_REQUIRE_CONTAINERS=1 (CI) a benchmark whose container engine, torch, mlflow or
PyTorch baseline image is missing FAILS instead of skipping; MHIST_BENCH_SKIP still skips
what it names, and the report lists it.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.checks import TOLERANCE, Reference
from benchmarks.config import MODES, SKIPPABLE, BenchConfig, load_config
from benchmarks.load import CONNECTION_POLICY
from benchmarks.machine import (
    BUSY_LOAD_PER_CPU,
    busy,
    describe_machine,
    load_average,
    refusal,
    stripped_threading_env,
    usable_cpus,
)
from benchmarks.store import ResultStore, write_json

# The suite's fixture and rule, shared so benchmarks behave like the tests: skip without an
# engine (or torch, mlflow, the baseline image), FAIL when MHIST_REQUIRE_CONTAINERS=1 (CI).
from tests.conftest import REPO_ROOT, require_containers, unavailable  # noqa: F401

_STORE: ResultStore | None = None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mhist-bench", "MHIST benchmarks")
    group.addoption("--bench-mode", choices=MODES, default=None,
                    help="quick (CI smoke, default) or full; overrides MHIST_BENCH_MODE")
    group.addoption("--bench-skip", default=None,
                    help=f"comma-separated parts to skip ({', '.join(SKIPPABLE)}); "
                         "overrides MHIST_BENCH_SKIP")


# --- configuration and results --------------------------------------------------------------

@pytest.fixture(scope="session")
def bench_config(pytestconfig: pytest.Config) -> BenchConfig:
    try:
        return load_config(pytestconfig.getoption("--bench-mode"),
                           pytestconfig.getoption("--bench-skip"))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.fixture(scope="session")
def results(request: pytest.FixtureRequest, bench_config: BenchConfig) -> ResultStore:
    """This run's folder, benchmarks/results/<timestamp>/, with machine.json written first.
    The load average is printed; a full run on a busy machine is refused."""
    global _STORE
    load, cpus = load_average(), usable_cpus()
    _say(request.config, f"benchmarks: load average {load} at start on {cpus} CPUs"
         + (f" — BUSY (1-min load > {BUSY_LOAD_PER_CPU} × CPUs)" if busy(load, cpus) else ""))
    refused = refusal(bench_config.mode, load, cpus)
    if refused:
        pytest.exit(refused, returncode=pytest.ExitCode.USAGE_ERROR)
    store = ResultStore(bench_config.results_root, bench_config.mode)
    write_json(store.dir / "machine.json", describe_machine())
    store.set_run(config=bench_config.to_dict(), threads=bench_config.threads,
                  threading_env_stripped=stripped_threading_env(),
                  http_connection_policy=CONNECTION_POLICY, tolerances=TOLERANCE)
    _STORE = store
    return store


def _say(config: pytest.Config, line: str) -> None:
    """A line on the terminal, past pytest's output capture."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{line}", file=sys.stderr, flush=True)


# Run order: the report's own tests (no measurement), then the order: model only first
# (quietest machine), containers after.
_ORDER = ("test_report.py", "test_model.py", "test_http.py", "test_throughput.py",
          "test_coldstart.py", "test_size.py", "test_mlflow_peer.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Reorder only the benchmark items, in place among themselves; tests/ keep their order."""
    slots = [i for i, item in enumerate(items) if item.nodeid.startswith("benchmarks/")]

    def rank(item: pytest.Item) -> int:
        name = item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
        return _ORDER.index(name) if name in _ORDER else len(_ORDER)

    ordered = sorted((items[i] for i in slots), key=rank)
    for slot, item in zip(slots, ordered, strict=True):
        items[slot] = item


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Every skipped or failed benchmark goes into run.json, so the summary can say why."""
    if _STORE is None or not report.nodeid.startswith("benchmarks/"):
        return
    name = report.nodeid.split("/", 1)[1]
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(
            report.longrepr)
        _STORE.skip(name, reason.removeprefix("Skipped: "))
    elif report.failed:
        _STORE.fail(name, str(report.longrepr)[-1500:])


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write run.json's end and regenerate summary.md + plots from the raw JSON. A report
    that cannot be written fails the run (the raw JSON stays for a rerun of the report)."""
    if _STORE is None:
        return
    _STORE.finish()
    _say(session.config, f"benchmarks: load average {_STORE.run['load_average_at_end']} at end")
    try:
        summary = report.generate(_STORE.dir)
    except Exception:  # noqa: BLE001 - said, and the run fails
        _say(session.config, f"benchmarks: writing the report FAILED; raw JSON in {_STORE.dir}"
             f"\n{traceback.format_exc()}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return
    _say(session.config, f"benchmarks: {summary} ({_STORE.run['mode']} mode, "
         f"{_STORE.run['duration_s']:.0f} s)")
    _publish(session)


def _publish(session: pytest.Session) -> None:
    """A full run without failures becomes its CPU class's report: benchmarks/LATEST.<class>.md,
    its raw JSON in benchmarks/latest-run/<class>/ and README.md's block (every class's
    headline); the other classes' reports stay. MHIST_BENCH_PUBLISH=0 leaves them all alone."""
    if _STORE.run["mode"] != "full" or os.environ.get("MHIST_BENCH_PUBLISH") == "0":
        return
    if _STORE.run["failed"]:
        _say(session.config, f"benchmarks: NOT published ({len(_STORE.run['failed'])} failed); "
             f"after a fix, `python -m benchmarks.report {_STORE.dir} --publish --readme "
             "README.md` publishes a complete run")
        return
    try:
        latest = report.publish(_STORE.dir, REPO_ROOT / "README.md")
    except Exception:  # noqa: BLE001 - said, and the run fails
        _say(session.config, f"benchmarks: publishing FAILED\n{traceback.format_exc()}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return
    _say(session.config, f"benchmarks: published as {latest.relative_to(REPO_ROOT)} and "
         "README.md's benchmark block")


# --- the benchmark's model, built by the real pipeline ---------------------------------------

@dataclass(frozen=True)
class BenchModel:
    dir: Path
    data_dir: Path
    fp32: Path
    int8: Path
    report: dict  # export_report.json
    checkpoint: Path  # training's best.pt
    tracking_uri: str
    model_uri: str  # models:/mhist-resnet18/N — what the MLflow peer serves
    classes: list[str]
    check_images: list[Path]  # 224×224 PNGs of the test partition, both labels alternating
    calibration_images: list[Path]  # the first training-partition images (PyTorch INT8)

    @property
    def image(self) -> Path:
        """The one image every timed request sends (the first check image)."""
        return self.check_images[0]

    @property
    def image_bytes(self) -> bytes:
        return self.image.read_bytes()

    def file(self, precision: str) -> Path:
        return {"fp32": self.fp32, "int8": self.int8}[precision]


def _pipeline_key(config: BenchConfig) -> dict:
    return {"images": config.train_images, "epochs": config.train_epochs,
            "size": config.image_size, "version": 1}


def _run(work: Path, *args: str, env: dict[str, str] | None = None) -> None:
    """One of the project's CLIs, run IN `work`: MLflow puts a sqlite store's artifacts in
    ./mlruns of the working directory, and a shared ./mlruns (the repository's) can be
    cleaned or reused by another session while the MLflow peer still needs this model."""
    result = subprocess.run(
        [sys.executable, *args], cwd=work, capture_output=True, text=True, timeout=1800,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
    )
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                    f"{result.stderr[-5000:]}")


def _run_pipeline(config: BenchConfig, work: Path) -> None:
    data, checkpoints, onnx = work / "data", work / "checkpoints", work / "onnx"
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": tracking_uri}
    _run(work, "-m", "training.sample_data", "--out", str(data), "--count",
         str(config.train_images), "--size", str(config.image_size), "--seed", "11")
    _run(work, str(REPO_ROOT / "training" / "train.py"), "--data-dir", str(data),
         "--epochs", str(config.train_epochs), "--weights", "none",
         "--image-size", str(config.image_size), "--batch-size", "16",
         "--out", str(checkpoints), "--tracking-uri", tracking_uri, env=env)
    _run(work, str(REPO_ROOT / "export" / "to_onnx.py"),
         "--model-uri", "models:/mhist-resnet18/latest", "--data-dir", str(data),
         "--out", str(onnx), "--tracking-uri", tracking_uri, "--calibration-size", "32",
         # The peers (PyTorch, MLflow's server) answer softmax(logits): every variant is
         # cross-checked on the network's own probabilities, so no temperature here.
         "--no-temperature-scaling", "--allow-degraded",
         # The AVX2-kernel gate (qemu, 2-3 s an image at 224 px) is the export's own check,
         # tested in tests/test_cpu_class.py; here it would add a minute to every session.
         "--avx2-gate-images", "0", env=env)
    write_json(work / "pipeline.json", {"key": _pipeline_key(config),
                                        "tracking_uri": tracking_uri})


@pytest.fixture(scope="session")
def bench_model(bench_config: BenchConfig, results: ResultStore,
                tmp_path_factory: pytest.TempPathFactory) -> BenchModel:
    """Sample → train (1 epoch, 224 px, --weights none) → export FP32 + INT8, once."""
    work = bench_config.cache_dir or tmp_path_factory.mktemp("bench-pipeline")
    marker = work / "pipeline.json"
    cached = marker.is_file() and json.loads(marker.read_text())["key"] == _pipeline_key(
        bench_config)
    if not cached and importlib.util.find_spec("torch") is None:
        unavailable("training the benchmark model needs torch (pip install -e '.[training]'); "
                    "or point MHIST_BENCH_CACHE at a folder a torch machine filled")
    if not cached:
        if work.exists() and bench_config.cache_dir:
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        _run_pipeline(bench_config, work)
        results.set_run(pipeline_s=round(time.perf_counter() - started, 1))
    tracking_uri = json.loads(marker.read_text())["tracking_uri"]
    export_report = json.loads((work / "onnx" / "export_report.json").read_text())
    version = export_report["source"]["registered_version"]
    from services.core.metadata import ModelMetadata
    from services.core.model import InferenceModel

    meta: ModelMetadata = InferenceModel(work / "onnx" / "model.onnx", threads=1).metadata
    results.set_run(model={"uri": f"models:/mhist-resnet18/{version}", "cached": cached,
                           "synthetic_data": export_report.get("synthetic_data"),
                           "train_images": bench_config.train_images,
                           "image_size": bench_config.image_size})
    return BenchModel(
        dir=work, data_dir=work / "data", fp32=work / "onnx" / "model.onnx",
        int8=work / "onnx" / "model.int8.onnx", report=export_report,
        checkpoint=work / "checkpoints" / "best.pt", tracking_uri=tracking_uri,
        model_uri=f"models:/mhist-resnet18/{version}", classes=list(meta.classes),
        check_images=_partition_images(work / "data", "test", bench_config.check_images),
        calibration_images=_partition_images(work / "data", "train", 32, alternate=False),
    )


def _partition_images(data_dir: Path, partition: str, count: int,
                      alternate: bool = True) -> list[Path]:
    """`count` images of `partition` from annotations.csv, sorted by name; with `alternate`,
    taking the labels in turn so that both classes are checked."""
    with (data_dir / "annotations.csv").open(newline="") as handle:
        rows = sorted((r["Image Name"], r["Majority Vote Label"]) for r in csv.DictReader(handle)
                      if r["Partition"] == partition)
    if alternate:
        by_label: dict[str, list[str]] = {}
        for name, label in rows:
            by_label.setdefault(label, []).append(name)
        turns = [list(names) for names in by_label.values()]
        rows = [(name, "") for group in zip(*turns, strict=False) for name in group]
        rows += [(name, "") for names in turns for name in names[min(map(len, turns)):]]
    return [data_dir / "images" / name for name, _ in rows[:count]]


@pytest.fixture(scope="session")
def reference(bench_model: BenchModel) -> Reference:
    """The ONNX FP32 file's answers on the check images: what every variant must match."""
    return Reference.build(str(bench_model.fp32), bench_model.check_images)


@pytest.fixture(scope="session")
def png_224(bench_model: BenchModel) -> bytes:
    """One 224×224 PNG (a SYNTHETIC sample image) — the request every HTTP benchmark sends."""
    from PIL import Image

    with Image.open(bench_model.image) as img:
        assert img.size == (224, 224), img.size
    return bench_model.image_bytes


@pytest.fixture(scope="session")
def torch_available(bench_config: BenchConfig, results: ResultStore) -> None:
    """Skip (and say so in the summary) when torch is skipped or not installed."""
    if "torch" in bench_config.skip:
        pytest.skip("torch parts skipped by MHIST_BENCH_SKIP/--bench-skip")
    if importlib.util.find_spec("torch") is None:
        unavailable("torch is not installed in this environment")


@pytest.fixture(scope="session")
def torchscript_file(torch_available: None, bench_model: BenchModel) -> Path:
    """The trained weights as TorchScript + the model card: what the baseline image serves
    without torchvision. Traced from training's own checkpoint."""
    import torch

    from training.checkpoint import load_checkpoint

    path = bench_model.dir / "model.torchscript.pt"
    if not path.is_file():
        model, card = load_checkpoint(bench_model.checkpoint)
        card = {**card, "version": bench_model.model_uri.rsplit("/", 1)[-1]}
        example = torch.zeros(1, 3, 224, 224)
        with warnings.catch_warnings():  # torch ≥ 2.9 marks TorchScript deprecated
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(model, example)
            torch.jit.save(traced, str(path), _extra_files={"card.json": json.dumps(card)})
    return path


# --- containers ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def onnx_images(request: pytest.FixtureRequest, bench_model: BenchModel, results: ResultStore
                ) -> dict[str, str]:
    """`{target}-{precision}` → image tag, for every serving image of services/targets.py
    with the benchmark's FP32 and INT8 files (baked in where the target bakes one)."""
    from benchmarks.images import build_onnx_images

    request.getfixturevalue("require_containers")
    built = build_onnx_images({"fp32": bench_model.fp32, "int8": bench_model.int8})
    builds = {image.tag: round(image.build_s, 1) for image in built.values()}
    results.set_run(image_builds={**(results.run.get("image_builds") or {}), **builds})
    return {key: image.tag for key, image in built.items()}


@pytest.fixture(scope="session")
def baseline_image(request: pytest.FixtureRequest, bench_config: BenchConfig,
                   results: ResultStore, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The PyTorch baseline image of the Flask service (same base image, torch CPU build)."""
    from benchmarks import images

    if bench_config.skipped("torch-image"):
        pytest.skip("PyTorch baseline image skipped by MHIST_BENCH_SKIP/--bench-skip")
    request.getfixturevalue("require_containers")
    torchscript_file = request.getfixturevalue("torchscript_file")
    work = tmp_path_factory.mktemp("baseline")
    try:
        wheel = images.torch_cpu_wheel(work / "wheels")
        built = images.build_baseline(work / "context", torchscript_file, wheel)
    except images.BaselineUnavailable as exc:
        unavailable(f"PyTorch baseline image: {exc}")
    builds = dict(results.run.get("image_builds") or {})
    builds[built.tag] = round(built.build_s, 1)
    results.set_run(image_builds=builds, baseline_torch_wheel=wheel.name if wheel else None,
                    baseline_torch=images.image_package_version(built.tag, "torch"))
    return built.tag


@pytest.fixture(scope="session")
def mounted_model_dirs(bench_model: BenchModel, tmp_path_factory: pytest.TempPathFactory
                       ) -> dict[str, Path]:
    """precision → the model folder of a target that mounts one (services/targets.py
    `model_mount`: SageMaker's /opt/ml/model, laid out as SageMaker extracts model.tar.gz):
    that file as model.onnx, readable by the image's non-root user (pytest's temp folders are
    0700)."""
    from services.adapters.sagemaker import MODEL_FILE

    folders = {}
    for precision in ("fp32", "int8"):
        folder = tmp_path_factory.mktemp(f"mounted-model-{precision}")
        shutil.copyfile(bench_model.file(precision), folder / MODEL_FILE)
        os.chmod(folder, 0o755)
        os.chmod(folder / MODEL_FILE, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
        folders[precision] = folder
    return folders

