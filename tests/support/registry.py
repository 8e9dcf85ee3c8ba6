"""A real OCI registry on 127.0.0.1 for push tests: Debian's `docker-registry` (the CNCF
distribution server, 2.8), with basic auth from an htpasswd file, storage in a tmp folder.

    with LocalRegistry(tmp_path, username="AWS", password=token) as registry:
        registry.host                     # "127.0.0.1:PORT" (plain HTTP)
        registry.manifest("repo", "tag")  # what a client pulling the tag gets

ECR in the tests is moto, which has no registry: the deploy scripts get their login from moto's
get_authorization_token and push here (ECR_REGISTRY_OVERRIDE, awsdeploy/aws.py). The registry
is given the very credentials that token carries, so a wrong token is refused as ECR would.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.support.containers import free_port
from tests.support.processes import ChildServer

# Debian's package name; upstream's binary is called `registry`.
BINARIES = ("docker-registry", "registry")
INSTALL_HINT = "install Debian's docker-registry package (make test-deps does, as root)"

# A pull asks for any of these; the registry answers with the type it stored.
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_ACCEPT = ", ".join((DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX))


def registry_binary() -> str | None:
    """Path of the distribution server, or None when it is not installed."""
    for name in BINARIES:
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists()
                                       else None)
        if found:
            return found
    return None


def htpasswd_line(username: str, password: str) -> str:
    """One htpasswd entry. distribution accepts bcrypt only; cost 4 (the minimum) because it
    checks the password on every request of a push, and a test needs no brute-force margin."""
    import bcrypt

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{username}:{hashed}\n"


def config_yaml(port: int, storage: Path, htpasswd: Path) -> str:
    """distribution's configuration (JSON is valid YAML): loopback only, htpasswd auth."""
    config = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(storage)},
                    "delete": {"enabled": True}},
        # A fixed secret keeps the server from warning that it made one up.
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
        "auth": {"htpasswd": {"realm": "mhist-test-registry", "path": str(htpasswd)}},
    }
    return json.dumps(config, indent=2)


@dataclass(frozen=True)
class Manifest:
    """A manifest as served for one reference: its media type, digest and parsed body."""

    media_type: str
    digest: str
    body: dict


class LocalRegistry(ChildServer):
    """`docker-registry serve CONFIG` on a free port, waited for (/v2/ answers 401), stopped
    on exit. Everything it writes (config, htpasswd, blobs, log) is under `folder`."""

    name = "docker-registry"

    def __init__(self, folder: str | Path, username: str, password: str,
                 start_timeout: float = 60.0) -> None:
        binary = registry_binary()
        if binary is None:
            raise FileNotFoundError(f"no docker-registry binary: {INSTALL_HINT}")
        self.binary = binary
        self.folder = Path(folder)
        self.username, self.password = username, password
        self.port = free_port()
        self.start_timeout = start_timeout
        self.log_path = self.folder / "registry.log"
        self._process: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> LocalRegistry:
        self.folder.mkdir(parents=True, exist_ok=True)
        htpasswd = self.folder / "htpasswd"
        htpasswd.write_text(htpasswd_line(self.username, self.password))
        config = self.folder / "config.yml"
        config.write_text(config_yaml(self.port, self.folder / "storage", htpasswd))
        # REGISTRY_* variables override the file: keep a developer's from leaking in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen([self.binary, "serve", str(config)], stdout=log,
                                             stderr=subprocess.STDOUT, env=env)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """Ready when /v2/ asks for credentials: the API is up and auth is on."""
        def answered() -> bool:
            status = self.status("/v2/", auth=False)
            if status is not None and status != 401:
                raise RuntimeError(f"{self.url}/v2/ answered {status} without credentials: "
                                   f"auth is not on\n{self.logs()[-3000:]}")
            return status == 401

        self.wait_until(answered)

    def _request(self, path: str, auth: bool, headers: dict[str, str] | None = None
                 ) -> urllib.request.Request:
        request = urllib.request.Request(f"{self.url}{path}", headers=headers or {})
        if auth:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        return request

    def status(self, path: str, auth: bool = True) -> int | None:
        """HTTP status of GET path; None while nothing answers."""
        try:
            with urllib.request.urlopen(self._request(path, auth), timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def manifest(self, repository: str, reference: str) -> Manifest | None:
        """GET /v2/REPO/manifests/REF with every manifest type accepted; None on 404."""
        request = self._request(f"/v2/{repository}/manifests/{reference}", auth=True,
                                headers={"Accept": MANIFEST_ACCEPT})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return Manifest(response.headers["Content-Type"],
                                response.headers["Docker-Content-Digest"],
                                json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def tags(self, repository: str) -> list[str]:
        request = self._request(f"/v2/{repository}/tags/list", auth=True)
        with urllib.request.urlopen(request, timeout=30) as response:
            return sorted(json.loads(response.read()).get("tags") or [])

    def __enter__(self) -> LocalRegistry:
        return self if self._process is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
