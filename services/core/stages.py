"""Where one prediction's time goes: read body, decode, preprocess, run, postprocess, serialise.

Code marks a stage with `with stage("decode"): ...`; a request collects its stages with
`with collect() as seconds: ...`, and the route observes them as the `mhist_stage_seconds`
histogram (services/web/metrics.py). A stage's time excludes the stages nested in it, so the
stages of one request add up to (at most) its handler's time. Outside a collection (the CLI,
slides, benchmarks calling the model directly) a stage costs one ContextVar lookup.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

# In request order; `write` (sending the response) happens in the server, after the handler.
STAGES = ("read_body", "decode", "preprocess", "run", "postprocess", "serialise")


@dataclass
class _Collection:
    seconds: dict[str, float] = field(default_factory=dict)
    nested: list[float] = field(default_factory=list)  # per open stage: its children's time


_current: ContextVar[_Collection | None] = ContextVar("mhist_stages", default=None)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the block as stage `name` of the collection in progress, if any."""
    collection = _current.get()
    if collection is None:
        yield
        return
    collection.nested.append(0.0)
    started = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - started
        children = collection.nested.pop()
        collection.seconds[name] = collection.seconds.get(name, 0.0) + elapsed - children
        if collection.nested:
            collection.nested[-1] += elapsed


@contextlib.contextmanager
def collect() -> Iterator[dict[str, float]]:
    """Collect the stages run inside the block: stage name → seconds (filled as they end)."""
    collection = _Collection()
    token = _current.set(collection)
    try:
        yield collection.seconds
    finally:
        _current.reset(token)
