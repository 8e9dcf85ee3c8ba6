"""sagemaker/deploy.py against moto in server mode on 127.0.0.1, through real boto3 clients.

Asserts on what moto reports after each subcommand. What moto cannot show, and is therefore
not claimed here: moto runs no container, so an endpoint's InService and a transform job's
Completed are moto's bookkeeping, not inference; its invoke_endpoint returns canned data, so
the invoke test checks only what was SENT (Content-Type, body, headers), via moto's request
recorder; moto 5.2 does not implement UpdateEndpoint (HTTP 500), so the update test checks the
new model/config and the exact UpdateEndpoint request, and the switch itself where moto can;
ECR has no registry behind it in moto, so deploys here pass --image-uri (no build/push).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support.moto import ACCOUNT_ID, REGION, MotoServer
from tests.support.sagemaker_files import SAGEMAKER_DIR, load, run_package, script_env

pytestmark = pytest.mark.aws

IMAGE = f"{ACCOUNT_ID}.dkr.ecr.{REGION}.amazonaws.com/mhist-sagemaker:test"
BUCKET = f"mhist-sagemaker-{ACCOUNT_ID}-{REGION}"
ROLE = "mhist-sagemaker-execution"


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory: pytest.TempPathFactory):
    # No AWS managed policies needed here (the role gets an inline one); loading them makes
    # every reset take seconds.
    with MotoServer(log_dir=tmp_path_factory.mktemp("moto"),
                    extra_env={"MOTO_IAM_LOAD_MANAGED_POLICIES": "false"}) as server:
        yield server


@pytest.fixture
def moto(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    moto_server.reset()
    for key, value in moto_server.env().items():
        monkeypatch.setenv(key, value)
    return moto_server


@pytest.fixture(scope="module")
def model_tar(model_int8_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sm-deploy") / "model.tar.gz"
    result = run_package("--onnx", str(model_int8_path), "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def deploy_module():
    return load("deploy")


def run(deploy_module, capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = deploy_module.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def deploy(deploy_module, capsys, model_tar: Path, endpoint: str, *extra: str) -> str:
    code, out, err = run(deploy_module, capsys, "deploy", "--model-tar", str(model_tar),
                         "--image-uri", IMAGE, "--endpoint-name", endpoint, *extra)
    assert code == 0, out + err
    return out


def stamped(names: list[str], endpoint: str) -> list[str]:
    return sorted(n for n in names if n.startswith(endpoint + "-2"))


# --- deploy -------------------------------------------------------------------------------------

def test_deploy_real_time(moto: MotoServer, deploy_module, capsys, model_tar: Path) -> None:
    deploy(deploy_module, capsys, model_tar, "mhist-rt", "--instance-type", "ml.c5.large",
           "--instance-count", "2", "--workers", "2")
    sm, s3, iam = moto.client("sagemaker"), moto.client("s3"), moto.client("iam")

    endpoint = sm.describe_endpoint(EndpointName="mhist-rt")
    assert endpoint["EndpointStatus"] == "InService"
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    (variant,) = config["ProductionVariants"]
    assert variant["InstanceType"] == "ml.c5.large" and variant["InitialInstanceCount"] == 2
    assert "ServerlessConfig" not in variant

    model = sm.describe_model(ModelName=variant["ModelName"])
    container = model["PrimaryContainer"]
    assert container["Image"] == IMAGE
    assert container["Environment"]["SAGEMAKER_MODEL_SERVER_WORKERS"] == "2"
    assert model["ExecutionRoleArn"] == iam.get_role(RoleName=ROLE)["Role"]["Arn"]

    # The archive in S3 is byte for byte the one package.py wrote.
    bucket, key = container["ModelDataUrl"].removeprefix("s3://").split("/", 1)
    assert bucket == BUCKET and key.startswith("models/mhist-rt/")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == model_tar.read_bytes()

    trust = iam.get_role(RoleName=ROLE)["Role"]["AssumeRolePolicyDocument"]
    assert trust["Statement"][0]["Principal"]["Service"] == "sagemaker.amazonaws.com"
    policy = iam.get_role_policy(RoleName=ROLE, PolicyName="mhist-sagemaker")["PolicyDocument"]
    resources = json.dumps(policy)
    assert f"arn:aws:s3:::{BUCKET}/*" in resources
    assert f"arn:aws:ecr:{REGION}:{ACCOUNT_ID}:repository/mhist-sagemaker" in resources
    assert iam.list_attached_role_policies(RoleName=ROLE)["AttachedPolicies"] == []


def test_deploy_serverless(moto: MotoServer, deploy_module, capsys, model_tar: Path) -> None:
    deploy(deploy_module, capsys, model_tar, "mhist-sls", "--serverless", "--memory-mb", "3072",
           "--max-concurrency", "3")
    sm = moto.client("sagemaker")
    endpoint = sm.describe_endpoint(EndpointName="mhist-sls")
    assert endpoint["EndpointStatus"] == "InService"
    (variant,) = sm.describe_endpoint_config(
        EndpointConfigName=endpoint["EndpointConfigName"])["ProductionVariants"]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 3072, "MaxConcurrency": 3}
    assert "InstanceType" not in variant


def _recorded(moto: MotoServer) -> list[dict]:
    """moto's request recorder: what the clients sent, bodies decoded to bytes."""
    data = urllib.request.urlopen(f"{moto.url}/moto-api/recorder/download-recording").read()
    entries = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    for entry in entries:
        body = entry.get("body") or ""
        entry["body"] = base64.b64decode(body) if entry.get("body_encoded") else body.encode()
    return entries


