"""The two deploy scripts as a new user meets them: real subprocess runs against moto.

Each wrong setup ends in ONE line on stderr that says what is wrong and what to do, with a
documented exit status and never a traceback: 2 when the command line is wrong (an option, a
file an option names, an option pair that cannot work), 1 when the environment is (no or bad
AWS credentials, AWS out of reach, access denied, something missing in the account).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.containers import free_port
from tests.support.moto import ACCOUNT_ID, REGION, MotoServer

pytestmark = pytest.mark.aws
REPO_ROOT = Path(__file__).resolve().parents[1]
LAMBDA = "lambda/deploy.py"
SAGEMAKER = "sagemaker/deploy.py"
IMAGE = f"{ACCOUNT_ID}.dkr.ecr.{REGION}.amazonaws.com/mhist-newuser:v1"
BASIC_POLICY = "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
USAGE, ENVIRONMENT = 2, 1


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory):
    # As a new user starts it: without MOTO_IAM_LOAD_MANAGED_POLICIES.
    with MotoServer(log_dir=tmp_path_factory.mktemp("moto"),
                    extra_env={"MOTO_IAM_LOAD_MANAGED_POLICIES": "false"}) as server:
        yield server


@pytest.fixture(scope="module")
def model_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Every refusal here comes before the archive is read: any file will do.
    archive = tmp_path_factory.mktemp("newuser") / "model.tar.gz"
    archive.write_bytes(b"not read")
    return archive


def clean_env(**extra: str) -> dict[str, str]:
    """This machine's environment without any AWS_ setting or ~/.aws file, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    paths = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**env, "PYTHONPATH": os.pathsep.join(paths), "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_MAX_ATTEMPTS": "1", **extra}


def run(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300, env=env)


def one_line(result: subprocess.CompletedProcess, code: int) -> str:
    """The single stderr line of a refused run with exit status `code`."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, (result.returncode, result.stdout[-2000:], result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --- 1. credentials, endpoint, access ------------------------------------------------------

def commands(model_tar: Path) -> list[tuple[str, ...]]:
    return [
        (LAMBDA, "deploy", "--name", "mhist-newuser", "--image-uri", IMAGE),
        (LAMBDA, "destroy", "--name", "mhist-newuser"),
        (SAGEMAKER, "deploy", "--model-tar", str(model_tar), "--image-uri", IMAGE),
        (SAGEMAKER, "destroy", "--endpoint-name", "mhist-newuser"),
    ]


IDS = ["lambda-deploy", "lambda-destroy", "sagemaker-deploy", "sagemaker-destroy"]


@pytest.mark.parametrize("index", range(4), ids=IDS)
def test_no_credentials_is_one_line(moto, model_tar, index):
    script, *args = commands(model_tar)[index]
    line = one_line(run(script, *args, env=clean_env(AWS_ENDPOINT_URL=moto.url)), ENVIRONMENT)
    assert "no AWS credentials found: run `aws configure`, set AWS_PROFILE, or " \
           "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" in line


@pytest.mark.parametrize("index", [0, 2], ids=["lambda", "sagemaker"])
def test_partial_credentials_are_one_line(moto, model_tar, index):
    script, *args = commands(model_tar)[index]
    env = clean_env(AWS_ENDPOINT_URL=moto.url, AWS_ACCESS_KEY_ID="AKIAEXAMPLE")
    line = one_line(run(script, *args, env=env), ENVIRONMENT)
    assert "incomplete AWS credentials" in line and "AWS_SECRET_ACCESS_KEY" in line


@pytest.mark.parametrize("index", [0, 2], ids=["lambda", "sagemaker"])
def test_unreachable_endpoint_is_one_line(model_tar, index):
    script, *args = commands(model_tar)[index]
    nowhere = f"http://127.0.0.1:{free_port()}"
    env = clean_env(AWS_ENDPOINT_URL=nowhere, AWS_ACCESS_KEY_ID="testing",
                    AWS_SECRET_ACCESS_KEY="testing", AWS_REGION=REGION)
    line = one_line(run(script, *args, env=env), ENVIRONMENT)
    assert f"cannot reach AWS at {nowhere}" in line and "AWS_ENDPOINT_URL" in line


@pytest.fixture(scope="module")
def strict_moto(tmp_path_factory: pytest.TempPathFactory):
    """moto checking every request's credentials and IAM permissions, but for the first two
    requests: they make a user with no permissions at all; yields (server, its key)."""
    with MotoServer(log_dir=tmp_path_factory.mktemp("strict-moto"),
                    extra_env={"INITIAL_NO_AUTH_ACTION_COUNT": "2",
                               "MOTO_IAM_LOAD_MANAGED_POLICIES": "false"}) as server:
        iam = server.client("iam")
        iam.create_user(UserName="nobody")
        key = iam.create_access_key(UserName="nobody")["AccessKey"]
        yield server, key


@pytest.mark.parametrize("index", [0, 2], ids=["lambda", "sagemaker"])
def test_rejected_credentials_are_one_line(strict_moto, model_tar, index):
    server, _ = strict_moto
    script, *args = commands(model_tar)[index]
    env = clean_env(AWS_ENDPOINT_URL=server.url, AWS_ACCESS_KEY_ID="AKIAUNKNOWN",
                    AWS_SECRET_ACCESS_KEY="wrong", AWS_REGION=REGION)
    line = one_line(run(script, *args, env=env), ENVIRONMENT)
    assert "AWS did not accept these credentials" in line and "aws configure" in line


@pytest.mark.parametrize("index", [0, 2], ids=["lambda", "sagemaker"])
def test_access_denied_is_one_line(strict_moto, model_tar, index):
    """A real IAM user without permissions: AWS answers AccessDenied(Exception)."""
    server, key = strict_moto
    script, *args = commands(model_tar)[index]
    env = clean_env(AWS_ENDPOINT_URL=server.url, AWS_ACCESS_KEY_ID=key["AccessKeyId"],
                    AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"], AWS_REGION=REGION)
    line = one_line(run(script, *args, env=env), ENVIRONMENT)
    assert "AWS denied" in line and "permission" in line


def test_the_mapping_lives_in_awsdeploy():
    """One place maps botocore's errors to lines; the scripts only call it."""
    from botocore.exceptions import ClientError, NoCredentialsError

    from awsdeploy import cli

    denied = ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}},
                         "CreateFunction")
    assert cli.explain(denied).startswith("AWS denied CreateFunction")
    assert cli.explain(NoCredentialsError()).startswith("no AWS credentials found")
    for script in (LAMBDA, SAGEMAKER):
        text = (REPO_ROOT / script).read_text()
        assert "NoCredentialsError" not in text and "EndpointConnectionError" not in text


