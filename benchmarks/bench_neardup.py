"""Issue 14's near-duplicate benchmarks: stage 1's MinHash de-duplication against datatrove's, and
stage 1 with near-duplicate removal on vs off.

    .venv/bin/python benchmarks/bench_neardup.py race --repeats 3            # ours vs datatrove
    .venv/bin/python benchmarks/bench_neardup.py race --only ours-1 datatrove-1 --repeats 1
    .venv/bin/python benchmarks/bench_neardup.py stage --repeats 3           # data_preparation.py on vs off
    .venv/bin/python benchmarks/bench_neardup.py stage --before /tmp/old/data_preparation.py  # + an older copy

Corpus: benchmarks/make_corpus.py's 60,000 pages (seed 0) with 5% near-duplicates
(`--near_duplicates 0.05`: an earlier page with 1-10% of its words changed, or 1-4 boilerplate lines
added), made in work/bench/corpus-near if missing.

race: both sides get the same documents, the pages that reach de-duplication in stage 1 (those that
pass filters 1 and 2, paragraph_length and repetition, written once to work/bench/neardup-input as 8
JSONL files; `--input all` takes all 60,000 pages instead). Contenders, each its own process:
- ours-1 / ours-2: stage 1's algorithm (minipretrain/cleaning.py's digest and MinHash band digests
  per document, in 1 process or in 2 worker processes over the 8 files, as stage 1's units; then
  minipretrain.dedup.duplicates_local over the digests), then a second read that writes the kept
  documents as JSONL. Exact copies go in its exact step, the rest by shared bands.
- datatrove-1 / datatrove-2: datatrove 0.10.1's four MinHash stages (MinhashDedupSignature,
  MinhashDedupBuckets with 14 tasks, MinhashDedupCluster, MinhashDedupFilter + JsonlWriter), each a
  LocalPipelineExecutor with 1 / 2 tasks and workers. Same parameters: word 5-grams, 14 bands x 8
  rows, seed 1; same normalisation: lower case and the words of `\\w+` (its word tokenizer hook gets
  ours; numbers, weekdays, months, diacritics and punctuation left alone: the \\w+ words drop
  punctuation anyway). What differs: its hash (xxh64 of each 5-gram, 64-bit (a*h+b) mod 2^61-1
  permutations; ours xxh32 and datasketch's 32-bit affine permutations), so pairs near the LSH
  threshold fall differently; pages under 5 words (it skips them, ours hashes the words as one
  shingle); and which page of a group stays (ours the first in corpus order; it the root of a
  union-by-size, not always the first). `--datatrove_norm fineweb` uses its defaults instead (numbers
  to 0, punctuation and diacritics removed, whitespace split; spaCy is not installed here).
Measured: wall time (whole process), CPU seconds and peak RSS summed over the process tree (psutil,
every 20 ms), the phases each prints, documents removed; then agreement: which documents each
removes, both directions, and the disagreements sorted into "same group, another page kept" and
"pair found by one side only" (with its 5-gram Jaccard similarity and the LSH's chance of finding it).

stage: `data_preparation.py --web_sources <corpus> --code_sources none --near_dedup true|false`
(num_proc = all cores), rounds interleaved, whole-process wall time, with the sha256 of the cleaned
Parquet of each. `--before SCRIPT` adds another copy of the stage (e.g. the commit before a change)
as before-on / before-off, to show a change keeps the output and what it saves.

Each contender's fastest run counts (`--repeats` interleaved rounds); the 1-minute load average
before each run is printed beside it. Results: work/bench/neardup/<part>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
sys.path[:0] = [str(PROJECT_DIR), str(BENCH_DIR)]

NGRAM, BANDS, ROWS, SEED = 5, 14, 8, 1
RACE = ["ours-1", "datatrove-1", "ours-2", "datatrove-2"]


def now() -> float:
    return time.perf_counter()


def jsonl_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("pages-*.jsonl"))


def read_jsonl(path: Path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            yield d["id"], d["text"]


# ----------------------------------------------------------------------------------------------
# The race's input: what reaches de-duplication in stage 1


def dedup_input(corpus: Path, out: Path) -> dict:
    """The corpus's pages that pass filters 1 and 2 with stage 1's default settings, as 8 JSONL
    files (made once)."""
    from minipretrain.filters import paragraph_length_filter, repetition_filter

    info_path = out / "input.json"
    if info_path.is_file() and json.loads(info_path.read_text()).get("corpus") == json.loads((corpus / "corpus.json").read_text()):
        return json.loads(info_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    n = kept = size = 0
    for path in jsonl_files(corpus):
        with open(out / path.name, "w", encoding="utf-8") as f:
            for doc_id, text in read_jsonl(path):
                n += 1
                if paragraph_length_filter(text, 3, 3) is True and repetition_filter(text, 0.30, 0.20) is True:
                    f.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
                    kept += 1
                    size += len(text.encode("utf-8"))
    info = {"corpus": json.loads((corpus / "corpus.json").read_text()), "pages_in": n, "docs": kept, "text_bytes": size}
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    return info


# ----------------------------------------------------------------------------------------------
# ours: stage 1's digests and band digests, then duplicates_local, then the kept pages written


def _signatures_of_file(path: str):
    from minipretrain.dedup import MinHashBands, text_digest

    near = _signatures_of_file.near = getattr(_signatures_of_file, "near", None) or MinHashBands(NGRAM, BANDS, ROWS, SEED)
    ids, digests, bands = [], [], []
    for doc_id, text in read_jsonl(Path(path)):
        ids.append(doc_id)
        digests.append(text_digest(text))
        bands.append(near.band_digests(text))
    return ids, digests, bands


def run_ours(data: Path, out: Path, procs: int) -> None:
    import numpy as np
    import pyarrow as pa

    from minipretrain.dedup import duplicates_local

    files = [str(p) for p in jsonl_files(data)]
    t0 = now()
    if procs == 1:
        parts = [_signatures_of_file(f) for f in files]
    else:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(procs) as pool:  # as stage 1's local engine: worker processes
            parts = pool.map(_signatures_of_file, files, chunksize=1)
    t1 = now()
    ids = [i for p in parts for i in p[0]]
    table = pa.table({"order": pa.array(range(len(ids)), pa.int64()),
                      "digest": pa.array([d for p in parts for d in p[1]], pa.binary(16)),
                      "bands": pa.FixedSizeListArray.from_arrays(
                          pa.array(np.asarray([b for p in parts for b in p[2]], dtype=np.uint64).reshape(-1), pa.uint64()), BANDS)})
    exact, near = duplicates_local([table], BANDS)
    t2 = now()
    removed = exact | near.keys()
    order = 0
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "kept.jsonl", "w", encoding="utf-8") as f:  # the second read: what datatrove's stage 4 does
        for path in files:
            for doc_id, text in read_jsonl(Path(path)):
                if order not in removed:
                    f.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
                order += 1
    t3 = now()
    phases = {"read + signatures": t1 - t0, "dedup (duplicates_local)": t2 - t1, "read + write kept": t3 - t2}
    (out / "result.json").write_text(json.dumps({
        "phases": phases, "docs": len(ids), "exact": sorted(ids[o] for o in exact),
        "near": {ids[o]: ids[first] for o, first in sorted(near.items())}}) + "\n")
    print(json.dumps({"phases": phases, "exact": len(exact), "near": len(near)}))


# ----------------------------------------------------------------------------------------------
# datatrove: its four MinHash stages


def datatrove_parts(norm: str):
    """datatrove's MinhashConfig and word tokenizer, normalising as ours does (or as FineWeb does)."""
    import re

    import datatrove.utils.hashes.xxhash as dt_xxhash
    import xxhash
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.utils.text import TextNormConfig
    from datatrove.utils.word_tokenizers import WordTokenizer

    # datatrove 0.10.1 hands str to xxhash, which xxhash 4 refuses: the same hash of the UTF-8 bytes
    dt_xxhash.xxhash64 = lambda s: xxhash.xxh64_intdigest(s.encode() if isinstance(s, str) else s)
    dt_xxhash.xxhash32 = lambda s: xxhash.xxh32_intdigest(s.encode() if isinstance(s, str) else s)

    class Words(WordTokenizer):
        """`\\w+` words (minipretrain.dedup.word_list's rule) or, for 'fineweb', a whitespace split of
        datatrove's simplified text (its English tokenizer, spaCy's, is not installed here)."""

        pattern = re.compile(r"\w+")

        def word_tokenize(self, text):
            return self.pattern.findall(text) if norm == "ours" else text.split()

        def sent_tokenize(self, text):
            return [text]

        def span_tokenize(self, text):
            return [(0, len(text))]

    if norm == "ours":
        text_norm = TextNormConfig(lowercase=True, norm_whitespace=True, remove_punctuation=False, norm_unicode_diacritics=False,
                                   norm_numbers=False, norm_weekdays=False, norm_monthnames=False)
    else:
        text_norm = TextNormConfig()
    config = MinhashConfig(n_grams=NGRAM, num_buckets=BANDS, hashes_per_bucket=ROWS, seed=SEED, norm_config=text_norm)
    return config, Words("en")