def _recorder(moto: MotoServer, action: str) -> None:
    request = urllib.request.Request(f"{moto.url}/moto-api/recorder/{action}", method="POST")
    urllib.request.urlopen(request).read()


def test_deploy_again_updates_the_endpoint_to_a_new_config(moto: MotoServer, deploy_module,
                                                           capsys, model_tar: Path) -> None:
    deploy(deploy_module, capsys, model_tar, "mhist-up")
    sm = moto.client("sagemaker")
    first = sm.describe_endpoint(EndpointName="mhist-up")["EndpointConfigName"]

    _recorder(moto, "reset-recording")
    _recorder(moto, "start-recording")
    code, out, err = run(deploy_module, capsys, "deploy", "--model-tar", str(model_tar),
                         "--image-uri", IMAGE, "--endpoint-name", "mhist-up",
                         "--instance-type", "ml.c5.xlarge", "--instance-count", "3")
    _recorder(moto, "stop-recording")

    configs = stamped([c["EndpointConfigName"] for c in sm.list_endpoint_configs()[
        "EndpointConfigs"]], "mhist-up")
    models = stamped([m["ModelName"] for m in sm.list_models()["Models"]], "mhist-up")
    assert len(configs) == 2 and len(models) == 2, (configs, models)
    second = next(name for name in configs if name != first)
    (variant,) = sm.describe_endpoint_config(EndpointConfigName=second)["ProductionVariants"]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.c5.xlarge", 3)
    assert f"update endpoint mhist-up: {first} → {second}" in out

    sent = [json.loads(e["body"]) for e in _recorded(moto)
            if e["headers"].get("X-Amz-Target") == "SageMaker.UpdateEndpoint"]
    assert sent and all(body == {"EndpointName": "mhist-up", "EndpointConfigName": second}
                        for body in sent)
    if code == 0:  # a moto that implements UpdateEndpoint
        assert sm.describe_endpoint(EndpointName="mhist-up")["EndpointConfigName"] == second
    else:  # moto 5.2: HTTP 500 for UpdateEndpoint; the script reports it in one line
        assert "AWS refused UpdateEndpoint" in err and "Traceback" not in err


# --- autoscale ----------------------------------------------------------------------------------

