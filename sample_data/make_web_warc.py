"""Rebuild sample_data/web.warc.gz, the bundled offline example of a Common Crawl WARC file:

    .venv/bin/python sample_data/make_web_warc.py

Every page of sample_data/web/*.jsonl becomes an HTML page (title, navigation, its paragraphs, a
footer: the boilerplate the extractor should drop) in an HTTP 200 `response` record, preceded by
its `request` record as Common Crawl writes them (every 8th page only, to keep the file small). Added to show what stage 1 counts: a `warcinfo`
record, a `metadata` record, a 404 and a 301 response, an image and a PDF, a page in windows-1252
declared only in a <meta> tag, and 4 near-copies of clean pages (a few words changed, a line
added). The output is the same bytes every time (fixed dates, ids from the page ids, gzip mtime 0).
"""

from __future__ import annotations

import gzip
import hashlib
import html
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from minipretrain.web import http_response, warc_record  # noqa: E402

DATE = "2026-01-15T12:00:00Z"


def uid(key: str) -> str:
    h = hashlib.sha1(key.encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def page_html(title: str, text: str, charset: str = "utf-8", meta_charset: bool = True) -> str:
    paragraphs = "\n".join(f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>" for p in text.split("\n\n")[1:] if p.strip())
    meta = f'<meta charset="{charset}">' if meta_charset else ""
    return (f"<!DOCTYPE html>\n<html><head>{meta}<title>{html.escape(title)}</title></head><body>\n"
            f'<nav><a href="/">Home</a> | <a href="/about">About</a> | <a href="/contact">Contact</a></nav>\n'
            f"<article><h1>{html.escape(title)}</h1>\n{paragraphs}\n</article>\n"
            f"<footer>Copyright 2026 Example Pages. All rights reserved. <a href='/privacy'>Privacy</a></footer>\n"
            f"</body></html>\n")


def near_copy(text: str, i: int) -> str:
    words = text.split(" ")
    for k in range(7 + i, len(words), 61):  # about 1.6% of the words changed
        words[k] = "indeed"
    return " ".join(words) + "\n\nShare this page with a friend who might find it useful."


def main(out: Path = HERE / "web.warc.gz") -> None:
    pages = []
    for f in sorted((HERE / "web").glob("*.jsonl")):
        pages += [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = [warc_record("warcinfo", "", DATE, b"software: sample_data/make_web_warc.py\r\nformat: WARC File Format 1.0\r\n",
                           uid("warcinfo"), {"Content-Type": "application/warc-fields"})]

    def add(url, key, status, content_type, payload, request=True):
        if request:
            records.append(warc_record("request", url, DATE, f"GET / HTTP/1.1\r\nHost: {url.split('/')[2]}\r\n\r\n".encode(), uid(key + "/request")))
        records.append(warc_record("response", url, DATE, http_response(status, content_type, payload), uid(key)))

    for i, p in enumerate(pages):
        title = p["text"].split("\n", 1)[0][:120]
        add(f"https://pages.example/{p['id']}", p["id"], 200, "text/html; charset=utf-8",
            page_html(title, p["text"]).encode("utf-8"), request=i % 8 == 0)  # a few requests: the file stays small
    for i, p in enumerate([p for p in pages if p["id"].startswith("clean-")][:4]):
        text = near_copy(p["text"], i)
        add(f"https://mirror.example/{p['id']}", p["id"] + "/near", 200, "text/html; charset=utf-8",
            page_html(text.split("\n", 1)[0], text).encode("utf-8"))
    cafe = ("Caf\u00e9 r\u00e9sum\u00e9: a na\u00efve guide\n\nOur caf\u00e9 opened in March and serves cr\u00e8me br\u00fbl\u00e9e, "
            "\u201cproper\u201d espresso and pastries baked each morning \u2013 from 7 a.m. until the last croissant is gone.\n\n"
            "The r\u00e9sum\u00e9 of our first season is simple: the regulars came back, the queue on Saturdays reached the "
            "corner, and the espresso machine needed a new gasket in June.\n\nWe are open every day except Monday; "
            "bring your own cup and the coffee is twenty cents cheaper.")
    add("https://cafe.example/", "cafe-cp1252", 200, "text/html",  # charset only in the <meta> tag
        page_html(cafe.split("\n", 1)[0], cafe, "windows-1252").encode("cp1252"))
    add("https://pages.example/missing", "missing", 404, "text/html", b"<html><body><h1>Not Found</h1></body></html>")
    add("http://pages.example/", "redirect", 301, "text/html", b"<html><body>Moved to https</body></html>")
    add("https://pages.example/logo.png", "logo", 200, "image/png", b"\x89PNG\r\n\x1a\n" + bytes(64))
    add("https://pages.example/report.pdf", "pdf", 200, "application/pdf", b"%PDF-1.4\n%" + bytes(64))
    records.append(warc_record("metadata", "https://pages.example/", DATE, b"fetchTimeMs: 112\r\n", uid("metadata"),
                               {"Content-Type": "application/warc-fields"}))
    with open(out, "wb") as f:
        for r in records:  # one gzip member per record, as Common Crawl writes them
            f.write(gzip.compress(r, compresslevel=9, mtime=0))
    print(f"wrote {out} ({out.stat().st_size:,} bytes, {len(records)} records)")


if __name__ == "__main__":
    main()
