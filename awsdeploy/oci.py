"""What an OCI registry (ECR, or any distribution server) holds under a tag: the read side of
the registry HTTP API v2, with the basic-auth credentials ECR's authorization token carries.

Used by awsdeploy.aws.build_and_push to refuse overwriting a tag that holds another image
(tags are immutable: the ECR repository says so too, the guard gives the clear message first).
No boto3 here, no engine: plain HTTP(S) with urllib.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass

# The single-image manifests Lambda and SageMaker accept, and the lists/indexes they do not.
IMAGE_MANIFESTS = ("application/vnd.docker.distribution.manifest.v2+json",
                   "application/vnd.oci.image.manifest.v1+json")
INDEX_MANIFESTS = ("application/vnd.docker.distribution.manifest.list.v2+json",
                   "application/vnd.oci.image.index.v1+json")


class RegistryError(RuntimeError):
    """The registry refused or failed a request; the message is one line for the user."""


@dataclass(frozen=True)
class Registry:
    """Where images are pushed and how to log in; `tls` False means plain HTTP (loopback)."""

    host: str  # HOST[:PORT], the start of every image reference pushed there
    username: str
    password: str
    tls: bool = True

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"


@dataclass(frozen=True)
class Held:
    """What a tag points at: the manifest's type and digest, and for a single image manifest
    the image id (its config digest, the same id the local engine shows)."""

    media_type: str
    digest: str
    image_id: str | None


def held_by_tag(registry: Registry, repository: str, tag: str, timeout: float = 60.0
                ) -> Held | None:
    """GET /v2/REPOSITORY/manifests/TAG; None when the tag does not exist (404)."""
    url = f"{registry.base_url}/v2/{repository}/manifests/{tag}"
    token = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    request = urllib.request.Request(url, headers={
        "Accept": ", ".join(IMAGE_MANIFESTS + INDEX_MANIFESTS),
        "Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            media_type = response.headers.get_content_type()
            digest = response.headers.get("Docker-Content-Digest", "")
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise RegistryError(f"{registry.host} answered {exc.code} {exc.reason} for the manifest "
                            f"of {repository}:{tag}") from None
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read {url}: {exc}") from None
    media_type = body.get("mediaType") or media_type
    config = body.get("config") or {}
    image_id = config.get("digest") if media_type in IMAGE_MANIFESTS else None
    return Held(media_type, digest, image_id)