def test_autoscale_target_tracking(moto: MotoServer, deploy_module, capsys, model_tar) -> None:
    deploy(deploy_module, capsys, model_tar, "mhist-as")
    code, out, err = run(deploy_module, capsys, "autoscale", "--endpoint-name", "mhist-as",
                         "--min", "2", "--max", "5", "--target", "150")
    assert code == 0, out + err
    scaling = moto.client("application-autoscaling")
    resource = "endpoint/mhist-as/variant/AllTraffic"
    (target,) = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert (target["ResourceId"], target["MinCapacity"], target["MaxCapacity"]) == (resource, 2, 5)
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    (policy,) = scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    assert tracking["TargetValue"] == 150.0
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == \
        "SageMakerVariantInvocationsPerInstance"


def test_autoscale_refuses_serverless_and_bad_bounds(moto, deploy_module, capsys,
                                                     model_tar) -> None:
    deploy(deploy_module, capsys, model_tar, "mhist-sls", "--serverless")
    code, _, err = run(deploy_module, capsys, "autoscale", "--endpoint-name", "mhist-sls")
    assert code == 1 and "is serverless" in err
    code, _, err = run(deploy_module, capsys, "autoscale", "--endpoint-name", "mhist-sls",
                       "--min", "3", "--max", "2")
    assert code == 2 and "need 1 ≤ min ≤ max" in err  # a usage error
    code, _, err = run(deploy_module, capsys, "autoscale", "--endpoint-name", "no-such")
    assert code == 1 and "run `deploy` first" in err
    assert moto.client("application-autoscaling").describe_scalable_targets(
        ServiceNamespace="sagemaker")["ScalableTargets"] == []


# --- batch --------------------------------------------------------------------------------------

def test_batch_transform_job(moto: MotoServer, deploy_module, capsys, model_tar: Path,
                             sample_image_bytes: bytes) -> None:
    deploy(deploy_module, capsys, model_tar, "mhist-bt")
    s3 = moto.client("s3")
    for index in range(3):
        s3.put_object(Bucket=BUCKET, Key=f"batch-input/img-{index}.png", Body=sample_image_bytes)
    code, out, err = run(deploy_module, capsys, "batch", "--endpoint-name", "mhist-bt",
                         "--input", f"s3://{BUCKET}/batch-input/", "--job-name", "mhist-bt-job",
                         "--content-type", "image/png", "--instance-count", "2", "--wait")
    assert code == 0, out + err
    sm = moto.client("sagemaker")
    job = sm.describe_transform_job(TransformJobName="mhist-bt-job")
    current = sm.describe_endpoint_config(EndpointConfigName=sm.describe_endpoint(
        EndpointName="mhist-bt")["EndpointConfigName"])["ProductionVariants"][0]["ModelName"]
    assert job["ModelName"] == current
    assert job["BatchStrategy"] == "SingleRecord"
    assert job["TransformInput"]["SplitType"] == "None"
    assert job["TransformInput"]["ContentType"] == "image/png"
    assert job["TransformInput"]["DataSource"]["S3DataSource"] == {
        "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/batch-input/"}
    assert job["TransformOutput"]["S3OutputPath"] == f"s3://{BUCKET}/batch-output/"
    assert job["TransformOutput"]["Accept"] == "application/json"
    assert job["TransformResources"] == {"InstanceType": "ml.m5.large", "InstanceCount": 2}
    # moto's bookkeeping only: no container ran, so there is no output to look at.
    assert job["TransformJobStatus"] == "Completed"


# --- invoke -------------------------------------------------------------------------------------

