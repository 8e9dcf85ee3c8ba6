"""S3 in, S3 out: the Lambda function's entry for S3 `ObjectCreated` events.

    flow = entry_for(app)        # make_handler, at INIT: None unless S3_INPUT_URI is set
    flow(event, context)         # make_handler's handler, for every `Records` event

Events come straight from a bucket notification (an asynchronous invoke) or wrapped in SQS
messages (an event source mapping with ReportBatchItemFailures). For each record under
S3_INPUT_URI the object is read (If-Match the event's ETag), classified by the app's loaded
model, and `<S3_OUTPUT_URI prefix><key>.json` is written: /predict's JSON plus `source`
(bucket, key, etag, version_id) and `model_sha256`. The result's metadata repeats the source
ETag, version and model digest, so a redelivered event costs one HEAD: no second inference and
no second write. A new model (another sha256) classifies a redelivered object again. The read
is of the key's current object, If-Match the event's ETag (without one, its versionId must be
the current version's), even on a versioned bucket: an old event delivered late, or a forged
one, never overwrites the result of newer bytes. The event's `size` is never believed: the
size judged against S3_MAX_OBJECT_BYTES is S3's own, from the GET that confirmed the ETag.

Each record ends in one outcome, one JSON log line (`"event": "s3_object"`):
  predicted   the result was written
  duplicate   this model's result for this ETag exists: nothing written
  rejected    a poison object (not an image, over S3_MAX_OBJECT_BYTES, deleted, access denied):
              the error JSON is written at its result key, so it is never retried
  ignored     outside the input prefix, one of our results, not ObjectCreated, S3's test event
  superseded  the object was overwritten since the event (ETag mismatch): the newer event has it
  invalid     a malformed event, record or SQS body (an eTag or versionId no HTTP header
              can carry included): logged, never retried
  failed      the output location refuses the write or the HEAD: logged, not retried
  retry       a transient S3 or network error, or a bug: the direct invocation raises
              S3RetryableError (after every record) so Lambda's asynchronous retries run; an
              SQS message is listed in `batchItemFailures`, so only it returns to the queue

boto3 is imported here only, lazily: the Flask and SageMaker images do not install it.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote_plus

from flask import Flask

from services.core.errors import ServiceError
from services.core.model import InferenceModel
from services.web.hooks import access_log, error_log, take_cold_start
from services.web.inference import Inference
from services.web.settings import Settings
from services.web.state import runtime

RESULT_SUFFIX = ".json"
META_ETAG, META_VERSION, META_MODEL = "source-etag", "source-version-id", "model-sha256"
# Throttling and server-side codes worth a retry; any 5xx status is retried too.
_TRANSIENT = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                        "RequestTimeoutException", "InternalError", "ServiceUnavailable"})
# No result yet. Without s3:ListBucket (the policy deploy.py writes has none) S3 answers a HEAD
# of a missing key with 403, not 404; a real lack of access then shows on the PUT.
_ABSENT = frozenset({"404", "NoSuchKey", "NotFound", "403", "AccessDenied", "Forbidden"})
_RETRIED = "retry"  # the outcome of a record handed back for another delivery
# What an eTag (unquoted) and a versionId may hold: they travel in an If-Match header and a
# query string, so visible ASCII only (no CR/LF, no quote in an ETag), and S3's own are far
# shorter than 1024. Anything else is a malformed or forged record, not a transient failure.
_ETAG = re.compile(r"[\x21\x23-\x7e]{1,1024}")
_VERSION_ID = re.compile(r"[\x21-\x7e]{1,1024}")


class S3RetryableError(RuntimeError):
    """Raised from a direct invocation when a record failed transiently: Lambda retries it."""


class _Retry(Exception):
    """A transient failure: worth another delivery."""


class _Failed(Exception):
    """A permanent failure that is no object's fault (e.g. the output refuses writes)."""


class _Superseded(Exception):
    """The object no longer has the event's ETag (or version)."""


class _Poison(Exception):
    """The object the event names cannot be classified: `error` is written as its result."""

    def __init__(self, error: ServiceError, obj: S3Object) -> None:
        super().__init__(error.message)
        self.error, self.obj = error, obj


