"""Security: API token, non-root images, no credentials in the repository or image layers,
safe response headers and a CSP that allows no external origin.
"""

from __future__ import annotations

import re
import subprocess
import tarfile
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from awsdeploy.container_engine import REPO_ROOT
from services.adapters.aws_lambda import app_of
from services.targets import TARGETS
from services.web.state import runtime
from tests.support.containers import run_container, wait_for_http
from tests.support.corpus import small_png
from tests.support.images import built_image, image_user
from tests.support.targets import (
    TARGET_NAMES,
    LambdaTarget,
    Reply,
    Target,
    all_targets,
    lambda_reply,
)

TOKEN = "robust-test-token-0123456789abcdef"  # test-only, not a secret
WRONG_AUTH = [
    None,
    "Bearer wrong-token",
    f"Bearer {TOKEN}x",
    f"Bearer {TOKEN[:-1]}",
    f"Basic {TOKEN}",
    TOKEN,
    "Bearer ",
    "Bearer \u00fcnicode-token",
]


# --- API token ----------------------------------------------------------------------------------

def _inference_count(exposition: str) -> float:
    """Images predicted + rejected and model calls: any inference moves one of these."""
    total = 0.0
    for family in text_string_to_metric_families(exposition):
        if family.name in ("mhist_images", "mhist_inference_duration_seconds"):
            for sample in family.samples:
                if sample.name.endswith(("_total", "_count")):
                    total += sample.value
    return total


def _auth(value: str | None) -> dict[str, str]:
    return {"Content-Type": "image/png", **({"Authorization": value} if value else {})}


@pytest.fixture(scope="module")
def token_targets(model_int8_path: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> list[Target]:
    return all_targets(model_int8_path, tmp_path_factory.mktemp("token"),
                       env={"MHIST_API_TOKEN": TOKEN})


def _metrics_text(target: Target) -> str:
    app = app_of(target.module.handler) if isinstance(target, LambdaTarget) else target.app
    return runtime(app).metrics.exposition()[0].decode()


@pytest.mark.parametrize("auth", WRONG_AUTH, ids=lambda a: repr(a)[:24])
@pytest.mark.parametrize("index", range(len(TARGET_NAMES)), ids=TARGET_NAMES)
def test_token_required_and_no_inference_without_it(index: int, auth: str | None,
                                                    token_targets: list[Target]) -> None:
    target = token_targets[index]
    before = _inference_count(_metrics_text(target))
    for path, body in (("/predict", small_png()), ("/predict/batch", small_png())):
        reply = target.request("POST", path, _auth(auth), body)
        assert (reply.status, reply.error_code) == (401, "unauthorized"), reply.body[:300]
    for path in ("/metadata", "/metrics"):
        assert target.request("GET", path, _auth(auth)).status == 401
    assert _inference_count(_metrics_text(target)) == before


@pytest.mark.parametrize("index", range(len(TARGET_NAMES)), ids=TARGET_NAMES)
def test_probes_open_and_right_token_predicts(index: int, token_targets: list[Target]) -> None:
    target = token_targets[index]
    for path in ("/health", "/ready", "/"):
        assert target.request("GET", path).status == 200, path
    before = _inference_count(_metrics_text(target))
    reply = target.request("POST", "/predict", _auth(f"Bearer {TOKEN}"), small_png())
    assert reply.status == 200, reply.body[:300]
    assert _inference_count(_metrics_text(target)) > before  # the counter does move


@pytest.mark.container
def test_token_in_the_flask_container(require_containers: str, model_int8_path: Path) -> None:
    image = built_image("flask", model_int8_path)
    with run_container(image, port=8080, engine=require_containers,
                       env={"MHIST_API_TOKEN": TOKEN, "WEB_CONCURRENCY": "1"}) as box:
        wait_for_http(box.url("/ready"), timeout=90, container=box)
        good = {"Authorization": f"Bearer {TOKEN}"}
        before = _inference_count(requests.get(box.url("/metrics"), headers=good, timeout=10).text)
        for auth in WRONG_AUTH[:4]:
            response = requests.post(box.url("/predict"), data=small_png(), headers=_auth(auth),
                                     timeout=10)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "unauthorized"
        after = _inference_count(requests.get(box.url("/metrics"), headers=good, timeout=10).text)
        assert requests.get(box.url("/health"), timeout=10).status_code == 200
        ok = requests.post(box.url("/predict"), data=small_png(),
                           headers=_auth(good["Authorization"]), timeout=10)
    assert after == before
    assert ok.status_code == 200


# --- images: non-root, no credentials in any layer -----------------------------------------------

@pytest.mark.container
@pytest.mark.parametrize("target", TARGETS)
def test_image_runs_as_non_root(target: str, require_containers: str,
                                model_int8_path: Path) -> None:
    assert image_user(built_image(target, model_int8_path)) not in ("", "0")


AWS_PATTERNS = [
    re.compile(rb"(?<![A-Z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Z0-9])"),
    re.compile(rb"(?i)aws_secret_access_key\s*[=:]\s*[\"']?[A-Za-z0-9/+]{40}"),
]
# AWS's documentation examples are fine anywhere (they open no account).
ALLOWED = re.compile(rb"EXAMPLE")


def find_aws_keys(data: bytes) -> list[bytes]:
    hits = []
    for pattern in AWS_PATTERNS:
        for match in pattern.finditer(data):
            if not ALLOWED.search(data[match.start():match.end() + 40]):
                hits.append(match.group(0)[:60])
    return hits


def test_key_scanner_finds_keys() -> None:
    """The scanner itself can fail: built-up fake keys are found, examples are not."""
    fake_id = ("AK" + "IA" + "Q" * 8 + "Z" * 8).encode()
    fake_secret = b"aws_secret_access_key = " + b"a1B2" * 10
    assert find_aws_keys(b"x " + fake_id + b" y") == [fake_id]
    assert len(find_aws_keys(fake_secret)) == 1
    assert find_aws_keys(b"AKIAIOSFODNN7EXAMPLE") == []


def test_repository_has_no_aws_keys() -> None:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=REPO_ROOT, capture_output=True, check=True).stdout
    files = [REPO_ROOT / name for name in listed.decode().split("\0") if name]
    assert files, "git ls-files listed nothing"
    hits = {str(path.relative_to(REPO_ROOT)): found for path in files if path.is_file()
            for found in [find_aws_keys(path.read_bytes())] if found}
    assert hits == {}


