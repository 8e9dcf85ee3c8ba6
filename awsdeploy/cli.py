"""What the deploy command lines share: exit statuses, one-line errors, help, common options.

    return cli.run(lambda: deploy(args, plan), prefix="error: ")

Every failure a user can fix ends in ONE line on stderr (what is wrong, what to do) and an
exit status, never a traceback:
  2 (EXIT_USAGE)        the command line is wrong: an option, a file an option names, an
                        option pair that cannot work (argparse's own status for bad options)
  1 (EXIT_ENVIRONMENT)  the environment is wrong: AWS credentials, AWS out of reach, access
                        denied, something missing in the account, the container engine
botocore's exceptions are turned into those lines here and nowhere else (`explain`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
    WaiterError,
)

EXIT_ENVIRONMENT = 1
EXIT_USAGE = 2
DEFAULT_REGION = "us-east-1"


class DeployError(RuntimeError):
    """A problem of the environment the user can fix; one line, exit status 1."""

    exit_code = EXIT_ENVIRONMENT


class UsageError(DeployError):
    """The command line cannot work; one line, exit status 2."""

    exit_code = EXIT_USAGE


# --- region -------------------------------------------------------------------------------------

def region_name(explicit: str | None = None) -> str:
    """--region, else AWS_REGION, else AWS_DEFAULT_REGION, else DEFAULT_REGION."""
    return (explicit or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            or DEFAULT_REGION)


def add_region_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--region", default=None,
                        help="AWS region (default: AWS_REGION, else AWS_DEFAULT_REGION, else "
                             f"{DEFAULT_REGION})")


# --- help ---------------------------------------------------------------------------------------

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to every option's help, unless the help already says its
    default (options whose default is computed: None, a name derived from another option)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, argparse.SUPPRESS) \
                or not action.option_strings:
            return text
        if isinstance(action, argparse.BooleanOptionalAction):
            name = action.option_strings[0 if action.default else 1]
            return f"{text} (default: {name})"
        if action.nargs == 0:  # store_true / store_false: off unless given
            return text
        return super()._get_help_string(action)


def parser(**kwargs) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(formatter_class=HelpFormatter, **kwargs)


# --- SageMaker instances and image platforms ----------------------------------------------------

# Graviton families: a letter family, a generation, then "g" (c7g, m6gd, r7gd, c6gn, t4g, g5g,
# x2gd, im4gn); anything else (m5, c7i, g5, inf2, p4d, trn1) is x86_64.
_GRAVITON = re.compile(r"^(?:ml\.)?[a-z]+\d+g[a-z]*\.")
PLATFORMS = {"x86_64": "linux/amd64", "arm64": "linux/arm64"}


def instance_architecture(instance_type: str) -> str:
    """'arm64' for Graviton instance families (ml.c7g.large), else 'x86_64'."""
    return "arm64" if _GRAVITON.match(instance_type) else "x86_64"


def platform_for(instance_type: str) -> str:
    return PLATFORMS[instance_architecture(instance_type)]


def check_platform(instance_type: str, platform: str, option: str = "--instance-type") -> None:
    wanted = instance_architecture(instance_type)
    if PLATFORMS[wanted] != platform:
        raise UsageError(
            f"{option} {instance_type} runs {wanted} images but --platform is {platform}: "
            f"pass --platform {PLATFORMS[wanted]} (or leave it out), or pick an instance type "
            f"of the other architecture (Graviton families such as c7g, m7g, r7g run arm64)")


# --- errors -------------------------------------------------------------------------------------

_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation",
           "AuthorizationError", "403", "Forbidden"}
_REJECTED = {"InvalidClientTokenId", "UnrecognizedClientException", "InvalidAccessKeyId",
             "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException",
             "InvalidToken", "RequestExpired"}
_CREDENTIALS_HELP = ("run `aws configure`, set AWS_PROFILE, or AWS_ACCESS_KEY_ID/"
                     "AWS_SECRET_ACCESS_KEY")


def _where() -> str:
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    return f" (AWS_ENDPOINT_URL={endpoint})" if endpoint else ""


def explain(exc: BaseException) -> str | None:
    """One line for a botocore error (what is wrong, what to do); None for anything else."""
    if isinstance(exc, NoCredentialsError):
        return (f"no AWS credentials found: {_CREDENTIALS_HELP}"
                + (" (moto takes any values, e.g. testing/testing)"
                   if os.environ.get("AWS_ENDPOINT_URL") else ""))
    if isinstance(exc, PartialCredentialsError):
        return (f"incomplete AWS credentials ({exc}): set both AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or unset them and run `aws configure` / set AWS_PROFILE")
    if isinstance(exc, ProfileNotFound):
        return (f"{exc}: run `aws configure --profile NAME` for it, or unset AWS_PROFILE")
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError)):
        url = getattr(exc, "kwargs", {}).get("endpoint_url") or "its endpoint"
        return (f"cannot reach AWS at {url}: check the network and the region; "
                "AWS_ENDPOINT_URL, when set, must point at a running endpoint"
                f"{_where() or ' (it is not set)'}")
    if isinstance(exc, WaiterError):
        return f"gave up waiting: {exc}"
    if isinstance(exc, ClientError):
        code, message = _code_and_message(exc)
        operation = getattr(exc, "operation_name", "?")
        if code in _REJECTED:
            return (f"AWS did not accept these credentials ({code} on {operation}"
                    f"{': ' + message if message else ''}){_where()}: {_CREDENTIALS_HELP} "
                    "with valid ones (a session token may have expired)")
        if code in _DENIED:
            return (f"AWS denied {operation} to these credentials ({code}"
                    f"{': ' + message if message else ''}): use an identity with that "
                    "permission, or ask your AWS administrator for it")
        return f"AWS refused {operation}: {exc}"
    if isinstance(exc, BotoCoreError):
        return f"AWS client error: {exc}"
    return None


def _code_and_message(exc: ClientError) -> tuple[str, str]:
    """The error's code and message; an XML error body that the JSON protocol could not parse
    (moto answers JSON services' auth errors in XML) is read for its <Code> and <Message>."""
    error = exc.response.get("Error", {})
    code, message = error.get("Code", ""), (error.get("Message") or "").strip()
    inner = re.search(r"<Code>([^<]+)</Code>", message)
    if inner:
        text = re.search(r"<Message>([^<]*)</Message>", message)
        code, message = inner[1], (text[1] if text else "")
    return code, message


def run(call: Callable[[], object], prefix: str,
        handled: tuple[type[BaseException], ...] = ()) -> int:
    """Run a command; DeployError/UsageError, botocore's errors and `handled` become
    `prefix + one line` on stderr and the exit status (2 usage, 1 environment) returned."""
    try:
        call()
    except DeployError as exc:
        return _report(prefix, str(exc), exc.exit_code)
    except (BotoCoreError, ClientError) as exc:
        return _report(prefix, explain(exc) or str(exc), EXIT_ENVIRONMENT)
    except handled as exc:
        return _report(prefix, str(exc), EXIT_ENVIRONMENT)
    return 0


def _report(prefix: str, message: str, code: int) -> int:
    line = " ".join(message.split())  # one line, whatever the message held
    print(f"{prefix}{line}", file=sys.stderr, flush=True)
    return code