def run_datatrove(data: Path, out: Path, procs: int, norm: str) -> None:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    config, words = datatrove_parts(norm)
    stages = {
        "1 signatures": ([JsonlReader(str(data), glob_pattern="pages-*.jsonl"),
                          MinhashDedupSignature(output_folder=str(out / "sigs"), config=config, language=words)], procs),
        "2 buckets": ([MinhashDedupBuckets(input_folder=str(out / "sigs"), output_folder=str(out / "buckets"), config=config)], BANDS),
        "3 clusters": ([MinhashDedupCluster(input_folder=str(out / "buckets"), output_folder=str(out / "remove"), config=config)], 1),
        "4 filter + write": ([JsonlReader(str(data), glob_pattern="pages-*.jsonl"), MinhashDedupFilter(input_folder=str(out / "remove")),
                              JsonlWriter(str(out / "kept"), compression=None)], procs),
    }
    phases = {}
    for i, (name, (pipeline, tasks)) in enumerate(stages.items()):
        t = now()
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=min(procs, tasks), logging_dir=str(out / "logs" / str(i))).run()
        phases[name] = now() - t
    (out / "result.json").write_text(json.dumps({"phases": phases}) + "\n")
    print(json.dumps({"phases": phases}))


# ----------------------------------------------------------------------------------------------
# Agreement: which documents each side removes