@pytest.mark.container
@pytest.mark.parametrize("target", list(TARGETS))
def test_image_layers_have_no_aws_keys(target: str, require_containers: str,
                                       model_int8_path: Path, tmp_path: Path) -> None:
    tag = built_image(target, model_int8_path)
    archive = tmp_path / "image.tar"
    subprocess.run([require_containers, "save", "--format", "docker-archive", "-o", str(archive),
                    tag], check=True, capture_output=True, timeout=300)
    hits: dict[str, list[bytes]] = {}
    scanned = 0
    with tarfile.open(archive) as outer:
        for layer in outer:
            if not layer.isfile() or not layer.name.endswith(".tar"):
                continue
            with tarfile.open(fileobj=outer.extractfile(layer)) as inner:
                for member in inner:
                    if member.isfile():
                        scanned += 1
                        found = find_aws_keys(inner.extractfile(member).read())
                        if found:
                            hits[f"{layer.name}:{member.name}"] = found
    assert scanned > 1000, f"only {scanned} files scanned: is {archive.name} a docker-archive?"
    assert hits == {}


# --- response headers and the page's CSP ----------------------------------------------------------

@pytest.fixture(scope="module")
def targets(model_int8_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Target]:
    return {t.name: t for t in all_targets(model_int8_path, tmp_path_factory.mktemp("security"))}


def _sample_replies(target: Target) -> list[tuple[str, Reply]]:
    png = small_png()
    replies = [
        ("health", target.request("GET", target.health_path)),
        ("predict", target.predict(png, "image/png")),
        ("bad image", target.predict(b"not an image", "image/png")),
        ("415", target.post("predict", {"Content-Type": "text/plain"}, png)),
        ("404", target.request("GET", "/no/such/page")),
    ]
    if isinstance(target, LambdaTarget):  # answers the wrapper builds itself
        replies.append(("invalid event", lambda_reply(target.invoke({"httpMethod": 1}))))
        replies.append(("unsupported event", lambda_reply(target.invoke({"Records": []}))))
    return replies


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_every_response_has_nosniff(name: str, targets: dict[str, Target]) -> None:
    missing = [label for label, reply in _sample_replies(targets[name])
               if reply.headers.get("x-content-type-options") != "nosniff"]
    assert missing == [], f"{name}: no 'X-Content-Type-Options: nosniff' on {missing}"


EXTERNAL = re.compile(r"^(?:\*|https?:|wss?:|ftp:|//|[\w-]+(?:\.[\w-]+)+)", re.IGNORECASE)
ALLOWED_SOURCES = {"'self'", "'none'", "blob:", "data:"}


def csp_directives(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            directives[words[0].lower()] = words[1:]
    return directives


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_page_csp_allows_no_external_origin(name: str, targets: dict[str, Target]) -> None:
    reply = targets[name].request("GET", "/")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/html")
    directives = csp_directives(reply.headers["content-security-policy"])
    assert directives.get("default-src") == ["'none'"], directives
    for directive, sources in directives.items():
        for source in sources:
            assert not EXTERNAL.match(source), (directive, source)
            if directive.endswith("-src"):
                assert source in ALLOWED_SOURCES, (directive, source)
    assert directives.get("frame-ancestors") == ["'none'"]
    # And the page itself pulls nothing from elsewhere.
    html = reply.body.decode()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html, re.IGNORECASE)
