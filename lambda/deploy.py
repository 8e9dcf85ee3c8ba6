"""Deploy the Lambda target with boto3: ECR → image → IAM role → function → HTTP API.

    python lambda/deploy.py deploy --model artifacts/model.int8.onnx [--architecture arm64] ...
    python lambda/deploy.py deploy --image-uri ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO:TAG
    python lambda/deploy.py deploy ... --s3-input s3://BUCKET/PREFIX --s3-output s3://BUCKET/PREFIX
    python lambda/deploy.py destroy [--keep-repository]
    python lambda/deploy.py template > lambda/template.yaml     # the same stack for AWS SAM
    add --dry-run to print the plan without calling AWS.

With --s3-input/--s3-output the function also classifies every object created under the input
prefix (services/adapters/s3_events.py): a bucket notification, lambda:InvokeFunction for
s3.amazonaws.com from that bucket and account only, and an inline role policy that reads the
input prefix and writes the output prefix, nothing more. The buckets are yours: they must exist.

`deploy` is idempotent (create or update every resource); `destroy` removes what `deploy`
made and is re-runnable. AWS_ENDPOINT_URL points every client elsewhere (moto in server mode
in the tests).

This file is the one definition of the stack: `template` writes it as an AWS SAM template
(lambda/template.yaml is that output, committed for `sam build` / `sam deploy`; never edit it
by hand) from the same constants and policy functions `deploy` uses.

Errors a user can fix are one line on stderr (awsdeploy.cli): exit status 2 for a wrong
command line, 1 for a wrong environment (credentials, access, the account, the engine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from botocore.exceptions import ClientError

from awsdeploy import aws, cli, cpu_classes
from awsdeploy.aws import Plan
from awsdeploy.cli import PLATFORMS, DeployError, UsageError
from services.web.settings import S3Location, Settings, SettingsError, s3_location

REPO_ROOT = Path(__file__).resolve().parents[1]

BASIC_EXECUTION_POLICY = "service-role/AWSLambdaBasicExecutionRole"
# Every path and method goes to the Flask app, so its routes (and its JSON 404/405) are the
# API's: `ANY /{proxy+}` does not match the bare `/`, hence the second route for the root page.
ROUTES = ("ANY /{proxy+}", "ANY /")
HTTP_API_MAX_TIMEOUT_MS = 30_000  # API Gateway HTTP API integration ceiling
S3_POLICY = "s3-input-output"  # the role's inline policy for the S3 flow
S3_STATEMENT = "s3-input"  # the function policy statement letting the input bucket invoke it
PRINCIPAL = "lambda.amazonaws.com"
FUNCTION_DESCRIPTION = "MHIST polyp classifier (ONNX Runtime) behind an HTTP API"
PAYLOAD_FORMAT_VERSION = "2.0"
DEFAULT_MODEL = "artifacts/model.int8.onnx"
DEFAULT_ARCHITECTURE = "x86_64"
DEFAULT_MEMORY_MB = 2048
DEFAULT_TIMEOUT_S = 30
MEMORY_MB = (128, 10_240)  # what Lambda allows
TIMEOUT_S = (1, 900)


@dataclass(frozen=True)
class Names:
    function: str
    repository: str
    role: str
    api: str

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Names:
        return cls(
            function=args.name,
            repository=args.repository or f"{args.name}-lambda",
            role=args.role_name or f"{args.name}-lambda-role",
            api=args.api_name or f"{args.name}-http-api",
        )


# --- deploy -----------------------------------------------------------------------------------

def deploy(args: argparse.Namespace, plan: Plan) -> dict | None:
    names = Names.from_args(args)
    region = aws.region_name(args.region)
    clients = None if plan.dry_run else _clients(region)
    repository_uri = f"<account>.dkr.ecr.{region}.amazonaws.com/{names.repository}"

    if plan.step(f"ensure ECR repository {repository_uri} (scan on push, lifecycle keeps "
                 f"{args.keep_images} images)"):
        repository_uri = aws.ensure_repository(clients["ecr"], names.repository,
                                               args.keep_images, plan.note)
    image_uri = args.image_uri or f"{repository_uri}:{args.tag}"
    if args.image_uri:
        plan.step(f"skip build and push: use the given image {image_uri}")
    elif plan.step(f"build lambda/Dockerfile for {PLATFORMS[args.architecture]} with MODEL_FILE="
                   f"{args.model} and push {image_uri}"):
        image_uri = aws.build_and_push(
            clients["ecr"], repository_uri, args.tag, REPO_ROOT / "lambda" / "Dockerfile",
            build_args={"MODEL_FILE": args.model}, platform=PLATFORMS[args.architecture],
            note=plan.note)

    s3 = s3_locations(args)
    role_arn = f"arn:aws:iam::<account>:role/{names.role}"
    if plan.step(f"ensure IAM role {names.role}: trusted by {PRINCIPAL}, only "
                 f"{BASIC_EXECUTION_POLICY} attached" + (
                     f"; inline policy {S3_POLICY}: read {s3[0]}*, write {s3[1]}*" if s3
                     else "")):
        _check_buckets(clients["s3"], s3)
        role_arn = aws.ensure_role(
            clients["iam"], names.role, PRINCIPAL,
            [aws.managed_policy_arn(BASIC_EXECUTION_POLICY, region)],
            inline_policies={S3_POLICY: s3_policy(*s3, aws.partition(region))} if s3 else None,
            description=f"execution role of the {names.function} Lambda function",
            note=plan.note)
        if not s3 and aws.ignore_missing(clients["iam"].delete_role_policy, RoleName=names.role,
                                         PolicyName=S3_POLICY) is not None:
            plan.note(f"deleted inline policy {S3_POLICY} (no --s3-input any more)")

    function_arn = f"arn:aws:lambda:{region}:<account>:function:{names.function}"
    if plan.step(f"create or update function {names.function} from {image_uri} "
                 f"({args.architecture}, {args.memory} MB, {args.timeout} s, "
                 f"reserved concurrency {args.reserved_concurrency or 'none'}); wait until active"):
        previous = s3_input_of(clients["lambda"], names.function)
        function_arn = ensure_function(clients["lambda"], names.function, image_uri, role_arn,
                                       args, plan)
        if previous and (not s3 or previous.bucket != s3[0].bucket):
            remove_s3_trigger(clients, names.function, previous, plan)
    if s3:
        source = s3[0]
        if plan.step(f"allow s3.amazonaws.com to invoke {names.function} from bucket "
                     f"{source.bucket} of this account only"):
            ensure_s3_permission(clients["lambda"], names.function, function_arn, source, plan)
        if plan.step(f"notify {names.function} of every s3:ObjectCreated:* under {source} "
                     "(bucket notification; the bucket's other notifications are kept)"):
            ensure_s3_notification(clients["s3"], names.function, function_arn, source, plan)

    if not plan.step(f"ensure HTTP API {names.api}: AWS_PROXY integration (payload 2.0), routes "
                     f"{', '.join(ROUTES)}, $default stage with auto-deploy"):
        plan.step(f"allow apigateway.amazonaws.com to invoke {names.function} from that API only "
                  "(every stage, method and path)")
        plan.step("print the invoke URL and a curl example")
        return None
    api = ensure_http_api(clients["apigatewayv2"], names.api, function_arn, args, plan)

    plan.step(f"allow apigateway.amazonaws.com to invoke {names.function} from API "
              f"{api['ApiId']} only (every stage, method and path)")
    source_arn = invoke_source_arn(region, function_arn.split(":")[4], api["ApiId"])
    ensure_invoke_permission(clients["lambda"], names.function, api["ApiId"], source_arn, plan)

    outputs = {"function_arn": function_arn, "image_uri": image_uri, "role_arn": role_arn,
               "api_id": api["ApiId"], "invoke_url": api["ApiEndpoint"].rstrip("/")}
    if s3:
        outputs.update(s3_input=str(s3[0]), s3_output=str(s3[1]))
    plan.step("print the invoke URL and a curl example")
    print(f"\nInvoke URL: {outputs['invoke_url']} (every route of the Flask app)\n"
          f"  curl -sS {outputs['invoke_url']}/health\n"
          f"  curl -sS -X POST -H 'Content-Type: image/png' --data-binary @patch.png "
          f"{outputs['invoke_url']}/predict")
    print(json.dumps(outputs))
    return outputs


def invoke_source_arn(region: str, account: str, api_id: str) -> str:
    """execute-api ARN of every stage, method and path of one API: apiId/STAGE/METHOD/PATH."""
    return f"arn:{aws.partition(region)}:execute-api:{region}:{account}:{api_id}/*/*"


def _clients(region: str) -> dict:
    session = aws.session(region)
    return {name: aws.client(name, session)
            for name in ("ecr", "iam", "lambda", "apigatewayv2", "s3")}


def ensure_function(lam, name: str, image_uri: str, role_arn: str, args: argparse.Namespace,
                    plan: Plan) -> str:
    """Create the image function, or update its code and configuration; waits until active."""
    config = {
        "Role": role_arn,
        "MemorySize": args.memory,
        "Timeout": args.timeout,
        "Environment": {"Variables": _environment(args)},
        "Description": FUNCTION_DESCRIPTION,
    }
    found = aws.ignore_missing(lam.get_function, FunctionName=name)
    if found is None:
        # A role created seconds ago is not yet assumable by Lambda: retry on that error.
        arn = aws.retry_on(("InvalidParameterValueException",), lam.create_function,
                           FunctionName=name, PackageType="Image", Code={"ImageUri": image_uri},
                           Architectures=[args.architecture], Publish=False, **config
                           )["FunctionArn"]
        plan.note(f"created function {name}")
    else:
        arn = found["Configuration"]["FunctionArn"]
        lam.update_function_code(FunctionName=name, ImageUri=image_uri,
                                 Architectures=[args.architecture])
        _wait(lam, "function_updated_v2", name)
        aws.retry_on(("InvalidParameterValueException", "ResourceConflictException"),
                     lam.update_function_configuration, FunctionName=name, **config)
        plan.note(f"updated function {name} (image and configuration)")
    _wait(lam, "function_active_v2", name)
    if args.reserved_concurrency is not None:
        lam.put_function_concurrency(FunctionName=name,
                                     ReservedConcurrentExecutions=args.reserved_concurrency)
        plan.note(f"reserved concurrency {args.reserved_concurrency}")
    else:
        aws.ignore_missing(lam.delete_function_concurrency, FunctionName=name)
    plan.note(f"function {name} is active")
    return arn


def _environment(args: argparse.Namespace) -> dict[str, str]:
    variables = {"EMF_METRICS": "1" if args.emf else "0"}
    if args.cors_origins:
        variables["CORS_ALLOW_ORIGINS"] = args.cors_origins
    s3 = s3_locations(args)
    if s3:  # the normalised form (PREFIX/), as the function's Settings read it
        variables.update(S3_INPUT_URI=str(s3[0]), S3_OUTPUT_URI=str(s3[1]))
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--env {item!r}: expected KEY=VALUE")
        variables[key] = value
    return variables


def _wait(lam, waiter: str, name: str) -> None:
    lam.get_waiter(waiter).wait(FunctionName=name, WaiterConfig={"Delay": 2, "MaxAttempts": 150})


def ensure_http_api(api_client, name: str, function_arn: str, args: argparse.Namespace,
                    plan: Plan) -> dict:
    """HTTP API → one AWS_PROXY integration (payload 2.0) → ROUTES → $default stage."""
    api = _find_api(api_client, name)
    cors = _cors_configuration(args.cors_origins)
    if api is None:
        api = api_client.create_api(Name=name, ProtocolType="HTTP", **cors)
        plan.note(f"created HTTP API {name} ({api['ApiId']})")
    else:
        if cors:
            api_client.update_api(ApiId=api["ApiId"], **cors)
        elif api.get("CorsConfiguration"):
            api_client.delete_cors_configuration(ApiId=api["ApiId"])  # declarative: CORS off
        plan.note(f"HTTP API {name} exists ({api['ApiId']})")
    api_id = api["ApiId"]
    integration_id = _ensure_integration(api_client, api_id, function_arn, args.timeout)
    _ensure_routes(api_client, api_id, integration_id, plan)
    stages = {s["StageName"]: s for s in _items(api_client.get_stages, ApiId=api_id)}
    if "$default" in stages:
        # Only when someone turned auto-deploy off (moto also lacks UpdateStage).
        if not stages["$default"].get("AutoDeploy"):
            api_client.update_stage(ApiId=api_id, StageName="$default", AutoDeploy=True)
    else:
        api_client.create_stage(ApiId=api_id, StageName="$default", AutoDeploy=True)
    plan.note("stage $default, auto-deploy on")
    return api


def _ensure_routes(api_client, api_id: str, integration_id: str, plan: Plan) -> None:
    """Each of ROUTES, targeting the integration."""
    target = f"integrations/{integration_id}"
    found = {r["RouteKey"]: r for r in _items(api_client.get_routes, ApiId=api_id)}
    for key in ROUTES:
        route = found.get(key)
        if route is None:
            api_client.create_route(ApiId=api_id, RouteKey=key, Target=target)
            plan.note(f"created route {key} → {target}")
            continue
        if route.get("Target") != target:
            api_client.update_route(ApiId=api_id, RouteId=route["RouteId"], Target=target)
        plan.note(f"route {key} → {target}")


def _cors_configuration(origins: str | None) -> dict:
    """API-level CORS (API Gateway answers preflights itself; the handler's env covers URLs/ALB)."""
    if not origins:
        return {}
    return {"CorsConfiguration": cors_settings(
        [o.strip() for o in origins.split(",") if o.strip()])}


def cors_settings(allow_origins: list[str] | dict) -> dict:
    """The API's CorsConfiguration (origins: a list, or a template's Ref)."""
    return {"AllowOrigins": allow_origins, "AllowMethods": ["GET", "POST", "OPTIONS"],
            "AllowHeaders": ["content-type", "authorization", "x-request-id"],
            "ExposeHeaders": ["x-request-id"], "MaxAge": 600}


def _ensure_integration(api_client, api_id: str, function_arn: str, timeout_s: int) -> str:
    settings = {
        "IntegrationType": "AWS_PROXY",
        "IntegrationUri": function_arn,
        "IntegrationMethod": "POST",
        "PayloadFormatVersion": PAYLOAD_FORMAT_VERSION,
        "TimeoutInMillis": min(timeout_s * 1000, HTTP_API_MAX_TIMEOUT_MS),
    }
    for integration in _items(api_client.get_integrations, ApiId=api_id):
        if integration.get("IntegrationUri") == function_arn:
            api_client.update_integration(ApiId=api_id,
                                          IntegrationId=integration["IntegrationId"], **settings)
            return integration["IntegrationId"]
    return api_client.create_integration(ApiId=api_id, **settings)["IntegrationId"]


def _find_api(api_client, name: str) -> dict | None:
    matches = [a for a in _items(api_client.get_apis) if a["Name"] == name]
    if len(matches) > 1:
        raise DeployError(f"{len(matches)} HTTP APIs are named {name}; delete the extras or pass "
                         "--api-name")
    return matches[0] if matches else None


def _items(call, **kwargs) -> list[dict]:
    """All items of an apigatewayv2 list call (NextToken paging; no paginators there)."""
    items, token = [], None
    while True:
        page = call(**kwargs, **({"NextToken": token} if token else {}))
        items += page.get("Items", [])
        token = page.get("NextToken")
        if not token:
            return items


def ensure_invoke_permission(lam, function: str, api_id: str, source_arn: str,
                             plan: Plan) -> None:
    """lambda:InvokeFunction for apigateway.amazonaws.com from this API only (all routes)."""
    ensure_permission(lam, function, f"apigateway-{api_id}", "apigateway.amazonaws.com",
                      source_arn, plan)


def ensure_permission(lam, function: str, statement_id: str, principal: str, source_arn: str,
                      plan: Plan, account: str | None = None) -> None:
    """lambda:InvokeFunction for `principal` from `source_arn` (and `account`) only; the
    statement of that id is replaced when its conditions differ."""
    policy = aws.ignore_missing(lam.get_policy, FunctionName=function)
    statements = json.loads(policy["Policy"])["Statement"] if policy else []
    current = next((s for s in statements if s.get("Sid") == statement_id), None)
    condition = (current or {}).get("Condition", {})
    if (current is not None and condition.get("ArnLike", {}).get("AWS:SourceArn") == source_arn
            and condition.get("StringEquals", {}).get("AWS:SourceAccount") == account):
        plan.note(f"permission {statement_id} already allows {source_arn}")
        return
    if current is not None:
        lam.remove_permission(FunctionName=function, StatementId=statement_id)
    lam.add_permission(FunctionName=function, StatementId=statement_id,
                       Action="lambda:InvokeFunction", Principal=principal,
                       SourceArn=source_arn, **({"SourceAccount": account} if account else {}))
    plan.note(f"permission {statement_id}: InvokeFunction from {source_arn}"
              + (f" (account {account})" if account else ""))


# --- S3 in, S3 out -----------------------------------------------------------------------------

def s3_locations(args: argparse.Namespace) -> tuple[S3Location, S3Location] | None:
    """(input, output) from --s3-input/--s3-output, checked by the function's own Settings
    (both or neither, s3://BUCKET/PREFIX, results never under the input); None without them."""
    given = {"S3_INPUT_URI": args.s3_input, "S3_OUTPUT_URI": args.s3_output}
    settings = Settings.from_env({}, {k: v for k, v in given.items() if v is not None})
    if settings.s3_input is None or settings.s3_output is None:
        return None
    return settings.s3_input, settings.s3_output


def s3_policy(source: S3Location, results: S3Location, partition: str) -> dict:
    """Read the input prefix, read and write the output prefix (the HEAD that makes a
    redelivered event cheap is a GetObject). No s3:ListBucket: without it S3 answers a HEAD of
    a missing result with 403, which the flow takes as "no result yet"."""
    return s3_policy_document(source.arn(partition), results.arn(partition))


def s3_policy_document(read: str | dict, write: str | dict) -> dict:
    """s3_policy for resource ARNs (strings, or a template's Fn::Sub)."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "ReadInput", "Effect": "Allow",
         "Action": ["s3:GetObject", "s3:GetObjectVersion"], "Resource": read},
        {"Sid": "WriteResults", "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"],
         "Resource": write},
    ]}


def _check_buckets(s3, locations: tuple[S3Location, S3Location] | None) -> None:
    for location in locations or ():
        try:
            s3.head_bucket(Bucket=location.bucket)
        except ClientError as exc:
            if aws.error_code(exc) not in ("404", "NoSuchBucket", "403"):
                raise
            raise DeployError(f"bucket {location.bucket} ({location}): "
                             f"{aws.error_code(exc) or 'no access'}; deploy.py does not create "
                             "data buckets: create it, or fix --s3-input/--s3-output") from None


def s3_input_of(lam, function: str) -> S3Location | None:
    """The S3_INPUT_URI the deployed function has (None: no function, or no S3 flow)."""
    found = aws.ignore_missing(lam.get_function_configuration, FunctionName=function)
    raw = ((found or {}).get("Environment") or {}).get("Variables", {}).get("S3_INPUT_URI")
    try:
        return s3_location(raw) if raw else None
    except SettingsError:
        return None


def _notification_id(function: str) -> str:
    return f"{function}-s3-input"


def ensure_s3_permission(lam, function: str, function_arn: str, source: S3Location,
                         plan: Plan) -> None:
    """lambda:InvokeFunction for s3.amazonaws.com from this bucket in this account only
    (SourceAccount: a bucket name can later belong to someone else)."""
    partition, account = function_arn.split(":")[1], function_arn.split(":")[4]
    ensure_permission(lam, function, S3_STATEMENT, "s3.amazonaws.com",
                      f"arn:{partition}:s3:::{source.bucket}", plan, account=account)


def _canonical(configuration: dict) -> dict:
    """A notification as ensure_s3_notification writes it (S3 answers 'Prefix' for 'prefix')."""
    rules = configuration.get("Filter", {}).get("Key", {}).get("FilterRules", [])
    if not rules:
        return configuration
    lowered = [{"Name": r["Name"].lower(), "Value": r["Value"]} for r in rules]
    return {**configuration, "Filter": {"Key": {"FilterRules": lowered}}}


def _notifications(s3, bucket: str) -> dict:
    """The bucket's notification configuration, in the form put_... takes back."""
    current = s3.get_bucket_notification_configuration(Bucket=bucket)
    return {key: current[key] for key in ("TopicConfigurations", "QueueConfigurations",
                                          "LambdaFunctionConfigurations",
                                          "EventBridgeConfiguration") if key in current}


def ensure_s3_notification(s3, function: str, function_arn: str, source: S3Location,
                           plan: Plan) -> None:
    """Our LambdaFunctionConfiguration (Id NAME-s3-input) on the input bucket, exactly once;
    every other configuration of the bucket is kept as it is."""
    ours = {"Id": _notification_id(function), "LambdaFunctionArn": function_arn,
            "Events": ["s3:ObjectCreated:*"]}
    if source.prefix:
        ours["Filter"] = {"Key": {"FilterRules": [{"Name": "prefix", "Value": source.prefix}]}}
    config = _notifications(s3, source.bucket)
    others = [c for c in config.get("LambdaFunctionConfigurations", [])
              if c.get("Id") != ours["Id"]]
    if [*others, ours] == [_canonical(c) for c in config.get("LambdaFunctionConfigurations", [])]:
        plan.note(f"bucket {source.bucket} already notifies {function}")
        return
    config["LambdaFunctionConfigurations"] = [*others, ours]
    try:
        s3.put_bucket_notification_configuration(Bucket=source.bucket,
                                                 NotificationConfiguration=config)
    except ClientError as exc:  # e.g. overlapping prefixes with another notification
        raise DeployError(f"cannot set the notification on bucket {source.bucket}: "
                         f"{aws.error_code(exc)}: {exc.response['Error'].get('Message')}"
                         ) from None
    plan.note(f"bucket {source.bucket} notifies {function} of s3:ObjectCreated:* under "
              f"'{source.prefix}'")


def remove_s3_trigger(clients: dict, function: str, source: S3Location, plan: Plan) -> None:
    """Undo ensure_s3_notification and ensure_s3_permission (the inline policy goes with the
    role, or is deleted by the role step)."""
    s3 = clients["s3"]
    try:
        config = _notifications(s3, source.bucket)
    except ClientError as exc:
        plan.note(f"bucket {source.bucket}: {aws.error_code(exc)}; no notification to remove")
        config = None
    if config is not None:
        kept = [c for c in config.get("LambdaFunctionConfigurations", [])
                if c.get("Id") != _notification_id(function)]
        if kept != config.get("LambdaFunctionConfigurations", []):
            config["LambdaFunctionConfigurations"] = kept
            s3.put_bucket_notification_configuration(Bucket=source.bucket,
                                                     NotificationConfiguration=config)
            plan.note(f"bucket {source.bucket} no longer notifies {function}")
    if aws.ignore_missing(clients["lambda"].remove_permission, FunctionName=function,
                          StatementId=S3_STATEMENT) is not None:
        plan.note(f"permission {S3_STATEMENT} removed")


# --- destroy ----------------------------------------------------------------------------------

def destroy(args: argparse.Namespace, plan: Plan) -> None:
    names = Names.from_args(args)
    clients = None if plan.dry_run else _clients(aws.region_name(args.region))
    if plan.step(f"delete HTTP API {names.api} (its routes, integration and stage)"):
        api = _find_api(clients["apigatewayv2"], names.api)
        if api is None:
            plan.note(f"HTTP API {names.api} was already absent")
        else:
            clients["apigatewayv2"].delete_api(ApiId=api["ApiId"])
            plan.note(f"HTTP API {names.api} ({api['ApiId']}) deleted")
    if plan.step(f"remove the S3 trigger of {names.function}, if it has one (the input "
                 "bucket's notification for it)"):
        source = s3_input_of(clients["lambda"], names.function)
        if source is None:
            plan.note("no S3 trigger to remove")
        else:
            remove_s3_trigger(clients, names.function, source, plan)
    if plan.step(f"delete function {names.function} (and its resource policy)"):
        gone = aws.ignore_missing(clients["lambda"].delete_function,
                                  FunctionName=names.function) is None
        plan.note(f"function {names.function} " + ("was already absent" if gone else "deleted"))
    if plan.step(f"delete IAM role {names.role}"):
        aws.delete_role(clients["iam"], names.role, plan.note)
    if args.keep_repository:
        plan.step(f"keep ECR repository {names.repository} (--keep-repository)")
    elif plan.step(f"delete ECR repository {names.repository} and its images"):
        aws.delete_repository(clients["ecr"], names.repository, plan.note)


# --- the same stack as an AWS SAM template ------------------------------------------------------

TEMPLATE_HEADER = """\
# GENERATED by `python lambda/deploy.py template > lambda/template.yaml`: do not edit.
# lambda/deploy.py is the one definition of this stack; change it there and regenerate.
"""


def sam_template() -> dict:
    """The stack `deploy` makes, for `sam build` + `sam deploy`, from deploy's own constants.

    The ECR repository stays outside (the image is pushed before the function exists). S3:
    CloudFormation adds a notification only to a bucket it creates, so with S3InputBucket set
    this stack CREATES the input bucket (deploy.py --s3-input takes an existing one).
    """
    def sub(text: str) -> dict:
        return {"Fn::Sub": text}

    def ref(name: str) -> dict:
        return {"Ref": name}

    def if_(condition: str, then, otherwise) -> dict:
        return {"Fn::If": [condition, then, otherwise]}

    no_value = ref("AWS::NoValue")
    results_bucket = if_("ResultsInInputBucket", ref("S3InputBucket"), ref("S3OutputBucket"))
    bucket_pattern = "^$|^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
    parameters = {
        "ImageUri": {"Type": "String",
                     "Description": "ECR image URI (ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO:TAG)"
                                    "; sam build sets it."},
        "Architecture": {"Type": "String", "AllowedValues": sorted(PLATFORMS),
                         "Default": DEFAULT_ARCHITECTURE,
                         "Description": "Must match the platform the image was built for."},
        "MemorySize": {"Type": "Number", "Default": DEFAULT_MEMORY_MB, "MinValue": MEMORY_MB[0],
                       "MaxValue": MEMORY_MB[1],
                       "Description": "MB; CPU share grows with memory (1769 MB = one vCPU)."},
        "Timeout": {"Type": "Number", "Default": DEFAULT_TIMEOUT_S, "MinValue": TIMEOUT_S[0],
                    "MaxValue": TIMEOUT_S[1],
                    "Description": "Seconds; an HTTP API integration waits at most "
                                   f"{HTTP_API_MAX_TIMEOUT_MS // 1000} s."},
        "ReservedConcurrency": {"Type": "Number", "Default": -1, "MinValue": -1,
                                "Description": "Reserved (and maximum) concurrent executions; "
                                               "-1 leaves it unreserved."},
        "CorsOrigins": {"Type": "CommaDelimitedList", "Default": "",
                        "Description": 'Allowed browser origins ("*" for any); empty disables '
                                       "CORS."},
        "EmfMetrics": {"Type": "String", "AllowedValues": ["0", "1"], "Default": "1",
                       "Description": "CloudWatch embedded-metric-format latency and inference "
                                      "time in the logs."},
        "S3InputBucket": {"Type": "String", "Default": "", "AllowedPattern": bucket_pattern,
                          "Description": "Name of a NEW bucket this stack creates; every object "
                                         "created under S3InputPrefix is classified. Empty "
                                         "leaves S3 out."},
        "S3InputPrefix": {"Type": "String", "Default": "incoming/", "AllowedPattern": "^.+/$",
                          "Description": "Folder of the input bucket to watch (ends with /)."},
        "S3OutputBucket": {"Type": "String", "Default": "", "AllowedPattern": bucket_pattern,
                           "Description": "Existing bucket for the results; empty means the "
                                          "input bucket."},
        "S3OutputPrefix": {"Type": "String", "Default": "results/",
                           "AllowedPattern": "^.*/$|^$",
                           "Description": "The result of key K is S3OutputPrefix + K + .json; "
                                          "in the input bucket it must lie outside "
                                          "S3InputPrefix."},
    }
    conditions = {
        "HasReservedConcurrency": {"Fn::Not": [{"Fn::Equals": [ref("ReservedConcurrency"), -1]}]},
        "HasCors": {"Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", ref("CorsOrigins")]}, ""]}]},
        "HasS3": {"Fn::Not": [{"Fn::Equals": [ref("S3InputBucket"), ""]}]},
        "ResultsInInputBucket": {"Fn::Equals": [ref("S3OutputBucket"), ""]},
    }
    s3_document = s3_policy_document(
        sub("arn:${AWS::Partition}:s3:::${S3InputBucket}/${S3InputPrefix}*"),
        {"Fn::Sub": ["arn:${AWS::Partition}:s3:::${Bucket}/${S3OutputPrefix}*",
                     {"Bucket": results_bucket}]})
    events = {}
    for route in ROUTES:
        method, path = route.split(" ", 1)
        events["Root" if path == "/" else "Proxy"] = {"Type": "HttpApi", "Properties": {
            "ApiId": ref("HttpApi"), "Method": method, "Path": path,
            "PayloadFormatVersion": PAYLOAD_FORMAT_VERSION,
            "TimeoutInMillis": HTTP_API_MAX_TIMEOUT_MS}}
    resources = {
        "ExecutionRole": {"Type": "AWS::IAM::Role", "Properties": {
            "Description": "Execution role of the MHIST classifier function",
            "AssumeRolePolicyDocument": aws.trust_policy(PRINCIPAL),
            "ManagedPolicyArns": [
                sub(f"arn:${{AWS::Partition}}:iam::aws:policy/{BASIC_EXECUTION_POLICY}")],
            "Policies": if_("HasS3", [{"PolicyName": S3_POLICY, "PolicyDocument": s3_document}],
                            no_value)}},
        "HttpApi": {"Type": "AWS::Serverless::HttpApi", "Properties": {
            # No StageName: SAM creates the $default stage with auto-deploy.
            "CorsConfiguration": if_("HasCors", cors_settings(ref("CorsOrigins")), no_value)}},
        "ClassifierFunction": {"Type": "AWS::Serverless::Function", "Properties": {
            "Description": FUNCTION_DESCRIPTION,
            "PackageType": "Image",
            "ImageUri": ref("ImageUri"),
            "Architectures": [ref("Architecture")],
            "MemorySize": ref("MemorySize"),
            "Timeout": ref("Timeout"),
            "Role": {"Fn::GetAtt": ["ExecutionRole", "Arn"]},
            "ReservedConcurrentExecutions": if_("HasReservedConcurrency",
                                                ref("ReservedConcurrency"), no_value),
            "Environment": {"Variables": {
                "EMF_METRICS": ref("EmfMetrics"),
                "CORS_ALLOW_ORIGINS": {"Fn::Join": [",", ref("CorsOrigins")]},
                "S3_INPUT_URI": if_("HasS3", sub("s3://${S3InputBucket}/${S3InputPrefix}"), ""),
                "S3_OUTPUT_URI": if_("HasS3", {"Fn::Sub": ["s3://${Bucket}/${S3OutputPrefix}",
                                                           {"Bucket": results_bucket}]}, ""),
            }},
            "Events": events,
        }, "Metadata": {"Dockerfile": "lambda/Dockerfile", "DockerContext": "..",
                        "DockerTag": "latest",
                        "DockerBuildArgs": {"MODEL_FILE": DEFAULT_MODEL}}},
        # The permission first (S3 checks it when the notification is put); the bucket by
        # parameter, not Ref, so the permission does not depend on the bucket.
        "S3InvokePermission": {"Type": "AWS::Lambda::Permission", "Condition": "HasS3",
                               "Properties": {
                                   "FunctionName": {"Fn::GetAtt": ["ClassifierFunction", "Arn"]},
                                   "Action": "lambda:InvokeFunction",
                                   "Principal": "s3.amazonaws.com",
                                   "SourceArn": sub("arn:${AWS::Partition}:s3:::${S3InputBucket}"),
                                   "SourceAccount": ref("AWS::AccountId")}},
        "InputBucket": {"Type": "AWS::S3::Bucket", "Condition": "HasS3",
                        "DependsOn": "S3InvokePermission",
                        "DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain",
                        "Properties": {
                            "BucketName": ref("S3InputBucket"),
                            "PublicAccessBlockConfiguration": {
                                "BlockPublicAcls": True, "BlockPublicPolicy": True,
                                "IgnorePublicAcls": True, "RestrictPublicBuckets": True},
                            "NotificationConfiguration": {"LambdaConfigurations": [{
                                "Event": "s3:ObjectCreated:*",
                                "Function": {"Fn::GetAtt": ["ClassifierFunction", "Arn"]},
                                "Filter": {"S3Key": {"Rules": [
                                    {"Name": "prefix", "Value": ref("S3InputPrefix")}]}},
                            }]}}},
    }
    outputs = {
        "InvokeUrl": {"Description": "Base URL of every route of the Flask app",
                      "Value": sub("https://${HttpApi}.execute-api.${AWS::Region}."
                                   "${AWS::URLSuffix}")},
        "FunctionArn": {"Value": {"Fn::GetAtt": ["ClassifierFunction", "Arn"]}},
        "ExecutionRoleArn": {"Value": {"Fn::GetAtt": ["ExecutionRole", "Arn"]}},
        "S3InputUri": {"Condition": "HasS3",
                       "Value": sub("s3://${InputBucket}/${S3InputPrefix}")},
    }
    return {"AWSTemplateFormatVersion": "2010-09-09",
            "Transform": "AWS::Serverless-2016-10-31",
            "Description": "MHIST polyp classifier on AWS Lambda (container image, ONNX Runtime) "
                           "behind an HTTP API; generated from lambda/deploy.py.",
            "Parameters": parameters, "Conditions": conditions, "Resources": resources,
            "Outputs": outputs}


