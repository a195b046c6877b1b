"""Web archives and HTML in: Common Crawl WARC (HTML responses, main text extracted), WET (Common
Crawl's extracted text) and .html files. Each reader streams its input (one record in memory at a
time) and yields stage 1's document dicts (text, source, doc_id) plus url and date; a record that
is not kept is yielded as {"text": None, "skipped": reason} so that stage 1 counts it, by reason,
in the "extraction" step of report.json. Nothing is dropped without a count.

Reasons: `warcinfo`, `request`, `metadata`, `resource`, ... (a record of another WARC type),
`http_status_<code>` (a response that is not 200), `not_html` (another content type),
`undecodable` (no charset decodes the body), `extraction_empty`, `extraction_too_short`.

Decoding a body: the charset of the HTTP header, else the one the HTML declares in a <meta> tag,
else UTF-8, else charset-normalizer's detection; each tried strictly, so a wrong declaration falls
through to the next. Labels are read as browsers do (WHATWG): latin-1, iso-8859-1 and ascii mean
windows-1252.
"""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path

from minipretrain.settings import UserError

WARC_SUFFIXES = (".warc", ".warc.gz")
WET_SUFFIXES = (".wet.gz", ".warc.wet.gz", ".wet")
HTML_SUFFIXES = (".html", ".htm")
SUFFIXES = WET_SUFFIXES + WARC_SUFFIXES + HTML_SUFFIXES
HTML_TYPES = ("text/html", "application/xhtml+xml")

# ----------------------------------------------------------------------------------------------
# Main-text extraction (benchmarks/bench_extraction.py compares the two on real Common Crawl pages)


def extract_trafilatura(html: str) -> str:
    import trafilatura

    # FineWeb's call (datatrove's Trafilatura step) but deduplicate=False: trafilatura's de-duplication
    # keeps a cache across calls, which would make a page's text depend on the pages read before it
    return trafilatura.extract(html, favor_precision=True, include_comments=False, include_images=False,
                               deduplicate=False) or ""


def extract_resiliparse(html: str) -> str:
    from resiliparse.extract.html2text import extract_plain_text

    # DCLM's call: main content only, no alt texts or link targets
    return extract_plain_text(html, main_content=True, alt_texts=False, links=False, preserve_formatting=True)


EXTRACTORS = {"trafilatura": extract_trafilatura, "resiliparse": extract_resiliparse}

# ----------------------------------------------------------------------------------------------
# Decoding

META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
WHATWG_ALIASES = {"latin-1": "cp1252", "latin1": "cp1252", "iso-8859-1": "cp1252", "iso8859-1": "cp1252",
                  "us-ascii": "cp1252", "ascii": "cp1252", "l1": "cp1252"}


def _try_decode(body: bytes, label: str | None) -> str | None:
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    try:
        return body.decode(WHATWG_ALIASES.get(label, label))
    except (LookupError, UnicodeDecodeError):
        return None


def decode_body(body: bytes, header_charset: str | None) -> str | None:
    """The text of an HTML body, or None when nothing decodes it (see the module's docstring)."""
    for label in (header_charset, _meta_charset(body), "utf-8"):
        text = _try_decode(body, label)
        if text is not None:
            return text
    if b"\x00" in body[:4096]:  # binary data served as HTML: no text encoding to find
        return None
    import charset_normalizer

    best = charset_normalizer.from_bytes(body).best()
    return _try_decode(body, best.encoding) if best is not None else None


def _meta_charset(body: bytes) -> str | None:
    m = META_CHARSET.search(body[:4096])
    return m.group(1).decode("ascii", "replace") if m else None


def _header_charset(content_type: str) -> str | None:
    m = re.search(r"charset\s*=\s*[\"']?([^;\"'\s]+)", content_type, re.IGNORECASE)
    return m.group(1) if m else None


# ----------------------------------------------------------------------------------------------
# Readers


def open_binary(path):
    """A file or URL (any fsspec URL whose library is installed), streamed, gunzipped when it ends
    in .gz (Python's gzip: a truncated file raises EOFError rather than ending early)."""
    from minipretrain.sources import open_stream

    raw = open_stream(path)
    return gzip.GzipFile(fileobj=raw, mode="rb") if str(path).endswith(".gz") else raw


def count_records(path, name: str) -> int:
    """The number of WARC records of a file (read through, bodies skipped): how stage 1 cuts it
    into units. A damaged file is a UserError here, before any work."""
    return sum(1 for _ in _records(path, name, read=False))


def _records(path, name: str, start: int = 0, stop: int | None = None, read: bool = True):
    """(record, body) of records start .. stop - 1 (all by default); the ones before `start` are
    skipped without reading their bodies. With read=False, (record, None) for every record."""
    from fastwarc.warc import ArchiveIterator

    n = 0
    try:
        with open_binary(path) as f:
            for record in ArchiveIterator(f, parse_http=False):
                if stop is not None and n >= stop:
                    return
                if n < start or not read:
                    n += 1
                    if not read:
                        yield record, None
                    continue
                body = record.reader.read()
                if len(body) != record.content_length:
                    raise UserError(f"{name}: truncated WARC record {n + 1} ({len(body)} of {record.content_length} bytes)")
                n += 1
                yield record, body
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise UserError(f"{name}: truncated or corrupt {'gzip ' if name.endswith('.gz') else ''}file after WARC record {n} ({e})") from None
    if n == 0 and start == 0:
        raise UserError(f"{name}: no WARC records (empty, or not a WARC file)")


