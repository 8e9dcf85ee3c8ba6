"""Builders for the events AWS hands a Lambda function for an HTTP request.

Shapes follow the AWS documentation (and apig-wsgi's own test builders): API Gateway REST API
(payload 1.0), HTTP API (payload 2.0), Lambda Function URL (2.0 shape on a lambda-url domain)
and Application Load Balancer. Keyword arguments only; `body` is bytes and becomes a base64
string with `isBase64Encoded: true` when `binary=True` — as API Gateway does for
binaryMediaTypes, HTTP API / URLs / ALB do for non-text bodies.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any
from urllib.parse import urlencode

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"


def _body_fields(body: bytes | str | None, binary: bool) -> tuple[str | None, bool]:
    if body is None:
        return None, False
    if binary:
        data = body.encode() if isinstance(body, str) else body
        return base64.b64encode(data).decode("ascii"), True
    return (body.decode("utf-8") if isinstance(body, bytes) else body), False


def make_v1_event(*, method: str = "GET", path: str = "/", headers: dict[str, str] | None = None,
                  query: dict[str, str] | None = None, body: bytes | str | None = None,
                  binary: bool = False, multi_value_headers: bool = True,
                  stage: str = "prod") -> dict[str, Any]:
    """API Gateway REST API proxy event (payload format 1.0)."""
    headers = dict(headers or {})
    body_text, encoded = _body_fields(body, binary)
    event: dict[str, Any] = {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "queryStringParameters": dict(query) if query else None,
        "multiValueQueryStringParameters": ({k: [v] for k, v in query.items()}
                                            if query else None),
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": "a1b2c3d4e5",
            "resourceId": "abc123",
            "resourcePath": "/{proxy+}",
            "httpMethod": method,
            "path": f"/{stage}{path}",
            "protocol": "HTTP/1.1",
            "stage": stage,
            "requestId": str(uuid.uuid4()),
            "requestTimeEpoch": int(time.time() * 1000),
            "identity": {"sourceIp": "203.0.113.10", "userAgent": "pytest"},
        },
        "body": body_text,
        "isBase64Encoded": encoded,
    }
    if multi_value_headers:
        # REST APIs send both forms; apig-wsgi then answers with multiValueHeaders.
        event["multiValueHeaders"] = {k: [v] for k, v in headers.items()}
    return event


def make_v2_event(*, method: str = "GET", path: str = "/", headers: dict[str, str] | None = None,
                  query: dict[str, str] | None = None, cookies: list[str] | None = None,
                  body: bytes | str | None = None, binary: bool = False,
                  domain_name: str = "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com",
                  route_key: str | None = None) -> dict[str, Any]:
    """API Gateway HTTP API proxy event (payload format 2.0); header names are lower case."""
    body_text, encoded = _body_fields(body, binary)
    api_id = domain_name.split(".", 1)[0]
    now = time.time()
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key or f"{method} {path}",
        "rawPath": path,
        "rawQueryString": urlencode(query or {}),
        "headers": {k.lower(): v for k, v in (headers or {}).items()} | {"host": domain_name},
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": api_id,
            "domainName": domain_name,
            "domainPrefix": api_id,
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.10",
                "userAgent": "pytest",
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": route_key or f"{method} {path}",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": encoded,
    }
    if query:
        event["queryStringParameters"] = dict(query)
    if cookies:
        event["cookies"] = list(cookies)
    if body_text is not None:  # HTTP API omits `body` when there is none
        event["body"] = body_text
    return event


def make_function_url_event(*, method: str = "GET", path: str = "/",
                            headers: dict[str, str] | None = None,
                            query: dict[str, str] | None = None,
                            body: bytes | str | None = None,
                            binary: bool = False) -> dict[str, Any]:
    """Lambda Function URL event: the 2.0 shape, route `$default`, a *.lambda-url.* domain."""
    return make_v2_event(
        method=method, path=path, headers=headers, query=query, body=body, binary=binary,
        domain_name=f"abcdefghijklmnopqrstuvwxyz012345.lambda-url.{REGION}.on.aws",
        route_key="$default",
    )


def make_alb_event(*, method: str = "GET", path: str = "/", headers: dict[str, str] | None = None,
                   query: dict[str, str] | None = None, body: bytes | str | None = None,
                   binary: bool = False, multi_value_headers: bool = False) -> dict[str, Any]:
    """Application Load Balancer target-group event; multi-value headers are a per-target-group
    setting, and with it on ALB sends (and expects back) only the multiValue* forms."""
    headers = dict(headers or {}) | {"host": "mhist-alb-123.us-east-1.elb.amazonaws.com"}
    body_text, encoded = _body_fields(body, binary)
    event: dict[str, Any] = {
        "requestContext": {"elb": {"targetGroupArn": (
            f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT_ID}:targetgroup/mhist/0123456789abcdef"
        )}},
        "httpMethod": method,
        "path": path,
        "body": body_text if body_text is not None else "",
        "isBase64Encoded": encoded,
    }
    if multi_value_headers:
        event["multiValueHeaders"] = {k: [v] for k, v in headers.items()}
        event["multiValueQueryStringParameters"] = {k: [v] for k, v in (query or {}).items()}
    else:
        event["headers"] = headers
        event["queryStringParameters"] = dict(query or {})
    return event


def multipart_body(field: str, filename: str, data: bytes,
                   content_type: str = "image/png") -> tuple[bytes, str]:
    """A multipart/form-data body with one file part → (body, Content-Type header value)."""
    boundary = f"----mhist{uuid.uuid4().hex}"
    body = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


EVENT_BUILDERS = {
    "rest_api": make_v1_event,
    "http_api": make_v2_event,
    "function_url": make_function_url_event,
    "alb": make_alb_event,
}