@dataclass(frozen=True)
class S3Object:
    bucket: str
    key: str
    etag: str | None
    version_id: str | None
    created: bool = True  # an ObjectCreated:* event (the others are ignored)

    def source(self) -> dict:
        return {"bucket": self.bucket, "key": self.key, "etag": self.etag,
                "version_id": self.version_id}


def is_records_event(event: Any) -> bool:
    """S3 notifications and SQS batches carry `Records`; no HTTP event does."""
    return isinstance(event, dict) and "Records" in event


def entry_for(app: Flask) -> S3Flow | None:
    """The S3 entry of a Lambda app with S3_INPUT_URI set (None otherwise), its client made now.

    Made at INIT on purpose: importing boto3 and building the client took ~0.6 s in the image
    (docs/aws.md, the S3 flow); the first S3 event would otherwise wait for it.
    """
    if runtime(app).settings.s3_input is None:
        return None
    flow = S3Flow(app)
    flow.client  # noqa: B018 - the import and client construction happen here, during INIT
    return flow


class _Client:
    """boto3's S3 client and botocore's error types, imported on first use."""

    def __init__(self) -> None:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

        # Region, credentials and AWS_ENDPOINT_URL(_S3) come from the standard variables;
        # a Config's retries would override AWS_MAX_ATTEMPTS / AWS_RETRY_MODE, so read them.
        attempts = os.environ.get("AWS_MAX_ATTEMPTS", "")
        retries = {"mode": os.environ.get("AWS_RETRY_MODE") or "standard",
                   "max_attempts": int(attempts) if attempts.isdigit() else 3}
        self.s3 = boto3.session.Session().client("s3", config=Config(
            retries=retries, connect_timeout=5, read_timeout=20))
        self.client_error, self.core_error = ClientError, BotoCoreError
        self.invalid_parameter = ParamValidationError

    def classify(self, exc: Exception) -> tuple[str, int, bool]:
        """(error code, HTTP status, transient?) of a failed S3 call."""
        if isinstance(exc, self.client_error):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            return code, status, status >= 500 or code in _TRANSIENT
        if isinstance(exc, self.invalid_parameter):  # a request botocore refuses to send
            return type(exc).__name__, 0, False
        return type(exc).__name__, 0, True  # BotoCoreError: connection, timeout, stream