def _uri(record) -> str | None:
    uri = record.headers.get("WARC-Target-URI")
    return uri.strip("<>") if uri else None  # WARC 1.0 files may write it in angle brackets


def _split_http(body: bytes):
    """(status code, headers dict with lower-case names, payload) of an HTTP response block."""
    head, sep, payload = body.partition(b"\r\n\r\n")
    if not sep:
        head, sep, payload = body.partition(b"\n\n")
    lines = head.decode("iso-8859-1").splitlines()
    parts = lines[0].split(None, 2) if lines else []
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        payload = _dechunk(payload)
    return status, headers, payload


def _dechunk(data: bytes) -> bytes:
    out, pos = [], 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return data  # not really chunked: keep as is
        try:
            size = int(data[pos:end].split(b";")[0], 16)
        except ValueError:
            return data
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2 : end + 2 + size])
        pos = end + 2 + size + 2


def read_warc(path, name: str, extract, min_chars: int, source: str = "web", start: int = 0, stop: int | None = None):
    """HTML `response` records of a WARC file (records start .. stop - 1) -> documents of their
    extracted main text, and {"text": None, "skipped": reason} for each record not kept."""
    for record, body in _records(path, name, start, stop):
        kind = record.headers.get("WARC-Type", "unknown")
        if kind != "response":
            yield {"text": None, "skipped": kind}
            continue
        status, headers, payload = _split_http(body)
        if status != 200:
            yield {"text": None, "skipped": f"http_status_{status}"}
            continue
        content_type = headers.get("content-type", "")
        if not content_type.split(";")[0].strip().lower() in HTML_TYPES:
            yield {"text": None, "skipped": "not_html"}
            continue
        html = decode_body(payload, _header_charset(content_type))
        if html is None:
            yield {"text": None, "skipped": "undecodable"}
            continue
        yield _extracted(extract(html), min_chars, source, record.headers.get("WARC-Record-ID"),
                         _uri(record), record.headers.get("WARC-Date"))


def read_wet(path, name: str, min_chars: int, source: str = "web", start: int = 0, stop: int | None = None):
    """`conversion` records of a WET file (Common Crawl's extracted text, UTF-8) -> documents."""
    for record, body in _records(path, name, start, stop):
        kind = record.headers.get("WARC-Type", "unknown")
        if kind != "conversion":
            yield {"text": None, "skipped": kind}
            continue
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            yield {"text": None, "skipped": "undecodable"}
            continue
        yield _extracted(text, min_chars, source, record.headers.get("WARC-Record-ID"),
                         _uri(record), record.headers.get("WARC-Date"))


def read_html(path, name: str, extract, min_chars: int, source: str = "web"):
    from minipretrain.sources import open_stream

    with open_stream(path) as f:
        data = f.read()
    if not data.strip():
        raise UserError(f"{name}: empty file")
    html = decode_body(data, None)
    if html is None:
        yield {"text": None, "skipped": "undecodable"}
        return
    yield _extracted(extract(html), min_chars, source, Path(str(path)).name, None, None)


def _extracted(text: str, min_chars: int, source, doc_id, url, date) -> dict:
    text = (text or "").strip()
    if not text:
        return {"text": None, "skipped": "extraction_empty"}
    if len(text) < min_chars:
        return {"text": None, "skipped": "extraction_too_short"}
    return {"text": text, "source": source, "doc_id": doc_id, "url": url, "date": date}


def html_responses(path: Path):
    """For benchmarks: the raw HTML responses of a WARC file (url, body, header charset)."""
    for record, body in _records(path, str(path)):
        if record.headers.get("WARC-Type") != "response":
            continue
        status, headers, payload = _split_http(body)
        content_type = headers.get("content-type", "")
        if status == 200 and content_type.split(";")[0].strip().lower() in HTML_TYPES:
            yield {"url": _uri(record), "body": payload, "charset": _header_charset(content_type)}


def warc_record(kind: str, url: str, date: str, block: bytes, record_id: str, extra: dict | None = None) -> bytes:
    """One WARC/1.0 record, uncompressed (gzip each one on its own for a .warc.gz, as Common Crawl
    does). For the bundled example (sample_data/make_web_warc.py) and the tests' fixtures."""
    headers = {"WARC-Type": kind, "WARC-Date": date, "WARC-Record-ID": f"<urn:uuid:{record_id}>",
               "WARC-Target-URI": url, **(extra or {}), "Content-Length": str(len(block))}
    if kind in ("response", "request"):
        headers["Content-Type"] = f"application/http; msgtype={kind}"
    elif kind == "conversion":
        headers["Content-Type"] = "text/plain"
    head = "WARC/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode("utf-8") + block + b"\r\n\r\n"


def http_response(status: int, content_type: str, payload: bytes, reason: str = "") -> bytes:
    reason = reason or {200: "OK", 301: "Moved Permanently", 404: "Not Found", 500: "Internal Server Error"}.get(status, "")
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n\r\n"
            .encode("latin-1") + payload)
