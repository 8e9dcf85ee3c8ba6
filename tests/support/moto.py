"""moto in server mode as a real subprocess on 127.0.0.1, for deploy tests (Lambda, SageMaker).

The deploy scripts talk to it over HTTP through real boto3 clients: `MotoServer.env()` gives
the variables (AWS_ENDPOINT_URL, fake credentials, region) a child process or a client needs.

    @pytest.fixture
    def moto(tmp_path):
        with MotoServer(log_dir=tmp_path) as server:
            yield server

moto keeps state per server process; `reset()` clears it between tests without a restart.
moto runs no image functions and its SageMaker invoke_endpoint returns canned data: never
present either as inference.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.containers import free_port
from tests.support.processes import ChildServer

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account


def moto_server_command() -> list[str]:
    """The moto_server next to this interpreter (the venv's), else one on PATH."""
    beside = Path(sys.executable).with_name("moto_server")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("moto_server")
    if found:
        return [found]
    raise RuntimeError("moto_server not found: pip install 'moto[server]'")


class MotoServer(ChildServer):
    """`moto_server -H 127.0.0.1 -p PORT`, started and waited for; stopped on exit."""

    name = "moto_server"

    def __init__(self, port: int | None = None, log_dir: str | Path | None = None,
                 extra_env: dict[str, str] | None = None, start_timeout: float = 60.0) -> None:
        self.port = port or free_port()
        folder = Path(log_dir or os.environ.get("TMPDIR", "/tmp"))
        self.log_path = folder / f"moto-{self.port}.log"
        self.start_timeout = start_timeout
        # Managed policies such as AWSLambdaBasicExecutionRole exist only with this set.
        self._server_env = {**os.environ, "MOTO_IAM_LOAD_MANAGED_POLICIES": "true",
                            **(extra_env or {})}
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment for boto3 (in-process or a child) to use this server, never real AWS."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            # Keep a developer's ~/.aws profile from leaking into the tests.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def client(self, service: str):
        """A boto3 client bound to this server."""
        import boto3

        env = self.env()
        return boto3.client(
            service, endpoint_url=self.url, region_name=REGION,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=env["AWS_SESSION_TOKEN"],
        )

    def start(self) -> MotoServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            [*moto_server_command(), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, env=self._server_env,
            # moto's request recorder writes `moto_recording` into its working folder.
            cwd=self.log_path.parent,
        )
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        def answered() -> bool:
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2):
                    return True
            except urllib.error.HTTPError:
                return True  # it answers: good enough
            except OSError:
                return False

        self.wait_until(answered)

    def reset(self) -> None:
        """Forget every resource (moto's reset API)."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=30):
            pass

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