def kept_ids(out: Path) -> set[str]:
    files = [out / "kept.jsonl"] if (out / "kept.jsonl").is_file() else sorted((out / "kept").glob("*.jsonl"))
    return {json.loads(line)["id"] for f in files for line in open(f, encoding="utf-8")}


def shingle_set(text: str, norm: str = "ours") -> set[str]:
    from minipretrain.dedup import word_list

    words = word_list(text)
    return {" ".join(words[i : i + NGRAM]) for i in range(max(1, len(words) - NGRAM + 1))}


def jaccard(a: str, b: str) -> float:
    x, y = shingle_set(a), shingle_set(b)
    return len(x & y) / len(x | y) if x | y else 1.0


def p_found(j: float) -> float:
    """The chance that LSH with BANDS bands of ROWS rows puts a pair of Jaccard j in one bucket."""
    return 1 - (1 - j**ROWS) ** BANDS


class Groups:
    """Union-find over document ids."""

    def __init__(self):
        self.parent: dict[str, str] = {}

    def root(self, x):
        while self.parent.get(x, x) != x:
            self.parent[x] = self.parent.get(self.parent[x], self.parent[x])
            x = self.parent[x]
        return x

    def join(self, a, b):
        self.parent.setdefault(a, a)
        self.parent.setdefault(b, b)
        ra, rb = self.root(a), self.root(b)
        if ra != rb:
            self.parent[rb] = ra

    def members(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for x in list(self.parent):
            out.setdefault(self.root(x), []).append(x)
        return out


def datatrove_pairs(out: Path, ids: list[str]) -> list[tuple[str, str]]:
    """The pairs datatrove's bucket stage found (1 task: file 0, document index = corpus order)."""
    import struct

    pairs = []
    for f in sorted((out / "buckets").glob("*.dups")):
        data = f.read_bytes()
        for f1, d1, f2, d2 in struct.iter_unpack("<4I", data):
            assert f1 == f2 == 0, "pairs are read for a 1-task run only"
            pairs.append((ids[d1], ids[d2]))
    return pairs


def agreement(data: Path, ours_out: Path, dt_out: Path, corpus: Path, examples: int = 4) -> dict:
    """Both directions of disagreement between ours-1 and datatrove-1, explained."""
    docs = {doc_id: text for path in jsonl_files(data) for doc_id, text in read_jsonl(path)}
    ids = list(docs)
    index = {d: i for i, d in enumerate(ids)}
    ours = json.loads((ours_out / "result.json").read_text())
    ours_removed = set(ours["exact"]) | set(ours["near"])
    dt_removed = set(ids) - kept_ids(dt_out)
    both, only_ours, only_dt = ours_removed & dt_removed, ours_removed - dt_removed, dt_removed - ours_removed
    log_path = corpus / "near_duplicates.json"
    made = json.loads(log_path.read_text()) if log_path.is_file() else {}

    # the groups each side found: ours from its exact copies (-> the first page with that text) and near pairs
    first_of_text: dict[str, str] = {}
    ours_groups, dt_groups = Groups(), Groups()
    ours_partner: dict[str, str] = dict(ours["near"])
    for d in ids:
        first = first_of_text.setdefault(docs[d], d)
        if d in ours["exact"]:
            ours_partner[d] = first
    for a, b in ours_partner.items():
        ours_groups.join(b, a)
    dt_partner: dict[str, str] = {}
    for a, b in datatrove_pairs(dt_out, ids):
        dt_groups.join(a, b)
        for x, y in ((a, b), (b, a)):
            dt_partner.setdefault(x, y)
    in_dt_group = {x for m in dt_groups.members().values() if len(m) > 1 for x in m}
    in_ours_group = {x for m in ours_groups.members().values() if len(m) > 1 for x in m}

    def explain(d, side):
        partner = ours_partner.get(d) if side == "ours" else dt_partner.get(d)
        j = jaccard(docs[d], docs[partner]) if partner else None
        return {"doc": d, "partner": partner, "jaccard": None if j is None else round(j, 3),
                "p_found": None if j is None else round(p_found(j), 3), "made_as": made.get(d)}

    categories: dict[str, list] = {}
    for d in sorted(only_ours, key=index.get):
        key = ("removed by ours only: datatrove put it in a group but kept it" if d in in_dt_group
               else "removed by ours only: datatrove paired it with nothing")
        categories.setdefault(key, []).append(explain(d, "ours"))
    for d in sorted(only_dt, key=index.get):
        key = ("removed by datatrove only: ours put it in a group but kept it" if d in in_ours_group
               else "removed by datatrove only: ours paired it with nothing")
        categories.setdefault(key, []).append(explain(d, "dt"))
    n = len(ids)
    result = {
        "documents": n, "removed_by_ours": len(ours_removed), "ours_exact": len(ours["exact"]), "ours_near": len(ours["near"]),
        "removed_by_datatrove": len(dt_removed), "removed_by_both": len(both),
        "removed_by_ours_only": len(only_ours), "removed_by_datatrove_only": len(only_dt),
        "agreement_all_documents": 1 - (len(only_ours) + len(only_dt)) / n,
        "agreement_removed (|both| / |either|)": len(both) / max(1, len(ours_removed | dt_removed)),
        "datatrove_groups": sum(1 for m in dt_groups.members().values() if len(m) > 1),
        "ours_groups": sum(1 for m in ours_groups.members().values() if len(m) > 1),
        "categories": {k: {"count": len(v), "jaccard_mean": _mean([e["jaccard"] for e in v]),
                           "p_found_mean": _mean([e["p_found"] for e in v]), "examples": v[:examples]} for k, v in categories.items()},
    }
    # a group both found, each keeping one page: how many pages differ only by which copy stays
    same_partition = 0
    for m in dt_groups.members().values():
        if len(m) > 1 and len({ours_groups.root(x) for x in m}) == 1 and len(ours_groups.members().get(ours_groups.root(m[0]), [])) == len(m):
            same_partition += 1
    result["groups_identical_on_both_sides"] = same_partition
    # control: ours against itself with other MinHash permutations (seed 2): the disagreement that
    # two draws of the same LSH give, with no difference of algorithm
    import numpy as np
    import pyarrow as pa

    from minipretrain.dedup import MinHashBands, duplicates_local, text_digest

    other = MinHashBands(NGRAM, BANDS, ROWS, SEED + 1)
    table = pa.table({"order": pa.array(range(n), pa.int64()), "digest": pa.array([text_digest(docs[d]) for d in ids], pa.binary(16)),
                      "bands": pa.FixedSizeListArray.from_arrays(pa.array(np.asarray([other.band_digests(docs[d]) for d in ids],
                                                                                        dtype=np.uint64).reshape(-1), pa.uint64()), BANDS)})
    exact2, near2 = duplicates_local([table], BANDS)
    removed2 = {ids[o] for o in exact2 | near2.keys()}
    result["control: ours with seed 2 vs ours (seed 1)"] = {
        "removed_by_seed_2": len(removed2), "removed_by_seed_1_only": len(ours_removed - removed2),
        "removed_by_seed_2_only": len(removed2 - ours_removed),
        "agreement_all_documents": 1 - len(ours_removed ^ removed2) / n,
        "agreement_removed (|both| / |either|)": len(ours_removed & removed2) / max(1, len(ours_removed | removed2))}
    # expected disagreement from LSH alone: pairs ours found among near-copies made by make_corpus, their Jaccard
    js = [jaccard(docs[d], docs[v["of"]]) for d, v in made.items() if d in docs and v["of"] in docs]
    if js:
        result["made_near_copies_in_input"] = len(js)
        result["made_near_copies_expected_missed_by_one_side"] = round(sum(2 * p_found(j) * (1 - p_found(j)) for j in js), 1)
        result["made_near_copies_jaccard_histogram"] = {f"{lo / 10:.1f}-{(lo + 1) / 10:.1f}": sum(1 for j in js if lo / 10 <= j < (lo + 1) / 10 or (lo == 9 and j == 1.0))
                                                        for lo in range(10)}
    return result


def _mean(values):
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 3) if values else None


