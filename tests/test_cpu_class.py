"""INT8 made for a named CPU class, judged on the kernels it will meet, refused where it would
answer wrong.

Real CPUs only: the AVX2 side runs under `qemu-x86_64 -cpu Haswell` (Debian's qemu-user, from
`make test-deps`), where CPUID says AVX2 and onnxruntime takes its AVX2 kernels on a VNNI host;
nothing fakes a CPU feature. Emulation is slow (a 64 px INT8 image is about 0.1 s, starting
Python about 2 s), so these runs stay to a few images and one server start each.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from export.convert import read_metadata, write_metadata
from export.evaluate import load_batch, onnx_probabilities
from export.kernels import QEMU, emulated_logits
from services.core.cpus import (
    CpuClassError,
    check_cpu_class,
    cpu_info,
    model_cpu_class,
    read_features,
)
from services.core.model import InferenceModel
from services.web.app import create_app
from services.web.hooks import access_log
from tests.conftest import REPO_ROOT, run_cli, unavailable
from tests.support.containers import free_port, wait_for_http
from tests.support.logs import json_log_lines

pytestmark = pytest.mark.slow

START_TIMEOUT = 60
# Under emulation every import is interpreted: gunicorn, Flask and onnxruntime take ~20 s.
EMULATED_START_TIMEOUT = 180


def _require_qemu() -> str:
    qemu = shutil.which(QEMU)
    if qemu is None:
        unavailable(
            f"{QEMU} is not installed (Debian: apt-get install qemu-user; `make test-deps` does it)"
        )
    if cpu_info().arch != "x86_64":
        pytest.skip(
            f"{QEMU} -cpu Haswell emulates an x86 CPU for x86 programs; this is {cpu_info().arch}"
        )
    return qemu


def _require_vnni() -> None:
    info = cpu_info()
    if info.cpu_class != "vnni":
        reason = (
            f"needs a CPU with AVX-512 VNNI, AVX-VNNI, AMX or the Arm dot product to "
            f"measure the vnni file on its own kernels; this {info.arch} CPU has "
            f"{' '.join(info.features) or 'none of them'} (CPUID)"
        )
        print(f"SKIPPED: {reason}")
        pytest.skip(reason)


def _emulated_env(**values: str) -> dict[str, str]:
    """The venv's real interpreter under qemu finds the venv's packages through PYTHONPATH."""
    path = os.pathsep.join([str(REPO_ROOT), *(p for p in sys.path if p and Path(p).is_dir())])
    return {**os.environ, "PYTHONPATH": path, **values}


@pytest.fixture(scope="module")
def vnni_export(exported: dict, sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The fixture model's INT8 file for the `vnni` class, from the same checkpoint."""
    out = tmp_path_factory.mktemp("vnni")
    run_cli(
        str(REPO_ROOT / "export" / "to_onnx.py"),
        "--checkpoint",
        str(exported["checkpoint"]),
        "--no-mlflow",
        "--data-dir",
        str(sample_dir),
        "--out",
        str(out),
        "--calibration-size",
        "16",
        "--allow-degraded",
        "--cpu-class",
        "vnni",
    )
    return {
        "int8": out / "model.int8.vnni.onnx",
        "fp32": out / "model.onnx",
        "report": json.loads((out / "export_report.json").read_text()),
    }


@pytest.fixture(scope="module")
def images(sample_dir: Path) -> list[Path]:
    return sorted((sample_dir / "images").glob("*.png"))


# --- export: the class in the file and in the report -------------------------------------------