def template_text() -> str:
    return TEMPLATE_HEADER + yaml.safe_dump(sam_template(), sort_keys=False, width=100)


# --- command line -----------------------------------------------------------------------------

def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.parser(description="Deploy or destroy the MHIST Lambda target, or print it "
                                    "as an AWS SAM template.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("deploy", "destroy"):
        p = sub.add_parser(command, help=f"{command} the stack", formatter_class=cli.HelpFormatter)
        p.add_argument("--name", default="mhist-classifier", help="function name (and prefix)")
        p.add_argument("--repository", default=None,
                       help="ECR repository (default: NAME-lambda)")
        p.add_argument("--role-name", default=None, help="IAM role (default: NAME-lambda-role)")
        p.add_argument("--api-name", default=None,
                       help="HTTP API name (default: NAME-http-api)")
        cli.add_region_argument(p)
        p.add_argument("--dry-run", action="store_true", help="print the plan, call nothing")
    sub.add_parser("template", help="print the stack as an AWS SAM template (YAML)",
                   formatter_class=cli.HelpFormatter)
    dep = sub.choices["deploy"]
    dep.add_argument("--image-uri", default=None,
                     help="use this pushed image and skip build + push (default: build "
                          "lambda/Dockerfile with --model and push it)")
    dep.add_argument("--model", default=DEFAULT_MODEL,
                     help="ONNX file baked into the image; it must lie inside the repository "
                          "(the build context), relative to its root or absolute. A vnni INT8 "
                          "file (export --cpu-class vnni) needs --architecture arm64: Lambda "
                          "x86_64 does not say which CPU runs it")
    dep.add_argument("--tag", default=time.strftime("%Y%m%d-%H%M%S"),
                     help="image tag to push; tags are immutable, so a tag that holds "
                          "another image is refused (default: a timestamp)")
    dep.add_argument("--architecture", choices=sorted(PLATFORMS), default=DEFAULT_ARCHITECTURE,
                     help="function architecture (arm64 is cheaper per GB-second)")
    dep.add_argument("--memory", type=int, default=DEFAULT_MEMORY_MB,
                     help="MB; Lambda gives CPU in proportion (1769 MB = one vCPU)")
    dep.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT_S,
                     help="seconds (HTTP API caps at 30)")
    dep.add_argument("--reserved-concurrency", type=int, default=None,
                     help="reserve (and cap) concurrent executions (default: unreserved)")
    dep.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                     help="extra environment variable for the function (repeatable; "
                          "default: none)")
    dep.add_argument("--cors-origins", default=None,
                     help="comma-separated allowed origins ('*' for any) (default: no CORS)")
    dep.add_argument("--emf", action=argparse.BooleanOptionalAction, default=True,
                     help="CloudWatch EMF metrics (latency, inference time) in the logs")
    dep.add_argument("--keep-images", type=int, default=10,
                     help="ECR lifecycle policy keeps this many images")
    dep.add_argument("--s3-input", default=None, metavar="s3://BUCKET/PREFIX",
                     help="classify every object created under this prefix (with --s3-output; "
                          "default: no S3 trigger)")
    dep.add_argument("--s3-output", default=None, metavar="s3://BUCKET/PREFIX",
                     help="where the result of key K goes: PREFIX/K.json (with --s3-input; "
                          "default: no S3 trigger)")
    sub.choices["destroy"].add_argument("--keep-repository", action="store_true",
                                        help="leave the ECR repository and its images")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.command == "template":
        sys.stdout.write(template_text())
        return 0
    plan = Plan(dry_run=args.dry_run)

    def command() -> None:
        if args.command == "deploy":
            _validate(args)
            deploy(args, plan)
        else:
            destroy(args, plan)
        print(plan.summary())

    return cli.run(command, prefix="error: ", handled=aws.PUSH_ERRORS)