# ----------------------------------------------------------------------------------------------
# Measuring: each contender its own process (bench_data_preparation.measure: wall, CPU, peak RSS of the tree)


def race(a) -> None:
    from bench_data_preparation import measure

    corpus = ensure_corpus(a)
    work = (PROJECT_DIR / a.work).resolve()
    if a.input == "all":
        data, info = corpus, json.loads((corpus / "corpus.json").read_text())
    else:
        data = work / "neardup-input"
        info = dedup_input(corpus, data)
    print(f"input: {data} ({info['docs']:,} pages, {info['text_bytes'] / 1e6:.1f} MB of text)", flush=True)
    best, runs, results = {}, {n: [] for n in a.only}, {}
    for r in range(0 if a.analyse_only else a.repeats):
        for name in a.only:
            out = work / "neardup" / name
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            who, procs = name.split("-")
            cmd = [sys.executable, __file__, "run", "--who", who, "--procs", procs, "--data", str(data), "--out", str(out),
                   "--datatrove_norm", a.datatrove_norm]
            m = measure(cmd, out.parent / f"{name}.log")
            m["phases"] = json.loads((out / "result.json").read_text())["phases"]
            m["removed"] = info["docs"] - len(kept_ids(out))
            runs[name].append(m)
            print(f"  {name} round {r + 1}: {m['wall_s']:.1f} s wall, {m['cpu_s']:.1f} s CPU, peak {m['peak_rss_mb']:.0f} MB, "
                  f"removed {m['removed']:,}, load before {m['load']:.2f}; "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in m["phases"].items()), flush=True)
            if name not in best or m["wall_s"] < best[name]["wall_s"]:
                best[name] = m
    if a.analyse_only:  # the last run's outputs: only the agreement
        previous = json.loads((work / "neardup" / "race.json").read_text())
        best, runs = previous["best"], previous["runs"]
    print(f"\n{'contender':<12} {'wall s':>7} {'pages/s':>8} {'CPU s':>7} {'peak MB':>8} {'removed':>8} {'load':>5}")
    for name, m in best.items():
        print(f"{name:<12} {m['wall_s']:7.1f} {info['docs'] / m['wall_s']:8.0f} {m['cpu_s']:7.1f} {m['peak_rss_mb']:8.0f} "
              f"{m['removed']:8,} {m['load']:5.2f}")
    for slow, fast in (("datatrove-1", "ours-1"), ("datatrove-2", "ours-2")):
        if slow in best and fast in best:
            print(f"  {slow} / {fast}: {best[slow]['wall_s'] / best[fast]['wall_s']:.2f}x wall, "
                  f"{best[slow]['cpu_s'] / best[fast]['cpu_s']:.2f}x CPU, {best[slow]['peak_rss_mb'] / best[fast]['peak_rss_mb']:.2f}x peak memory")
    if "ours-1" in a.only and "datatrove-1" in a.only:
        results = agreement(data, work / "neardup" / "ours-1", work / "neardup" / "datatrove-1", corpus)
        print("\nagreement, ours-1 vs datatrove-1 (ours: exact + near; datatrove: its MinHash removals):")
        print(json.dumps(results, indent=1, ensure_ascii=False))
    if "ours-2" in a.only and "datatrove-2" in a.only:
        for one, two in (("ours-1", "ours-2"), ("datatrove-1", "datatrove-2")):
            if one in a.only:
                same = kept_ids(work / "neardup" / one) == kept_ids(work / "neardup" / two)
                print(f"{two} keeps {'the same' if same else 'OTHER'} documents as {one}")
    (work / "neardup" / "race.json").write_text(json.dumps({"input": info, "best": best, "runs": runs, "agreement": results,
                                                             "datatrove_norm": a.datatrove_norm}, indent=1) + "\n")


