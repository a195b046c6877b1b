"""Stage 1 on web archives: WARC (HTML responses, main text extracted), WET and .html files, the
records not kept counted by reason, charsets, a truncated file, URLs streamed over HTTP, and the
same output for any num_proc. Every fixture is built here."""

import gzip
import json
import random
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import data_preparation as dp
from minipretrain.settings import PROJECT_DIR, UserError
from minipretrain.web import decode_body, http_response, warc_record

SUBJECTS = ["The river", "Our neighbour", "The old library", "A small bakery", "The village council", "My grandmother",
            "The hiking club", "The school garden", "A local carpenter", "The harbour master", "Our youngest daughter"]
VERBS = ["opened", "repaired", "described", "visited", "painted", "measured", "planted", "cleaned", "photographed", "praised"]
OBJECTS = ["the wooden bridge", "a narrow path", "the northern field", "twelve apple trees", "the station clock",
           "an abandoned mill", "the chapel roof", "a row of cottages", "the market square", "the canal locks"]
TAILS = ["after the long winter.", "before the summer fair began.", "with help from local volunteers.",
         "despite the heavy rain on Tuesday.", "while the children watched from the fence.", "for the first time in years.",
         "as the council had promised in spring.", "and everyone agreed it was worth the effort."]


def page_text(seed: int, paragraphs: int = 5) -> str:
    rnd = random.Random(seed)
    paras = [" ".join(f"{rnd.choice(SUBJECTS)} {rnd.choice(VERBS)} {rnd.choice(OBJECTS)} {rnd.choice(TAILS)}"
                      for _ in range(4)) for _ in range(paragraphs)]
    return f"Notes from the valley, part {seed}\n\n" + "\n\n".join(paras)


def page_html(text: str, meta: str = "") -> str:
    title, *paras = text.split("\n\n")
    return (f"<html><head>{meta}<title>{title}</title></head><body><nav><a href='/'>Home</a> | <a href='/a'>About</a></nav>"
            f"<article><h1>{title}</h1>" + "".join(f"<p>{p}</p>" for p in paras) + "</article>"
            "<footer>Copyright 2026. All rights reserved.</footer></body></html>")


DATE = "2026-02-01T10:00:00Z"


def write_warc(path: Path, records: list[bytes]) -> Path:
    with open(path, "wb") as f:
        for r in records:
            f.write(gzip.compress(r, mtime=0) if path.name.endswith(".gz") else r)
    return path


def response(n: int, status=200, content_type="text/html; charset=utf-8", payload: bytes | None = None) -> bytes:
    payload = page_html(page_text(n)).encode("utf-8") if payload is None else payload
    return warc_record("response", f"https://site.example/{n}", DATE, http_response(status, content_type, payload),
                       f"00000000-0000-0000-0000-{n:012d}")


CAFE = "Caf\u00e9 cr\u00e8me and \u201cproper\u201d espresso \u2013 a r\u00e9sum\u00e9 of the season"


def mixed_records() -> list[bytes]:
    """3 HTML pages kept, and one record of each kind that is not."""
    return [
        warc_record("warcinfo", "", DATE, b"software: test\r\n", "00000000-0000-0000-0000-100000000000"),
        warc_record("request", "https://site.example/1", DATE, b"GET / HTTP/1.1\r\n\r\n", "00000000-0000-0000-0000-100000000001"),
        response(1),
        response(2, 404),
        response(3, 301),
        response(4, 200, "image/png", b"\x89PNG\r\n\x1a\n" + bytes(40)),
        response(5),
        warc_record("metadata", "https://site.example/5", DATE, b"fetchTimeMs: 3\r\n", "00000000-0000-0000-0000-100000000002"),
        response(6, payload=b"<html><body><script>var x = 1;</script></body></html>"),  # no text at all
        response(7, payload=b"<html><body><p>Too short.</p></body></html>"),
        # windows-1252 declared in the HTTP header (as latin-1, which browsers read as windows-1252)
        response(8, 200, "text/html; charset=ISO-8859-1", page_html(page_text(8) + "\n\n" + CAFE).encode("cp1252")),
        # windows-1252 declared only in a <meta> tag
        response(9, 200, "text/html", page_html(page_text(9) + "\n\n" + CAFE, '<meta charset="windows-1252">').encode("cp1252")),
        # nothing decodes it: declared UTF-8, binary data
        response(10, 200, "text/html; charset=utf-8", b"<html>\x00\x81\xff\xfe" + bytes(range(256)) * 4),
    ]


