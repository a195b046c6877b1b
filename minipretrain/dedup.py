"""De-duplication: what identifies a text, in as few bytes as the job allows."""

from __future__ import annotations

import xxhash


def text_digest(text: str) -> bytes:
    """16 bytes per document: de-duplication memory grows with the number of documents, not their size."""
    return xxhash.xxh3_128_digest(text.encode("utf-8"))
