"""The deploy scripts' build → login → push path, for real, into a real OCI registry.

ECR is moto in server mode (no registry inside); the registry is Debian's docker-registry on
127.0.0.1 with basic auth (tests/support/registry.py). `ECR_REGISTRY_OVERRIDE` sends the push
there while the login still comes from ECR's get_authorization_token: the registry's htpasswd
holds exactly the credentials moto's token carries, so a wrong token would be refused.

Checked on what the registry then serves: a single image manifest (no list or index: Lambda
refuses those), the image pulled back by digest answers /predict like the model file, and a
tag never moves to another image (our guard; the ECR repository is IMMUTABLE too).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from awsdeploy import aws, container_engine
from services.core.files import sha256_file
from services.core.model import InferenceModel
from tests.conftest import unavailable
from tests.support.containers import run_container
from tests.support.events import make_v2_event
from tests.support.images import built_image
from tests.support.lambda_runtime import LambdaRuntimeServer
from tests.support.moto import MotoServer
from tests.support.registry import (
    DOCKER_MANIFEST,
    INSTALL_HINT,
    OCI_MANIFEST,
    LocalRegistry,
    registry_binary,
)

pytestmark = pytest.mark.aws
REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_ARGS = ("--stop-timeout", "1")  # awslambdaric ignores SIGTERM, as in Lambda


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory):
    with MotoServer(log_dir=tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="module")
def ecr_credentials(moto: MotoServer) -> tuple[str, str]:
    """(username, password) inside moto's ECR authorization token, as deploy decodes it."""
    data = moto.client("ecr").get_authorization_token()["authorizationData"][0]
    username, password = base64.b64decode(data["authorizationToken"]).decode().split(":", 1)
    return username, password


def start_registry(folder: Path, username: str, password: str) -> LocalRegistry:
    """A started registry; missing binary or bcrypt skips, or fails in CI (`unavailable`)."""
    if registry_binary() is None:
        unavailable(f"no docker-registry binary: {INSTALL_HINT}")
    try:
        import bcrypt  # noqa: F401  (htpasswd hashes)
    except ImportError:
        unavailable("bcrypt is not installed: pip install -c constraints.txt -e '.[dev]'")
    return LocalRegistry(folder, username, password).start()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, ecr_credentials: tuple[str, str]):
    server = start_registry(tmp_path_factory.mktemp("registry"), *ecr_credentials)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def name() -> str:
    return f"mhist-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def engine_auth(tmp_path: Path) -> dict[str, str]:
    """Keep the engine's login in this test's folder, not in the user's auth file."""
    return {"REGISTRY_AUTH_FILE": str(tmp_path / "auth.json"),
            "DOCKER_CONFIG": str(tmp_path / "docker")}


@pytest.fixture(scope="module")
def lambda_image(require_containers: str, model_int8_path: Path) -> str:
    """The session's Lambda image: deploy's build below reuses its layers."""
    return built_image("lambda", model_int8_path)


@pytest.fixture
def staged_model(lambda_image: str, model_int8_path: Path):
    """The fixture model under artifacts/ (the build context's only ONNX entry), named as
    tests/support/images.py stages it (and after it is done with it), so deploy's build of
    the same Dockerfile, arguments and file is a cache hit."""
    digest = sha256_file(model_int8_path)
    staged = REPO_ROOT / "artifacts" / f"test-lambda-{digest[:12]}.onnx"
    staged.parent.mkdir(exist_ok=True)
    shutil.copyfile(model_int8_path, staged)
    try:
        yield staged.relative_to(REPO_ROOT).as_posix()
    finally:
        staged.unlink(missing_ok=True)


@pytest.fixture
def local_names(require_containers: str):
    """Image names a test creates in the engine's storage; untagged afterwards (the layers
    stay: they are the session image's)."""
    names: list[str] = []
    yield names
    for image in names:
        subprocess.run([require_containers, "rmi", image], capture_output=True, timeout=120)


def deploy(moto: MotoServer, *args: str, env: dict[str, str] | None = None,
           script: str = "lambda/deploy.py") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, script, *args], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=1200, env={**os.environ, **moto.env(), **(env or {})})


def outputs_of(result: subprocess.CompletedProcess) -> dict:
    return json.loads(next(x for x in reversed(result.stdout.splitlines()) if x.startswith("{")))