def _validate(args: argparse.Namespace) -> None:
    """Refuse a command line that cannot work before any step: one line, exit status 2
    (1 for a bad ECR_REGISTRY_OVERRIDE, a setting of the environment)."""
    if not MEMORY_MB[0] <= args.memory <= MEMORY_MB[1]:
        raise UsageError(f"--memory {args.memory}: Lambda allows {MEMORY_MB[0]} to "
                         f"{MEMORY_MB[1]} MB")
    if not TIMEOUT_S[0] <= args.timeout <= TIMEOUT_S[1]:
        raise UsageError(f"--timeout {args.timeout}: Lambda allows {TIMEOUT_S[0]} to "
                         f"{TIMEOUT_S[1]} s")
    if args.reserved_concurrency is not None and args.reserved_concurrency < 0:
        raise UsageError("--reserved-concurrency must be 0 or more (0 blocks all invocations)")
    try:
        s3_locations(args)
    except SettingsError as exc:
        raise UsageError(f"--s3-input/--s3-output: {exc}") from None
    _environment(args)  # --env KEY=VALUE, checked before anything is made
    if not args.image_uri:
        aws.registry_override()  # where the push goes: refuse a bad setting before AWS
        _check_cpu_class(Path(args.model).expanduser(), args.architecture)
        args.model = model_in_repository(args.model)