def test_invoke_sends_the_image_as_asked(moto: MotoServer, deploy_module, capsys,
                                         model_tar: Path, sample_image_path: Path) -> None:
    """What was SENT is checked; moto answers canned data, which is not inference."""
    deploy(deploy_module, capsys, model_tar, "mhist-inv")
    _recorder(moto, "reset-recording")
    _recorder(moto, "start-recording")
    # --as-json: moto 5.2 cannot take a binary body (it decodes every body as UTF-8).
    code, out, err = run(deploy_module, capsys, "invoke", "--endpoint-name", "mhist-inv",
                         "--image", str(sample_image_path), "--as-json",
                         "--custom-attributes", "trace=42")
    _recorder(moto, "stop-recording")
    assert code == 0, out + err
    (sent,) = [e for e in _recorded(moto) if "/endpoints/mhist-inv/invocations" in e["url"]]
    assert sent["headers"]["Content-Type"] == "application/json"
    assert sent["headers"]["Accept"] == "application/json"
    assert sent["headers"]["X-Amzn-Sagemaker-Custom-Attributes"] == "trace=42"
    body = json.loads(sent["body"])
    assert base64.b64decode(body["image"]) == sample_image_path.read_bytes()
    assert out == "body\n"  # moto's canned response, printed as received: not inference
    assert "[1] invoke mhist-inv" in err


def test_invoke_body_for_raw_images(deploy_module, tmp_path: Path) -> None:
    content_type, body = deploy_module.invoke_body(tmp_path / "a.png", b"PNGDATA", False, None)
    assert (content_type, body) == ("image/png", b"PNGDATA")
    assert deploy_module.invoke_body(tmp_path / "a.jpg", b"x", False, None)[0] == "image/jpeg"
    assert deploy_module.invoke_body(tmp_path / "a.bin", b"x", False, None)[0] == \
        "application/x-image"


# --- destroy and dry run ------------------------------------------------------------------------

def test_destroy_removes_everything_and_can_run_twice(moto: MotoServer, deploy_module, capsys,
                                                      model_tar: Path) -> None:
    deploy(deploy_module, capsys, model_tar, "mhist-del")
    deploy(deploy_module, capsys, model_tar, "mhist-keep", "--serverless")
    assert run(deploy_module, capsys, "autoscale", "--endpoint-name", "mhist-del")[0] == 0
    for _ in range(2):
        code, out, err = run(deploy_module, capsys, "destroy", "--endpoint-name", "mhist-del",
                             "--all")
        assert code == 0, out + err
    sm, s3 = moto.client("sagemaker"), moto.client("s3")
    endpoints = [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]]
    assert endpoints == ["mhist-keep"]
    assert stamped([m["ModelName"] for m in sm.list_models()["Models"]], "mhist-del") == []
    assert stamped([c["EndpointConfigName"] for c in sm.list_endpoint_configs()[
        "EndpointConfigs"]], "mhist-del") == []
    # The other endpoint's model and config are untouched.
    assert len(stamped([m["ModelName"] for m in sm.list_models()["Models"]], "mhist-keep")) == 1
    assert moto.client("application-autoscaling").describe_scalable_targets(
        ServiceNamespace="sagemaker")["ScalableTargets"] == []
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="models/")
    assert all(not o["Key"].startswith("models/mhist-del/") for o in listed.get("Contents", []))
    assert not [r for r in moto.client("iam").list_roles()["Roles"] if r["RoleName"] == ROLE]


def test_dry_run_prints_the_plan_and_changes_nothing(moto: MotoServer, model_tar: Path) -> None:
    # As a user runs it: the script from a checkout, in its own process.
    result = subprocess.run(
        [sys.executable, str(SAGEMAKER_DIR / "deploy.py"), "deploy", "--dry-run",
         "--model-tar", str(model_tar), "--serverless"],
        capture_output=True, text=True, timeout=120, env={**script_env(), **moto.env()})
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("[dry-run] would")]
    text = "\n".join(lines)
    for expected in ("upload", "build sagemaker/Dockerfile for linux/amd64 and push",
                     "ensure IAM role",
                     "create model", "create endpoint config", "serverless", "create endpoint"):
        assert expected in text, result.stdout
    assert "nothing was changed" in result.stdout
    sm = moto.client("sagemaker")
    assert sm.list_models()["Models"] == [] and sm.list_endpoints()["Endpoints"] == []
    assert moto.client("s3").list_buckets()["Buckets"] == []