def pull(engine: str, reference: str, env: dict[str, str]) -> None:
    tls = ["--tls-verify=false"] if engine != "docker" else []  # docker: 127.0.0.0/8 is plain
    result = subprocess.run([engine, "pull", *tls, reference], capture_output=True, text=True,
                            timeout=600, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr


def tiny_image(engine: str, folder: Path, tag: str) -> str:
    """An image of one file, not the Lambda one: something else to hold a tag."""
    (folder / "note.txt").write_text(f"not the model server {uuid.uuid4()}\n")
    (folder / "Containerfile").write_text("FROM scratch\nCOPY note.txt /note.txt\n")
    subprocess.run([engine, "build", "-q", "-t", tag, "-f", str(folder / "Containerfile"),
                    str(folder)], check=True, capture_output=True, timeout=300)
    return tag


# --- the push, for real -------------------------------------------------------------------------

@pytest.mark.container
def test_deploy_pushes_one_manifest_that_pulls_back_and_predicts(
        moto, registry, name, engine_auth, staged_model, local_names, require_containers,
        lambda_image, model_int8_path, sample_image_bytes):
    repository = f"{name}-lambda"
    env = {"ECR_REGISTRY_OVERRIDE": f"http://{registry.host}", **engine_auth}
    args = ("deploy", "--name", name, "--model", staged_model, "--tag", "v1",
            "--architecture", "x86_64")
    local_names += [f"{repository}:v1", f"{registry.host}/{repository}:v1"]

    result = deploy(moto, *args, env=env)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    outputs = outputs_of(result)
    assert outputs["image_uri"] == f"{registry.host}/{repository}:v1"
    function = moto.client("lambda").get_function(FunctionName=name)
    assert function["Code"]["ImageUri"] == outputs["image_uri"]
    (repo,) = moto.client("ecr").describe_repositories(
        repositoryNames=[repository])["repositories"]
    assert repo["imageTagMutability"] == "IMMUTABLE"

    # What a puller gets for the tag: one image manifest, the image deploy built.
    manifest = registry.manifest(repository, "v1")
    assert manifest is not None, registry.logs()[-3000:]
    assert manifest.media_type in (DOCKER_MANIFEST, OCI_MANIFEST)  # never a list or index
    assert manifest.media_type == DOCKER_MANIFEST  # podman --format v2s2 / docker's default
    assert manifest.body["schemaVersion"] == 2 and "manifests" not in manifest.body
    assert manifest.body["config"]["digest"] == container_engine.image_id(f"{repository}:v1")
    assert f"pushed {outputs['image_uri']} ({manifest.digest})" in result.stdout
    assert registry.tags(repository) == ["v1"]
    print(f"\n[registry push] deploy's image {container_engine.image_id(f'{repository}:v1')[:19]}, "
          f"session image {container_engine.image_id(lambda_image)[:19]}; "
          f"{len(manifest.body['layers'])} layers, "
          f"{sum(x['size'] for x in manifest.body['layers']) / 1e6:.1f} MB compressed")

    # Pulled back by digest, the image serves the model's own answer.
    by_digest = f"{registry.host}/{repository}@{manifest.digest}"
    local_names.append(by_digest)
    pull(require_containers, by_digest, engine_auth)
    expected = InferenceModel(model_int8_path).predict_bytes(sample_image_bytes)
    with LambdaRuntimeServer() as runtime, run_container(
        by_digest, network_host=True, engine=require_containers, extra_args=RUN_ARGS,
        env={"AWS_LAMBDA_RUNTIME_API": runtime.address},
    ):
        invocation = runtime.invoke(make_v2_event(
            method="POST", path="/predict", body=sample_image_bytes, binary=True,
            headers={"Content-Type": "image/png"}), timeout=120)
    assert invocation.error is None, invocation.error
    assert invocation.response["statusCode"] == 200, invocation.response
    got = json.loads(invocation.response["body"])
    assert got["label"] == expected["label"] and got["model"] == expected["model"]
    for cls, p in expected["probabilities"].items():
        assert got["probabilities"][cls] == pytest.approx(p, abs=1e-5)

    # Deploying the same image under the same tag again pushes nothing and succeeds.
    again = deploy(moto, *args, env=env)
    assert again.returncode == 0, f"{again.stdout[-3000:]}\n{again.stderr[-3000:]}"
    assert f"already holds this image ({manifest.digest}): nothing to push" in again.stdout
    assert registry.manifest(repository, "v1").digest == manifest.digest


@pytest.mark.container
def test_a_tag_holding_another_image_is_never_overwritten(
        moto, registry, name, engine_auth, staged_model, local_names, require_containers,
        tmp_path, ecr_credentials, monkeypatch):
    repository = f"{name}-lambda"
    other = tiny_image(require_containers, tmp_path, f"localhost/{name}-other:1")
    remote = f"{registry.host}/{repository}:taken"
    local_names += [other, remote, f"{repository}:taken"]
    # Another image under the tag first, pushed with the same credentials.
    for key, value in engine_auth.items():
        monkeypatch.setenv(key, value)
    container_engine.login(registry.host, *ecr_credentials, tls_verify=False)
    container_engine.push(other, remote, tls_verify=False)
    before = registry.manifest(repository, "taken")

    result = deploy(moto, "deploy", "--name", name, "--model", staged_model, "--tag", "taken",
                    "--architecture", "x86_64",
                    env={"ECR_REGISTRY_OVERRIDE": f"http://{registry.host}", **engine_auth})

    assert result.returncode == 1, result.stdout[-3000:]
    assert result.stderr.strip() == (
        f"error: {remote} already holds another image ({container_engine.image_id(other)}, ours is "
        f"{container_engine.image_id(f'{repository}:taken')}); tags are immutable: deploy with a "
        "new --tag")
    assert registry.manifest(repository, "taken") == before  # untouched
    assert "create or update function" not in result.stdout  # stopped before the function


@pytest.mark.container
def test_a_refused_login_is_one_line_before_any_build(moto, name, tmp_path, engine_auth,
                                                       require_containers):
    # The login comes before the build, so the model file is never read: any file will do.
    model = REPO_ROOT / "artifacts" / f"test-login-{uuid.uuid4().hex[:8]}.onnx"
    model.parent.mkdir(exist_ok=True)
    model.write_bytes(b"never built")
    try:
        # A registry that knows other credentials than the ones ECR's token carries.
        with start_registry(tmp_path / "registry", "AWS", "another-password") as other:
            result = deploy(moto, "deploy", "--name", name, "--model",
                            model.relative_to(REPO_ROOT).as_posix(), "--tag", "v1",
                            env={"ECR_REGISTRY_OVERRIDE": f"http://{other.host}", **engine_auth})
    finally:
        model.unlink(missing_ok=True)
    assert result.returncode == 1, result.stdout[-3000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {require_containers} login to {other.host} as AWS failed: ")
    assert "built " not in result.stdout


# --- the settings and the repository, without containers ----------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("http://127.0.0.1:5000", ("127.0.0.1:5000", False)),
    ("http://localhost:5000", ("localhost:5000", False)),
    ("http://[::1]:5000", ("[::1]:5000", False)),
    ("registry.example:5000", ("registry.example:5000", True)),
    ("https://registry.example", ("registry.example", True)),
    ("", None),
])
def test_registry_override_values(monkeypatch, value, expected):
    monkeypatch.setenv("ECR_REGISTRY_OVERRIDE", value)
    assert aws.registry_override() == expected


