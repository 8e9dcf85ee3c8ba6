"""Reading one JSON object of a results folder by key — the only place the report touches raw
JSON. A missing required key is an error that names the file, the record and the key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class ReportDataError(ValueError):
    """A results file lacks something the report needs."""


@dataclass(frozen=True)
class Fields:
    """One JSON object and where it came from ('raw/http.json, record flask-int8')."""

    raw: Mapping[str, Any]
    where: str

    def need(self, key: str) -> Any:
        if key not in self.raw:
            raise ReportDataError(
                f"{self.where} has no {key!r}: was the folder written by benchmarks/store.py "
                "(pytest benchmarks)? Rerun that benchmark or remove the record.")
        return self.raw[key]

    def may(self, key: str, default: Any = None) -> Any:
        """An optional key: `default` when absent (a null stays None)."""
        return self.raw.get(key, default)

    def sub(self, key: str) -> Fields:
        """A required nested object."""
        return Fields(self.need(key), f"{self.where}, {key}")

    def maybe_sub(self, key: str) -> Fields | None:
        """An optional nested object; None when absent, null or empty."""
        value = self.raw.get(key)
        return Fields(value, f"{self.where}, {key}") if value else None

    def items(self) -> list[tuple[str, Fields]]:
        """The nested objects, by key, in file order (non-objects skipped)."""
        return [(key, Fields(value, f"{self.where}, {key}"))
                for key, value in self.raw.items() if isinstance(value, Mapping)]
