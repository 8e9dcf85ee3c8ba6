"""lambda/deploy.py against moto in server mode (a real HTTP endpoint on 127.0.0.1).

The script runs as a user runs it (a subprocess with AWS_ENDPOINT_URL set); assertions read
back what moto then reports through real boto3 clients. The push step is skipped with
--image-uri: moto has no registry to push layers to. moto runs no image functions, so nothing
here invokes the function.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.support.moto import ACCOUNT_ID, REGION, MotoServer

pytestmark = pytest.mark.aws
REPO_ROOT = Path(__file__).resolve().parents[1]
BASIC_POLICY = "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
# Every path and method reaches the Flask app (its JSON 404/405 included): `ANY /{proxy+}`
# does not match the bare root, hence `ANY /` for the upload page.
PROXY_ROUTES = {"ANY /{proxy+}", "ANY /"}


def load_deploy_module():
    """lambda/deploy.py as a module (`lambda` is a keyword: no plain import)."""
    spec = importlib.util.spec_from_file_location("lambda_deploy",
                                                  REPO_ROOT / "lambda" / "deploy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def image_uri(name: str) -> str:
    return f"{ACCOUNT_ID}.dkr.ecr.{REGION}.amazonaws.com/{name}-lambda:v1"


def deploy_args(name: str) -> tuple[str, ...]:
    return (
        "deploy", "--name", name, "--image-uri", image_uri(name), "--memory", "3008",
        "--timeout", "20", "--architecture", "arm64", "--reserved-concurrency", "3",
        "--env", "ORT_INTRA_OP_THREADS=2", "--cors-origins", "https://app.example",
        "--keep-images", "5",
    )


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory):
    # One server for the module; tests keep apart by stack name. (moto's reset would reload
    # ~1,000 IAM managed policies each time: seconds per test.)
    with MotoServer(log_dir=tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def name() -> str:
    return f"mhist-{uuid.uuid4().hex[:6]}"


def run_script(moto: MotoServer, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "lambda/deploy.py", *args], cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=300, env={**os.environ, **moto.env()},
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def outputs_of(result: subprocess.CompletedProcess) -> dict:
    """deploy prints its outputs as one JSON line before the summary."""
    return json.loads(next(x for x in reversed(result.stdout.splitlines()) if x.startswith("{")))


def apis_named(apis, name: str) -> list[dict]:
    return [a for a in apis.get_apis()["Items"] if a["Name"] == f"{name}-http-api"]


def only_api(apis, name: str) -> dict:
    matches = apis_named(apis, name)
    assert len(matches) == 1, matches
    return matches[0]


def assert_stack(moto: MotoServer, name: str, outputs: dict) -> None:
    iam, lam, ecr, apis = (moto.client(s) for s in ("iam", "lambda", "ecr", "apigatewayv2"))

    role = iam.get_role(RoleName=f"{name}-lambda-role")["Role"]
    (statement,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "lambda.amazonaws.com"}
    assert statement["Action"] == "sts:AssumeRole"
    attached = iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [BASIC_POLICY]  # and nothing else
    assert iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"] == []

    (repo,) = ecr.describe_repositories(repositoryNames=[f"{name}-lambda"])["repositories"]
    assert repo["imageScanningConfiguration"]["scanOnPush"] is True
    lifecycle = json.loads(ecr.get_lifecycle_policy(
        repositoryName=f"{name}-lambda")["lifecyclePolicyText"])
    assert lifecycle["rules"][0]["selection"]["countNumber"] == 5

    function = lam.get_function(FunctionName=name)
    config = function["Configuration"]
    assert config["PackageType"] == "Image"
    assert function["Code"]["ImageUri"] == image_uri(name)
    assert (config["MemorySize"], config["Timeout"], config["Architectures"]) == \
        (3008, 20, ["arm64"])
    assert config["Role"] == role["Arn"]
    assert config["State"] == "Active"
    assert config["Environment"]["Variables"] == {
        "ORT_INTRA_OP_THREADS": "2", "CORS_ALLOW_ORIGINS": "https://app.example",
        "EMF_METRICS": "1"}
    concurrency = lam.get_function_concurrency(FunctionName=name)
    assert concurrency["ReservedConcurrentExecutions"] == 3

    api = only_api(apis, name)
    assert api["ProtocolType"] == "HTTP"
    assert api["CorsConfiguration"]["AllowOrigins"] == ["https://app.example"]
    (integration,) = apis.get_integrations(ApiId=api["ApiId"])["Items"]
    assert integration["IntegrationType"] == "AWS_PROXY"
    assert integration["IntegrationUri"] == config["FunctionArn"]
    assert integration["PayloadFormatVersion"] == "2.0"
    items = apis.get_routes(ApiId=api["ApiId"])["Items"]
    assert sorted(r["RouteKey"] for r in items) == sorted(PROXY_ROUTES)  # exactly, each once
    target = f"integrations/{integration['IntegrationId']}"
    assert {r["RouteKey"]: r["Target"] for r in items} == dict.fromkeys(PROXY_ROUTES, target)
    (stage,) = apis.get_stages(ApiId=api["ApiId"])["Items"]
    assert stage["StageName"] == "$default" and stage["AutoDeploy"] is True

    (permission,) = json.loads(lam.get_policy(FunctionName=name)["Policy"])["Statement"]
    assert permission["Action"] == "lambda:InvokeFunction"
    assert permission["Principal"] == {"Service": "apigateway.amazonaws.com"}
    # That API only, but every stage, method and path of it (apiId/STAGE/METHOD/PATH).
    source = f"arn:aws:execute-api:{REGION}:{ACCOUNT_ID}:{api['ApiId']}/*/*"
    assert permission["Condition"]["ArnLike"]["AWS:SourceArn"] == source

    assert outputs == {
        "function_arn": config["FunctionArn"], "image_uri": image_uri(name),
        "role_arn": role["Arn"], "api_id": api["ApiId"],
        "invoke_url": api["ApiEndpoint"].rstrip("/"),
    }


def test_deploy_creates_the_stack_and_is_idempotent(moto, name):
    first = run_script(moto, *deploy_args(name))
    assert "created function" in first.stdout and "created HTTP API" in first.stdout
    assert f"Invoke URL: {outputs_of(first)['invoke_url']}" in first.stdout
    assert "curl -sS -X POST" in first.stdout
    assert_stack(moto, name, outputs_of(first))

    second = run_script(moto, *deploy_args(name))
    assert "created" not in second.stdout  # everything found and updated in place
    assert outputs_of(second) == outputs_of(first)
    assert_stack(moto, name, outputs_of(second))


def test_redeploy_updates_configuration(moto, name):
    run_script(moto, *deploy_args(name))
    run_script(moto, "deploy", "--name", name, "--image-uri", image_uri(name) + "-b",
               "--memory", "1024", "--no-emf")
    lam = moto.client("lambda")
    function = lam.get_function(FunctionName=name)
    assert function["Code"]["ImageUri"] == image_uri(name) + "-b"
    assert function["Configuration"]["MemorySize"] == 1024
    assert function["Configuration"]["Environment"]["Variables"] == {"EMF_METRICS": "0"}
    # Reserved concurrency is declarative: not given → removed.
    assert "ReservedConcurrentExecutions" not in lam.get_function_concurrency(FunctionName=name)
    assert "CorsConfiguration" not in only_api(moto.client("apigatewayv2"), name)  # CORS off again


def test_destroy_removes_everything_and_can_rerun(moto, name):
    run_script(moto, *deploy_args(name))
    run_script(moto, "destroy", "--name", name)
    assert_stack_gone(moto, name)
    again = run_script(moto, "destroy", "--name", name)
    assert again.stdout.count("already absent") == 4


def test_destroy_can_keep_the_repository(moto, name):
    run_script(moto, *deploy_args(name))
    run_script(moto, "destroy", "--name", name, "--keep-repository")
    ecr = moto.client("ecr")
    assert ecr.describe_repositories(repositoryNames=[f"{name}-lambda"])["repositories"]
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        moto.client("lambda").get_function(FunctionName=name)


def assert_stack_gone(moto: MotoServer, name: str) -> None:
    with pytest.raises(ClientError, match="NoSuchEntity"):
        moto.client("iam").get_role(RoleName=f"{name}-lambda-role")
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        moto.client("lambda").get_function(FunctionName=name)
    assert apis_named(moto.client("apigatewayv2"), name) == []
    with pytest.raises(ClientError, match="RepositoryNotFoundException"):
        moto.client("ecr").describe_repositories(repositoryNames=[f"{name}-lambda"])


def test_dry_run_writes_nothing(moto, name):
    planned = run_script(moto, *deploy_args(name), "--dry-run")
    steps = [x for x in planned.stdout.splitlines() if x.startswith("[dry-run] would")]
    assert len(steps) == 7
    for words in ("ECR repository", "skip build and push", "IAM role", "function",
                  "HTTP API", "invoke", "curl"):
        assert any(words in step for step in steps), words
    assert "nothing was changed" in planned.stdout
    assert_stack_gone(moto, name)

    run_script(moto, *deploy_args(name))
    destroy_plan = run_script(moto, "destroy", "--name", name, "--dry-run")
    assert destroy_plan.stdout.count("[dry-run] would delete") == 4
    assert_stack(moto, name, outputs_of(run_script(moto, *deploy_args(name))))  # still all there


def test_committed_sam_template_is_the_generated_one():
    """lambda/deploy.py is the one definition; lambda/template.yaml is its `template` output."""
    result = subprocess.run([sys.executable, "lambda/deploy.py", "template"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    committed = (REPO_ROOT / "lambda" / "template.yaml").read_text()
    assert committed == result.stdout, \
        "lambda/template.yaml is stale: python lambda/deploy.py template > lambda/template.yaml"


def test_generated_template_passes_cfn_lint_and_has_the_deploy_resources(tmp_path):
    deploy = load_deploy_module()
    template = tmp_path / "template.yaml"
    template.write_text(deploy.template_text())
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    result = subprocess.run([str(cfn_lint), str(template)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr

    from cfnlint.decode import decode

    document, problems = decode(str(template))
    assert not problems
    resources = document["Resources"]
    # What deploy makes (the ECR repository stays outside: the image exists before the stack).
    assert {name: r["Type"] for name, r in resources.items()} == {
        "ExecutionRole": "AWS::IAM::Role", "HttpApi": "AWS::Serverless::HttpApi",
        "ClassifierFunction": "AWS::Serverless::Function",
        "S3InvokePermission": "AWS::Lambda::Permission", "InputBucket": "AWS::S3::Bucket"}
    function = resources["ClassifierFunction"]["Properties"]
    assert function["PackageType"] == "Image"
    events = list(function["Events"].values())
    routes = [f"{e['Properties']['Method']} {e['Properties']['Path']}" for e in events]
    assert sorted(routes) == sorted(PROXY_ROUTES)  # exactly the proxy routes, each once
    assert all(e["Type"] == "HttpApi" and e["Properties"]["PayloadFormatVersion"] == "2.0"
               for e in events)
    role = resources["ExecutionRole"]["Properties"]
    assert role["ManagedPolicyArns"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/"
                    "AWSLambdaBasicExecutionRole"}]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "lambda.amazonaws.com"}
    (policy,) = role["Policies"]["Fn::If"][1]
    assert policy["PolicyName"] == "s3-input-output"
    assert [(s["Sid"], s["Action"]) for s in policy["PolicyDocument"]["Statement"]] == [
        ("ReadInput", ["s3:GetObject", "s3:GetObjectVersion"]),
        ("WriteResults", ["s3:GetObject", "s3:PutObject"])]
    permission = resources["S3InvokePermission"]["Properties"]
    assert (permission["Principal"], permission["SourceAccount"]) == (
        "s3.amazonaws.com", {"Ref": "AWS::AccountId"})
    (notification,) = resources["InputBucket"]["Properties"]["NotificationConfiguration"][
        "LambdaConfigurations"]
    assert notification["Event"] == "s3:ObjectCreated:*"
    assert set(function["Environment"]["Variables"]) == {
        "EMF_METRICS", "CORS_ALLOW_ORIGINS", "S3_INPUT_URI", "S3_OUTPUT_URI"}


# --- S3 in, S3 out ----------------------------------------------------------------------------

def s3_buckets(moto: MotoServer, name: str) -> tuple[str, str, str]:
    """An input bucket that already notifies a queue of something else (it must be kept), an
    output bucket; returns (input, output, the queue's ARN)."""
    s3, sqs = moto.client("s3"), moto.client("sqs")
    source, results = f"{name}-in", f"{name}-out"
    for bucket in (source, results):
        s3.create_bucket(Bucket=bucket)
    queue = sqs.create_queue(QueueName=f"{name}-audit")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"]
                                         )["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=source, NotificationConfiguration={
        "QueueConfigurations": [{"Id": "audit", "QueueArn": queue_arn,
                                 "Events": ["s3:ObjectRemoved:*"]}]})
    return source, results, queue_arn