# --- 2. AWS managed policies missing (moto without MOTO_IAM_LOAD_MANAGED_POLICIES) ------------

def test_missing_managed_policy_is_one_line(moto):
    env = clean_env(**moto.env())
    result = run(LAMBDA, "deploy", "--name", "mhist-nopolicy", "--image-uri", IMAGE, env=env)
    line = one_line(result, ENVIRONMENT)
    assert f"IAM policy {BASIC_POLICY} does not exist" in line
    assert "MOTO_IAM_LOAD_MANAGED_POLICIES=true" in line


# --- 3. SageMaker instance family against image platform -----------------------------------

@pytest.mark.parametrize("instance, platform", [
    ("ml.c7g.large", "linux/amd64"), ("ml.m5.large", "linux/arm64"),
])
def test_platform_mismatch_is_refused_before_anything(moto, model_tar, instance, platform):
    env = clean_env(**moto.env())
    result = run(SAGEMAKER, "deploy", "--model-tar", str(model_tar), "--instance-type",
                 instance, "--platform", platform, env=env)
    line = one_line(result, USAGE)
    arch = "arm64" if platform.endswith("amd64") else "x86_64"
    assert f"--instance-type {instance} runs {arch} images but --platform is {platform}" in line
    assert result.stdout == ""  # no step announced, so nothing was built or created
    assert moto.client("s3").list_buckets()["Buckets"] == []


def test_platform_follows_the_instance_type(moto, model_tar):
    env = clean_env(**moto.env())
    for instance, platform in (("ml.c7g.large", "linux/arm64"), ("ml.m5.large", "linux/amd64")):
        result = run(SAGEMAKER, "deploy", "--dry-run", "--model-tar", str(model_tar),
                     "--instance-type", instance, env=env)
        assert result.returncode == 0, result.stderr
        assert f"build sagemaker/Dockerfile for {platform}" in result.stdout