class S3Flow:
    """Reads the objects an S3 event names, writes one result object per object."""

    def __init__(self, app: Flask) -> None:
        settings: Settings = runtime(app).settings
        if settings.s3_input is None or settings.s3_output is None:
            raise ValueError("S3_INPUT_URI and S3_OUTPUT_URI must be set for the S3 flow")
        self.app = app
        self.source, self.results = settings.s3_input, settings.s3_output
        self.max_bytes = settings.s3_max_object_bytes
        self._client: _Client | None = None

    @property
    def client(self) -> _Client:
        if self._client is None:
            self._client = _Client()
        return self._client

    # --- the event ------------------------------------------------------------------------

    def __call__(self, event: dict, context: Any) -> dict:
        started = time.perf_counter()
        log = _Log(getattr(context, "aws_request_id", None))
        records = event.get("Records")
        if not isinstance(records, list) or not records:
            log.invalid("the event's 'Records' is empty or not a list")
            answer: dict = {"outcomes": {}}
        elif _source_of(records[0]) == "aws:sqs":
            answer = self._sqs(records, log)
        else:
            answer = {"outcomes": self._direct(records, log)}
        log.summary(started, answer)
        if log.outcomes[_RETRIED] and "batchItemFailures" not in answer:
            raise S3RetryableError(f"{log.outcomes[_RETRIED]} of {sum(log.outcomes.values())} "
                                   "records failed transiently; the invocation is retried")
        return answer

    def _direct(self, records: list, log: _Log) -> dict:
        for record in records:
            if _source_of(record) != "aws:s3":
                log.invalid(f"a record's eventSource is {_source_of(record)!r}, not 'aws:s3'")
                continue
            self._record(record, log)
        return dict(log.outcomes)

    def _sqs(self, records: list, log: _Log) -> dict:
        """One SQS batch: a message whose records failed transiently goes back to the queue."""
        failures = []
        for message in records:
            if _source_of(message) != "aws:sqs":
                log.invalid(f"a record's eventSource is {_source_of(message)!r} in an SQS batch")
                continue
            before = log.outcomes[_RETRIED]
            for record in _s3_records_in(message, log):
                self._record(record, log)
            if log.outcomes[_RETRIED] > before and isinstance(message.get("messageId"), str):
                failures.append({"itemIdentifier": message["messageId"]})
        return {"batchItemFailures": failures}

    def _record(self, record: Any, log: _Log) -> None:
        started = time.perf_counter()
        try:
            obj = _s3_object(record)
        except ValueError as exc:
            log.invalid(str(exc))
            return
        try:
            outcome, detail = self.process(obj)
        except _Retry as exc:
            outcome, detail = _RETRIED, {"message": str(exc), "retry": True}
        except _Failed as exc:
            outcome, detail = "failed", {"message": str(exc), "retry": False}
        except Exception as exc:  # noqa: BLE001 - a bug: logged with its traceback, retried
            error_log.exception(json.dumps({"event": "s3_object", "outcome": "failed",
                                            "type": type(exc).__name__, **obj.source()}))
            outcome, detail = _RETRIED, {"message": f"unexpected {type(exc).__name__}",
                                         "retry": True}
        log.record(outcome, obj, started, detail)

    # --- one object -----------------------------------------------------------------------

    def process(self, obj: S3Object) -> tuple[str, dict]:
        """The outcome for one object and what the log line says about it."""
        if not obj.created:
            return "ignored", {"reason": "not an ObjectCreated event"}
        if not self.source.holds(obj.bucket, obj.key) or self.results.holds(obj.bucket, obj.key):
            return "ignored", {"reason": f"outside {self.source}"}
        result_key = f"{self.results.prefix}{obj.key}{RESULT_SUFFIX}"
        detail: dict[str, Any] = {"result": f"s3://{self.results.bucket}/{result_key}"}
        model = self._model()
        if obj.etag and self._has_result(result_key, obj, model):
            return "duplicate", detail
        try:
            data, read = self._read(obj)
        except _Superseded:
            return "superseded", detail
        except _Poison as poison:
            self._write(result_key, poison.obj, model, _error_document(poison.error))
            return "rejected", {**detail, "error": poison.error.code}
        if not obj.etag and self._has_result(result_key, read, model):
            return "duplicate", detail
        started = time.perf_counter()
        try:
            prediction = Inference(self.app).one(data, "s3")
        except ServiceError as exc:
            if exc.status_code >= 500:
                raise _Retry(exc.message) from None
            self._write(result_key, read, model, _error_document(exc))
            return "rejected", {**detail, "error": exc.code}
        detail["inference_ms"] = round((time.perf_counter() - started) * 1000.0, 3)
        self._write(result_key, read, model, prediction)
        return "predicted", detail

    def _model(self) -> InferenceModel:
        try:
            return runtime(self.app).state.require()
        except ServiceError as exc:  # 503: the model is not loaded (yet)
            raise _Retry(exc.message) from None

    def _has_result(self, result_key: str, obj: S3Object, model: InferenceModel) -> bool:
        """A result written from these bytes (this ETag, whatever the version) by this model
        exists."""
        client = self.client
        try:
            head = client.s3.head_object(Bucket=self.results.bucket, Key=result_key)
        except (client.client_error, client.core_error) as exc:
            code, status, transient = client.classify(exc)
            if code in _ABSENT or status in (403, 404):
                return False
            raise (_Retry if transient else _Failed)(
                f"cannot read s3://{self.results.bucket}/{result_key}: {code or status}"
            ) from None
        meta = head.get("Metadata") or {}
        return meta.get(META_ETAG) == obj.etag and meta.get(META_MODEL) == model.sha256

    def _read(self, obj: S3Object) -> tuple[bytes, S3Object]:
        """The key's current bytes if they are the ones the event names, and the object as read.

        The event names them by ETag (If-Match: S3 answers 412 for any other bytes) or, without
        one, by versionId, compared with the current version's. Only then is the size judged,
        from S3's ContentLength: the event's size is a claim (a forged SQS message may say
        10^18), and a stale event judged on it replaced the result of newer bytes.
        _Poison (written as its result), _Superseded or _Retry otherwise."""
        client = self.client
        request = {"Bucket": obj.bucket, "Key": obj.key}
        if obj.etag:  # not VersionId: an old version's late event must not win
            request["IfMatch"] = f'"{obj.etag}"'
        try:
            response = client.s3.get_object(**request)
        except (client.client_error, client.core_error) as exc:
            raise self._read_error(obj, exc) from None
        body = response["Body"]
        try:
            read = replace(obj, etag=str(response.get("ETag", "")).strip('"') or obj.etag,
                           version_id=response.get("VersionId") or obj.version_id)
            if not obj.etag and obj.version_id and response.get("VersionId") != obj.version_id:
                raise _Superseded()  # another version is current now (or none ever was)
            length = response.get("ContentLength")
            if length is not None and length > self.max_bytes:
                raise _Poison(self._too_large(length), read)
            data = body.read(self.max_bytes + 1)  # never more than the limit in memory
        except (client.client_error, client.core_error) as exc:
            raise self._read_error(obj, exc) from None
        finally:
            body.close()
        if len(data) > self.max_bytes:
            raise _Poison(self._too_large(len(data)), read)
        return data, read

    def _read_error(self, obj: S3Object, exc: Exception) -> Exception:
        code, status, transient = self.client.classify(exc)
        where = f"s3://{obj.bucket}/{obj.key}"
        if code == "PreconditionFailed" or status == 412:
            return _Superseded()
        if transient:
            return _Retry(f"reading {where}: {code or status}")
        if code in ("NoSuchKey", "NoSuchVersion"):
            error = ServiceError(404, "object_not_found",
                                 f"{where} does not exist (deleted after the event?).")
        elif code == "NoSuchBucket":
            error = ServiceError(404, "bucket_not_found", f"Bucket {obj.bucket} does not exist.")
        elif code == "AccessDenied" or status == 403:
            error = ServiceError(403, "access_denied", f"The function may not read {where}, or "
                                 "it no longer exists (without s3:ListBucket S3 answers 403 for "
                                 "both): its role needs s3:GetObject on the input prefix.")
        else:
            error = ServiceError(422, "object_unreadable", f"S3 refused to read {where}: {code}.")
        return _Poison(error, obj)

    def _too_large(self, size: int) -> ServiceError:
        return ServiceError(413, "payload_too_large", f"The object is {size} bytes; "
                            f"S3_MAX_OBJECT_BYTES allows {self.max_bytes}.")

    def _write(self, result_key: str, obj: S3Object, model: InferenceModel,
               answer: dict) -> None:
        document = {**answer, "source": obj.source(), "model_sha256": model.sha256}
        metadata = {META_ETAG: obj.etag or "", META_MODEL: model.sha256}
        if obj.version_id:
            metadata[META_VERSION] = obj.version_id
        client = self.client
        try:
            client.s3.put_object(Bucket=self.results.bucket, Key=result_key,
                                 Body=json.dumps(document).encode(), Metadata=metadata,
                                 ContentType="application/json")
        except (client.client_error, client.core_error) as exc:
            code, status, transient = client.classify(exc)
            hint = " (the role needs s3:PutObject on the output prefix)" if status == 403 else ""
            raise (_Retry if transient else _Failed)(
                f"cannot write s3://{self.results.bucket}/{result_key}: {code or status}{hint}"
            ) from None


