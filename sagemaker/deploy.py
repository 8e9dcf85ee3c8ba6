"""Deploy the MHIST classifier to SageMaker with boto3: real-time or serverless, batch, teardown.

    python sagemaker/deploy.py deploy --model-tar model.tar.gz                    # real-time
    python sagemaker/deploy.py deploy --serverless --memory-mb 3072 --max-concurrency 5
    python sagemaker/deploy.py autoscale --min 1 --max 4 --target 200
    python sagemaker/deploy.py deploy --model-tar model.tar.gz --instance-type ml.c7g.large  # arm64
    python sagemaker/deploy.py batch --input s3://BUCKET/batch-input/ --wait
    python sagemaker/deploy.py invoke --image polyp.png
    python sagemaker/deploy.py destroy [--all]
    (any subcommand) --dry-run     print the plan, call nothing

deploy: upload model.tar.gz (python sagemaker/package.py) to S3, build and push the image to
ECR (awsdeploy.aws, shared with lambda/deploy.py) unless --image-uri is given, create or reuse
the execution role, then a new Model and EndpointConfig (both immutable, so each deploy gets
fresh, timestamped names) and create the endpoint or switch an existing one to the new config
with UpdateEndpoint (no downtime); waits for InService. The image is built for the instance
type's architecture (Graviton families such as ml.c7g are arm64, the others x86_64) unless
--platform says otherwise, and a --platform the instance cannot run is refused.
AWS_ENDPOINT_URL points every client elsewhere (moto in the tests).

Errors a user can fix are one line on stderr (awsdeploy.cli): exit status 2 for a wrong
command line, 1 for a wrong environment (credentials, access, the account, the engine).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import mimetypes
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from botocore.exceptions import ClientError, WaiterError

from awsdeploy import aws, cli, cpu_classes
from awsdeploy.cli import DeployError, UsageError
from services.adapters.sagemaker import MANIFEST_FILE
from services.core.files import sha256_file

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ENDPOINT = "mhist"
DEFAULT_REPOSITORY = "mhist-sagemaker"
DEFAULT_ROLE = "mhist-sagemaker-execution"
VARIANT = "AllTraffic"
MODEL_PREFIX = "models"
BATCH_OUTPUT_PREFIX = "batch-output"
TAGS = [{"Key": "project", "Value": "mhist"}]
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
_STAMPED = r"-\d{8}-\d{6}-[0-9a-f]{6}$"  # suffix of the models and configs deploy creates


@dataclass
class Context:
    """What every subcommand needs: the plan printer and lazily built, reused clients."""

    args: argparse.Namespace
    plan: aws.Plan
    _clients: dict = field(default_factory=dict)
    _session: object | None = None
    _account: str | None = None

    @property
    def region(self) -> str:
        return aws.region_name(self.args.region)

    def client(self, service: str):
        if service not in self._clients:
            # One boto3 session for all clients: it loads endpoint data and models once.
            self._session = self._session or aws.session(self.region)
            self._clients[service] = aws.client(service, aws_session=self._session)
        return self._clients[service]

    def account(self) -> str:
        if self.plan.dry_run:
            return "<account-id>"
        if self._account is None:
            self._account = self.client("sts").get_caller_identity()["Account"]
        return self._account

    def bucket(self) -> str:
        return self.args.bucket or f"mhist-sagemaker-{self.account()}-{self.region}"


# --- deploy -------------------------------------------------------------------------------------

def cmd_deploy(ctx: Context) -> None:
    args = ctx.args
    archive = args.model_tar
    if not archive.is_file():
        raise UsageError(f"--model-tar {archive} does not exist: build it with "
                         "`python sagemaker/package.py`")
    args.platform = image_platform(args)
    _check_cpu_class(ctx, archive)
    if not args.image_uri:
        aws.registry_override()  # where the push goes: refuse a bad setting before AWS
    digest = sha256_file(archive)
    bucket = ctx.bucket()
    model_data = f"s3://{bucket}/{MODEL_PREFIX}/{args.endpoint_name}/{digest[:12]}/model.tar.gz"
    if ctx.plan.step(f"upload {archive} to {model_data}"):
        _upload(ctx, archive, model_data)
    image = _image(ctx, digest)
    role_arn = _role(ctx, bucket, image)
    # Model and config names are immutable in SageMaker: a new name per (time, what is
    # deployed), so two deploys within the same second but with other settings never collide.
    what = hashlib.sha256(f"{digest}|{image}|{_capacity_text(args)}|{args.workers}|"
                          f"{args.server_timeout}".encode()).hexdigest()
    name = f"{args.endpoint_name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{what[:6]}"
    if ctx.plan.step(f"create model {name} (image {image}, data {model_data})"):
        _create_model(ctx, name, image, model_data, role_arn)
    if ctx.plan.step(f"create endpoint config {name}: {_capacity_text(args)}"):
        _create_endpoint_config(ctx, name, name)
    _create_or_update_endpoint(ctx, name)


def _check_cpu_class(ctx: Context, archive: Path) -> None:
    """A vnni INT8 file only on instance types whose CPUs have VNNI or the dot product;
    serverless endpoints, like Lambda x86_64, promise neither."""
    args = ctx.args
    try:
        cpu_class = cpu_classes.archive_class(archive, MANIFEST_FILE)
    except (ValueError, OSError) as exc:
        raise UsageError(f"--model-tar {exc}") from None
    if args.serverless:
        misfit = cpu_classes.lambda_misfit("x86_64", cpu_class)
        if misfit:
            raise UsageError(f"--model-tar {archive} holds the vnni INT8 file: serverless "
                             "endpoints do not say which x86 CPU runs them; deploy the portable "
                             "file (export --cpu-class portable) or a real-time instance type "
                             "with VNNI (ml.c6i, ml.c7i, ml.m7i …)")
        return
    misfit = cpu_classes.instance_misfit(args.instance_type, cpu_class)
    if misfit:
        raise UsageError(f"--model-tar {archive} holds the vnni INT8 file, but {misfit}")
    note = cpu_classes.unknown_family(args.instance_type, cpu_class)
    if note:
        ctx.plan.note(note)


def image_platform(args: argparse.Namespace) -> str:
    """--platform, else the real-time instance type's (serverless runs x86_64 images); a
    --platform the instance type cannot run is a UsageError."""
    if args.serverless:
        return args.platform or cli.PLATFORMS["x86_64"]
    if args.platform is None:
        return cli.platform_for(args.instance_type)
    cli.check_platform(args.instance_type, args.platform)
    return args.platform


def _upload(ctx: Context, archive: Path, s3_uri: str) -> None:
    s3 = ctx.client("s3")
    bucket, key = _split_s3(s3_uri)
    if aws.ignore_missing(s3.head_bucket, Bucket=bucket, missing=("404", "NoSuchBucket")) is None:
        location = {} if ctx.region == "us-east-1" else {
            "CreateBucketConfiguration": {"LocationConstraint": ctx.region}}
        s3.create_bucket(Bucket=bucket, **location)
        s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
            "BlockPublicAcls": True, "IgnorePublicAcls": True,
            "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
        ctx.plan.note(f"created bucket {bucket} (public access blocked)")
    s3.upload_file(str(archive), bucket, key)
    ctx.plan.note(f"uploaded {archive.stat().st_size} bytes")


def _image(ctx: Context, digest: str) -> str:
    """--image-uri as given, else build sagemaker/Dockerfile and push it to ECR."""
    if ctx.args.image_uri:
        ctx.plan.step(f"use image {ctx.args.image_uri}")
        return ctx.args.image_uri
    # The image does not hold the model (SageMaker mounts it), and tags are immutable: a tag
    # per deploy, so a code change with the same model never collides with an earlier push.
    tag = ctx.args.tag or f"model-{digest[:12]}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    repository = ctx.args.repository
    uri = f"{ctx.account()}.dkr.ecr.{ctx.region}.amazonaws.com/{repository}:{tag}"
    if ctx.plan.step(f"build sagemaker/Dockerfile for {ctx.args.platform} and push it as {uri}"):
        ecr = ctx.client("ecr")
        repository_uri = aws.ensure_repository(ecr, repository, note=ctx.plan.note)
        uri = aws.build_and_push(ecr, repository_uri, tag, REPO_ROOT / "sagemaker" / "Dockerfile",
                                 platform=ctx.args.platform, note=ctx.plan.note)
    return uri


def _role(ctx: Context, bucket: str, image: str) -> str:
    if ctx.args.role_arn:
        return ctx.args.role_arn
    name = ctx.args.role_name
    if not ctx.plan.step(f"ensure IAM role {name} for sagemaker.amazonaws.com (least privilege)"):
        return f"arn:aws:iam::<account-id>:role/{name}"
    policy = execution_policy(aws.partition(ctx.region), ctx.region, ctx.account(), bucket, image)
    arn = aws.ensure_role(ctx.client("iam"), name, "sagemaker.amazonaws.com", [],
                          inline_policies={"mhist-sagemaker": policy},
                          description="MHIST SageMaker endpoint and batch transform",
                          note=ctx.plan.note)
    return arn


def execution_policy(partition: str, region: str, account: str, bucket: str, image: str) -> dict:
    """What the endpoint and transform jobs need: the model and batch data in one bucket,
    the one ECR repository, their own logs and metrics; nothing else."""
    statements = [
        {"Sid": "ReadModelAndBatchInput", "Effect": "Allow", "Action": ["s3:GetObject"],
         "Resource": [f"arn:{partition}:s3:::{bucket}/*"]},
        {"Sid": "ListBucket", "Effect": "Allow", "Action": ["s3:ListBucket"],
         "Resource": [f"arn:{partition}:s3:::{bucket}"]},
        {"Sid": "WriteBatchOutput", "Effect": "Allow", "Action": ["s3:PutObject"],
         "Resource": [f"arn:{partition}:s3:::{bucket}/{BATCH_OUTPUT_PREFIX}/*"]},
        {"Sid": "Logs", "Effect": "Allow",
         "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents",
                    "logs:DescribeLogStreams"],
         "Resource": [f"arn:{partition}:logs:{region}:{account}:log-group:/aws/sagemaker/*"]},
        {"Sid": "Metrics", "Effect": "Allow", "Action": ["cloudwatch:PutMetricData"],
         "Resource": "*"},
    ]
    ecr = re.match(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/([^:@]+)", image)
    if ecr:
        repo_arn = f"arn:{partition}:ecr:{ecr[2]}:{ecr[1]}:repository/{ecr[3]}"
        statements += [
            {"Sid": "PullImage", "Effect": "Allow", "Resource": [repo_arn],
             "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
                        "ecr:BatchCheckLayerAvailability"]},
            {"Sid": "EcrToken", "Effect": "Allow", "Action": ["ecr:GetAuthorizationToken"],
             "Resource": "*"},
        ]
    return {"Version": "2012-10-17", "Statement": statements}


def _create_model(ctx: Context, name: str, image: str, model_data: str, role_arn: str) -> None:
    environment = {"SAGEMAKER_MODEL_SERVER_TIMEOUT": str(ctx.args.server_timeout)}
    if ctx.args.workers:
        environment["SAGEMAKER_MODEL_SERVER_WORKERS"] = str(ctx.args.workers)
    # A new role can take seconds before SageMaker may assume it.
    aws.retry_on(("ValidationException",), ctx.client("sagemaker").create_model, attempts=5,
                 ModelName=name, ExecutionRoleArn=role_arn, Tags=TAGS,
                 PrimaryContainer={"Image": image, "ModelDataUrl": model_data,
                                   "Environment": environment})


def _capacity_text(args: argparse.Namespace) -> str:
    if args.serverless:
        return f"serverless, {args.memory_mb} MB, max concurrency {args.max_concurrency}"
    return f"real-time, {args.instance_count} × {args.instance_type}"


def _create_endpoint_config(ctx: Context, name: str, model_name: str) -> None:
    args = ctx.args
    variant: dict = {"VariantName": VARIANT, "ModelName": model_name}
    if args.serverless:
        variant["ServerlessConfig"] = {"MemorySizeInMB": args.memory_mb,
                                       "MaxConcurrency": args.max_concurrency}
    else:
        variant.update(InstanceType=args.instance_type, InitialInstanceCount=args.instance_count,
                       InitialVariantWeight=1.0)
    ctx.client("sagemaker").create_endpoint_config(
        EndpointConfigName=name, ProductionVariants=[variant], Tags=TAGS)


def _create_or_update_endpoint(ctx: Context, config_name: str) -> None:
    endpoint = ctx.args.endpoint_name
    sagemaker = None if ctx.plan.dry_run else ctx.client("sagemaker")
    existing = None if sagemaker is None else _describe_endpoint(sagemaker, endpoint)
    if existing is None:
        # A dry run reads nothing from AWS, so it cannot tell a create from an update.
        maybe = " (or update it to this config if it exists)" if ctx.plan.dry_run else ""
        if ctx.plan.step(f"create endpoint {endpoint} with config {config_name}{maybe}"):
            sagemaker.create_endpoint(EndpointName=endpoint, EndpointConfigName=config_name,
                                      Tags=TAGS)
    else:
        if _scaling_targets(ctx, endpoint):
            # An update that changes the instance type fails while the variant is a scalable
            # target; deregistering first is what the SageMaker docs prescribe.
            ctx.plan.step(f"deregister autoscaling of {endpoint} (re-run `autoscale` after)")
            _deregister_scaling(ctx, endpoint)
        ctx.plan.step(f"update endpoint {endpoint}: {existing['EndpointConfigName']} → "
                      f"{config_name}")
        sagemaker.update_endpoint(EndpointName=endpoint, EndpointConfigName=config_name)
    if ctx.args.wait and ctx.plan.step(f"wait for {endpoint} to be InService"):
        _wait(sagemaker.get_waiter("endpoint_in_service"), endpoint, ctx.args.wait_timeout)
        status = sagemaker.describe_endpoint(EndpointName=endpoint)
        ctx.plan.note(f"{endpoint}: {status['EndpointStatus']} with {status['EndpointConfigName']}")


def _describe_endpoint(sagemaker, name: str) -> dict | None:
    try:
        return sagemaker.describe_endpoint(EndpointName=name)
    except ClientError as exc:
        if _sagemaker_missing(exc):
            return None
        raise


def _sagemaker_missing(exc: ClientError) -> bool:
    """SageMaker says "not found" as a ValidationException whose message says so."""
    message = exc.response.get("Error", {}).get("Message", "")
    return aws.error_code(exc) == "ValidationException" and "Could not find" in message


def _poll_delay(real_aws_s: int) -> int:
    """Seconds between status polls: AWS changes state in minutes, a local emulator at once."""
    return 1 if aws.endpoint_url() else real_aws_s


def _wait(waiter, endpoint: str, timeout_s: int) -> None:
    delay = _poll_delay(30)
    try:
        waiter.wait(EndpointName=endpoint,
                    WaiterConfig={"Delay": delay, "MaxAttempts": max(1, timeout_s // delay)})
    except WaiterError as exc:
        raise DeployError(f"{endpoint} did not become InService: {exc} (see the endpoint's "
                          "CloudWatch logs /aws/sagemaker/Endpoints/" + endpoint + ")") from None


# --- autoscale ----------------------------------------------------------------------------------

def cmd_autoscale(ctx: Context) -> None:
    args = ctx.args
    endpoint = args.endpoint_name
    if args.min < 1 or args.max < args.min:
        raise UsageError(f"--min {args.min} / --max {args.max}: need 1 ≤ min ≤ max")
    if not ctx.plan.dry_run:
        config = _endpoint_config(ctx, endpoint)
        if any("ServerlessConfig" in v for v in config["ProductionVariants"]):
            raise DeployError(f"{endpoint} is serverless: it scales by itself (max concurrency); "
                              "instance autoscaling applies to real-time endpoints only")
    resource = f"endpoint/{endpoint}/variant/{VARIANT}"
    scaling = None if ctx.plan.dry_run else ctx.client("application-autoscaling")
    if ctx.plan.step(f"register {resource} as scalable target, {args.min}..{args.max} instances"):
        scaling.register_scalable_target(
            ServiceNamespace="sagemaker", ResourceId=resource,
            ScalableDimension=SCALABLE_DIMENSION, MinCapacity=args.min, MaxCapacity=args.max)
    if ctx.plan.step(f"target tracking: {args.target:g} invocations per instance per minute"):
        scaling.put_scaling_policy(
            PolicyName=f"{endpoint}-invocations-per-instance", ServiceNamespace="sagemaker",
            ResourceId=resource, ScalableDimension=SCALABLE_DIMENSION,
            PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration={
                "TargetValue": float(args.target),
                "PredefinedMetricSpecification": {
                    "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
                # Scale out fast on a burst, in slowly: a new instance takes minutes to start.
                "ScaleOutCooldown": args.scale_out_cooldown,
                "ScaleInCooldown": args.scale_in_cooldown,
            })


def _endpoint_config(ctx: Context, endpoint: str) -> dict:
    sagemaker = ctx.client("sagemaker")
    found = _describe_endpoint(sagemaker, endpoint)
    if found is None:
        raise DeployError(f"no endpoint {endpoint} in {ctx.region}: run `deploy` first")
    return sagemaker.describe_endpoint_config(EndpointConfigName=found["EndpointConfigName"])


def _scaling_targets(ctx: Context, endpoint: str) -> list[dict]:
    scaling = ctx.client("application-autoscaling")
    return scaling.describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[f"endpoint/{endpoint}/variant/{VARIANT}"],
        ScalableDimension=SCALABLE_DIMENSION)["ScalableTargets"]


def _deregister_scaling(ctx: Context, endpoint: str) -> None:
    scaling = ctx.client("application-autoscaling")
    resource = f"endpoint/{endpoint}/variant/{VARIANT}"
    policies = scaling.describe_scaling_policies(
        ServiceNamespace="sagemaker", ResourceId=resource,
        ScalableDimension=SCALABLE_DIMENSION)["ScalingPolicies"]
    for policy in policies:
        scaling.delete_scaling_policy(PolicyName=policy["PolicyName"], ServiceNamespace="sagemaker",
                                      ResourceId=resource, ScalableDimension=SCALABLE_DIMENSION)
    aws.ignore_missing(scaling.deregister_scalable_target, ServiceNamespace="sagemaker",
                       ResourceId=resource, ScalableDimension=SCALABLE_DIMENSION,
                       missing=("ObjectNotFoundException",))
    ctx.plan.note(f"removed {len(policies)} policies and the scalable target {resource}")


# --- batch --------------------------------------------------------------------------------------

def cmd_batch(ctx: Context) -> None:
    args = ctx.args
    for option, uri in (("--input", args.input), ("--output", args.output)):
        if uri is not None:
            _check_prefix(option, uri, args.whole_bucket)
    bucket = None if args.input and args.output else ctx.bucket()
    source = args.input or f"s3://{bucket}/batch-input/"
    output = args.output or f"s3://{bucket}/{BATCH_OUTPUT_PREFIX}/"
    model = args.model_name or ("<the endpoint's current model>" if ctx.plan.dry_run
                                else _current_model(ctx, args.endpoint_name))
    job = args.job_name or f"{args.endpoint_name}-batch-{time.strftime('%Y%m%d-%H%M%S')}"
    if ctx.plan.step(f"transform job {job}: model {model}, every object under {source} as one "
                     f"{args.content_type} record → {output}<key>.out (JSON)"):
        ctx.client("sagemaker").create_transform_job(**transform_job_request(
            job, model, source, output, args.content_type, args.instance_type,
            args.instance_count))
    if args.wait and ctx.plan.step(f"wait for {job} to finish"):
        sagemaker = ctx.client("sagemaker")
        delay = _poll_delay(30)
        sagemaker.get_waiter("transform_job_completed_or_stopped").wait(
            TransformJobName=job,
            WaiterConfig={"Delay": delay, "MaxAttempts": max(1, args.wait_timeout // delay)})
        found = sagemaker.describe_transform_job(TransformJobName=job)
        ctx.plan.note(f"{job}: {found['TransformJobStatus']} {found.get('FailureReason', '')}")
        if found["TransformJobStatus"] != "Completed":
            raise DeployError(f"transform job {job} ended {found['TransformJobStatus']}: "
                              f"{found.get('FailureReason', 'no reason given')}")


def _check_prefix(option: str, uri: str, whole_bucket: bool) -> None:
    """s3://BUCKET/PREFIX/; an empty prefix (the whole bucket) only with --whole-bucket."""
    match = re.match(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?$", uri)
    if not match:
        raise UsageError(f"{option} {uri!r}: expected s3://BUCKET/PREFIX/")
    if not (match[2] or "").strip("/") and not whole_bucket and option == "--input":
        raise UsageError(f"--input {uri} has no prefix: the job would read every object in "
                         f"bucket {match[1]}; give a prefix (s3://{match[1]}/batch-input/), or "
                         "pass --whole-bucket if that is what you want")


def transform_job_request(job: str, model: str, source: str, output: str, content_type: str,
                          instance_type: str, instance_count: int) -> dict:
    """One S3 object = one image = one record (SplitType None, SingleRecord); the container's
    /execution-parameters decides concurrency and payload size, so neither is set here."""
    return {
        "TransformJobName": job,
        "ModelName": model,
        "BatchStrategy": "SingleRecord",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": source}},
            "ContentType": content_type,
            "SplitType": "None",
            "CompressionType": "None",
        },
        "TransformOutput": {"S3OutputPath": output, "Accept": "application/json",
                            "AssembleWith": "None"},
        "TransformResources": {"InstanceType": instance_type, "InstanceCount": instance_count},
        "Tags": TAGS,
    }