def _check_cpu_class(model: Path, architecture: str) -> None:
    """A vnni INT8 file only where Lambda promises the dot product: arm64 (Graviton2+)."""
    model = model if model.is_absolute() else REPO_ROOT / model
    if not model.is_file():
        return  # model_in_repository says what is wrong with it
    try:
        misfit = cpu_classes.lambda_misfit(architecture, cpu_classes.file_class(model))
    except ValueError as exc:
        raise UsageError(f"--model {exc}") from None
    if misfit:
        raise UsageError(f"--model {model.name} is INT8 for CPU class vnni: {misfit}")


def model_in_repository(model: str) -> str:
    """--model as the build needs it: an existing file inside the repository (the build
    context), as a path relative to the repository root; UsageError otherwise."""
    root = REPO_ROOT.resolve()
    path = Path(model).expanduser()
    path = (path if path.is_absolute() else root / path).resolve()
    if not path.is_relative_to(root):
        raise UsageError(f"--model {model} is outside the repository ({root}): the image build "
                         "copies the model from the repository (its build context), so copy it "
                         "under the repository (e.g. artifacts/) and pass that path")
    if path.is_dir():
        raise UsageError(f"--model {model} is a directory: give the ONNX file, e.g. "
                         f"{DEFAULT_MODEL}")
    if not path.is_file():
        raise UsageError(f"--model {model}: no such file; export one first (make export), "
                         "give an ONNX file inside the repository, or pass --image-uri")
    return path.relative_to(root).as_posix()


if __name__ == "__main__":
    sys.exit(main())