EXPECTED_REASONS = {"warcinfo": 1, "request": 1, "http_status_404": 1, "http_status_301": 1, "not_html": 1,
                    "metadata": 1, "extraction_empty": 1, "extraction_too_short": 1, "undecodable": 1}


def run(tmp_path, sources, name="out", num_proc=1, *extra):
    out = tmp_path / name
    dp.main(["--web_sources", *map(str, sources), "--code_sources", "none", "--num_proc", str(num_proc),
             "--output_dir", str(out), *extra])
    report = json.loads((out / "report.json").read_text())
    rows = pq.read_table(out / "cleaned-00000.parquet").to_pylist()
    return out, report, rows


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("warc")
    return run(tmp, [write_warc(tmp / "crawl.warc.gz", mixed_records())])


def test_warc_records_not_kept_are_counted_by_reason(mixed):
    _, report, rows = mixed
    ex = report["extraction"]
    assert ex["reasons"] == EXPECTED_REASONS
    assert ex["records"] == len(mixed_records()) and ex["removed"] == sum(EXPECTED_REASONS.values())
    assert ex["documents_out"] == report["input"]["documents"] == 4
    assert [r["doc_id"] for r in rows] == [f"<urn:uuid:00000000-0000-0000-0000-{n:012d}>" for n in (1, 5, 8, 9)]
    assert rows[0]["url"] == "https://site.example/1" and rows[0]["date"] == DATE
    assert rows[0]["text"].startswith("Notes from the valley, part 1")
    assert "All rights reserved" not in rows[0]["text"] and "About" not in rows[0]["text"]  # boilerplate dropped
    from minipretrain.report import summary_table

    table = summary_table(report).splitlines()
    assert table[2].split() == ["records", "13"] and table[3].split()[:6] == ["0.", "extraction", "web", "13", "4", "9"]


def test_charset_from_http_header_or_meta_tag(mixed):
    _, _, rows = mixed
    texts = {r["url"]: r["text"] for r in rows}
    assert CAFE in texts["https://site.example/8"]  # header says ISO-8859-1: read as windows-1252 (the curly quotes)
    assert CAFE in texts["https://site.example/9"]  # only the <meta> tag says windows-1252


def test_decode_body_order(monkeypatch):
    import charset_normalizer

    def no_detection(*a, **k):
        raise AssertionError("detection used where the HTTP header or the <meta> tag says the charset")

    monkeypatch.setattr(charset_normalizer, "from_bytes", no_detection)
    body = "<meta charset='windows-1252'>\u201cq\u201d caf\u00e9".encode("cp1252")
    assert decode_body(body, None).endswith("\u201cq\u201d caf\u00e9")        # meta tag
    assert decode_body(body, "utf-8").endswith("\u201cq\u201d caf\u00e9")     # a wrong header falls through
    assert decode_body("caf\u00e9".encode("utf-8"), "no-such-charset") == "caf\u00e9"
    assert decode_body(b"\x00\x81\xff" * 50, None) is None
    monkeypatch.undo()
    russian = "\u0421\u044a\u0435\u0448\u044c \u0436\u0435 \u0435\u0449\u0451 \u044d\u0442\u0438\u0445 \u043c\u044f\u0433\u043a\u0438\u0445 \u0431\u0443\u043b\u043e\u043a, \u0434\u0430 \u0432\u044b\u043f\u0435\u0439 \u0447\u0430\u044e. " * 4
    assert decode_body(russian.encode("koi8-r"), None) == russian  # nothing declared, not UTF-8: detection
    euro = b"<meta charset=iso-8859-15><p>price 5\xa4</p>"  # 0xa4 is the euro sign here, a currency sign in cp1252
    assert decode_body(euro, None).endswith("price 5\u20ac</p>")


def test_parallel_run_gives_the_same_output(tmp_path, mixed):
    warc = write_warc(tmp_path / "crawl.warc.gz", mixed_records() + [response(n) for n in range(20, 40)])
    one, r1, _ = run(tmp_path, [warc], "one", 1, "--batch_size", "3")
    two, r2, _ = run(tmp_path, [warc], "two", 2, "--batch_size", "3")
    assert (one / "cleaned-00000.parquet").read_bytes() == (two / "cleaned-00000.parquet").read_bytes()
    assert r1 == r2 and r1["output"]["documents"] == 24