def stage(a) -> None:
    from bench_data_preparation import measure

    corpus = ensure_corpus(a)
    work = (PROJECT_DIR / a.work).resolve() / "neardup-stage"
    scripts = {"on": PROJECT_DIR / "data_preparation.py", "off": PROJECT_DIR / "data_preparation.py"}
    if a.before:
        scripts |= {"before-on": Path(a.before).resolve(), "before-off": Path(a.before).resolve()}
    work.mkdir(parents=True, exist_ok=True)
    best, runs = {}, {n: [] for n in scripts}
    for r in range(a.repeats):
        for name, script in scripts.items():
            out = work / name
            cmd = [sys.executable, str(script), "--web_sources", str(corpus), "--code_sources", "none", "--output_dir", str(out),
                   "--overwrite", "--near_dedup", "false" if name.endswith("off") else "true", "--num_proc", str(a.num_proc)]
            m = measure(cmd, work / f"{name}.log")
            report = json.loads((out / "report.json").read_text())
            m["near_removed"] = next(f["removed"] for f in report["filters"] if f["name"] == "near_deduplication")
            m["kept"] = report["output"]["documents"]
            m["sha256"] = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(out.glob("cleaned-*.parquet")))).hexdigest()
            runs[name].append(m)
            print(f"  {name} round {r + 1}: {m['wall_s']:.1f} s wall, {m['cpu_s']:.1f} s CPU, peak {m['peak_rss_mb']:.0f} MB, "
                  f"near-duplicates removed {m['near_removed']:,}, kept {m['kept']:,}, load before {m['load']:.2f}, "
                  f"cleaned sha256 {m['sha256'][:16]}", flush=True)
            if name not in best or m["wall_s"] < best[name]["wall_s"]:
                best[name] = m
    print(f"\n{'run':<11} {'wall s':>7} {'CPU s':>7} {'peak MB':>8} {'near removed':>12} {'kept':>7} {'load':>5}  cleaned sha256")
    for name, m in best.items():
        print(f"{name:<11} {m['wall_s']:7.1f} {m['cpu_s']:7.1f} {m['peak_rss_mb']:8.0f} {m['near_removed']:12,} {m['kept']:7,} "
              f"{m['load']:5.2f}  {m['sha256']}")
    for prefix in ("", "before-"):
        if prefix + "on" in best:
            on, off = best[prefix + "on"], best[prefix + "off"]
            print(f"  {prefix}on / {prefix}off: {on['wall_s'] / off['wall_s']:.2f}x wall, {on['cpu_s'] / off['cpu_s']:.2f}x CPU")
    if a.before:
        print(f"  before-on / on: {best['before-on']['wall_s'] / best['on']['wall_s']:.2f}x wall; same cleaned Parquet: "
              f"{best['before-on']['sha256'] == best['on']['sha256']} (on), {best['before-off']['sha256'] == best['off']['sha256']} (off)")
    (work / "stage.json").write_text(json.dumps({"best": best, "runs": runs}, indent=1) + "\n")