def _current_model(ctx: Context, endpoint: str) -> str:
    return _endpoint_config(ctx, endpoint)["ProductionVariants"][0]["ModelName"]


# --- invoke -------------------------------------------------------------------------------------

def cmd_invoke(ctx: Context) -> None:
    args = ctx.args
    if not args.image.is_file():
        raise UsageError(f"--image {args.image}: no such file")
    data = args.image.read_bytes()
    content_type, body = invoke_body(args.image, data, args.as_json, args.content_type)
    if not ctx.plan.step(f"invoke {args.endpoint_name} with {args.image} ({content_type}, "
                         f"{len(body)} bytes)"):
        return
    extra = {"CustomAttributes": args.custom_attributes} if args.custom_attributes else {}
    response = ctx.client("sagemaker-runtime").invoke_endpoint(
        EndpointName=args.endpoint_name, ContentType=content_type, Accept=args.accept,
        Body=body, **extra)
    text = response["Body"].read().decode("utf-8", errors="replace")
    try:
        print(json.dumps(json.loads(text), indent=2))
    except json.JSONDecodeError:
        print(text)


def invoke_body(path: Path, data: bytes, as_json: bool, content_type: str | None
                ) -> tuple[str, bytes]:
    """Raw image bytes with an image Content-Type, or {"image": base64} as application/json."""
    if as_json:
        return "application/json", json.dumps({"image": base64.b64encode(data).decode()}).encode()
    guessed = mimetypes.guess_type(path.name)[0]
    return content_type or (guessed if guessed and guessed.startswith("image/")
                            else "application/x-image"), data


