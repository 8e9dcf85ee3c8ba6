"""Run OCI containers from tests and benchmarks: start detached, wait for HTTP, read logs, stop.

Generic on purpose (Flask, Lambda, SageMaker images and the benchmarks share it). The engine
is awsdeploy.container_engine.engine(): docker when a daemon answers, else podman. Ports are
published on 127.0.0.1 only.

    with run_container("mhist-flask", port=8080, env={"WEB_CONCURRENCY": "1"}) as box:
        wait_for_http(box.url("/ready"), container=box)
        ...
        stopped = box.stop()       # SIGTERM, then the engine's kill after `timeout`
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from awsdeploy.container_engine import engine as default_engine


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it; tiny race with other binders)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class StopResult:
    seconds: float  # from `stop` issued to the container gone
    exit_code: int  # 0 = the process exited by itself on SIGTERM; 137 = killed


@dataclass
class Container:
    """A started container; `host_port` is where its port answers on 127.0.0.1."""

    engine: str
    name: str
    image: str
    host_port: int | None
    started_at: float  # time.perf_counter() just before `run`
    stopped: StopResult | None = field(default=None)

    def url(self, path: str = "/") -> str:
        if self.host_port is None:
            raise ValueError("the container publishes no port")
        return f"http://127.0.0.1:{self.host_port}{path}"

    def logs(self) -> str:
        result = subprocess.run([self.engine, "logs", self.name], capture_output=True,
                                text=True, timeout=60)
        return result.stdout + result.stderr

    def state(self) -> str:
        """'running', 'exited', ... or '' when the container no longer exists."""
        return self._inspect("{{.State.Status}}")

    def exit_code(self) -> int | None:
        raw = self._inspect("{{.State.ExitCode}}")
        return int(raw) if raw.lstrip("-").isdigit() else None

    def exec(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a command inside the running container (no check: callers assert on it)."""
        return subprocess.run([self.engine, "exec", self.name, *command], capture_output=True,
                              text=True, timeout=timeout)

    def stop(self, timeout: int = 10) -> StopResult:
        """SIGTERM (the engine's default stop signal); SIGKILL after `timeout` seconds."""
        started = time.perf_counter()
        subprocess.run([self.engine, "stop", "-t", str(timeout), self.name],
                       capture_output=True, text=True, timeout=timeout + 60)
        seconds = time.perf_counter() - started
        code = self.exit_code()
        self.stopped = StopResult(seconds, -1 if code is None else code)
        return self.stopped

    def remove(self) -> None:
        subprocess.run([self.engine, "rm", "-f", "-v", self.name], capture_output=True,
                       text=True, timeout=120)

    def _inspect(self, template: str) -> str:
        result = subprocess.run([self.engine, "inspect", "--format", template, self.name],
                                capture_output=True, text=True, timeout=60)
        return result.stdout.strip() if result.returncode == 0 else ""


def start_container(
    image: str,
    *,
    port: int | None = None,
    host_port: int | None = None,
    network_host: bool = False,
    env: Mapping[str, str] | None = None,
    volumes: Sequence[str] = (),
    command: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    engine: str | None = None,
    name: str | None = None,
) -> Container:
    """`ENGINE run -d` the image.

    port: the container port to publish on 127.0.0.1:host_port (free_port() when None).
    network_host: share the host's network instead; the caller passes the port through `env`
    (e.g. PORT) and `host_port` names it for `Container.url`.
    volumes: `-v` specs (`/host/path:/in/container:ro`).
    """
    tool = engine or default_engine()
    name = name or f"mhist-test-{uuid.uuid4().hex[:10]}"
    args = [tool, "run", "-d", "--name", name]
    if network_host:
        args += ["--network", "host"]
    elif port is not None:
        host_port = host_port or free_port()
        args += ["-p", f"127.0.0.1:{host_port}:{port}"]
    for key, value in (env or {}).items():
        args += ["-e", f"{key}={value}"]
    for spec in volumes:
        args += ["-v", spec]
    args += [*extra_args, image, *command]
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, timeout=180)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return Container(tool, name, image, host_port, started)


@contextlib.contextmanager
def run_container(image: str, **kwargs) -> Iterator[Container]:
    """start_container(...) that is always removed afterwards (logs stay readable inside)."""
    box = start_container(image, **kwargs)
    try:
        yield box
    finally:
        box.remove()


def wait_for_http(
    url: str,
    timeout: float = 60.0,
    *,
    container: Container | None = None,
    ok: Callable[[int], bool] = lambda status: status == 200,
    headers: Mapping[str, str] | None = None,
    interval: float = 0.1,
) -> float:
    """Poll `url` until `ok(status)`; seconds waited. Fails fast if `container` exits."""
    started = time.perf_counter()
    deadline = started + timeout
    last = "no answer yet"
    while time.perf_counter() < deadline:
        try:
            request = urllib.request.Request(url, headers=dict(headers or {}))
            with urllib.request.urlopen(request, timeout=5) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (OSError, ValueError) as exc:  # refused, reset, timed out while starting
            status, last = None, repr(exc)
        if status is not None:
            if ok(status):
                return time.perf_counter() - started
            last = f"HTTP {status}"
        if container is not None and container.state() not in ("running", "created", ""):
            raise RuntimeError(
                f"container {container.name} stopped ({container.state()}, exit "
                f"{container.exit_code()}) before {url} answered:\n{container.logs()[-4000:]}"
            )
        time.sleep(interval)
    tail = f"\n{container.logs()[-4000:]}" if container is not None else ""
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s ({last}){tail}")


def image_healthcheck(image: str, engine: str | None = None) -> list[str] | None:
    """The image's HEALTHCHECK as an argv to exec in a container, or None when it has none.

    docker keeps it under Config.Healthcheck; podman (docker format) at the top level.
    """
    tool = engine or default_engine()
    result = subprocess.run([tool, "image", "inspect", image], capture_output=True, text=True,
                            timeout=60, check=True)
    info = json.loads(result.stdout)[0]
    check = (info.get("Config") or {}).get("Healthcheck") or info.get("Healthcheck")
    if not check or not check.get("Test") or check["Test"][0] == "NONE":
        return None
    kind, *rest = check["Test"]
    return ["sh", "-c", rest[0]] if kind == "CMD-SHELL" else rest