def s3_args(source: str, results: str) -> tuple[str, ...]:
    return ("--s3-input", f"s3://{source}/incoming", "--s3-output", f"s3://{results}/results/")


def assert_s3_trigger(moto: MotoServer, name: str, source: str, results: str,
                      queue_arn: str) -> None:
    iam, lam, s3 = moto.client("iam"), moto.client("lambda"), moto.client("s3")
    role = f"{name}-lambda-role"
    assert iam.list_role_policies(RoleName=role)["PolicyNames"] == ["s3-input-output"]
    document = iam.get_role_policy(RoleName=role, PolicyName="s3-input-output")["PolicyDocument"]
    assert document["Statement"] == [  # read the input prefix, write the output prefix: no more
        {"Sid": "ReadInput", "Effect": "Allow",
         "Action": ["s3:GetObject", "s3:GetObjectVersion"],
         "Resource": f"arn:aws:s3:::{source}/incoming/*"},
        {"Sid": "WriteResults", "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"],
         "Resource": f"arn:aws:s3:::{results}/results/*"},
    ]
    config = lam.get_function_configuration(FunctionName=name)
    variables = config["Environment"]["Variables"]
    assert (variables["S3_INPUT_URI"], variables["S3_OUTPUT_URI"]) == (
        f"s3://{source}/incoming/", f"s3://{results}/results/")

    statements = json.loads(lam.get_policy(FunctionName=name)["Policy"])["Statement"]
    (permission,) = [s for s in statements if s["Sid"] == "s3-input"]
    assert permission["Action"] == "lambda:InvokeFunction"
    assert permission["Principal"] == {"Service": "s3.amazonaws.com"}
    assert permission["Condition"]["ArnLike"]["AWS:SourceArn"] == f"arn:aws:s3:::{source}"
    assert permission["Condition"]["StringEquals"]["AWS:SourceAccount"] == ACCOUNT_ID

    notifications = s3.get_bucket_notification_configuration(Bucket=source)
    (ours,) = notifications["LambdaFunctionConfigurations"]
    assert ours["Id"] == f"{name}-s3-input"
    assert ours["LambdaFunctionArn"] == config["FunctionArn"]
    assert ours["Events"] == ["s3:ObjectCreated:*"]
    (rule,) = ours["Filter"]["Key"]["FilterRules"]
    assert (rule["Name"].lower(), rule["Value"]) == ("prefix", "incoming/")
    (audit,) = notifications["QueueConfigurations"]  # the bucket's own, untouched
    assert audit["QueueArn"] == queue_arn and audit["Id"] == "audit"