# --- destroy ------------------------------------------------------------------------------------

def cmd_destroy(ctx: Context) -> None:
    endpoint = ctx.args.endpoint_name
    if ctx.plan.step(f"remove autoscaling of {endpoint}") and _scaling_targets(ctx, endpoint):
        _deregister_scaling(ctx, endpoint)
    if ctx.plan.step(f"delete endpoint {endpoint}"):
        _delete_endpoint(ctx, endpoint)
    if ctx.plan.step(f"delete the endpoint configs and models deploy made for {endpoint}"):
        _delete_stamped(ctx, endpoint)
    if not ctx.args.all:
        return
    if ctx.plan.step(f"delete s3://{ctx.bucket()}/{MODEL_PREFIX}/{endpoint}/"):
        _delete_prefix(ctx, ctx.bucket(), f"{MODEL_PREFIX}/{endpoint}/")
    if ctx.plan.step(f"delete ECR repository {ctx.args.repository}"):
        aws.delete_repository(ctx.client("ecr"), ctx.args.repository, note=ctx.plan.note)
    if ctx.plan.step(f"delete IAM role {ctx.args.role_name}"):
        aws.delete_role(ctx.client("iam"), ctx.args.role_name, note=ctx.plan.note)


def _delete_endpoint(ctx: Context, endpoint: str) -> None:
    sagemaker = ctx.client("sagemaker")
    if _describe_endpoint(sagemaker, endpoint) is None:
        ctx.plan.note(f"endpoint {endpoint} was already absent")
        return
    sagemaker.delete_endpoint(EndpointName=endpoint)
    sagemaker.get_waiter("endpoint_deleted").wait(
        EndpointName=endpoint, WaiterConfig={"Delay": _poll_delay(15),
                                             "MaxAttempts": 60})
    ctx.plan.note(f"endpoint {endpoint} deleted")