@pytest.mark.parametrize("value, message", [
    ("http://10.0.0.5:5000", "plain http:// is allowed to a loopback host only"),
    ("http://registry.example", "plain http:// is allowed to a loopback host only"),
    ("ftp://127.0.0.1", "is not valid: expected HOST[:PORT]"),
    ("https://host/some/path", "is not valid: expected HOST[:PORT]"),
    ("https://user:secret@host", "is not valid: expected HOST[:PORT]"),
])
def test_bad_registry_override_is_one_line_before_aws(moto, name, value, message):
    result = deploy(moto, "deploy", "--name", name, "--dry-run",
                    env={"ECR_REGISTRY_OVERRIDE": value})
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: ECR_REGISTRY_OVERRIDE={value!r}") and message in line


def test_sagemaker_deploy_refuses_a_bad_override_in_one_line(moto, tmp_path):
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(b"checked later")
    result = deploy(moto, "deploy", "--model-tar", str(archive),
                    env={"ECR_REGISTRY_OVERRIDE": "http://10.0.0.5:5000"},
                    script="sagemaker/deploy.py")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "deploy.py deploy: error: ECR_REGISTRY_OVERRIDE='http://10.0.0.5:5000': plain http:// "
        "is allowed to a loopback host only (127.0.0.1, ::1, localhost); use https://")


def test_deploy_makes_the_repository_immutable(moto, name):
    ecr = moto.client("ecr")
    ecr.create_repository(repositoryName=f"{name}-lambda", imageTagMutability="MUTABLE")
    image = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{name}-lambda:v1"
    result = deploy(moto, "deploy", "--name", name, "--image-uri", image)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "image tags made immutable" in result.stdout
    (repo,) = ecr.describe_repositories(repositoryNames=[f"{name}-lambda"])["repositories"]
    assert repo["imageTagMutability"] == "IMMUTABLE"

    fresh = f"{name}-new"
    result = deploy(moto, "deploy", "--name", fresh, "--image-uri", image)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"created ECR repository {fresh}-lambda (immutable tags)" in result.stdout
    (repo,) = ecr.describe_repositories(repositoryNames=[f"{fresh}-lambda"])["repositories"]
    assert repo["imageTagMutability"] == "IMMUTABLE"
