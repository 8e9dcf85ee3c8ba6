"""AWS helpers shared by lambda/deploy.py and sagemaker/deploy.py (boto3; never copied into images).

- `client()`: boto3 clients that honour `AWS_ENDPOINT_URL` (moto in server mode, LocalStack).
- `Plan`: every step a deploy script takes is announced through it; with `--dry-run` nothing
  is called, only the plan is printed.
- ECR: `ensure_repository` (immutable tags, scan on push, lifecycle policy keeping N images),
  `ecr_login`, `build_and_push` (docker or podman via awsdeploy.container_engine; refuses to move a
  tag to another image), `delete_repository`.
- Settings, from the environment: `region_name` (declared in awsdeploy.cli), `endpoint_url`
  (AWS_ENDPOINT_URL) and `registry_override` (ECR_REGISTRY_OVERRIDE).
- IAM: `ensure_role` (trust policy + exactly the managed policies asked for + inline policies),
  `delete_role`.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, NoCredentialsError

from awsdeploy import container_engine
from awsdeploy.cli import DEFAULT_REGION, DeployError, region_name
from awsdeploy.oci import Registry, RegistryError, held_by_tag
from services.web.settings import SettingsError  # the one "a setting is unusable" error

__all__ = ["DEFAULT_REGION", "region_name"]  # declared once, in awsdeploy.cli
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Sessions and clients


def endpoint_url() -> str | None:
    """`AWS_ENDPOINT_URL` (e.g. http://127.0.0.1:5000 for moto); None means the real AWS."""
    return os.environ.get("AWS_ENDPOINT_URL") or None


REGISTRY_OVERRIDE = "ECR_REGISTRY_OVERRIDE"


def registry_override() -> tuple[str, bool] | None:
    """`ECR_REGISTRY_OVERRIDE`: push to this registry instead of the one ECR's token names,
    still logging in with that token's credentials; (host, tls) or None when unset.

    For registries that stand in for ECR where ECR itself is out of reach: the tests run
    Debian's docker-registry on 127.0.0.1 with the credentials moto's token carries. `HOST[:PORT]`
    or `https://HOST[:PORT]` uses TLS; `http://` turns TLS off and is accepted for a loopback
    host only, so credentials never cross a network in clear text.
    """
    raw = os.environ.get(REGISTRY_OVERRIDE, "").strip()
    if not raw:
        return None
    parsed = urllib.parse.urlsplit(raw if "://" in raw else f"https://{raw}")
    host = parsed.netloc
    if parsed.scheme not in ("http", "https") or not host or parsed.path.strip("/") \
            or parsed.query or "@" in host:
        raise SettingsError(f"{REGISTRY_OVERRIDE}={raw!r} is not valid: expected HOST[:PORT], "
                            "https://HOST[:PORT] or, on this machine only, http://127.0.0.1:PORT")
    tls = parsed.scheme == "https"
    if not tls and not _is_loopback(parsed.hostname or ""):
        raise SettingsError(f"{REGISTRY_OVERRIDE}={raw!r}: plain http:// is allowed to a "
                            "loopback host only (127.0.0.1, ::1, localhost); use https://")
    return host, tls


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def session(region: str | None = None, profile: str | None = None) -> boto3.Session:
    """A boto3 session that has credentials: NoCredentialsError (PartialCredentialsError,
    ProfileNotFound) now, before any step, rather than at the first call."""
    made = boto3.Session(region_name=region_name(region), profile_name=profile)
    if made.get_credentials() is None:
        raise NoCredentialsError()
    return made


def client(service: str, aws_session: boto3.Session | None = None, region: str | None = None):
    """A boto3 client for `service`; endpoint from AWS_ENDPOINT_URL when set.

    boto3 ≥ 1.28 reads AWS_ENDPOINT_URL itself; passing it explicitly keeps older boto3 and
    the sagemaker SDK (which builds its own clients from the session) on the same endpoint.
    Adaptive retries absorb the throttling that create-or-update loops provoke;
    AWS_MAX_ATTEMPTS lowers them (tests against moto, where a 500 is final).
    """
    aws_session = aws_session or session(region)
    attempts = int(os.environ.get("AWS_MAX_ATTEMPTS") or 8)
    return aws_session.client(
        service,
        endpoint_url=endpoint_url(),
        config=Config(retries={"max_attempts": attempts, "mode": "adaptive"}),
    )


def partition(region: str) -> str:
    """ARN partition for a region (aws, aws-cn, aws-us-gov)."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def error_code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def ignore_missing(call: Callable[..., T], *args: Any, missing: tuple[str, ...] = (), **kwargs: Any
                   ) -> T | None:
    """Run a delete/describe call; None when AWS says the resource does not exist.

    Destroy must be re-runnable, so "already gone" is success. Codes differ per service, so the
    caller names them (e.g. ResourceNotFoundException, NoSuchEntity, NotFoundException).
    """
    codes = missing or ("ResourceNotFoundException", "NoSuchEntity", "NotFoundException",
                        "RepositoryNotFoundException")
    try:
        return call(*args, **kwargs)
    except ClientError as exc:
        if error_code(exc) in codes:
            return None
        raise


def retry_on(codes: tuple[str, ...], call: Callable[..., T], *args: Any, attempts: int = 10,
             delay_s: float = 3.0, **kwargs: Any) -> T:
    """Retry a call while AWS answers one of `codes`.

    Needed right after IAM changes: a new role takes seconds to be assumable by Lambda or
    SageMaker (InvalidParameterValueException / ValidationException until then).
    """
    for attempt in range(attempts):
        try:
            return call(*args, **kwargs)
        except ClientError as exc:
            if error_code(exc) not in codes or attempt == attempts - 1:
                raise
            time.sleep(delay_s)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# Dry-run plan


@dataclass
class Plan:
    """Announces each step; in dry-run mode `step()` returns False so the caller skips the call.

        plan = Plan(dry_run=args.dry_run)
        if plan.step("create ECR repository mhist-lambda"):
            ensure_repository(...)
    """

    dry_run: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    steps: list[str] = field(default_factory=list)

    def step(self, description: str) -> bool:
        self.steps.append(description)
        prefix = "[dry-run] would" if self.dry_run else f"[{len(self.steps)}]"
        print(f"{prefix} {description}", file=self.out, flush=True)
        return not self.dry_run

    def note(self, message: str) -> None:
        """Detail under the current step (what was found, created or updated)."""
        print(f"      {message}", file=self.out, flush=True)

    def summary(self) -> str:
        verb = "would run" if self.dry_run else "ran"
        return f"{verb} {len(self.steps)} steps" + (" (dry run: nothing was changed)"
                                                    if self.dry_run else "")


def _noop(_: str) -> None:
    return None


# ---------------------------------------------------------------------------------------------
# ECR


def lifecycle_policy(keep_images: int) -> dict:
    """Expire all but the newest `keep_images` images, tagged or not."""
    return {
        "rules": [{
            "rulePriority": 1,
            "description": f"keep only the newest {keep_images} images",
            "selection": {
                "tagStatus": "any",
                "countType": "imageCountMoreThan",
                "countNumber": keep_images,
            },
            "action": {"type": "expire"},
        }]
    }


def ensure_repository(ecr, name: str, keep_images: int = 10,
                      note: Callable[[str], None] = _noop) -> str:
    """Create the repository if absent; (re)apply immutable tags, scan-on-push and the
    lifecycle policy. Immutable: a tag names one image for good, so what a function or model
    runs cannot change under it (build_and_push gives a clear message before ECR refuses).

    Returns the repository URI (ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME).
    """
    found = ignore_missing(ecr.describe_repositories, repositoryNames=[name])
    if found:
        repository = found["repositories"][0]
        note(f"ECR repository {name} exists")
        ecr.put_image_scanning_configuration(
            repositoryName=name, imageScanningConfiguration={"scanOnPush": True})
        if repository.get("imageTagMutability") != "IMMUTABLE":
            ecr.put_image_tag_mutability(repositoryName=name, imageTagMutability="IMMUTABLE")
            note("image tags made immutable")
    else:
        repository = ecr.create_repository(
            repositoryName=name,
            imageScanningConfiguration={"scanOnPush": True},
            imageTagMutability="IMMUTABLE",
        )["repository"]
        note(f"created ECR repository {name} (immutable tags)")
    ecr.put_lifecycle_policy(
        repositoryName=name, lifecyclePolicyText=json.dumps(lifecycle_policy(keep_images)))
    note(f"scan on push on; lifecycle policy keeps {keep_images} images")
    return repository["repositoryUri"]


def delete_repository(ecr, name: str, note: Callable[[str], None] = _noop) -> bool:
    """Delete the repository and its images; False when it was already gone."""
    gone = ignore_missing(ecr.delete_repository, repositoryName=name, force=True) is None
    note(f"ECR repository {name} " + ("was already absent" if gone else "deleted"))
    return not gone


def ecr_login(ecr) -> Registry:
    """Log the container engine in to ECR with a 12-hour token; returns where to push.

    The registry is the one the token names, or ECR_REGISTRY_OVERRIDE's (registry_override).
    """
    data = ecr.get_authorization_token()["authorizationData"][0]
    username, password = base64.b64decode(data["authorizationToken"]).decode().split(":", 1)
    host, tls = registry_override() or (
        data["proxyEndpoint"].removeprefix("https://").removeprefix("http://"), True)
    container_engine.login(host, username, password, tls_verify=tls)
    return Registry(host, username, password, tls)


class PushRefused(RuntimeError):
    """The tag already names another image; tags are immutable."""


def build_and_push(ecr, repository_uri: str, tag: str, dockerfile: str | Path,
                   build_args: dict[str, str] | None = None, platform: str | None = None,
                   note: Callable[[str], None] = _noop) -> str:
    """Log in to ECR, build the image locally and push it as REGISTRY/REPOSITORY:TAG.

    `platform` (linux/amd64 or linux/arm64) must match the function's or instance's
    architecture; building for the other one needs qemu/binfmt on the build machine.
    A tag that already holds this very image is left as it is (re-deploys push nothing); one
    that holds another image raises PushRefused, whatever the repository's own setting.
    """
    # Log in first: a refused login costs a second, not a build of minutes.
    registry = ecr_login(ecr)
    note(f"logged in to {registry.host}" + ("" if registry.tls else " (plain HTTP, loopback)"))
    local_tag = f"{repository_uri.rsplit('/', 1)[-1]}:{tag}"
    container_engine.build(local_tag, dockerfile, build_args=build_args, platform=platform)
    image = container_engine.image_id(local_tag)
    note(f"built {local_tag} ({image[:19]}) with {container_engine.engine()}")
    repository = repository_uri.split("/", 1)[1]
    remote = f"{registry.host}/{repository}:{tag}"
    # Checked here rather than left to ECR's IMMUTABLE setting: a registry standing in for
    # ECR may have no such setting, and a push is minutes wasted before ECR's refusal.
    held = held_by_tag(registry, repository, tag)
    if held is not None and held.image_id == image:
        note(f"{remote} already holds this image ({held.digest}): nothing to push")
        return remote
    if held is not None:
        raise PushRefused(
            f"{remote} already holds another image ({held.image_id or held.media_type}, "
            f"ours is {image}); tags are immutable: deploy with a new --tag")
    digest = container_engine.push(local_tag, remote, tls_verify=registry.tls)
    note(f"pushed {remote} ({digest})")
    return remote


# Errors of the build-login-push path that the deploy CLIs print as one line.
PUSH_ERRORS = (SettingsError, container_engine.EngineUnavailable,
               container_engine.RegistryLoginError,
               container_engine.PushFailed, RegistryError, PushRefused)


# ---------------------------------------------------------------------------------------------
# IAM


def trust_policy(service: str) -> dict:
    """Assume-role policy letting one AWS service (e.g. lambda.amazonaws.com) use the role."""
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Service": service},
            "Action": "sts:AssumeRole",
        }],
    }


def managed_policy_arn(name: str, region: str | None = None) -> str:
    """ARN of an AWS managed policy, e.g. 'service-role/AWSLambdaBasicExecutionRole'."""
    return f"arn:{partition(region_name(region))}:iam::aws:policy/{name}"


def ensure_role(iam, name: str, service: str, managed_policies: list[str],
                inline_policies: dict[str, dict] | None = None, description: str = "",
                note: Callable[[str], None] = _noop) -> str:
    """Create or update a role so it has exactly `managed_policies` attached (least privilege:
    anything else attached by hand is detached) plus the given inline policies; returns its ARN.
    """
    trust = json.dumps(trust_policy(service))
    found = ignore_missing(iam.get_role, RoleName=name)
    if found:
        role = found["Role"]
        iam.update_assume_role_policy(RoleName=name, PolicyDocument=trust)
        note(f"IAM role {name} exists; trust policy set to {service}")
    else:
        role = iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust,
                               Description=description or f"execution role for {service}")["Role"]
        note(f"created IAM role {name} trusted by {service}")
    attached = {p["PolicyArn"] for p in _attached_policies(iam, name)}
    for arn in sorted(set(managed_policies) - attached):
        try:
            iam.attach_role_policy(RoleName=name, PolicyArn=arn)
        except ClientError as exc:
            if error_code(exc) != "NoSuchEntity":
                raise
            raise DeployError(
                f"IAM policy {arn} does not exist, so role {name} cannot get it: in AWS this "
                "managed policy always exists (check the region's partition); against moto, "
                "start the moto server with MOTO_IAM_LOAD_MANAGED_POLICIES=true in its "
                "environment") from None
        note(f"attached {arn}")
    for arn in sorted(attached - set(managed_policies)):
        iam.detach_role_policy(RoleName=name, PolicyArn=arn)
        note(f"detached {arn} (not in the least-privilege set)")
    for policy_name, document in (inline_policies or {}).items():
        iam.put_role_policy(RoleName=name, PolicyName=policy_name,
                            PolicyDocument=json.dumps(document))
        note(f"inline policy {policy_name} set")
    return role["Arn"]


def _attached_policies(iam, name: str) -> list[dict]:
    pages = iam.get_paginator("list_attached_role_policies").paginate(RoleName=name)
    return [policy for page in pages for policy in page["AttachedPolicies"]]


def delete_role(iam, name: str, note: Callable[[str], None] = _noop) -> bool:
    """Detach managed policies, delete inline ones, delete the role; False if already gone."""
    if ignore_missing(iam.get_role, RoleName=name) is None:
        note(f"IAM role {name} was already absent")
        return False
    for policy in _attached_policies(iam, name):
        iam.detach_role_policy(RoleName=name, PolicyArn=policy["PolicyArn"])
    for policy_name in iam.list_role_policies(RoleName=name)["PolicyNames"]:
        iam.delete_role_policy(RoleName=name, PolicyName=policy_name)
    iam.delete_role(RoleName=name)
    note(f"IAM role {name} deleted")
    return True