def _delete_stamped(ctx: Context, endpoint: str) -> None:
    """Only names deploy made for this endpoint (NAME-YYYYmmdd-HHMMSS-sha), never others."""
    sagemaker = ctx.client("sagemaker")
    pattern = re.compile(re.escape(endpoint) + _STAMPED)
    configs = [c["EndpointConfigName"] for page in sagemaker.get_paginator(
        "list_endpoint_configs").paginate(NameContains=endpoint) for c in page["EndpointConfigs"]]
    models = [m["ModelName"] for page in sagemaker.get_paginator("list_models").paginate(
        NameContains=endpoint) for m in page["Models"]]
    for name in filter(pattern.match, configs):
        sagemaker.delete_endpoint_config(EndpointConfigName=name)
    for name in filter(pattern.match, models):
        sagemaker.delete_model(ModelName=name)
    ctx.plan.note(f"deleted {len(list(filter(pattern.match, configs)))} endpoint configs and "
                  f"{len(list(filter(pattern.match, models)))} models")


def _delete_prefix(ctx: Context, bucket: str, prefix: str) -> None:
    s3 = ctx.client("s3")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    for start in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k}
                                                             for k in keys[start:start + 1000]]})
    ctx.plan.note(f"deleted {len(keys)} objects")


def _split_s3(uri: str) -> tuple[str, str]:
    match = re.match(r"^s3://([^/]+)/(.+)$", uri)
    if not match:
        raise DeployError(f"{uri!r} is not an s3://BUCKET/KEY URI")
    return match[1], match[2]


