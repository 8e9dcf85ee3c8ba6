"""Hostile S3 events ("Hostile clients, third round"): stale, forged and malformed records.

Against moto's S3 in server mode, through make_handler as in tests/test_lambda_s3.py:
- an event older than the object, or forged (a made-up ETag, a size of 10^18), must never
  replace the result written for the object's current bytes — the size is S3's, judged after
  the ETag is confirmed, never the event's;
- an eTag or versionId that no HTTP header or query may carry (CR/LF, non-ASCII) is a malformed
  record: logged as invalid, never retried (an SQS message would loop to its DLQ).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from services.adapters.aws_lambda import make_handler
from services.web.hooks import access_log, error_log
from tests.support.lambda_local import LambdaContext
from tests.support.logs import json_log_lines
from tests.support.moto import MotoServer
from tests.support.s3_events import make_s3_event, make_s3_record, make_sqs_event
from tests.support.targets import patched_environ

pytestmark = pytest.mark.aws


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory):
    with MotoServer(log_dir=tmp_path_factory.mktemp("moto-hostile-s3")) as server:
        yield server


@pytest.fixture(scope="module")
def s3(moto: MotoServer):
    """moto's S3; this process's boto3 (the flow's client) talks to moto, never to AWS."""
    with patched_environ(moto.env()):
        yield moto.client("s3")


class Bucket:
    """An input bucket (incoming/) and a versioned output bucket (results/): every PUT of a
    result is a version, so writes can be counted."""

    def __init__(self, s3, versioned_input: bool = False) -> None:
        tag = uuid.uuid4().hex[:8]
        self.s3, self.input, self.output = s3, f"in-{tag}", f"out-{tag}"
        for bucket in (self.input, self.output):
            s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(Bucket=self.output,
                                 VersioningConfiguration={"Status": "Enabled"})
        if versioned_input:
            s3.put_bucket_versioning(Bucket=self.input,
                                     VersioningConfiguration={"Status": "Enabled"})

    def handler(self, model_path: Path, **extra: str):
        return make_handler({"MODEL_PATH": str(model_path),
                             "S3_INPUT_URI": f"s3://{self.input}/incoming/",
                             "S3_OUTPUT_URI": f"s3://{self.output}/results/", **extra})

    def put(self, key: str, data: bytes) -> dict:
        """Upload; the S3 event for it, as S3 writes it (ETag, size, version)."""
        put = self.s3.put_object(Bucket=self.input, Key=key, Body=data)
        return make_s3_event(make_s3_record(bucket=self.input, key=key, etag=put["ETag"],
                                            size=len(data), version_id=put.get("VersionId")))

    def result(self, key: str) -> dict:
        body = self.s3.get_object(Bucket=self.output, Key=f"results/{key}.json")["Body"]
        return json.loads(body.read())

    def writes(self, key: str) -> int:
        versions = self.s3.list_object_versions(Bucket=self.output, Prefix=f"results/{key}.json")
        return len(versions.get("Versions", []))


@pytest.fixture
def log_lines():
    with json_log_lines(access_log, error_log) as lines:
        yield lines


def objects(lines: list[dict]) -> list[dict]:
    return [x for x in lines if x.get("event") == "s3_object"]


@pytest.mark.parametrize("versioned", [False, True], ids=["plain", "versioned"])
def test_a_stale_oversized_event_never_replaces_the_newer_prediction(
        s3, model_int8_path, sample_image_bytes, versioned, log_lines):
    """Once: the stale event's `payload_too_large` replaced the prediction of newer bytes."""
    bucket = Bucket(s3, versioned_input=versioned)
    limit = len(sample_image_bytes) + 100
    handler = bucket.handler(model_int8_path, S3_MAX_OBJECT_BYTES=str(limit))
    key = "incoming/overwritten.png"
    stale = bucket.put(key, b"\0" * (limit + 1))  # over the limit, then overwritten
    fresh = bucket.put(key, sample_image_bytes)
    assert handler(fresh, LambdaContext()) == {"outcomes": {"predicted": 1}}
    predicted = bucket.result(key)
    assert predicted["label"]

    assert handler(stale, LambdaContext()) == {"outcomes": {"superseded": 1}}
    assert handler(make_sqs_event(stale), LambdaContext()) == {"batchItemFailures": []}
    assert bucket.result(key) == predicted and bucket.writes(key) == 1
    assert [x["outcome"] for x in objects(log_lines)] == ["predicted", "superseded",
                                                          "superseded"]


def test_a_forged_event_reads_nothing_and_replaces_nothing(
        s3, model_int8_path, sample_image_bytes, log_lines):
    """Once: a forged SQS message (a made-up ETag, size 10^18) replaced any key's result."""
    bucket = Bucket(s3)
    handler = bucket.handler(model_int8_path)
    key = "incoming/victim.png"
    assert handler(bucket.put(key, sample_image_bytes), LambdaContext()) == {
        "outcomes": {"predicted": 1}}
    predicted = bucket.result(key)
    forged = make_s3_event(make_s3_record(bucket=bucket.input, key=key, etag="f" * 32,
                                          size=10**18))
    assert handler(make_sqs_event(forged), LambdaContext()) == {"batchItemFailures": []}
    assert handler(forged, LambdaContext()) == {"outcomes": {"superseded": 1}}
    assert bucket.result(key) == predicted and bucket.writes(key) == 1


def test_the_size_that_counts_is_the_objects_not_the_events(
        s3, model_int8_path, sample_image_bytes):
    """The event's size is only a claim: too small a claim does not let a large object in,
    too large a claim does not keep a small one out."""
    bucket = Bucket(s3)
    limit = len(sample_image_bytes) + 100
    handler = bucket.handler(model_int8_path, S3_MAX_OBJECT_BYTES=str(limit))
    small_claim = bucket.put("incoming/large.png", b"\0" * (limit + 1))
    small_claim["Records"][0]["s3"]["object"]["size"] = 10
    assert handler(small_claim, LambdaContext()) == {"outcomes": {"rejected": 1}}
    large = bucket.result("incoming/large.png")
    assert large["error"]["code"] == "payload_too_large" and large["status"] == 413
    assert large["source"]["etag"] and f"{limit + 1} bytes" in large["error"]["message"]

    large_claim = bucket.put("incoming/small.png", sample_image_bytes)
    large_claim["Records"][0]["s3"]["object"]["size"] = 10**18
    assert handler(large_claim, LambdaContext()) == {"outcomes": {"predicted": 1}}


def test_a_version_only_event_for_an_old_version_is_superseded(
        s3, model_int8_path, sample_image_bytes):
    """Without an ETag the event's versionId must be the current one: an old version's late
    event never wins."""
    bucket = Bucket(s3, versioned_input=True)
    handler = bucket.handler(model_int8_path)
    key = "incoming/versions.png"
    old = bucket.put(key, b"v1: not an image")
    new = bucket.put(key, sample_image_bytes)
    assert handler(new, LambdaContext()) == {"outcomes": {"predicted": 1}}
    predicted = bucket.result(key)
    del old["Records"][0]["s3"]["object"]["eTag"]
    assert handler(old, LambdaContext()) == {"outcomes": {"superseded": 1}}
    assert bucket.result(key) == predicted and bucket.writes(key) == 1


@pytest.mark.parametrize(("field", "value"), [
    ("eTag", "0123abcd\r\nX-Injected: yes"),
    ("eTag", "0123abcd\n"),
    ("eTag", "étag-ünicode"),
    ("eTag", "a" * 5000),
    ("versionId", "v1\r\nX-Injected: yes"),
    ("versionId", "vérsion"),
], ids=["etag-crlf", "etag-lf", "etag-non-ascii", "etag-huge", "version-crlf",
        "version-non-ascii"])
def test_an_unsendable_etag_or_version_is_a_malformed_record(
        s3, model_int8_path, sample_image_bytes, field, value, log_lines):
    """Once: botocore refused the header, the record was classed transient and retried for
    ever (an SQS message looped to its dead-letter queue)."""
    bucket = Bucket(s3)
    handler = bucket.handler(model_int8_path)
    event = bucket.put("incoming/odd.png", sample_image_bytes)
    event["Records"][0]["s3"]["object"][field] = value
    assert handler(event, LambdaContext()) == {"outcomes": {"invalid": 1}}  # no raise: no retry
    assert handler(make_sqs_event(event), LambdaContext()) == {"batchItemFailures": []}
    lines = objects(log_lines)
    assert [x["outcome"] for x in lines] == ["invalid", "invalid"]
    assert all(x["retry"] is False and field in x["message"] for x in lines)
    assert "\n" not in "".join(x["message"] for x in lines)
    assert bucket.s3.list_objects_v2(Bucket=bucket.output).get("KeyCount") == 0
