"""Builders for the events S3 hands a Lambda function: a bucket notification, or SQS messages
carrying one (an SQS event source mapping).

Shapes follow the AWS documentation ("Event message structure" for S3, "Using Lambda with
Amazon SQS"): the object key is URL-encoded with spaces as '+', the ETag is bare hex. moto's own
notifications (S3 → SQS in server mode) produce the same shape; the end-to-end tests use those.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any
from urllib.parse import quote_plus

from tests.support.events import ACCOUNT_ID, REGION


def make_s3_record(*, bucket: str, key: str, etag: str | None, size: int = 0,
                   version_id: str | None = None,
                   event_name: str = "ObjectCreated:Put") -> dict[str, Any]:
    """One record of an S3 event notification (eventVersion 2.1)."""
    item: dict[str, Any] = {"key": quote_plus(key, safe="/"), "size": size,
                            "sequencer": f"{time.time_ns():X}"}
    if etag is not None:
        item["eTag"] = etag.strip('"')
    if version_id is not None:
        item["versionId"] = version_id
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": REGION,
        "eventTime": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "eventName": event_name,
        "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "203.0.113.10"},
        "responseElements": {"x-amz-request-id": uuid.uuid4().hex[:16].upper(),
                             "x-amz-id-2": uuid.uuid4().hex},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "mhist-s3-in",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "A3EXAMPLE"},
                       "arn": f"arn:aws:s3:::{bucket}"},
            "object": item,
        },
    }


def make_s3_event(*records: dict[str, Any]) -> dict[str, Any]:
    return {"Records": list(records)}


def make_sqs_event(*bodies: dict[str, Any] | str, queue: str = "mhist-s3-events"
                   ) -> dict[str, Any]:
    """An SQS event source mapping's batch: one message per body (dicts become JSON)."""
    records = []
    for body in bodies:
        text = body if isinstance(body, str) else json.dumps(body)
        records.append({
            "messageId": str(uuid.uuid4()),
            "receiptHandle": uuid.uuid4().hex,
            "body": text,
            "attributes": {"ApproximateReceiveCount": "1",
                           "SentTimestamp": str(int(time.time() * 1000)),
                           "SenderId": "AIDAEXAMPLE",
                           "ApproximateFirstReceiveTimestamp": str(int(time.time() * 1000))},
            "messageAttributes": {},
            "md5OfBody": hashlib.md5(text.encode()).hexdigest(),
            "eventSource": "aws:sqs",
            "eventSourceARN": f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{queue}",
            "awsRegion": REGION,
        })
    return {"Records": records}
