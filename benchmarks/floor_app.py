"""The HTTP floor of the host server: what gunicorn and the benchmark's client cost alone.

A WSGI app that reads the whole request body and answers a fixed JSON the size of /predict's
answer, and does nothing else: no Flask, no hooks, no model. Served by the same gunicorn
(`python -m gunicorn`, one sync worker, as services/runtime/gunicorn_conf.py runs ours) and
timed in the same interleaved rounds as POST /predict (benchmarks/test_http.py), its p50 is the
part of "POST /predict − predict_bytes" that no change to our app can remove.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

# /predict's answer for a 224² patch is about 900 bytes of JSON
ANSWER = b'{"label": "HP", "padding": "' + b"x" * 860 + b'"}'


def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    environ["wsgi.input"].read()  # the PNG, read as our app reads it
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(ANSWER)))])
    return [ANSWER]