def assert_no_s3_trigger(moto: MotoServer, name: str, source: str, queue_arn: str) -> None:
    notifications = moto.client("s3").get_bucket_notification_configuration(Bucket=source)
    assert notifications.get("LambdaFunctionConfigurations", []) == []
    assert [q["QueueArn"] for q in notifications["QueueConfigurations"]] == [queue_arn]


def test_deploy_with_s3_trigger_is_idempotent_and_reversible(moto, name):
    source, results, queue_arn = s3_buckets(moto, name)
    first = run_script(moto, *deploy_args(name), *s3_args(source, results))
    assert_s3_trigger(moto, name, source, results, queue_arn)
    assert outputs_of(first)["s3_input"] == f"s3://{source}/incoming/"
    assert "notifies" in first.stdout

    second = run_script(moto, *deploy_args(name), *s3_args(source, results))
    assert "created" not in second.stdout
    assert f"bucket {source} already notifies {name}" in second.stdout
    assert "permission s3-input already allows" in second.stdout
    assert_s3_trigger(moto, name, source, results, queue_arn)

    # Deployed again without --s3-*: the trigger, its permission and its policy go.
    plain = run_script(moto, *deploy_args(name))
    assert_no_s3_trigger(moto, name, source, queue_arn)
    assert_stack(moto, name, outputs_of(plain))  # exactly the HTTP stack, nothing left over

    run_script(moto, *deploy_args(name), *s3_args(source, results))
    run_script(moto, "destroy", "--name", name)
    assert_no_s3_trigger(moto, name, source, queue_arn)
    assert_stack_gone(moto, name)
    again = run_script(moto, "destroy", "--name", name)
    assert "no S3 trigger to remove" in again.stdout


