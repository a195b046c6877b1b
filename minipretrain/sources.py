"""Readers of stage 1's inputs, and of Parquet in general. Each document reader yields dicts: text,
source ("web"/"code"), doc_id. Null or empty text is yielded as text=None so the caller can count
it as skipped. Bad input is a UserError naming the file (and line or row).
"""

from __future__ import annotations

import glob as globlib
import gzip
import json
import sysconfig
import zlib
from itertools import islice
from pathlib import Path

from minipretrain.settings import PROJECT_DIR, UserError
from minipretrain.web import SUFFIXES as WEB_ARCHIVE_SUFFIXES

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
WEB_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet", ".txt") + WEB_ARCHIVE_SUFFIXES
URL_SUFFIXES = (".jsonl", ".jsonl.gz") + WEB_ARCHIVE_SUFFIXES  # the kinds read as a stream


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


def read_jsonl(path: Path, text_column: str, start: int = 0, stop: int | None = None):
    """Documents of lines start+1 .. stop (1-based; all by default) of a JSON-lines file. A
    unit of stage 1 reads a slice; the lines before it are skipped unparsed."""
    n = 0
    try:
        with _open_maybe_gzip(path) as f:
            for line_no, raw in enumerate(f, 1):
                if line_no <= start:
                    continue
                if stop is not None and line_no > stop:
                    break
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
                doc_id = str(record["id"]) if record.get("id") is not None else f"{_name(path)}:{line_no}"
                n += 1
                yield {"text": text or None, "source": "web", "doc_id": doc_id}
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise UserError(f"{path}: truncated or corrupt gzip file ({e})") from None
    if n == 0 and start == 0 and stop is None:
        raise UserError(f"{path}: empty file (no documents)")


def _open_maybe_gzip(path):
    raw = open_stream(path)
    return gzip.GzipFile(fileobj=raw, mode="rb") if str(path).endswith(".gz") else raw


def check_parquet(path: Path, text_column: str) -> int:
    """The number of rows of a Parquet file of documents, once its text column is checked."""
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
    return pf.metadata.num_rows


def read_parquet(path: Path, text_column: str, batch_size: int, start: int = 0, stop: int | None = None):
    """Documents of rows start .. stop - 1 (all by default) of a Parquet file."""
    import pyarrow.parquet as pq

    check_parquet(path, text_column)
    names = pq.ParquetFile(path).schema_arrow.names
    columns = [text_column] + (["id"] if "id" in names else [])
    row = 0
    for batch in parquet_batches(path, batch_size, columns):
        if row + batch.num_rows <= start:
            row += batch.num_rows
            continue
        texts = batch.column(text_column).to_pylist()
        ids = batch.column("id").to_pylist() if "id" in names else [None] * len(texts)
        for text, doc_id in zip(texts, ids):
            if stop is not None and row >= stop:
                return
            if row >= start:
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


def resolve_sources(s) -> tuple[list[tuple[str, object]], list[dict]]:
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
        if is_url(spec):
            if not spec.endswith(URL_SUFFIXES):
                raise UserError(f"{spec}: unsupported kind of URL (a URL may name {', '.join(URL_SUFFIXES)})")
            plan.append(("web", spec))
            described.append({"url": spec})
            continue
        for path in expand_paths(str(SAMPLE_CORPUS) if spec == "sample" else spec, WEB_SUFFIXES):
            plan.append(("web", path))
            described.append(describe(path))
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
            described.append(describe(path))
    return plan, described


