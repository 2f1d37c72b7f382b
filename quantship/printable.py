"""Text from outside, made safe to print: what a registry answers, what an artifact's manifest or
folder names. One bounded line with nothing a terminal would act on (an escape sequence, a line
break that forges a line of ours, a bidirectional override that reorders what is shown).
It imports nothing of quantship, so any part may use it.
"""

from __future__ import annotations

import re

UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
"""Control characters (escape sequences start with one; a newline would forge a line of ours) and
the bidirectional overrides that reorder what a terminal shows."""


def brief(text: str, limit: int = 200) -> str:
    """At most `limit` characters of `text`, control characters replaced by '?': an error line,
    not the whole of what was sent, and nothing a terminal would act on."""
    text = UNPRINTABLE.sub("?", text)
    return text if len(text) <= limit else text[:limit] + "…"