def test_moving_the_input_to_another_bucket_moves_the_trigger(moto, name):
    source, results, queue_arn = s3_buckets(moto, name)
    other, _, other_queue = s3_buckets(moto, f"{name}-b")
    run_script(moto, *deploy_args(name), *s3_args(source, results))
    run_script(moto, *deploy_args(name), *s3_args(other, results))
    assert_no_s3_trigger(moto, name, source, queue_arn)
    assert_s3_trigger(moto, name, other, results, other_queue)


def test_dry_run_with_s3_plans_the_trigger(moto, name):
    planned = run_script(moto, *deploy_args(name), *s3_args("some-in", "some-out"), "--dry-run")
    steps = [x for x in planned.stdout.splitlines() if x.startswith("[dry-run] would")]
    assert len(steps) == 9
    assert any("read s3://some-in/incoming/*, write s3://some-out/results/*" in s for s in steps)
    assert any("s3.amazonaws.com" in s and "some-in" in s for s in steps)
    assert any("s3:ObjectCreated:*" in s for s in steps)


@pytest.mark.parametrize("extra, message", [
    (("--s3-input", "s3://in-bucket/x"), "S3_INPUT_URI is set but S3_OUTPUT_URI is not"),
    (("--s3-input", "in-bucket/x", "--s3-output", "s3://out-bucket/"), "s3://BUCKET/PREFIX"),
    (("--s3-input", "s3://same-bucket/in", "--s3-output", "s3://same-bucket/in/results"),
     "would trigger the function again"),
    (("--s3-input", "s3://absent-bucket-1/in", "--s3-output", "s3://absent-bucket-2/out"),
     "bucket absent-bucket-1 (s3://absent-bucket-1/in/): 404; deploy.py does not create"),
], ids=["half", "not-a-uri", "loop", "no-bucket"])
def test_bad_s3_arguments_are_one_line(moto, name, extra, message):
    result = subprocess.run(
        [sys.executable, "lambda/deploy.py", *deploy_args(name), *extra], cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=300, env={**os.environ, **moto.env()})
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
