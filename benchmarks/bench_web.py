"""Issue 14's WARC -> text race: stage 1's reader against datatrove's WarcReader + Trafilatura
(FineWeb's first two steps), with the extractor's own speed as the floor.

    .venv/bin/pip install -r benchmarks/requirements.txt
    .venv/bin/python benchmarks/bench_web.py ../shared/data/cc-sample/*.warc.gz --copies 10 --repeats 3
    .venv/bin/python benchmarks/bench_web.py ../shared/data/cc-sample/*.warc.gz --only ours-1 floor --repeats 1

Input: the given WARC files concatenated (gzip members concatenate into a valid .warc.gz) into one
file, written `--copies` times as copy-00.warc.gz, copy-01.warc.gz, ... in a temporary folder, so
that every contender reads the same records and 2-process contenders have files to share out.

Contenders, each its own process, all with the same extractor call: trafilatura.extract(html,
favor_precision=True, include_comments=False, deduplicate=False) (datatrove's Trafilatura step with
deduplicate=False: its default True keeps a cache across pages that blanks text seen before, so the
2nd copy of a page comes out shorter or empty; stage 1 sets it False for that reason):
- ours-1: minipretrain.web.read_warc, stage 1's reader (fastwarc; WARC-Type response, HTTP 200, HTML
  content type; the body decoded by the HTTP header's charset, the <meta> charset, UTF-8, then
  charset-normalizer), extraction, each document written as JSONL; one process.
- ours-2: the same in 2 worker processes, a file each at a time (as stage 1's units).
- datatrove-1: LocalPipelineExecutor, 1 task: WarcReader (warcio; WARC-Type response, payload type
  from WARC-Identified-Payload-Type or libmagic, no HTTP status check; UTF-8, else cchardet) ->
  Trafilatura(favour_precision=True, deduplicate=False, timeout=10) -> JsonlWriter. Its extractor
  runs each page in a sandbox child process (for the timeout), so "1 task" is 2 busy processes:
  the reader and the extractor work at the same time. timeout=10 instead of its 1 s so that a
  loaded machine does not drop pages.
- datatrove-2: the same with 2 tasks and 2 workers (4 busy processes).
- floor: the extractor alone, in one process, on the HTML strings of the same responses decoded
  beforehand (not timed): what no reader can beat in one process.
Measured: wall time of the whole process, CPU seconds and peak RSS over the process tree (psutil,
every 20 ms), and the contender's own timing after start-up ("core": the loop; ours also splits it
into extraction and the rest, reading + HTTP parsing + decoding + writing), with its CPU seconds
("core CPU": getrusage of the process and its ended children, so datatrove's sandbox and ours-2's
workers count; for datatrove-2, whose sandboxes are grandchildren, the tree's CPU instead; the least
of the rounds: on a shared machine CPU time varies less than wall time). pages/s and MB/s (of the
.warc.gz files) use the core time and the whole-process time. Then: do both extract the same pages?
Documents per side, record ids only one side has (and why), and for the ids both have, how many texts
are identical, with a line-level comparison of the others.
Each contender's fastest run counts (`--repeats` interleaved rounds); the 1-minute load average
before each run is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
sys.path[:0] = [str(PROJECT_DIR), str(BENCH_DIR)]

CONTENDERS = ["ours-1", "datatrove-1", "floor", "ours-2", "datatrove-2"]


def now() -> float:
    return time.perf_counter()


def cpu() -> float:
    """CPU seconds of this process and of its finished (waited-for) children: datatrove's
    extractor sandbox and ours-2's pool workers count once they have ended."""
    import resource

    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def warc_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("copy-*.warc.gz"))


# ----------------------------------------------------------------------------------------------
# The contenders (run in their own process: `bench_web.py run --who ...`)


