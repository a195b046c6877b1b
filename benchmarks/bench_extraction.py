"""Main-text extraction from real HTML: trafilatura (FineWeb's extractor) vs resiliparse (DCLM's).

    .venv/bin/python benchmarks/bench_extraction.py ../shared/data/cc-sample/*.warc.gz [--show 3]

Reads every HTML `response` record of the WARC files once (fastwarc), decodes it as stage 1 does,
then times each extractor on the same decoded pages (best of `--repeat` passes) and reports pages
per second, pages left empty, characters kept, and how much the two agree (share of one's lines
found in the other's). `--show N` prints the start of N pages' text from both, to read.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minipretrain.web import EXTRACTORS, decode_body, html_responses  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--show", type=int, default=0)
    a = ap.parse_args()
    pages = []
    for f in a.files:
        for record in html_responses(Path(f)):
            html = decode_body(record["body"], record["charset"])
            if html is not None:
                pages.append((record["url"], html))
    print(f"{len(pages)} HTML pages, {sum(len(h) for _, h in pages) / 1e6:.2f} M characters of HTML")
    out = {}
    for name, extract in EXTRACTORS.items():
        best = float("inf")
        for _ in range(a.repeat):
            t = time.perf_counter()
            texts = [extract(html) for _, html in pages]
            best = min(best, time.perf_counter() - t)
        out[name] = texts
        chars = [len(t) for t in texts]
        print(f"{name:12s} {len(pages) / best:7.1f} pages/s  {1000 * best / len(pages):6.1f} ms/page  "
              f"empty {sum(c == 0 for c in chars):3d}  under 200 chars {sum(c < 200 for c in chars):3d}  chars kept {sum(chars):8d}  median {statistics.median(chars):7.0f}")
    names = list(out)
    if len(names) == 2:
        a_, b_ = names
        for x, y in ((a_, b_), (b_, a_)):
            shares = []
            for tx, ty in zip(out[x], out[y]):
                lx = [l.strip() for l in tx.splitlines() if l.strip()]
                if lx:
                    sy = ty
                    shares.append(sum(l in sy for l in lx) / len(lx))
            print(f"lines of {x} found in {y}'s text: median {statistics.median(shares):.0%}")
    for (url, _), *texts in list(zip(pages, *out.values()))[: a.show]:
        print("=" * 100, "\n", url)
        for name, text in zip(names, texts):
            print(f"--- {name} ({len(text)} chars)\n{text[:700]}\n")


if __name__ == "__main__":
    main()