def describe(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


# ----------------------------------------------------------------------------------------------
# Stage 1's units of work: slices of the sources in corpus order. Each source counts its records
# (JSON lines, Parquet rows, WARC records, one for a .txt/.html/.py file); a unit is the next
# `unit_documents` records, a piece of one source or pieces of several small ones. A unit reads
# only its slice (the records before it are skipped unparsed), so units run anywhere, in any order.


def count_records(kind: str, what, s) -> int | None:
    """How many records a source holds (checking it on the way: an empty or damaged file is a
    UserError now, before any work); None for a URL or an hf: dataset, read as one stream."""
    if is_url(what):
        return None
    name = str(what)
    if kind == "code" or name.endswith((".txt", ".html", ".htm")):
        return 1
    if name.endswith(".parquet"):
        return check_parquet(what, s.text_column)
    if name.endswith(WEB_ARCHIVE_SUFFIXES):
        from minipretrain import web

        return web.count_records(what, name)
    lines = documents = 0
    try:
        with _open_maybe_gzip(what) as f:
            for raw in f:
                lines += 1
                documents += bool(raw.strip())
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise UserError(f"{what}: truncated or corrupt gzip file ({e})") from None
    if documents == 0:
        raise UserError(f"{what}: empty file (no documents)")
    return lines


def cut_units(counts: list[tuple], size: int) -> list[list[tuple]]:
    """Cut (key, record count) sources, in order, into units: lists of pieces (key, start, stop) of
    `size` records in all (the last unit fewer). A count of None (a stream that cannot skip ahead)
    is a unit of its own, (key, 0, None)."""
    units, current, room = [], [], size
    for key, count in counts:
        if count is None:
            if current:
                units.append(current)
            units.append([(key, 0, None)])
            current, room = [], size
            continue
        start = 0
        while start < count:
            take = min(room, count - start)
            current.append((key, start, start + take))
            start, room = start + take, room - take
            if room == 0:
                units.append(current)
                current, room = [], size
    if current:
        units.append(current)
    return units


def plan_units(plan, s, size: int) -> list[list[tuple]]:
    """The units of a run: lists of pieces (source number, start, stop) of about `size` records,
    in corpus order. A URL is a unit of its own (a stream cannot skip ahead; hf: datasets are
    saved as Parquet first, stage_hf_datasets)."""
    return cut_units([(number, count_records(kind, what, s)) for number, (kind, what) in enumerate(plan)], size)


def stage_hf_datasets(plan, s, folder: Path) -> list:
    """The plan with each hf: dataset replaced by a Parquet file of its first hf_limit rows (text
    and the doc_id each would have had) in `folder`: read once, as a stream, then sliced into units
    like any Parquet file. A file already there (a resumed run) is used as it is."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    staged = []
    for kind, what in plan:
        if kind != "hf":
            staged.append((kind, what))
            continue
        path = folder / f"hf-{hashlib.sha256(what.encode()).hexdigest()[:16]}.parquet"
        if not path.is_file():
            schema = pa.schema([(s.text_column, pa.string()), ("id", pa.string())])
            with pq.ParquetWriter(path.with_suffix(".part"), schema, compression="zstd") as writer:
                for batch in batched(read_hf_dataset(what, s.hf_split, s.text_column, s.hf_limit), 10_000):
                    writer.write_table(pa.Table.from_pylist([{s.text_column: d["text"], "id": d["doc_id"]} for d in batch], schema=schema))
            path.with_suffix(".part").rename(path)
        staged.append(("web", path))
    return staged


def read_piece(kind: str, what, start: int, stop: int | None, s, extract):
    """The documents (and {"text": None, "skipped": reason} records) of records start .. stop - 1
    of one source (a path or URL, as a string in a unit): a piece of a unit."""
    what = what if is_url(what) else Path(what)
    if kind == "code":
        name = what.name if what.name != "__init__.py" else f"{what.parent.name}/__init__.py"
        yield read_text_file(what, "code", f"code:{name}")
    elif str(what).endswith(WEB_ARCHIVE_SUFFIXES):
        yield from read_web_archive(what, s, extract, start, stop)
    elif str(what).endswith(".parquet"):
        yield from read_parquet(what, s.text_column, s.batch_size, start, stop)
    elif str(what).endswith(".txt"):
        yield read_text_file(what, "web", what.name)
    else:
        yield from read_jsonl(what, s.text_column, start, stop)


def read_web_archive(what, s, extract, start: int = 0, stop: int | None = None):
    """WARC, WET and HTML (minipretrain/web.py): documents, and {"text": None, "skipped": reason}."""
    from minipretrain import web

    name = str(what)
    min_chars = getattr(s, "min_extracted_chars", 1)
    if name.endswith(web.WET_SUFFIXES):
        yield from web.read_wet(what, name, min_chars, start=start, stop=stop)
    elif name.endswith(web.WARC_SUFFIXES):
        yield from web.read_warc(what, name, extract, min_chars, start=start, stop=stop)
    else:
        yield from web.read_html(what, name, extract, min_chars)


def _name(path) -> str:
    return path.name if isinstance(path, Path) else str(path).rsplit("/", 1)[-1]


def batched(iterable, n):
    it = iter(iterable)
    while batch := list(islice(it, n)):
        yield batch


def parquet_batches(path: Path, batch_size: int, columns: list[str], hint: str = "", row_groups=None, first_row: int = 0):
    """A Parquet file's record batches; damaged data (a page behind an intact footer) is one line
    naming the file and the row, then `hint`. Stages 1 and 2 read their Parquet input with it.
    `row_groups`: only those (a slice of the file), whose first row is the file's row `first_row`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    batches = pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns, row_groups=row_groups)
    row = first_row
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as e:
            raise UserError(f"{path}: corrupt Parquet data after row {row} ({e}){hint}") from None
        if batch is None:
            return
        yield batch
        row += batch.num_rows


def is_url(spec: str) -> bool:
    return "://" in str(spec) and not str(spec).startswith("file://")


def open_stream(path):
    """A binary file object: a local file, or a URL streamed through fsspec (http(s)://, s3://, ...:
    any protocol whose library is installed), read as it arrives, never downloaded first."""
    if not is_url(path):
        return open(path, "rb")
    import fsspec

    try:
        # over HTTP a plain streaming GET (block_size=0): no Range requests, which many servers refuse
        options = {"block_size": 0} if str(path).startswith(("http://", "https://")) else {}
        return fsspec.open(str(path), "rb", **options).open()
    except ImportError as e:
        raise UserError(f"{path}: this kind of URL needs a library that is not installed ({e})") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot open ({type(e).__name__}: {e})") from None
