"""De-duplication: what identifies a text, in as few bytes as the job allows."""

from __future__ import annotations

import os
import re

import numpy as np
import xxhash


def text_digest(text: str) -> bytes:
    """16 bytes per document: de-duplication memory grows with the number of documents, not their size."""
    return xxhash.xxh3_128_digest(text.encode("utf-8"))


# ----------------------------------------------------------------------------------------------
# Near-duplicates: MinHash over word n-grams, locality-sensitive hashing in bands (FineWeb's setting:
# 5-grams, 112 permutations in 14 bands of 8 rows: a pair at Jaccard 0.75 shares a band with
# probability 0.92, at 0.85 with 0.998, at 0.5 with 0.05).

WORD = re.compile(r"\w+")


def word_list(text: str) -> list[str]:
    """A text's words, lower-cased, punctuation dropped (FineWeb normalises the same way)."""
    return WORD.findall(text.lower())


def shingles(text: str, n: int = 5) -> set[bytes]:
    """The word n-grams of a text (the set whose Jaccard similarity MinHash estimates)."""
    words = word_list(text)
    if len(words) < n:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i : i + n]).encode("utf-8") for i in range(len(words) - n + 1)}


# word_list's rule on UTF-8 bytes, as one bytes.translate: A-Z lower-cased, a-z 0-9 _ kept (what \w matches
# among ASCII characters), every other ASCII byte a space; bytes of non-ASCII characters kept, and a token
# holding any is split by word_list's own regex (is "é" a letter, is "£" not?). bytes.split() then gives
# word_list's words, encoded.
_UTF8_WORDS = bytes(c + 32 if 65 <= c <= 90 else c if c >= 128 or chr(c).isalnum() or c == 95 else 32 for c in range(256))
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))  # MurmurHash3's finalizer


class MinHashBands:
    """The MinHash LSH signature of stage 1's near_deduplication filter: `band_digests(text)` gives
    a text's `bands` 8-byte band digests (each a hash of `rows` MinHash values), all that the
    corpus-wide step keeps of a document (duplicates_local / duplicates_ray).

    The values are datasketch's (MinHash(num_perm, seed, hashfunc=xxh32).update_batch of the
    5-grams, each " ".join of 5 word_list words encoded as UTF-8; its "affine32" scheme), computed
    without making each word and 5-gram a Python string: the words are found in the UTF-8 bytes
    (one translate and split; the regex only for tokens with non-ASCII characters), joined once,
    and each 5-gram is a slice of those bytes; datasketch's arithmetic (fmix32 of the xxh32, then
    a*h+b mod 2**32, the minimum per permutation) runs in numpy with datasketch's permutations
    (drawn here as datasketch draws them). 1.5x less CPU than update_batch, and no import of
    datasketch (benchmarks/RESULTS.md); tests/test_neardup.py checks the values against it."""

    def __init__(self, ngram: int = 5, bands: int = 14, rows: int = 8, seed: int = 1):
        self.ngram, self.bands, self.rows = ngram, bands, rows
        # datasketch's affine32 permutations (MinHash._init_permutations), drawn the same way here:
        # importing datasketch costs each worker ~0.5 s of CPU (it imports scipy) for two arrays
        gen = np.random.RandomState(seed)
        a = gen.randint(0, 1 << 31, bands * rows, dtype=np.uint32) * np.uint32(2) + np.uint32(1)  # odd: a bijection
        b = gen.randint(0, 1 << 32, bands * rows, dtype=np.uint32)
        self._a, self._b = a.reshape(-1, 1), b.reshape(-1, 1)

    def shingle_hashes(self, text: str) -> np.ndarray:
        """xxh32 of each of the text's word n-grams (" ".join of n words, UTF-8), in text order; a
        text of fewer than n words is one shingle of all its words."""
        n = self.ngram
        if text.isascii():
            words = text.encode("ascii").translate(_UTF8_WORDS).split()
        else:  # lower() first: Unicode's lower case is not only A-Z
            words = text.lower().encode("utf-8").translate(_UTF8_WORDS).split()
            for i in [i for i, w in enumerate(words) if not w.isascii()][::-1]:
                words[i : i + 1] = [w.encode("utf-8") for w in WORD.findall(words[i].decode("utf-8"))]
        data = b" ".join(words)
        lengths = np.fromiter(map(len, words), np.int64, len(words))
        if len(words) < n:
            return np.array([xxhash.xxh32_intdigest(data)], dtype=np.uint32)
        bounds = np.zeros(len(words) + 1, np.int64)  # word k is data[bounds[k] : bounds[k + 1] - 1]
        np.cumsum(lengths + 1, out=bounds[1:])
        count, h = len(words) - n + 1, xxhash.xxh32_intdigest
        out = np.empty(count, np.uint32)
        for start in range(0, count, 20_000):  # Python ints for one chunk of bounds at a time
            stop = min(start + 20_000, count)
            out[start:stop] = [h(data[x:y]) for x, y in zip(bounds[start:stop].tolist(), (bounds[start + n : stop + n] - 1).tolist())]
        return out

    def signature(self, text: str, chunk: int = 20_000) -> np.ndarray:
        """The MinHash values (uint32) of a text's shingles, the permutations applied `chunk`
        shingles at a time: a 20 MB page never holds a (shingles x permutations) matrix."""
        s1, m1, s2, m2, s3 = _FMIX32
        hv = self.shingle_hashes(text)
        hv = hv ^ (hv >> s1)
        hv = hv * m1
        hv = hv ^ (hv >> s2)
        hv = hv * m2
        hv = hv ^ (hv >> s3)
        values = np.full(len(self._a), np.uint32(0xFFFFFFFF))
        for start in range(0, len(hv), chunk):
            np.minimum(values, (self._a * hv[start : start + chunk] + self._b).min(axis=1), out=values)
        return values

    def band_digests(self, text: str) -> list[int]:
        data = self.signature(text).tobytes()
        width = 4 * self.rows
        return [xxhash.xxh64_intdigest(data[i : i + width]) for i in range(0, len(data), width)]