# --- command line -------------------------------------------------------------------------------

def get_args_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    cli.add_region_argument(common)
    common.add_argument("--endpoint-name", default=DEFAULT_ENDPOINT,
                        help="endpoint name, also the prefix of models and configs")
    common.add_argument("--bucket", default=None,
                        help="S3 bucket for models and batch data "
                             "(default: mhist-sagemaker-ACCOUNT-REGION)")
    common.add_argument("--repository", default=DEFAULT_REPOSITORY, help="ECR repository")
    common.add_argument("--role-name", default=DEFAULT_ROLE,
                        help="execution role to create or reuse")
    common.add_argument("--dry-run", action="store_true", help="print the plan, call nothing")

    parser = cli.parser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=text,
                              formatter_class=cli.HelpFormatter)

    _add_deploy(add("deploy", "create or update the endpoint"))
    _add_autoscale(add("autoscale", "target tracking on invocations per instance"))
    _add_batch(add("batch", "batch transform over S3 images"))
    _add_invoke(add("invoke", "send one image, print the JSON"))
    destroy = add("destroy", "delete what deploy created")
    destroy.add_argument("--all", action="store_true",
                         help="also the uploaded models, the ECR repository and the IAM role")
    return parser


def _add_deploy(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-tar", type=Path, default=Path("model.tar.gz"),
                        help="archive from sagemaker/package.py")
    parser.add_argument("--image-uri", default=None,
                        help="use this image instead of building and pushing one (default: "
                             "build sagemaker/Dockerfile and push it to --repository)")
    parser.add_argument("--tag", default=None,
                        help="image tag; tags are immutable, so one that holds another "
                             "image is refused (default: model-<sha256[:12]>-<UTC timestamp>)")
    parser.add_argument("--platform", default=None, choices=sorted(cli.PLATFORMS.values()),
                        help="image platform; must match the instance type (default: the "
                             "instance type's: linux/arm64 for Graviton families such as "
                             "ml.c7g, else linux/amd64; serverless: linux/amd64)")
    parser.add_argument("--role-arn", default=None,
                        help="use this execution role as is (default: create or reuse "
                             "--role-name)")
    parser.add_argument("--serverless", action="store_true",
                        help="serverless endpoint instead of instances")
    parser.add_argument("--memory-mb", type=int, default=2048, choices=(1024, 2048, 3072, 4096,
                                                                        5120, 6144),
                        help="serverless memory")
    parser.add_argument("--max-concurrency", type=int, default=5,
                        help="serverless max concurrent invocations")
    parser.add_argument("--instance-type", default="ml.m5.large",
                        help="real-time instance type; a vnni INT8 file needs one with VNNI "
                             "or Graviton (ml.c6i, ml.c7i, ml.m7i, ml.c7a, ml.c7g …), the "
                             "portable file fits all (docs/aws.md)")
    parser.add_argument("--instance-count", type=int, default=1,
                        help="real-time initial instance count")
    parser.add_argument("--workers", type=int, default=None,
                        help="SAGEMAKER_MODEL_SERVER_WORKERS (default: one per vCPU)")
    parser.add_argument("--server-timeout", type=int, default=60,
                        help="SAGEMAKER_MODEL_SERVER_TIMEOUT seconds")
    parser.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                        help="wait for InService")
    parser.add_argument("--wait-timeout", type=int, default=1800,
                        help="seconds to wait for InService")


