"""Stage 1's unit of work, the same on either engine: read a slice of the sources, extract the
main text of HTML pages, run the filters that judge one document alone (1 paragraph_length,
2 repetition, 5 language), and compute what de-duplication needs (the text's digest and, with
near_dedup, its MinHash band digests). The corpus-wide steps (3 and 4: which copy came first)
run after every unit is done (minipretrain/dedup.py), so a unit never waits for another.

A unit writes one table (stages.write_unit): the documents that passed filters 1 and 2, in
corpus order, with their `order` (unit << 32 | position), digest, bands and language verdict;
and a summary: what was read, what filters 1 and 2 removed (counts, reasons, first examples),
what extraction did not keep.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minipretrain.dedup import MinHashBands, text_digest
from minipretrain.filters import language_filter, load_language_model, paragraph_length_filter, repetition_filter
from minipretrain.sources import read_piece

POSITION_BITS = 32  # order = unit number << 32 | position in the unit: corpus order, known inside a unit


def setup(s) -> dict:
    """What each worker loads once: the fastText model, the extractor, the MinHash permutations."""
    from minipretrain.web import EXTRACTORS

    near = MinHashBands(s.near_dedup_ngram, s.near_dedup_bands, s.near_dedup_rows, s.near_dedup_seed) if s.near_dedup else None
    return {"settings": s, "model": load_language_model(s), "extract": EXTRACTORS[s.extractor], "near": near}


def clean_unit(unit: dict, context: dict) -> dict:
    """Read, extract and judge unit["index"]'s pieces; write its table and summary into unit["units"]."""
    import pyarrow as pa

    from minipretrain.stages import write_unit

    s, model, near = context["settings"], context["model"], context["near"]
    read = {"documents": 0, "web": 0, "code": 0, "characters": 0, "skipped_null_or_empty_text": 0}
    extraction: dict[str, int] = {}
    removed = {name: {"removed": 0, "characters_removed": 0, "reasons": {}, "examples": []} for name in ("paragraph_length", "repetition")}
    rows = {name: [] for name in ("order", "text", "source", "doc_id", "url", "date", "digest", "language")}
    bands = []
    base, position = unit["index"] << POSITION_BITS, 0
    for kind, what, start, stop in unit["pieces"]:
        for d in read_piece(kind, what, start, stop, s, context["extract"]):
            if "skipped" in d:
                extraction[d["skipped"]] = extraction.get(d["skipped"], 0) + 1
                continue
            if d["text"] is None:
                read["skipped_null_or_empty_text"] += 1
                continue
            text, source = d["text"], d["source"]
            read["documents"] += 1
            read[source] += 1
            read["characters"] += len(text)
            verdict = paragraph_length_filter(text, s.min_lines, s.min_longest_line_chars)
            step = "paragraph_length"
            if verdict is True and source == "web":
                verdict, step = repetition_filter(text, s.max_dup_paragraph_frac, s.max_dup_char_frac), "repetition"
            if verdict is not True:
                r = removed[step]
                r["removed"] += 1
                r["characters_removed"] += len(text)
                r["reasons"][verdict[1]] = r["reasons"].get(verdict[1], 0) + 1
                if len(r["examples"]) < s.examples_per_filter:
                    r["examples"].append({"doc_id": d["doc_id"], "reason": verdict[1], "text": text[:300]})
                continue
            language = language_filter(model, text, s.language, s.min_language_score) if source == "web" else True
            rows["order"].append(base + position)
            position += 1
            for key in ("text", "source", "doc_id"):
                rows[key].append(d[key])
            rows["url"].append(d.get("url"))
            rows["date"].append(d.get("date"))
            rows["digest"].append(text_digest(text))
            rows["language"].append(None if language is True else language[1])
            if near is not None:
                bands.append(near.band_digests(text))
    columns = {
        "order": pa.array(rows["order"], pa.int64()),
        **{key: pa.array(rows[key], pa.string()) for key in ("text", "source", "doc_id", "url", "date")},
        "digest": pa.array(rows["digest"], pa.binary(16)),
        "language": pa.array(rows["language"], pa.string()),
    }
    if near is not None:
        flat = pa.array(np.asarray(bands, dtype=np.uint64).reshape(-1), pa.uint64())
        columns["bands"] = pa.FixedSizeListArray.from_arrays(flat, s.near_dedup_bands)
    summary = {"read": read, "extraction": extraction, "removed": removed, "rows": len(rows["order"])}
    write_unit(Path(unit["units"]), unit["index"], pa.table(columns), summary)
    return summary
