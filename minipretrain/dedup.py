"""De-duplication: what identifies a text, in as few bytes as the job allows."""

from __future__ import annotations

import xxhash


def text_digest(text: str) -> bytes:
    """16 bytes per document: de-duplication memory grows with the number of documents, not their size."""
    return xxhash.xxh3_128_digest(text.encode("utf-8"))


# ----------------------------------------------------------------------------------------------
# Near-duplicates: MinHash over word n-grams, locality-sensitive hashing in bands (FineWeb's setting:
# 5-grams, 112 permutations in 14 bands of 8 rows: a pair at Jaccard 0.75 shares a band with
# probability 0.92, at 0.85 with 0.998, at 0.5 with 0.05).

WORD = None


def word_list(text: str) -> list[str]:
    """A text's words, lower-cased, punctuation dropped (FineWeb normalises the same way)."""
    global WORD
    if WORD is None:
        import re

        WORD = re.compile(r"\w+")
    return WORD.findall(text.lower())


def shingles(text: str, n: int = 5) -> set[bytes]:
    """The word n-grams of a text (the set whose Jaccard similarity MinHash estimates)."""
    words = word_list(text)
    if len(words) < n:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i : i + n]).encode("utf-8") for i in range(len(words) - n + 1)}


class NearDuplicates:
    """The LSH index of stage 1's near_deduplication filter, fed in corpus order: `check(text)` says
    which earlier document a text near-duplicates (its group's first document), else remembers the
    text's band digests and says None. It holds `bands` 8-byte band digests a document, never texts."""

    def __init__(self, ngram: int = 5, bands: int = 14, rows: int = 8, seed: int = 1):
        from datasketch import MinHash

        self.ngram, self.bands, self.rows = ngram, bands, rows
        self._minhash = MinHash(num_perm=bands * rows, seed=seed, hashfunc=xxhash.xxh32_intdigest)
        self.index: list[dict[int, int]] = [{} for _ in range(bands)]  # band digest -> group number
        self.groups: list[str] = []  # group number -> id of its first document
        self.duplicated: set[int] = set()  # groups with at least one near-duplicate removed

    def signature(self, text: str, chunk: int = 20_000):
        """The MinHash values of a text's shingles, fed in chunks: a 20 MB page never holds all its
        shingles or a (shingles x permutations) matrix at once."""
        m = self._minhash.copy()
        m.clear()
        words, n = word_list(text), self.ngram
        if len(words) < n:
            m.update_batch([" ".join(words).encode("utf-8")])
            return m.hashvalues
        for start in range(0, len(words) - n + 1, chunk):
            stop = min(start + chunk, len(words) - n + 1)
            m.update_batch([" ".join(words[i : i + n]).encode("utf-8") for i in range(start, stop)])
        return m.hashvalues

    def band_digests(self, text: str) -> list[int]:
        values = self.signature(text).reshape(self.bands, self.rows)
        return [xxhash.xxh64_intdigest(band.tobytes()) for band in values]

    def check(self, text: str, doc_id: str) -> str | None:
        digests = self.band_digests(text)
        group = next((g for band, d in zip(self.index, digests) if (g := band.get(d)) is not None), None)
        first = group is None
        if first:
            group = len(self.groups)
            self.groups.append(doc_id)
        else:
            self.duplicated.add(group)
        for band, d in zip(self.index, digests):  # a removed one's bands too: a near-copy of it joins the group
            band.setdefault(d, group)
        return None if first else self.groups[group]
