"""Issue 14's speed comparisons with datatrove (pip install -r benchmarks/requirements.txt warcio==1.8.1):

    .venv/bin/python benchmarks/bench_web.py ../shared/data/cc-sample/*.warc.gz --copies 5 --pages 2000

1. WARC -> extracted text: ours (minipretrain.web.read_warc: fastwarc + trafilatura, in this
   process) against datatrove's WarcReader + Trafilatura step (LocalPipelineExecutor, 1 task), on
   the given WARC files concatenated `--copies` times.
2. Near-duplicates: ours (minipretrain.dedup.find_duplicates: stage 1's corpus-wide step) against
   datatrove's 4-stage MinHash (signatures, buckets, clusters, filter; 1 task), both with 5-grams,
   14 bands x 8 rows, on `--pages` pages made from the bundled sample's 126 clean pages (each one and
   variants with 1-20% of the words changed).
Wall time of each (best of `--repeat`), documents out, and how many near-duplicates each removed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minipretrain.dedup import MinHashBands, find_duplicates  # noqa: E402
from minipretrain.web import extract_trafilatura, read_warc  # noqa: E402


def best(fn, repeat):
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def ours_extraction(warc: Path):
    return sum(1 for d in read_warc(warc, str(warc), extract_trafilatura, 1) if d["text"] is not None)


def datatrove_extraction(folder: Path, work: Path):
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.writers import JsonlWriter

    out = work / "dt-extracted"
    shutil.rmtree(out, ignore_errors=True)
    LocalPipelineExecutor(pipeline=[WarcReader(str(folder), glob_pattern="*.warc.gz"), Trafilatura(favour_precision=True),
                                    JsonlWriter(str(out), compression=None)],
                          tasks=1, workers=1, logging_dir=str(work / "dt-logs" / str(time.time()))).run()
    return sum(1 for f in out.glob("*.jsonl") for _ in f.open())


def make_pages(n: int, seed: int = 0) -> list[dict]:
    pages = [json.loads(line)["text"] for f in ("clean-a", "clean-b", "clean-c")
             for line in (ROOT / "sample_data" / "web" / f"{f}.jsonl").read_text().splitlines()]
    rnd = random.Random(seed)
    vocab = sorted({w for p in pages for w in p.split()})
    docs = []
    while len(docs) < n:
        base = pages[len(docs) % len(pages)]
        if len(docs) < len(pages):
            docs.append(base)
            continue
        words = base.split(" ")
        for i in rnd.sample(range(len(words)), max(1, round(rnd.uniform(0.01, 0.2) * len(words)))):
            words[i] = rnd.choice(vocab)
        docs.append(" ".join(words))
    return [{"id": f"d{i}", "text": t} for i, t in enumerate(docs)]


def ours_neardup(docs):
    exact, near = find_duplicates([d["text"] for d in docs], MinHashBands(5, 14, 8, 1))
    return len(exact) + len(near)  # datatrove's MinHash removes exact copies as near-duplicates too


def datatrove_neardup(jsonl_folder: Path, work: Path):
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    import datatrove.pipeline.dedup.minhash as dt_minhash

    class SplitWords:  # datatrove's English tokenizer is spaCy's; a plain split stands in (ours is a regex)
        def word_tokenize(self, text):
            return text.split()

    dt_minhash.load_word_tokenizer = lambda language: SplitWords()
    import datatrove.utils.hashes.xxhash as dt_xxhash
    import xxhash

    # xxhash 4 refuses str, which this datatrove passes: the same hash of the UTF-8 bytes
    dt_xxhash.xxhash64 = lambda s: xxhash.xxh64_intdigest(s.encode() if isinstance(s, str) else s)
    dt_xxhash.xxhash32 = lambda s: xxhash.xxh32_intdigest(s.encode() if isinstance(s, str) else s)
    run = work / f"dt-minhash-{time.time()}"
    cfg = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8, seed=1)
    logs = run / "logs"
    stages = [
        [JsonlReader(str(jsonl_folder)), MinhashDedupSignature(output_folder=str(run / "sigs"), config=cfg)],
        [MinhashDedupBuckets(input_folder=str(run / "sigs"), output_folder=str(run / "buckets"), config=cfg)],
        [MinhashDedupCluster(input_folder=str(run / "buckets"), output_folder=str(run / "remove"), config=cfg)],
        [JsonlReader(str(jsonl_folder)), MinhashDedupFilter(input_folder=str(run / "remove")),
         JsonlWriter(str(run / "out"), compression=None)],
    ]
    tasks = [1, cfg.num_buckets, 1, 1]
    for i, (pipeline, n) in enumerate(zip(stages, tasks)):
        LocalPipelineExecutor(pipeline=pipeline, tasks=n, workers=1, logging_dir=str(logs / str(i))).run()
    kept = sum(1 for f in (run / "out").glob("*.jsonl") for _ in f.open())
    return kept


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("warcs", nargs="+")
    ap.add_argument("--copies", type=int, default=5)
    ap.add_argument("--pages", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_web-"))
    try:
        folder = work / "warc"
        folder.mkdir()
        big = folder / "all.warc.gz"
        with open(big, "wb") as f:  # gzip members concatenate into one valid .warc.gz
            for _ in range(a.copies):
                for w in a.warcs:
                    f.write(Path(w).read_bytes())
        t, n = best(lambda: ours_extraction(big), a.repeat)
        print(f"extraction  ours       {t:7.2f} s  {n} documents  ({n / t:.1f}/s)")
        t, n = best(lambda: datatrove_extraction(folder, work), a.repeat)
        print(f"extraction  datatrove  {t:7.2f} s  {n} documents  ({n / t:.1f}/s)")

        docs = make_pages(a.pages)
        jsonl = work / "pages"
        jsonl.mkdir()
        (jsonl / "pages.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
        t, removed = best(lambda: ours_neardup(docs), a.repeat)
        print(f"near-dup    ours       {t:7.2f} s  {len(docs)} pages, {removed} removed  ({len(docs) / t:.0f} pages/s)")
        t, kept = best(lambda: datatrove_neardup(jsonl, work), a.repeat)
        print(f"near-dup    datatrove  {t:7.2f} s  {len(docs)} pages, {len(docs) - kept} removed  ({len(docs) / t:.0f} pages/s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