def ensure_corpus(a) -> Path:
    from make_corpus import write_corpus

    corpus = (PROJECT_DIR / a.corpus).resolve()
    info_path = corpus / "corpus.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if (info.get("docs"), info.get("seed"), info.get("near_duplicates", 0.0)) != (a.docs, a.seed, a.near_duplicates):
        print(f"making the corpus: {a.docs} pages, seed {a.seed}, near-duplicates {a.near_duplicates} -> {corpus}", flush=True)
        info = write_corpus(corpus, a.docs, a.seed, 8, a.near_duplicates)
    print(f"corpus: {corpus} ({info['docs']:,} pages, {info['text_bytes'] / 1e6:.1f} MB, kinds {info['kinds']})", flush=True)
    return corpus


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="part", required=True)
    for name, text in (("race", "ours vs datatrove's MinHash de-duplication"), ("stage", "stage 1 with near-duplicate removal on vs off")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--corpus", default="work/bench/corpus-near", help="folder of pages-*.jsonl (made if missing)")
        p.add_argument("--docs", type=int, default=60_000, help="pages in the corpus, if it is made")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--near_duplicates", type=float, default=0.05, help="share of near-copies in the corpus, if it is made")
        p.add_argument("--work", default="work/bench", help="where contenders write (under neardup/ and neardup-stage/)")
        p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; each contender's fastest run counts")
    race_p, stage_p = sub.choices["race"], sub.choices["stage"]
    race_p.add_argument("--only", nargs="+", choices=RACE, default=RACE)
    race_p.add_argument("--input", choices=["filtered", "all"], default="filtered",
                        help="filtered: the pages that pass stage 1's filters 1 and 2 (what its de-duplication sees); all: every page")
    race_p.add_argument("--datatrove_norm", choices=["ours", "fineweb"], default="ours",
                        help="datatrove's text normalisation: as ours (lower case, \\w+ words) or its defaults")
    race_p.add_argument("--analyse_only", action="store_true", help="no runs: the agreement of the last run's outputs again")
    stage_p.add_argument("--before", help="another copy of data_preparation.py, run as before-on / before-off")
    stage_p.add_argument("--num_proc", type=int, default=os.cpu_count() or 1)
    run_p = sub.add_parser("run", help="(internal) one race contender, in this process")
    run_p.add_argument("--who", choices=["ours", "datatrove"])
    run_p.add_argument("--procs", type=int)
    run_p.add_argument("--data")
    run_p.add_argument("--out")
    run_p.add_argument("--datatrove_norm", default="ours")
    a = ap.parse_args(argv)
    if a.part == "run":
        if a.who == "ours":
            return run_ours(Path(a.data), Path(a.out), a.procs)
        return run_datatrove(Path(a.data), Path(a.out), a.procs, a.datatrove_norm)
    (race if a.part == "race" else stage)(a)


if __name__ == "__main__":
    main()