def test_wet_conversion_records(tmp_path):
    recs = [warc_record("warcinfo", "", DATE, b"x: y\r\n", "00000000-0000-0000-0000-200000000000")]
    recs += [warc_record("conversion", f"<https://site.example/{n}>", DATE, page_text(n).encode("utf-8"),  # WARC 1.0 may bracket URIs
                         f"00000000-0000-0000-0000-2000000000{n:02d}") for n in (1, 2)]
    recs += [warc_record("conversion", "https://site.example/3", DATE, b"", "00000000-0000-0000-0000-200000000003")]
    _, report, rows = run(tmp_path, [write_warc(tmp_path / "x.warc.wet.gz", recs)])
    assert report["extraction"]["reasons"] == {"warcinfo": 1, "extraction_empty": 1}
    assert [r["text"] for r in rows] == [page_text(1), page_text(2)]  # WET text as it is: no extraction
    assert rows[1]["url"] == "https://site.example/2"


def test_html_files(tmp_path):
    folder = tmp_path / "pages"
    folder.mkdir()
    (folder / "a.html").write_bytes(page_html(page_text(1)).encode("utf-8"))
    (folder / "b.htm").write_bytes(page_html(page_text(2) + "\n\n" + CAFE, '<meta http-equiv="Content-Type" '
                                             'content="text/html; charset=windows-1252">').encode("cp1252"))
    (folder / "c.html").write_bytes(b"<html><body></body></html>")
    _, report, rows = run(tmp_path, [folder])
    assert report["extraction"]["reasons"] == {"extraction_empty": 1}
    assert [r["doc_id"] for r in rows] == ["a.html", "b.htm"]
    assert CAFE in rows[1]["text"]
    from minipretrain.report import summary_table

    _, report, _ = run(tmp_path, [folder / "a.html"], "one")  # nothing removed: step 0 is still shown
    assert summary_table(report).splitlines()[3].split()[:6] == ["0.", "extraction", "web", "1", "1", "0"]


def test_truncated_warc_gz_is_one_error_line(tmp_path):
    warc = write_warc(tmp_path / "crawl.warc.gz", mixed_records())
    data = warc.read_bytes()
    warc.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as e:
        run(tmp_path, [warc])
    assert str(warc) in str(e.value) and "truncated" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
    plain = write_warc(tmp_path / "crawl.warc", mixed_records())  # uncompressed: the last record cut short
    plain.write_bytes(plain.read_bytes()[:-200])
    with pytest.raises(UserError, match="crawl.warc: truncated WARC record 13"):
        run(tmp_path, [plain])


def test_bundled_example_is_reproducible_and_runs(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_web_warc", PROJECT_DIR / "sample_data" / "make_web_warc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(tmp_path / "web.warc.gz")
    bundled = PROJECT_DIR / "sample_data" / "web.warc.gz"
    assert (tmp_path / "web.warc.gz").read_bytes() == bundled.read_bytes()
    assert bundled.stat().st_size < 300_000


def test_url_source_streamed_over_http(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    write_warc(site / "crawl.warc.gz", mixed_records())
    handler = partial(SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/crawl.warc.gz"
        _, report, rows = run(tmp_path, [url])
        assert report["extraction"]["reasons"] == EXPECTED_REASONS and len(rows) == 4
        with pytest.raises(UserError, match="missing.warc.gz"):
            run(tmp_path, [url.replace("crawl", "missing")], "missing")
    finally:
        server.shutdown()


def test_reading_streams_one_record_at_a_time(tmp_path):
    """Memory follows the largest record, not the file: 400 records of 50 KB read with the peak of a few."""
    import tracemalloc

    from minipretrain.web import read_warc, read_wet

    body = (page_text(1) + "\n") * 80  # ~50 KB
    def peak(n, reader):
        recs = [warc_record("conversion", f"https://site.example/{i}", DATE, body.encode(), f"00000000-0000-0000-0000-3{i:011d}")
                for i in range(n)]
        recs += [response(9000 + i, 200, "image/png", b"\x89PNG" + bytes(50_000)) for i in range(n)]
        path = write_warc(tmp_path / f"{n}.warc.gz", recs)
        tracemalloc.start()
        count = sum(1 for _ in reader(path))
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert count == 2 * n
        return top

    for reader in (lambda p: read_wet(p, str(p), 1), lambda p: read_warc(p, str(p), None, 1)):
        small, large = peak(10, reader), peak(400, reader)
        assert large < 1.5 * small + 200_000, (small, large)