def _error_document(exc: ServiceError) -> dict:
    return {**exc.to_dict(), "status": exc.status_code}


# --- reading events ---------------------------------------------------------------------------

def _source_of(record: Any) -> Any:
    return record.get("eventSource") if isinstance(record, dict) else None


def _s3_records_in(message: dict, log: _Log) -> list:
    """The S3 records one SQS message carries (its body: an S3 event, or one inside SNS)."""
    try:
        body = json.loads(message.get("body") or "")
        if isinstance(body, dict) and body.get("Type") == "Notification":  # S3 → SNS → SQS
            body = json.loads(body.get("Message") or "")
    except (TypeError, ValueError, RecursionError):
        log.invalid(f"SQS message {message.get('messageId')!r}: the body is not JSON")
        return []
    if isinstance(body, dict) and body.get("Event") == "s3:TestEvent":
        log.ignored_test_event()
        return []
    records = body.get("Records") if isinstance(body, dict) else None
    if not isinstance(records, list) or not records:
        log.invalid(f"SQS message {message.get('messageId')!r}: the body is no S3 event")
        return []
    return records


def _s3_object(record: Any) -> S3Object:
    """One S3 event record → the object it names; ValueError naming what is malformed."""
    if not isinstance(record, dict) or not isinstance(record.get("s3"), dict):
        raise ValueError("malformed S3 record: no 's3' object")
    bucket = record["s3"].get("bucket")
    item = record["s3"].get("object")
    name = bucket.get("name") if isinstance(bucket, dict) else None
    key = item.get("key") if isinstance(item, dict) else None
    if not isinstance(name, str) or not name or not isinstance(key, str) or not key:
        raise ValueError("malformed S3 record: 's3.bucket.name' or 's3.object.key' is missing")
    # `size` is not read: only S3's own length, once the ETag is confirmed, is believed.
    etag = _checked(item, "eTag", _ETAG, lambda value: value.strip('"'))
    version = _checked(item, "versionId", _VERSION_ID, lambda value: value)
    created = str(record.get("eventName", "ObjectCreated:")).startswith("ObjectCreated:")
    return S3Object(
        bucket=name, key=unquote_plus(key),  # keys arrive URL-encoded, spaces as '+'
        etag=etag, version_id=version, created=created)


