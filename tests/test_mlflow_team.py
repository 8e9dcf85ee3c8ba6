"""MLflow for a team: `mlflow server` on PostgreSQL with its artifacts in S3, used for real.

The fixture starts a throwaway PostgreSQL cluster (tests/support/postgres.py), moto in server
mode as S3, and `mlflow server --backend-store-uri postgresql://… --artifacts-destination
s3://…` on 127.0.0.1. The product's own commands then run against it with nothing but
MLFLOW_TRACKING_URI: training, registration, ONNX export from `models:/…`, SageMaker packaging,
and the MLproject's entry points through `mlflow run`. The clients get a dead S3 endpoint, so
every artifact byte provably goes through the server's artifact proxy.

compose.yaml (the team deployment) cannot run here (no compose tool; its PostgreSQL and MinIO
images cannot be pulled): the last test holds its MLflow command to this fixture's flags.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, run_cli, unavailable
from tests.support.containers import free_port
from tests.support.moto import MotoServer
from tests.support.postgres import PostgresServer, PostgresUnavailable

BUCKET = "mhist-mlflow"
PREFIX = "team"
TRAINED = "mhist-resnet18"
ONNX = "mhist-resnet18-onnx"
EXPERIMENT = "team"
TINY = ("--count", "40", "--size", "64", "--seed", "3")
TRAIN_FLAGS = ("--epochs", "1", "--weights", "none", "--image-size", "64", "--batch-size", "16",
               "--workers", "0")
# A client that tried S3 itself instead of the server's proxy would fail on this port.
DEAD_S3 = "http://127.0.0.1:9"
# Generated files the repository must never gain from this test.
REPO_OUTPUTS = ("mlruns", "mlartifacts", "mlflow.db", "artifacts/best.pt", "artifacts/model.onnx",
                "artifacts/model.int8.onnx", "artifacts/export_report.json", "model.tar.gz")

# Server-side jobs serve MLflow's GenAI features, unused here; left on, the server starts seven
# huey consumer processes (~200 MB each, measured) that also slow its shutdown. compose.yaml
# sets the same.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

pytestmark = pytest.mark.timeout(900)


def server_command(backend_uri: str, artifacts_destination: str, host: str, port: int,
                   workers: int = 1) -> list[str]:
    """`mlflow server` for a team: SQL backend store, artifacts proxied to object storage.

    compose.yaml runs the same flags (a test below checks it). One worker is plenty for one
    test client and spares this machine's two cores.
    """
    return ["mlflow", "server", "--backend-store-uri", backend_uri,
            "--artifacts-destination", artifacts_destination,
            "--host", host, "--port", str(port), "--workers", str(workers)]


class MlflowServer:
    """`mlflow server` as a subprocess in its own process group, waited for on /health."""

    def __init__(self, backend_uri: str, artifacts_destination: str, s3_env: dict[str, str],
                 log_dir: Path, start_timeout: float = 180.0) -> None:
        self.port = free_port()
        command = server_command(backend_uri, artifacts_destination, "127.0.0.1", self.port)
        self.command = [str(Path(sys.executable).with_name("mlflow")), *command[1:]]
        self.env = {**os.environ, **s3_env, **SERVER_ENV}
        self.log_path = log_dir / "mlflow-server.log"
        self.start_timeout = start_timeout
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MlflowServer:
        with self.log_path.open("wb") as log:
            # Own session: uvicorn's worker is a child; stop() ends the whole group it made.
            self._process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                             env=self.env, cwd=self.log_path.parent,
                                             start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"mlflow server exited {self._process.returncode}:\n"
                                   f"{self.logs()[-4000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"mlflow server not healthy after {self.start_timeout:.0f} s:\n"
                           f"{self.logs()[-4000:]}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=5)  # a throwaway server: no need for a long grace
        # Whatever of the group outlived the CLI (uvicorn's worker) goes now.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait(timeout=15)
        self._process = None


@dataclass
class Team:
    postgres: PostgresServer
    moto: MotoServer
    server: MlflowServer

    def client_env(self) -> dict[str, str]:
        """What a team member sets: the server's URL, and no S3 credentials or endpoint."""
        return {"MLFLOW_TRACKING_URI": self.server.url, "MLFLOW_S3_ENDPOINT_URL": DEAD_S3,
                "AWS_ENDPOINT_URL": DEAD_S3, "AWS_ACCESS_KEY_ID": "none",
                "AWS_SECRET_ACCESS_KEY": "none", "AWS_SESSION_TOKEN": "none"}

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.server.url)

    def s3_objects(self) -> dict[str, str]:
        """Every object under the artifact prefix in moto's bucket: key → ETag."""
        s3 = self.moto.client("s3")
        objects: dict[str, str] = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                                  Prefix=f"{PREFIX}/"):
            objects |= {item["Key"]: item["ETag"] for item in page.get("Contents", [])}
        return objects

    def s3_key(self, artifact_uri: str) -> str:
        """mlflow-artifacts:/1/models/m-…/artifacts → team/1/models/m-…/artifacts"""
        scheme = "mlflow-artifacts:"
        assert artifact_uri.startswith(scheme), artifact_uri
        return f"{PREFIX}/{artifact_uri[len(scheme):].lstrip('/')}"

    def sql(self, query: str, *args: str) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.postgres.uri) as connection:
            return connection.execute(query, args).fetchall()


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    try:
        import psycopg  # noqa: F401  (MLflow's PostgreSQL driver)
    except ImportError:
        unavailable("psycopg is not installed: pip install -c constraints.txt -e '.[dev]'")
    logs = tmp_path_factory.mktemp("mlflow-team")
    try:
        postgres = PostgresServer().start()
    except PostgresUnavailable as exc:
        unavailable(str(exc))
    with contextlib.ExitStack() as stack:
        stack.callback(postgres.stop)
        moto = stack.enter_context(MotoServer(log_dir=logs))
        moto.client("s3").create_bucket(Bucket=BUCKET)
        s3_env = {**moto.env(), "MLFLOW_S3_ENDPOINT_URL": moto.url}
        server = MlflowServer(postgres.uri, f"s3://{BUCKET}/{PREFIX}", s3_env, logs).start()
        stack.callback(server.stop)
        yield Team(postgres, moto, server)