def test_each_class_is_in_the_file_and_the_report(exported: dict, vnni_export: dict) -> None:
    portable = read_metadata(exported["int8"]).quantization
    assert (portable["cpu_class"], portable["reduce_range"], portable["cpu_requires_any"]) == (
        "portable",
        True,
        [],
    )
    vnni = read_metadata(vnni_export["int8"]).quantization
    assert (vnni["cpu_class"], vnni["reduce_range"]) == ("vnni", False)
    assert set(vnni["cpu_requires_any"]) == {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"}
    report = vnni_export["report"]
    assert report["int8"]["settings"] == vnni
    assert set(report["files"]) == {"fp32", "int8"}
    assert report["files"]["int8"]["path"].endswith("model.int8.vnni.onnx")
    # Which kernels the gate saw: this machine's, named by class and features.
    seen = report["int8"]["comparison"]["kernels"]
    assert (seen["where"], seen["cpu_class"]) == ("native", cpu_info().cpu_class)
    assert seen["features"] == list(cpu_info().features)
    assert report["cpu"] == cpu_info().to_dict()


def test_portable_report_says_which_kernels_each_gate_saw(exported: dict) -> None:
    report = json.loads(exported["report"].read_text())
    avx2 = report["int8"]["avx2_gate"]
    if cpu_info().cpu_class != "vnni":  # an AVX2 machine's own kernels are AVX2 kernels
        assert avx2["status"] == "not needed", avx2
        return
    if shutil.which(QEMU) is None:
        assert avx2["status"] == "not run" and QEMU in avx2["reason"], avx2
        unavailable(f"{QEMU} is not installed: the export could not run its AVX2 gate")
    assert avx2["status"] == "run", avx2
    judged = avx2["comparison"]
    assert judged["images"] == avx2["images"] == min(24, report["splits"]["validation"]["images"])
    assert judged["kernels"]["where"] == f"{QEMU} -cpu Haswell"
    assert judged["kernels"]["cpu_class"] == "portable"
    assert "avx2" in judged["kernels"]["features"]
    assert "avx512f" not in judged["kernels"]["features"]
    assert judged["max_abs_diff_to_native_int8"] == 0.0  # reduce_range: no saturation
    assert avx2["passed"] is True or avx2["overridden"] is True


def test_cli_rejects_an_unknown_class(exported: dict, sample_dir: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "export" / "to_onnx.py"),
            "--checkpoint",
            str(exported["checkpoint"]),
            "--no-mlflow",
            "--data-dir",
            str(sample_dir),
            "--out",
            str(tmp_path),
            "--cpu-class",
            "vnnii",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2
    assert "--cpu-class: invalid choice: 'vnnii'" in result.stderr and "'vnni'" in result.stderr
    assert "Traceback" not in result.stderr


# --- what each class buys, on the kernels it is for --------------------------------------------


def test_vnni_file_is_closer_to_fp32_on_a_vnni_cpu(
    exported: dict, vnni_export: dict, images: list[Path]
) -> None:
    _require_vnni()
    fp32 = InferenceModel(exported["fp32"])
    batch = load_batch(images, fp32.metadata.preprocessing)
    positive = fp32.metadata.positive_index
    p32 = onnx_probabilities(fp32, batch)[:, positive]
    errors = {}
    for name, path in (("portable", exported["int8"]), ("vnni", vnni_export["int8"])):
        errors[name] = np.abs(onnx_probabilities(InferenceModel(path), batch)[:, positive] - p32)
    print(
        {name: (round(float(e.mean()), 4), round(float(e.max()), 4)) for name, e in errors.items()}
    )
    # Full 8-bit weights are the point of the class: clearly closer to FP32 than 7-bit ones.
    assert errors["vnni"].mean() < 0.8 * errors["portable"].mean(), errors
    assert errors["vnni"].mean() < 0.01 and errors["vnni"].max() < 0.1


def test_portable_file_is_bit_identical_under_avx2_kernels(
    exported: dict, vnni_export: dict, images: list[Path]
) -> None:
    """The same logits from AVX2 kernels (emulated Haswell) as from this machine's; the
    full-range file, on the same images, is not: that difference is the saturation."""
    _require_qemu()
    model = InferenceModel(exported["int8"])
    meta = model.metadata
    batch = load_batch(images[:12], meta.preprocessing)
    native = model.session.run([meta.output_name], {meta.input_name: batch})[0]
    emulated, seen, _ = emulated_logits(
        model.path, batch, meta.input_name, meta.output_name, timeout=300
    )
    assert seen.cpu_class == "portable" and "avx2" in seen.features, seen
    assert "avx512f" not in seen.features, seen  # CPUID under qemu, not /proc/cpuinfo
    assert np.array_equal(emulated, native), np.abs(emulated - native).max()
    if cpu_info().cpu_class == "vnni":  # two kernel families to tell apart only here
        vnni = InferenceModel(vnni_export["int8"])
        full = vnni.session.run([meta.output_name], {meta.input_name: batch})[0]
        saturated, _, _ = emulated_logits(
            vnni.path, batch, meta.input_name, meta.output_name, timeout=300
        )
        assert not np.array_equal(saturated, full)


# --- the server knows its CPU ------------------------------------------------------------------


def test_cpu_features_are_cpuid_not_proc_cpuinfo() -> None:
    """Natively CPUID and /proc/cpuinfo agree; under qemu only CPUID follows the emulated CPU."""
    info = cpu_info()
    if info.arch == "x86_64":
        flags = set(
            next(
                line
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("flags")
            )
            .split(":", 1)[1]
            .split()
        )
        for name in ("avx2", "avx512f", "avx512_vnni"):
            assert (name in info.features) == (name in flags), name
    qemu = _require_qemu()
    result = subprocess.run(
        [
            qemu,
            "-cpu",
            "Haswell",
            os.path.realpath(sys.executable),
            "-c",
            "import json; from services.core.cpus import cpu_info; "
            "print(json.dumps(cpu_info().to_dict()))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=_emulated_env(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["class"] == "portable" and "avx2" in seen["features"], seen
    assert not {"avx512f", "avx512_vnni"} & set(seen["features"]), seen


def test_metadata_metrics_and_startup_line_show_the_cpu(model_int8_path: Path) -> None:
    # The logger's own records, not stderr: its handler holds whichever stream the first app
    # of this pytest process found, which capfd does not see.
    with json_log_lines(access_log) as lines:
        app = create_app({"MODEL_PATH": str(model_int8_path)})
    startup = [line for line in lines if line.get("event") == "startup"]
    expected = cpu_info().to_dict()
    assert startup and startup[-1]["cpu"] == expected
    client = app.test_client()
    described = client.get("/metadata").get_json()
    assert described["cpu"] == expected
    assert described["quantization"]["cpu_class"] == "portable"
    body = client.get("/metrics").get_data(as_text=True)
    info = cpu_info()
    assert (
        f'mhist_cpu_info{{arch="{info.arch}",cpu_class="{info.cpu_class}",'
        f'features="{" ".join(info.features)}"}} 1.0'
    ) in body


def _serve(
    model: Path,
    tmp_path: Path,
    emulated: bool = False,
    timeout: float = START_TIMEOUT,
    **settings: str,
) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "services.runtime.server"]
    if emulated:
        command = [
            _require_qemu(),
            "-cpu",
            "Haswell",
            os.path.realpath(sys.executable),
            *command[1:],
        ]
    env = _emulated_env if emulated else (lambda **v: {**os.environ, **v})
    return subprocess.run(
        command,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(
            MODEL_PATH=str(model),
            PORT=str(free_port()),
            HOST="127.0.0.1",
            WEB_CONCURRENCY="1",
            PROMETHEUS_MULTIPROC_DIR=str(tmp_path),
            **settings,
        ),
    )


def _refusal_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("mhist: cannot start")]


def test_server_refuses_a_vnni_file_on_an_avx2_cpu(vnni_export: dict, tmp_path: Path) -> None:
    """The real server under `qemu-x86_64 -cpu Haswell`: one line, gunicorn's status 3."""
    started = time.perf_counter()
    result = _serve(vnni_export["int8"], tmp_path, emulated=True, timeout=EMULATED_START_TIMEOUT)
    print(f"refused under emulation in {time.perf_counter() - started:.1f} s")
    assert result.returncode == 3, result.stderr[-3000:]
    (line,) = _refusal_lines(result)
    assert str(vnni_export["int8"]) in line
    assert "CPU class 'vnni' (needs avx512_vnni or avx_vnni or amx_int8 or asimddp)" in line
    assert "avx2" in line and "avx512" not in line.split("CPU has only")[1].split("(CPUID)")[0]
    assert "Traceback" not in result.stderr


def test_cpu_class_setting_overrides_cpuid(vnni_export: dict, tmp_path: Path) -> None:
    """CPU_CLASS=vnni serves the file under emulated Haswell; CPU_CLASS=portable refuses it on
    any CPU (natively here)."""
    result = _serve(vnni_export["int8"], tmp_path / "p", CPU_CLASS="portable")
    assert result.returncode == 3, result.stderr[-3000:]
    (line,) = _refusal_lines(result)
    assert "CPU_CLASS=portable says this CPU is 'portable'" in line
    qemu = _require_qemu()
    port = free_port()
    process = subprocess.Popen(
        [
            qemu,
            "-cpu",
            "Haswell",
            os.path.realpath(sys.executable),
            "-m",
            "services.runtime.server",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_emulated_env(
            MODEL_PATH=str(vnni_export["int8"]),
            PORT=str(port),
            HOST="127.0.0.1",
            WEB_CONCURRENCY="1",
            CPU_CLASS="vnni",
            PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "v"),
        ),
    )
    try:
        waited = wait_for_http(f"http://127.0.0.1:{port}/ready", EMULATED_START_TIMEOUT)
        print(f"ready under emulation in {waited:.1f} s")
    finally:
        process.terminate()
        stderr = process.communicate(timeout=30)[1]
    assert "Traceback" not in stderr


# --- bad input: one line, never a traceback ----------------------------------------------------


def test_unknown_class_in_the_file_is_one_line(model_int8_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "model.int8.onnx"
    shutil.copy(model_int8_path, path)
    meta = read_metadata(path)
    write_metadata(path, replace(meta, quantization={**meta.quantization, "cpu_class": "avx9"}))
    result = _serve(path, tmp_path / "prom")
    assert result.returncode == 3, result.stderr[-3000:]
    (line,) = _refusal_lines(result)
    assert str(path) in line
    assert (
        "mhist.quantization.cpu_class 'avx9' is not a CPU class this server knows "
        "(portable, vnni)" in line
    )
    assert "Traceback" not in result.stderr


def test_class_setting_typo_is_one_line(model_int8_path: Path, tmp_path: Path) -> None:
    result = _serve(model_int8_path, tmp_path, CPU_CLASS="vnnii")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "mhist: cannot start: CPU_CLASS='vnnii' is not valid: expected one of auto, portable, vnni"
    )


def test_unreadable_cpu_features() -> None:
    """A CPU whose features cannot be read: a vnni file is refused with one sentence that
    says what to do, a portable or FP32 file is served."""
    unreadable = read_features({})
    assert unreadable.cpu_class is None and unreadable.error
    vnni = {"cpu_class": "vnni", "reduce_range": False}
    with pytest.raises(CpuClassError) as raised:
        check_cpu_class(vnni, "auto", unreadable)
    message = str(raised.value)
    assert "cannot be read" in message and "CPU_CLASS=vnni" in message and "\n" not in message
    assert check_cpu_class({"cpu_class": "portable"}, "auto", unreadable) == "portable"
    assert check_cpu_class({}, "auto", unreadable) is None
    assert check_cpu_class(vnni, "vnni", unreadable) == "vnni"


def test_files_from_before_classes_keep_working() -> None:
    """No cpu_class: reduce_range says which class the file was made for."""
    assert model_cpu_class({"reduce_range": True, "weight_type": "QInt8"}) == "portable"
    assert model_cpu_class({"reduce_range": False, "weight_type": "QInt8"}) == "vnni"
    assert model_cpu_class({}) is None


# --- deploy scripts: a vnni file only where the CPUs have VNNI or the dot product ---------------


def _script(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env={**os.environ, "AWS_DEFAULT_REGION": "eu-west-1"},
    )


def test_lambda_deploy_refuses_a_vnni_file_on_x86_64(vnni_export: dict) -> None:
    result = _script(
        "lambda/deploy.py",
        "deploy",
        "--dry-run",
        "--model",
        str(vnni_export["int8"]),
        "--architecture",
        "x86_64",
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Lambda does not say which x86 CPU runs an x86_64 function" in result.stderr
    assert "--architecture arm64" in result.stderr and "Traceback" not in result.stderr


def test_sagemaker_deploy_refuses_a_vnni_file_on_avx2_instances(
    vnni_export: dict, tmp_path: Path
) -> None:
    archive = tmp_path / "model.tar.gz"
    packaged = _script(
        "sagemaker/package.py", "--onnx", str(vnni_export["int8"]), "--out", str(archive)
    )
    assert packaged.returncode == 0, packaged.stderr
    for where, expected in (
        (("--instance-type", "ml.c6a.xlarge"), "ml.c6a.xlarge has CPUs without VNNI"),
        (("--serverless",), "serverless endpoints do not say which x86 CPU"),
    ):
        result = _script(
            "sagemaker/deploy.py", "deploy", "--dry-run", "--model-tar", str(archive), *where
        )
        assert result.returncode == 2, result.stdout + result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr


def test_instance_families_by_class() -> None:
    from awsdeploy.cpu_classes import instance_misfit, lambda_misfit

    for fits in (
        "ml.c6i.large",
        "c7i.xlarge",
        "ml.m7i.2xlarge",
        "ml.c7a.large",
        "ml.c7g.large",
        "m6g.large",
    ):
        assert instance_misfit(fits, "vnni") is None, fits
    for avx2_only in ("ml.c6a.large", "c5a.xlarge", "ml.m5.large", "t3.micro"):
        assert "deploy the portable file" in instance_misfit(avx2_only, "vnni"), avx2_only
        assert instance_misfit(avx2_only, "portable") is None
        assert instance_misfit(avx2_only, None) is None  # FP32
    assert lambda_misfit("arm64", "vnni") is None and lambda_misfit("x86_64", "portable") is None
    assert lambda_misfit("x86_64", "vnni")


# --- the command lines refuse what the server refuses -------------------------------------------


def test_predict_cli_refuses_a_vnni_file_on_an_avx2_cpu(
    vnni_export: dict, images: list[Path]
) -> None:
    """`python -m services.predict` under emulated Haswell: exit 2 and one line, no answers."""
    result = subprocess.run(
        [_require_qemu(), "-cpu", "Haswell", os.path.realpath(sys.executable),
         "-m", "services.predict", "--model", str(vnni_export["int8"]), str(images[0])],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=EMULATED_START_TIMEOUT,
        env=_emulated_env(),
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stdout == ""
    # qemu's own warnings (features its TCG lacks) come first; ours is one line
    (line,) = [ln for ln in result.stderr.splitlines() if not ln.startswith("qemu-x86_64:")]
    assert line.startswith("error: model file ") and "CPU class 'vnni'" in line


def test_slides_cli_takes_the_cpu_class_argument(vnni_export: dict, tmp_path: Path) -> None:
    """`--cpu-class portable` says this CPU lacks VNNI: the slide CLI refuses the vnni file
    before it looks for any slide."""
    refused = _script("-m", "services.slides", str(tmp_path / "none.svs"), "--model",
                      str(vnni_export["int8"]), "--out", str(tmp_path / "out"),
                      "--cpu-class", "portable")
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "CPU_CLASS=portable says this CPU is 'portable'" in refused.stderr
    assert "Traceback" not in refused.stderr