def _add_autoscale(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min", type=int, default=1, help="minimum instances")
    parser.add_argument("--max", type=int, default=4, help="maximum instances")
    parser.add_argument("--target", type=float, default=200.0,
                        help="invocations per instance per minute to hold")
    parser.add_argument("--scale-out-cooldown", type=int, default=60,
                        help="seconds between scale-outs")
    parser.add_argument("--scale-in-cooldown", type=int, default=300,
                        help="seconds between scale-ins")


def _add_batch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default=None,
                        help="S3 prefix of images, s3://BUCKET/PREFIX/ "
                             "(default: s3://BUCKET/batch-input/)")
    parser.add_argument("--output", default=None,
                        help=f"S3 prefix for results (default: s3://BUCKET/{BATCH_OUTPUT_PREFIX}/)")
    parser.add_argument("--model-name", default=None,
                        help="SageMaker model (default: the endpoint's current model)")
    parser.add_argument("--job-name", default=None,
                        help="transform job name (default: ENDPOINT-batch-TIMESTAMP)")
    parser.add_argument("--content-type", default="application/x-image",
                        help="Content-Type of every record")
    parser.add_argument("--instance-type", default="ml.m5.large",
                        help="transform instance type")
    parser.add_argument("--instance-count", type=int, default=1, help="instances")
    parser.add_argument("--whole-bucket", action="store_true",
                        help="allow an --input without a prefix: every object in the bucket")
    parser.add_argument("--wait", action=argparse.BooleanOptionalAction, default=False,
                        help="wait for the job to finish")
    parser.add_argument("--wait-timeout", type=int, default=3600,
                        help="seconds to wait")