@pytest.fixture(scope="module")
def tiny_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 SYNTHETIC 64 px patches: enough for one epoch and every split."""
    out = tmp_path_factory.mktemp("team-sample") / "sample"
    run_cli("-m", "training.sample_data", "--out", str(out), *TINY)
    return out


@pytest.fixture(scope="module")
def repo_outputs_before() -> dict[str, float | None]:
    return _repo_outputs()


def _repo_outputs() -> dict[str, float | None]:
    """mtime (or None when absent) of every generated file the repository must not gain."""
    found = {}
    for name in REPO_OUTPUTS:
        path = REPO_ROOT / name
        found[name] = path.stat().st_mtime if path.exists() else None
    return found


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.slow
@pytest.mark.aws
def test_train_export_package_through_a_team_server(team: Team, tiny_sample: Path,
                                                    tmp_path: Path,
                                                    repo_outputs_before: dict) -> None:
    env = team.client_env()
    trained = run_cli(str(REPO_ROOT / "training" / "train.py"), "--data-dir", str(tiny_sample),
                      *TRAIN_FLAGS, "--experiment", EXPERIMENT, "--out", str(tmp_path / "ck"),
                      env=env, cwd=tmp_path)
    client = team.client()
    version = _newest(client, TRAINED)
    run = client.get_run(version.run_id)
    assert f"run id      : {run.info.run_id}" in trained.stdout

    # Params and metrics went into PostgreSQL: what the server answers is what its tables hold.
    assert run.data.params["epochs"] == "1" and run.data.params["weights"] == "none"
    assert run.data.params["data_dir"] == str(tiny_sample)
    assert {"best_val_roc_auc", "test_accuracy", "val_loss"} <= set(run.data.metrics)
    params = dict(team.sql("SELECT key, value FROM params WHERE run_uuid = %s", run.info.run_id))
    assert params == run.data.params
    metric_keys = {k for (k,) in team.sql("SELECT key FROM latest_metrics WHERE run_uuid = %s",
                                          run.info.run_id)}
    assert metric_keys == set(run.data.metrics)
    assert team.sql("SELECT name FROM model_versions WHERE name = %s AND version = %s",
                    TRAINED, version.version) == [(TRAINED,)]

    # The PyTorch model's files are objects in the S3 bucket, under the server's prefix.
    objects = team.s3_objects()
    model_key = team.s3_key(client.get_model_version_download_uri(TRAINED, version.version))
    assert f"{model_key}/MLmodel" in objects, sorted(objects)
    assert any(k.startswith(f"{model_key}/data/") for k in objects), sorted(objects)  # weights
    assert any(k.startswith(team.s3_key(run.info.artifact_uri)) for k in objects)

    # Export reads that model back through the server and registers the two ONNX files.
    out = tmp_path / "onnx"
    run_cli(str(REPO_ROOT / "export" / "to_onnx.py"), "--model-uri", f"models:/{TRAINED}/latest",
            "--data-dir", str(tiny_sample), "--out", str(out), "--experiment", EXPERIMENT,
            "--calibration-size", "16", "--allow-degraded", env=env, cwd=tmp_path)
    report = json.loads((out / "export_report.json").read_text())
    assert report["source"]["uri"] == f"models:/{TRAINED}/{version.version}"  # latest, resolved
    s3 = team.moto.client("s3")
    for precision, name in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
        onnx_version = _onnx_version(client, precision)
        assert onnx_version.tags["source_run_id"] == run.info.run_id
        key = team.s3_key(client.get_model_version_download_uri(ONNX, onnx_version.version))
        stored = s3.get_object(Bucket=BUCKET, Key=f"{key}/model.onnx")["Body"].read()
        assert _sha256(stored) == onnx_version.tags["sha256"] == _sha256((out / name).read_bytes())

    # SageMaker packaging pulls the INT8 version from the registry through the same server.
    archive = tmp_path / "model.tar.gz"
    packaged = run_cli(str(REPO_ROOT / "sagemaker" / "package.py"), "--model-uri",
                       f"models:/{ONNX}", "--out", str(archive), env=env, cwd=tmp_path)
    summary = json.loads(packaged.stdout)
    assert summary["model_sha256"] == _sha256((out / "model.int8.onnx").read_bytes())
    assert summary["precision"] == "int8" and archive.is_file()
    assert _repo_outputs() == repo_outputs_before


def _newest(client, name: str):
    return max(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))


def _onnx_version(client, precision: str):
    """The newest registered ONNX version with this precision tag."""
    versions = client.search_model_versions(f"name = '{ONNX}'")
    tagged = [v for v in versions if v.tags.get("precision") == precision]
    assert tagged, f"no {precision} version of {ONNX}: {[v.tags for v in versions]}"
    return max(tagged, key=lambda v: int(v.version))


def _project_copy(folder: Path, sample: Path) -> Path:
    """The MLproject and its entry scripts in a tmp folder: `mlflow run .` writes its default
    outputs (artifacts/) into the project folder, and the repository must stay clean."""
    project = folder / "project"
    project.mkdir()
    shutil.copy2(REPO_ROOT / "MLproject", project / "MLproject")
    ignore = shutil.ignore_patterns("__pycache__")
    for package in ("training", "export"):
        shutil.copytree(REPO_ROOT / package, project / package, ignore=ignore)
    shutil.copytree(sample, project / "data" / "sample")
    return project


@pytest.mark.slow
@pytest.mark.aws
def test_mlproject_entry_points_against_the_team_server(team: Team, tiny_sample: Path,
                                                        tmp_path: Path,
                                                        repo_outputs_before: dict) -> None:
    project = _project_copy(tmp_path, tiny_sample)
    mlflow_cli = str(Path(sys.executable).with_name("mlflow"))
    env = {**team.client_env(), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # As the issue tried it: a relative data_dir, which `type: path` hands over resolved while
    # `mlflow run` logs it as typed. It used to die on "Changing param values is not allowed".
    trained = _mlflow_run(mlflow_cli, project, env, "train", "data_dir=data/sample",
                          "weights=none", "epochs=1", "image_size=64", "batch_size=16",
                          "workers=0", "lr=1e-3")
    client = team.client()
    run = client.get_run(trained)
    assert run.info.status == "FINISHED"
    assert run.data.params["data_dir"] == "data/sample"
    assert run.data.params["resolved_data_dir"] == str(project / "data" / "sample")
    assert run.data.params["lr"] == "1e-3" and run.data.params["resolved_lr"] == "0.001"
    assert "best_val_roc_auc" in run.data.metrics
    version = client.search_model_versions(f"name = '{TRAINED}' and run_id = '{trained}'")
    assert len(version) == 1
    assert (project / "artifacts" / "best.pt").is_file()

    # The export entry point with its defaults: out=artifacts, where `make serve` and the
    # image builds look for the files. The tiny sample's 6 validation images cannot show skill
    # beyond chance (the gate would need AUC > 0.94), so the run keeps its files explicitly.
    exported = _mlflow_run(mlflow_cli, project, env, "export", "calibration_size=16",
                           "max_accuracy_drop=100", "allow_degraded=true")
    assert client.get_run(exported).info.status == "FINISHED"
    for name in ("model.onnx", "model.int8.onnx", "export_report.json"):
        assert (project / "artifacts" / name).is_file(), name
    int8 = _onnx_version(client, "int8")
    assert int8.run_id == exported and int8.tags["source_run_id"] == trained
    assert int8.tags["sha256"] == _sha256((project / "artifacts" / "model.int8.onnx").read_bytes())
    assert _repo_outputs() == repo_outputs_before


def _mlflow_run(mlflow_cli: str, project: Path, env: dict, entry: str, *params: str) -> str:
    """`mlflow run . -e ENTRY -P … --env-manager local` from the project folder; the run id."""
    args = [mlflow_cli, "run", ".", "-e", entry, "--env-manager", "local",
            "--experiment-name", EXPERIMENT]
    for param in params:
        args += ["-P", param]
    result = subprocess.run(args, cwd=project, env={**os.environ, **env}, capture_output=True,
                            text=True, timeout=600)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(f"mlflow run -e {entry} exited {result.returncode}:\n{output[-5000:]}")
    marker = "=== Run (ID '"
    assert marker in output, output[-3000:]
    return output.rsplit(marker, 1)[1].split("'", 1)[0]


def _flags(command: list[str]) -> dict[str, str]:
    """--flag value pairs of a command line given as a list."""
    return {token: command[i + 1] for i, token in enumerate(command) if token.startswith("--")}


def test_compose_runs_the_same_mlflow_server_as_the_fixture() -> None:
    """compose.yaml cannot run here; its MLflow server must at least be the one tested above."""
    import yaml

    services = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())["services"]
    mlflow = services["mlflow"]
    command = [str(token) for token in mlflow["command"]]
    fixture = server_command("postgresql://u:p@127.0.0.1:5432/db", "s3://b/p", "127.0.0.1", 5000)
    assert command[:2] == fixture[:2] == ["mlflow", "server"]
    flags = _flags(command)
    assert flags.keys() == _flags(fixture).keys()

    # The backend store is the compose PostgreSQL, with its user, database and password.
    postgres = services["postgres"]["environment"]
    backend = re.fullmatch(r"postgresql://(\w+):\$\{POSTGRES_PASSWORD[^}]*\}@(\w+):5432/(\w+)",
                           flags["--backend-store-uri"])
    assert backend, flags["--backend-store-uri"]
    assert backend.groups() == (postgres["POSTGRES_USER"], "postgres", postgres["POSTGRES_DB"])
    assert "postgres" in mlflow["depends_on"]

    # Artifacts go to the bucket create-bucket makes, on the compose MinIO.
    bucket = re.fullmatch(r"s3://([\w.-]+)/[\w./-]+", flags["--artifacts-destination"])
    assert bucket, flags["--artifacts-destination"]
    assert f"mb --ignore-existing store/{bucket.group(1)}" in " ".join(
        services["create-bucket"]["entrypoint"])
    environment = mlflow["environment"]
    assert environment["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert SERVER_ENV.items() <= environment.items()

    # Nothing is published beyond this host; the UI is where the README says.
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert published and all(port.startswith("127.0.0.1:") for port in published)
    assert f"127.0.0.1:5000:{flags['--port']}" in mlflow["ports"]

    # The server image installs pyproject's `team` extra; the service builds the Flask image
    # from the file `make export` writes.
    team_extra = re.search(r"^team = \[(.*)\]$", (REPO_ROOT / "pyproject.toml").read_text(), re.M)
    assert team_extra
    inline = mlflow["build"]["dockerfile_inline"]
    for requirement in re.findall(r'"([\w-]+(?:\[\w+\])?)', team_extra.group(1)):
        assert requirement in inline, requirement
    service = services["service"]["build"]
    assert (REPO_ROOT / service["dockerfile"]).is_file()
    assert service["args"]["MODEL_FILE"] == "artifacts/model.int8.onnx"


# --- a tracking store that does not answer ---------------------------------------------------

@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg", "http"])
def test_a_dead_tracking_store_is_one_line_not_a_retry_loop(
    scheme: str, sample_dir: Path, tmp_path: Path
) -> None:
    """MLflow itself retries a dead PostgreSQL for ~100 s and ends in a psycopg traceback;
    training and export check the port first and say what to fix, password left out."""
    uri = f"{scheme}://team:s3cret@127.0.0.1:{free_port()}/mlflow"
    commands = {
        "train": [str(REPO_ROOT / "training" / "train.py"), "--data-dir", str(sample_dir),
                  "--epochs", "1", "--weights", "none", "--tracking-uri", uri,
                  "--out", str(tmp_path / "ckpt")],
        "export": [str(REPO_ROOT / "export" / "to_onnx.py"), "--model-uri",
                   "models:/mhist-resnet18/latest", "--tracking-uri", uri,
                   "--out", str(tmp_path / "onnx")],
    }
    for name, args in commands.items():
        result = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode != 0, (name, result.stdout)
        assert "Traceback" not in result.stderr, (name, result.stderr)
        assert "does not answer on 127.0.0.1" in result.stderr, (name, result.stderr)
        assert "s3cret" not in result.stderr, name
        assert "--tracking-uri / MLFLOW_TRACKING_URI" in result.stderr, name
    assert not list(tmp_path.iterdir()), "nothing written before the check"