def find_duplicates(texts: list[str], near: MinHashBands | None = None) -> tuple[set[int], dict[int, int]]:
    """Stage 1's de-duplication of a list of texts in memory: (positions of exact copies,
    {position of a near-duplicate: position of the earliest text it shares a band with})."""
    import pyarrow as pa

    columns = {"order": pa.array(range(len(texts)), pa.int64()), "digest": pa.array([text_digest(t) for t in texts], pa.binary(16))}
    if near is not None:
        flat = pa.array(np.asarray([near.band_digests(t) for t in texts], dtype=np.uint64).reshape(-1), pa.uint64())
        columns["bands"] = pa.FixedSizeListArray.from_arrays(flat, near.bands)
    return duplicates_local([pa.table(columns)], near.bands if near is not None else None)


# ----------------------------------------------------------------------------------------------
# Corpus-wide de-duplication over stage 1's finished units (minipretrain/cleaning.py): which
# documents are copies of an earlier one. The rules, the same on either engine:
# - exact: a document whose text digest an earlier document has is removed (the first one stays);
# - near: among the documents left, one that shares a band digest, in any band, with an earlier
#   one is removed; it is a near-duplicate of the earliest document it shares a band with. Every
#   document's bands count, removed or not (a near-copy of a near-copy is caught).
# Both are "first in corpus order per key": on one machine a sort per key (numpy), on Ray a
# repartition by key (hash shuffle), then the same sort inside each partition. Memory: 8 bytes of
# order + 16 of digest + 8 a band per document (136 bytes at 14 bands), never texts.


def _digest_matrix(column) -> np.ndarray:
    """A pyarrow binary(16) column -> (n, 2) uint64."""
    arr = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    data = np.frombuffer(arr.buffers()[1], dtype=np.uint8)[arr.offset * 16 : (arr.offset + len(arr)) * 16]
    return data.view("<u8").reshape(-1, 2)


def _band_matrix(column, bands: int) -> np.ndarray:
    """A pyarrow fixed_size_list<uint64>[bands] column -> (n, bands) uint64."""
    arr = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    return np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.uint64).reshape(-1, bands)


def first_of_each_key(keys: np.ndarray) -> np.ndarray:
    """For rows in corpus order, the row number of the first row with the same key (rows of a 2-D
    array compare whole)."""
    _, first, inverse = np.unique(keys, axis=0 if keys.ndim == 2 else None, return_index=True, return_inverse=True)
    return first[inverse.reshape(-1)]


def duplicates_local(tables, bands: int | None) -> tuple[set[int], dict[int, int]]:
    """(orders of exact duplicates, {order of a near-duplicate: order of the earliest document it
    shares a band with}) over `tables` (each with order, digest and, with `bands`, bands columns)
    in corpus order."""
    import pyarrow as pa

    tables = [t for t in tables if t.num_rows]
    if not tables:
        return set(), {}
    table = pa.concat_tables(tables)
    order = table.column("order").to_numpy()
    first = first_of_each_key(_digest_matrix(table.column("digest")))
    copy = first != np.arange(len(order))
    exact = set(order[copy].tolist())
    if bands is None:
        return exact, {}
    keep = ~copy
    orders, matrix = order[keep], _band_matrix(table.column("bands"), bands)[keep]
    earliest = np.arange(len(orders))
    for b in range(bands):
        earliest = np.minimum(earliest, first_of_each_key(matrix[:, b]))
    near = earliest != np.arange(len(orders))
    return exact, dict(zip(orders[near].tolist(), orders[earliest[near]].tolist()))