@pytest.mark.parametrize("instance, arch", [
    ("ml.c7g.large", "arm64"), ("ml.m7g.xlarge", "arm64"), ("ml.r7gd.2xlarge", "arm64"),
    ("ml.c6gn.large", "arm64"), ("ml.g5g.xlarge", "arm64"), ("ml.t4g.medium", "arm64"),
    ("ml.m5.large", "x86_64"), ("ml.c7i.large", "x86_64"), ("ml.g5.xlarge", "x86_64"),
    ("ml.inf2.xlarge", "x86_64"), ("ml.p4d.24xlarge", "x86_64"),
])
def test_instance_architecture(instance, arch):
    from awsdeploy import cli

    assert cli.instance_architecture(instance) == arch


# --- 4. Lambda --model --------------------------------------------------------------------

@pytest.mark.parametrize("model, message", [
    ("nothere.onnx", "--model nothere.onnx: no such file; export one first (make export), "
                     "give an ONNX file inside the repository, or pass --image-uri"),
    ("services", "--model services is a directory: give the ONNX file"),
    ("/etc/hostname", "--model /etc/hostname is outside the repository"),
    ("../outside.onnx", "--model ../outside.onnx is outside the repository"),
])
def test_lambda_model_is_checked_in_the_dry_run_too(model, message):
    result = run(LAMBDA, "deploy", "--dry-run", "--model", model, env=clean_env())
    line = one_line(result, USAGE)
    assert line == f"error: {message}" or line.startswith(f"error: {message}")
    if "outside" in message:
        assert "copy it under the repository (e.g. artifacts/)" in line


# --- 5. one default region ------------------------------------------------------------------

def test_both_scripts_share_the_default_region(model_tar):
    from awsdeploy import aws

    for extra, region in (({}, aws.DEFAULT_REGION),
                          ({"AWS_DEFAULT_REGION": "eu-central-1"}, "eu-central-1"),
                          ({"AWS_REGION": "ap-south-1", "AWS_DEFAULT_REGION": "eu-central-1"},
                           "ap-south-1")):
        env = clean_env(**extra)
        lam = run(LAMBDA, "deploy", "--dry-run", "--image-uri", IMAGE, env=env)
        sm = run(SAGEMAKER, "deploy", "--dry-run", "--model-tar", str(model_tar), env=env)
        assert lam.returncode == 0 and sm.returncode == 0, lam.stderr + sm.stderr
        assert f".dkr.ecr.{region}.amazonaws.com" in lam.stdout
        assert f".dkr.ecr.{region}.amazonaws.com" in sm.stdout
    helps = [run(script, "deploy", "--help", env=clean_env()).stdout for script in
             (LAMBDA, SAGEMAKER)]
    for text in helps:
        assert f"(default: AWS_REGION, else AWS_DEFAULT_REGION, else {aws.DEFAULT_REGION})" \
            in " ".join(text.split())


# --- 6. batch over a whole bucket ---------------------------------------------------------------

@pytest.mark.parametrize("uri", ["s3://some-bucket/", "s3://some-bucket"])
def test_batch_refuses_an_empty_input_prefix(uri):
    result = run(SAGEMAKER, "batch", "--dry-run", "--model-name", "m", "--input", uri,
                 env=clean_env())
    line = one_line(result, USAGE)
    assert f"--input {uri} has no prefix: the job would read every object in bucket " \
           "some-bucket" in line
    assert "--whole-bucket" in line


def test_batch_whole_bucket_on_request():
    result = run(SAGEMAKER, "batch", "--dry-run", "--model-name", "m", "--input",
                 "s3://some-bucket/", "--whole-bucket", env=clean_env())
    assert result.returncode == 0, result.stderr
    assert "every object under s3://some-bucket/" in result.stdout


def test_batch_refuses_a_non_s3_input():
    result = run(SAGEMAKER, "batch", "--dry-run", "--model-name", "m", "--input",
                 "some-bucket/x/", env=clean_env())
    assert "expected s3://BUCKET/PREFIX/" in one_line(result, USAGE)


# --- 8. --help shows every default ------------------------------------------------------------

def parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from parsers(sub)


@pytest.mark.parametrize("path", [LAMBDA, SAGEMAKER, "sagemaker/package.py"])
def test_help_shows_every_default(path):
    module = load(path, f"help_{Path(path).parent.name}_{Path(path).stem}")
    for parser in parsers(module.get_args_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            flag = action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)
            if not action.option_strings or action.required or flag:
                continue  # positionals, required options, --help and flags (off unless given)
            text = formatter._get_help_string(action) or ""
            assert "default" in text.lower(), (parser.prog, action.option_strings, text)
    result = run(LAMBDA, "deploy", "--help", env=clean_env())
    assert "(default: 2048)" in result.stdout