def _add_invoke(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", type=Path, required=True, help="image file to classify")
    parser.add_argument("--content-type", default=None,
                        help="default: from the file name (image/png, image/jpeg, ...)")
    parser.add_argument("--as-json", action="store_true",
                        help='send {"image": "<base64>"} as application/json instead of raw bytes')
    parser.add_argument("--accept", default="application/json", help="Accept header")
    parser.add_argument("--custom-attributes", default=None,
                        help="X-Amzn-SageMaker-Custom-Attributes; the container reads only "
                        "explain=1 (adds the class activation map) and ignores the rest "
                        "(default: none)")


COMMANDS = {"deploy": cmd_deploy, "autoscale": cmd_autoscale, "batch": cmd_batch,
            "invoke": cmd_invoke, "destroy": cmd_destroy}


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    # invoke's stdout is the endpoint's JSON alone (pipe it to jq); the plan goes to stderr.
    plan = aws.Plan(dry_run=args.dry_run,
                    out=sys.stderr if args.command == "invoke" else sys.stdout)

    def command() -> None:
        COMMANDS[args.command](Context(args, plan))
        print(plan.summary(), file=plan.out)

    return cli.run(command, prefix=f"deploy.py {args.command}: error: ",
                   handled=(FileNotFoundError, *aws.PUSH_ERRORS))


if __name__ == "__main__":
    sys.exit(main())
