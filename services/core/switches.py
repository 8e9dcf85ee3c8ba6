"""The one vocabulary of on/off words, shared by settings (environment variables) and the
`explain` switch of requests."""

from __future__ import annotations

ON_WORDS = ("1", "true", "yes", "on")
OFF_WORDS = ("0", "false", "no", "off")
WORDS_TEXT = "1/0, true/false, yes/no or on/off"


def parse_switch(raw: str) -> bool | None:
    """True or False for a word of the vocabulary (any case, spaces ignored), else None."""
    word = raw.strip().lower()
    if word in ON_WORDS:
        return True
    if word in OFF_WORDS:
        return False
    return None