def duplicates_ray(files: list, bands: int | None, cpus: int) -> tuple[set[int], dict[int, int]]:
    """duplicates_local's answer on Ray Data: the unit tables read in parallel, one hash
    repartition of every document's keys (its text digest and, with `bands`, its (band, band
    digest) pairs), the first of each key found inside each partition. Runs inside
    engines.ray_session.

    Exact copies' band keys go through the same shuffle rather than a second one after the exact
    step: a copy's bands are its original's, and the original comes first, so the first holder of
    any band key is never a copy; the near-duplicates of the other documents are then exactly
    those duplicates_local finds among non-copies, and the copies' own band pairs are dropped
    here. One shuffle, not two, because each costs new worker processes for its map and its
    reduce tasks, which was most of this step's time (benchmarks/RESULTS.md, stage 1 on Ray)."""
    import pyarrow as pa

    files = [os.path.abspath(f) for f in files]  # the same path on every node (shared storage)
    rows = sum(_rows(f) for f in files)
    if rows == 0:
        return set(), {}
    parts = max(cpus, rows // 500_000 + 1)  # a few hundred thousand documents a partition: one block each

    def keys(batch: pa.Table) -> pa.Table:
        """A row per key: band -1 and the digest's two halves (k0, k1) for the text, band b and
        (band digest, 0) for each band."""
        order = batch.column("order").to_numpy()
        digest = _digest_matrix(batch.column("digest"))
        tables = [pa.table({"order": order, "band": np.full(len(order), -1, dtype=np.int64), "k0": digest[:, 0], "k1": digest[:, 1],
                            "part": (digest[:, 0] % parts).astype(np.int64)})]
        if bands is not None:
            band = np.tile(np.arange(bands, dtype=np.int64), len(order))
            value = _band_matrix(batch.column("bands"), bands).reshape(-1)
            part = (value ^ (band.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))) % np.uint64(parts)
            tables.append(pa.table({"order": np.repeat(order, bands), "band": band, "k0": value,
                                    "k1": np.zeros(len(value), dtype=np.uint64), "part": part.astype(np.int64)}))
        return pa.concat_tables(tables)

    columns = ["order", "digest"] + (["bands"] if bands is not None else [])
    ds = _read_units(files, columns, cpus).map_batches(keys, batch_format="pyarrow")
    out = ds.repartition(parts, keys=["part"]).map_batches(_firsts_in_partition, batch_size=None, batch_format="pyarrow",
                                                            fn_kwargs={"key": ["band", "k0", "k1"], "tag": "band"})
    copies, near = _collect(out)
    exact = set(copies)
    return exact, {order: first for order, first in near.items() if order not in exact}


def _read_units(files: list[str], columns: list[str], cpus: int):
    """The unit tables' `columns` as a Ray dataset: plain tasks, each reading a share of the files
    with pyarrow. Not ray.data.read_parquet: its file listing starts footer-reading actors (new
    worker processes) on every call, 15-25 s on a loaded 2-core machine for 60 small files, where
    these reads take under a second (benchmarks/RESULTS.md, stage 1 on Ray)."""
    import ray.data

    def read(batch):
        import pyarrow as pa
        import pyarrow.parquet as pq

        return pa.concat_tables([pq.read_table(path, columns=columns) for path in batch["path"].to_pylist()])

    blocks = max(1, min(len(files), 4 * cpus))
    return ray.data.from_items([{"path": f} for f in files], override_num_blocks=blocks).map_batches(
        read, batch_size=None, batch_format="pyarrow")


def _rows(path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def _firsts_in_partition(batch, key: list[str], tag: str):
    """Inside one partition of a key shuffle: (order, order of the key's first row, its `tag`: the
    column of the key that says what kind of key made the pair) for every row that is not its key's
    first, and a marker row per partition seen (order -1), so the driver can check that no partition
    was split over two blocks (which would miss pairs across them)."""
    import pyarrow as pa

    order = batch.column("order").to_numpy()
    columns = [batch.column(k).to_numpy() for k in key]
    sort = np.lexsort([order, *reversed(columns)])  # by key, then order
    order = order[sort]
    new = np.ones(len(order), dtype=bool)
    new[1:] = False
    for c in columns:  # a key column at a time: stacking int64 with uint64 would make floats of them
        c = c[sort]
        new[1:] |= c[1:] != c[:-1]
    start = np.maximum.accumulate(np.where(new, np.arange(len(order)), 0))
    later = ~new
    marks = np.unique(batch.column("part").to_numpy())
    return pa.table({"order": np.concatenate([order[later], np.full(len(marks), -1)]),
                     "first": np.concatenate([order[start[later]], marks]),
                     "tag": np.concatenate([batch.column(tag).to_numpy()[sort][later], np.zeros(len(marks), dtype=np.int64)])})


def _collect(ds) -> tuple[dict[int, int], dict[int, int]]:
    """({order: first} of the text digests' pairs (tag < 0), the same of the bands' pairs, the
    earliest first over the bands) from the partitions' rows, after checking each partition came whole."""
    exact, near, seen = {}, {}, set()
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        order, first, tags = (batch.column(c).to_pylist() for c in ("order", "first", "tag"))
        marks = {f for o, f in zip(order, first) if o == -1}
        if marks & seen:
            raise RuntimeError("Ray split a shuffle partition over two blocks: de-duplication would miss pairs across them")
        seen |= marks
        for o, f, t in zip(order, first, tags):
            if o != -1:
                pairs = exact if t < 0 else near
                pairs[o] = min(f, pairs.get(o, f))
    return exact, near