class Timed:
    """The extractor, with the seconds spent inside it."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, html):
        t = now()
        try:
            return self.fn(html)
        finally:
            self.seconds += now() - t


def _ours_file(path: str) -> tuple[list[dict], float]:
    from minipretrain.web import extract_trafilatura, read_warc

    extract = Timed(extract_trafilatura)
    docs = [{"id": d["doc_id"], "url": d["url"], "text": d["text"]} for d in read_warc(path, Path(path).name, extract, 1)
            if d["text"] is not None]
    return docs, extract.seconds


def run_ours(folder: Path, out: Path, procs: int) -> dict:
    t, c = now(), cpu()
    files = [str(p) for p in warc_files(folder)]
    if procs == 1:
        parts = map(_ours_file, files)
    else:
        import multiprocessing

        pool = multiprocessing.get_context("fork").Pool(procs)
        parts = pool.imap(_ours_file, files)
    extraction = n = 0
    with open(out / "docs.jsonl", "w", encoding="utf-8") as f:
        for docs, seconds in parts:
            extraction += seconds
            for d in docs:
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
                n += 1
    if procs > 1:
        pool.close()
        pool.join()
    core = now() - t
    result = {"core_s": core, "core_cpu_s": cpu() - c, "documents": n}
    if procs == 1:
        result |= {"extraction_s": extraction, "reading_decoding_writing_s": core - extraction}
    else:
        result["extraction_s_summed_over_workers"] = extraction
    return result


def run_datatrove(folder: Path, out: Path, procs: int) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.writers import JsonlWriter

    t, c = now(), cpu()
    logs = out / "logs"
    LocalPipelineExecutor(pipeline=[WarcReader(str(folder), glob_pattern="copy-*.warc.gz"),
                                    Trafilatura(favour_precision=True, deduplicate=False, timeout=10),
                                    JsonlWriter(str(out / "docs"), compression=None)],
                          tasks=procs, workers=procs, logging_dir=str(logs)).run()
    core, core_cpu = now() - t, cpu() - c
    n = sum(1 for f in (out / "docs").glob("*.jsonl") for _ in open(f, encoding="utf-8"))
    # with 2 workers the sandboxes are children of pool workers that getrusage does not see: the tree's CPU (psutil) stands
    result = {"core_s": core, "core_cpu_s": core_cpu if procs == 1 else None, "documents": n}
    stats = logs / "stats.json"
    if stats.is_file():  # seconds inside each step, summed over tasks (datatrove's own track_time)
        for step in json.loads(stats.read_text()):
            total = step.get("time_stats", {}).get("total")
            if total is not None:
                result[f"in {step['name'].encode('ascii', 'ignore').decode().strip()} (s, all tasks)"] = total
            extra = {k: v for k, v in step.get("stats", {}).items() if k in ("timeout", "clean_error", "broken_process", "dropped")}
            if extra:
                result[f"{step['name'].encode('ascii', 'ignore').decode().strip()} counts"] = {k: v.get("total", v) if isinstance(v, dict) else v for k, v in extra.items()}
    return result


def decoded_pages(folder: Path) -> list[str]:
    """The HTML strings of every HTML 200 response, decoded as stage 1 does."""
    from minipretrain.web import decode_body, html_responses

    pages = []
    for path in warc_files(folder):
        for r in html_responses(path):
            html = decode_body(r["body"], r["charset"])
            if html is not None:
                pages.append(html)
    return pages


def run_floor(folder: Path, out: Path) -> dict:
    from minipretrain.web import extract_trafilatura

    pages = decoded_pages(folder)
    t, c = now(), cpu()
    n = sum(1 for html in pages if extract_trafilatura(html).strip())
    return {"core_s": now() - t, "core_cpu_s": cpu() - c, "documents": n, "pages_in": len(pages)}


# ----------------------------------------------------------------------------------------------
# Same pages?


def read_docs(out: Path) -> list[dict]:
    files = [out / "docs.jsonl"] if (out / "docs.jsonl").is_file() else sorted((out / "docs").glob("*.jsonl"))
    return [json.loads(line) for f in files for line in open(f, encoding="utf-8")]


def compare(ours: list[dict], theirs: list[dict], folder: Path, show: int = 3) -> dict:
    """Per record id (each id comes once per copy): which side has it, and are the texts the same?"""
    import difflib

    from minipretrain.web import _records, _split_http

    a = {d["id"]: d for d in ours}
    b = {d["id"]: {"text": d["text"], "url": d.get("metadata", {}).get("url")} for d in theirs}
    why = {}
    for record, body in _records(warc_files(folder)[0], "copy-00"):  # what each record is, for the ids one side lacks
        rid = record.headers.get("WARC-Record-ID")
        if rid in a.keys() ^ b.keys():
            status, headers, _ = _split_http(body)
            why[rid] = {"url": record.headers.get("WARC-Target-URI"), "http_status": status, "content_type": headers.get("content-type"),
                        "identified_payload_type": record.headers.get("WARC-Identified-Payload-Type")}
    same = [i for i in a.keys() & b.keys() if a[i]["text"] == b[i]["text"].strip()]
    differ = sorted(a.keys() & b.keys() - set(same))
    details = []
    for i in differ[:show]:
        x, y = a[i]["text"].splitlines(), b[i]["text"].strip().splitlines()
        details.append({"id": i, "url": a[i]["url"], "ours_chars": len(a[i]["text"]), "datatrove_chars": len(b[i]["text"]),
                        "line_similarity": round(difflib.SequenceMatcher(None, x, y).ratio(), 3),
                        "diff": [line[:120] for line in difflib.unified_diff(x, y, "ours", "datatrove", n=0, lineterm="")][:8]})
    return {"documents_ours": len(ours), "documents_datatrove": len(theirs), "distinct_ids_ours": len(a), "distinct_ids_datatrove": len(b),
            "ids_in_both": len(a.keys() & b.keys()), "texts_identical": len(same), "texts_different": len(differ),
            "only_ours": {i: why.get(i) for i in sorted(a.keys() - b.keys())},
            "only_datatrove": {i: why.get(i) for i in sorted(b.keys() - a.keys())}, "different_texts": details}


# ----------------------------------------------------------------------------------------------


def prepare(warcs: list[str], copies: int, folder: Path) -> dict:
    from minipretrain.web import _records, html_responses

    one = b"".join(Path(w).read_bytes() for w in warcs)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(copies):
        (folder / f"copy-{k:02d}.warc.gz").write_bytes(one)
    first = warc_files(folder)[0]
    records = sum(1 for _ in _records(first, first.name, read=False))
    html = [r["body"] for r in html_responses(first)]
    return {"copies": copies, "warc_bytes": len(one) * copies, "records": records * copies, "html_responses": len(html) * copies,
            "html_bytes": sum(map(len, html)) * copies}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("warcs", nargs="*", help="WARC files (e.g. ../shared/data/cc-sample/*.warc.gz)")
    ap.add_argument("--copies", type=int, default=10, help="how many copies of their concatenation to read")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; each contender's fastest run counts")
    ap.add_argument("--only", nargs="+", choices=CONTENDERS, default=CONTENDERS)
    ap.add_argument("--work", help="where to put the copies and outputs (default: a temporary folder, removed after)")
    ap.add_argument("--run", choices=["ours", "datatrove", "floor"], help=argparse.SUPPRESS)  # one contender, in this process
    ap.add_argument("--procs", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.run:
        folder, out = Path(a.folder), Path(a.out)
        result = (run_ours(folder, out, a.procs) if a.run == "ours" else run_datatrove(folder, out, a.procs) if a.run == "datatrove"
                  else run_floor(folder, out))
        (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
        return
    if not a.warcs:
        ap.error("give the WARC files to read")
    from bench_data_preparation import measure

    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="bench_web-"))
    try:
        folder = work / "warc"
        info = prepare(a.warcs, a.copies, folder)
        mb = info["warc_bytes"] / 1e6
        print(f"input: {a.copies} copies of {' + '.join(Path(w).name for w in a.warcs)}: {info['records']} records, "
              f"{info['html_responses']} HTML 200 responses ({info['html_bytes'] / 1e6:.1f} MB of HTML), {mb:.1f} MB of .warc.gz", flush=True)
        best, runs = {}, {n: [] for n in a.only}
        for r in range(a.repeats):
            for name in a.only:
                out = work / name
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                who, _, procs = name.partition("-")
                cmd = [sys.executable, __file__, "--run", who, "--procs", procs or "1", "--folder", str(folder), "--out", str(out)]
                m = measure(cmd, work / f"{name}.log")
                m |= json.loads((out / "result.json").read_text())
                runs[name].append(m)
                print(f"  {name} round {r + 1}: {m['wall_s']:.1f} s wall, core {m['core_s']:.1f} s, {m['cpu_s']:.1f} s CPU, "
                      f"peak {m['peak_rss_mb']:.0f} MB, {m['documents']} documents, load before {m['load']:.2f}"
                      + "".join(f"; {k} {v:.1f}" if isinstance(v, float) else f"; {k} {v}" for k, v in m.items()
                                if k not in ("wall_s", "core_s", "cpu_s", "peak_rss_mb", "documents", "load")), flush=True)
                if name not in best or m["core_s"] < best[name]["core_s"]:
                    best[name] = m
        pages = info["html_responses"]
        for name in best:  # the least core CPU of its runs (CPU time suffers less from other jobs than wall time)
            best[name]["core_cpu_s"] = min((m["core_cpu_s"] or m["cpu_s"]) for m in runs[name])
        print(f"\n{'contender':<12} {'core s':>7} {'wall s':>7} {'pages/s':>8} {'MB/s':>6} {'CPU s':>6} {'core CPU s':>10} {'pages/CPU s':>11} "
              f"{'peak MB':>8} {'docs':>5} {'load':>5}   (pages/s, MB/s of .warc.gz: core time; whole process in brackets)")
        for name, m in best.items():
            print(f"{name:<12} {m['core_s']:7.2f} {m['wall_s']:7.2f} {pages / m['core_s']:8.1f} {mb / m['core_s']:6.2f} {m['cpu_s']:6.1f} "
                  f"{m['core_cpu_s']:10.2f} {pages / m['core_cpu_s']:11.1f} {m['peak_rss_mb']:8.0f} {m['documents']:5} {m['load']:5.2f}   "
                  f"({pages / m['wall_s']:.1f} pages/s, {mb / m['wall_s']:.2f} MB/s)")
        for slow, fast in (("datatrove-1", "ours-1"), ("datatrove-2", "ours-2"), ("ours-1", "floor"), ("datatrove-1", "floor"),
                           ("datatrove-2", "ours-1"), ("datatrove-1", "ours-2")):
            if slow in best and fast in best:
                print(f"  {slow} / {fast}: {best[slow]['core_s'] / best[fast]['core_s']:.2f}x core, "
                      f"{best[slow]['wall_s'] / best[fast]['wall_s']:.2f}x whole process, {best[slow]['cpu_s'] / best[fast]['cpu_s']:.2f}x CPU, "
                      f"{best[slow]['core_cpu_s'] / best[fast]['core_cpu_s']:.2f}x core CPU")
        comparison = None
        if "ours-1" in a.only and "datatrove-1" in a.only:
            comparison = compare(read_docs(work / "ours-1"), read_docs(work / "datatrove-1"), folder)
            print("\nsame pages? ours-1 vs datatrove-1:\n" + json.dumps(comparison, indent=1, ensure_ascii=False))
        (work / "results.json").write_text(json.dumps({"input": info, "best": best, "runs": runs, "comparison": comparison}, indent=1) + "\n")
        print(f"results: {work / 'results.json'}" if a.work else "")
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