def _checked(item: dict, field: str, pattern: re.Pattern, clean: Callable[[str], str]
             ) -> str | None:
    """`item[field]` cleaned, None when absent or empty; ValueError when it is not a string
    S3 could have written (it would be sent as a header or query and fail in botocore)."""
    value = item.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not pattern.fullmatch(clean(value)):
        shown = repr(value) if len(repr(value)) <= 80 else f"{repr(value)[:77]}..."
        raise ValueError(f"malformed S3 record: 's3.object.{field}' must be 1 to 1024 visible "
                         f"ASCII characters, got {shown}")
    return clean(value)


# --- log lines --------------------------------------------------------------------------------

class _Log:
    """One JSON line per record and one per invocation, tallying outcomes."""

    def __init__(self, request_id: str | None) -> None:
        self.request_id = request_id
        self.outcomes: Counter[str] = Counter()

    def _line(self, fields: dict, error: bool = False) -> None:
        line = json.dumps({**fields, "request_id": self.request_id, "target": "lambda"})
        (error_log.error if error else access_log.info)(line)

    def record(self, outcome: str, obj: S3Object, started: float, detail: dict) -> None:
        self.outcomes[outcome] += 1
        self._line({"event": "s3_object", "outcome": outcome, **obj.source(), **detail,
                    "latency_ms": round((time.perf_counter() - started) * 1000.0, 3)},
                   error=outcome == "failed")

    def invalid(self, reason: str) -> None:
        self.outcomes["invalid"] += 1
        self._line({"event": "s3_object", "outcome": "invalid", "message": reason,
                    "retry": False}, error=True)

    def ignored_test_event(self) -> None:
        self.outcomes["ignored"] += 1
        self._line({"event": "s3_object", "outcome": "ignored", "reason": "s3:TestEvent"})

    def summary(self, started: float, answer: dict) -> None:
        self._line({"event": "s3_invocation", "outcomes": dict(self.outcomes),
                    "retry": self.outcomes[_RETRIED] > 0 and "batchItemFailures" not in answer,
                    "batch_item_failures": len(answer.get("batchItemFailures", [])),
                    "latency_ms": round((time.perf_counter() - started) * 1000.0, 3),
                    "cold_start": take_cold_start()})
