"""Benchmark of stage 1 (data_preparation.py) against the course-style way and against datatrove.

    python benchmarks/bench_data_preparation.py                      # 60,000 pages, every contender
    python benchmarks/bench_data_preparation.py --only ours-1 course --docs 10000
    python benchmarks/bench_data_preparation.py --repeats 3           # 3 rounds, the fastest run counts
    python benchmarks/bench_data_preparation.py --candidate /tmp/patched/data_preparation.py --only ours-1 cand-1

Contenders, each run as its own process on the same corpus (benchmarks/make_corpus.py; made if
missing) with the same thresholds and the same fastText model file (lid.176.ftz):

- ours-1, ours-2: `data_preparation.py --num_proc 1 / 2`, as a user runs it (Parquet output, report,
  funnel chart, manifest). cand-1, cand-2: the same for a changed copy of the stage (--candidate).
- course: the DeepLearning.AI "Pretraining LLMs" course's way: a `datasets.Dataset` (load_dataset
  "json"), one `Dataset.filter` with a Python function per filter, de-duplication holding every full
  text in a Python set, the language filter single process, `to_parquet` at the end.
- bare: a bare single-process loop that reads the pages (json), applies the stage's own filter
  functions in order (de-dup before language ID) and keeps the ids; no output, report or checks. Its
  seconds inside fastText's predict (printed) are the floor: every contender classifies those pages.
- datatrove-1, datatrove-2: datatrove's nearest pipeline with 1 / 2 tasks (and as many workers):
  JsonlReader -> paragraph-length (our function in a BaseFilter: datatrove has no such filter) ->
  GopherRepetitionFilter (paragraph checks only; line and n-gram checks off) -> JsonlWriter +
  ExactDedupSignature; ExactFindDedups; JsonlReader -> ExactDedupFilter -> LanguageFilter (same model
  file, en > 0.4) -> ParquetWriter (zstd). Three executors, as its exact de-dup needs.

Measured per contender: wall time of the whole process (start-up and imports included), documents/s
and MB/s over the corpus's UTF-8 text bytes, CPU seconds summed over the process tree (psutil,
each process's last sample), and peak memory: the largest sum of RSS over the process tree (psutil, sampled every
20 ms; shared pages count once per process, so this overstates multi-process runs a little).
Then it checks that every contender keeps the same documents as ours-1 and prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
sys.path[:0] = [str(PROJECT_DIR), str(BENCH_DIR)]

CONTENDERS = ["ours-1", "ours-2", "course", "datatrove-1", "datatrove-2", "bare", "cand-1", "cand-2"]
# the stage's default thresholds, used by every contender
MIN_LINES, MIN_LONGEST_LINE_CHARS = 3, 3
MAX_DUP_PARAGRAPH_FRAC, MAX_DUP_CHAR_FRAC = 0.30, 0.20
LANGUAGE, MIN_LANGUAGE_SCORE = "en", 0.4


def lid_model_path() -> str:
    from minipretrain.filters import language_model_path

    return str(language_model_path("lid.176.ftz"))


def corpus_files(corpus: Path) -> list[str]:
    return [str(p) for p in sorted(corpus.glob("pages-*.jsonl"))]


# ----------------------------------------------------------------------------------------------
# (a) the course's way, written as the course's notebook does it


def run_course(corpus: Path, out: Path) -> None:
    import heapq
    import re

    import datasets
    import fasttext

    dataset = datasets.load_dataset("json", data_files=corpus_files(corpus), split="train", cache_dir=str(out / "hf-cache"))

    def paragraph_length_filter(x):
        """Returns False iff a page has too few lines or lines are too short."""
        lines = x["text"].split("\n")
        if len(lines) < MIN_LINES or min(heapq.nlargest(3, [len(line) for line in lines])) < MIN_LONGEST_LINE_CHARS:
            return False
        return True

    dataset = dataset.filter(paragraph_length_filter, load_from_cache_file=False)

    def find_duplicates(paragraphs):
        unique_x = set()
        duplicate_chars = 0
        duplicate_elements = 0
        for element in paragraphs:
            if element in unique_x:
                duplicate_chars += len(element)
                duplicate_elements += 1
            else:
                unique_x.add(element)
        return duplicate_elements, duplicate_chars

    def paragraph_repetition_filter(x):
        """Returns False iff a page has too many repetitions."""
        text = x["text"]
        paragraphs = re.compile(r"\n{2,}").split(text.strip())
        paragraphs_duplicates, char_duplicates = find_duplicates(paragraphs)
        if paragraphs_duplicates / len(paragraphs) > MAX_DUP_PARAGRAPH_FRAC:
            return False
        if char_duplicates / len(text) > MAX_DUP_CHAR_FRAC:
            return False
        return True

    dataset = dataset.filter(paragraph_repetition_filter, load_from_cache_file=False)

    def deduplication(ds):
        def dedup_func(x):
            """Use this function to remove duplicate entries"""
            if x["text"] in unique_text:
                return False
            else:
                unique_text.add(x["text"])
                return True

        unique_text = set()
        # the course passes num_proc=1, which in its datasets 2.x ran here; datasets 5.x starts a pool of
        # one process for it (and cannot pickle the fastText model below), so: the default, in-process
        ds = ds.filter(dedup_func, load_from_cache_file=False)
        return ds

    dataset = deduplication(dataset)

    def english_language_filter(ds):
        model = fasttext.load_model(lid_model_path())

        def is_english(x):
            # the course joins lines with "" (x['text'].replace("\n", "")); we join with " " as the stage
            # and datatrove do, so that all three judge the same string
            language, score = model.predict(x["text"].replace("\n", " "))
            language = language[0].split("__")[2]
            return score > MIN_LANGUAGE_SCORE and language == LANGUAGE

        ds = ds.filter(is_english, load_from_cache_file=False)
        return ds

    dataset = english_language_filter(dataset)
    dataset.to_parquet(str(out / "course.parquet"))


# ----------------------------------------------------------------------------------------------
# a bare loop: the stage's filter functions and nothing else; its fastText time is the floor


def run_bare(corpus: Path, out: Path) -> None:
    import fasttext

    from minipretrain import dedup, filters

    model = fasttext.load_model(lid_model_path())
    seen, kept, lid_s = set(), [], 0.0
    for path in corpus_files(corpus):
        with open(path, encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                text = d["text"]
                if filters.paragraph_length_filter(text) is not True or filters.repetition_filter(text) is not True:
                    continue
                digest = dedup.text_digest(text)
                if digest in seen:
                    continue
                seen.add(digest)
                t = time.perf_counter()
                ok = filters.language_filter(model, text)
                lid_s += time.perf_counter() - t
                if ok is True:
                    kept.append(d["id"])
    (out / "bare.json").write_text(json.dumps({"fasttext_s": lid_s, "kept": kept}))


# ----------------------------------------------------------------------------------------------
# (b) datatrove's nearest equivalent


def run_datatrove(corpus: Path, out: Path, tasks: int) -> None:
    from datatrove.data import Document
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.exact_dedup import (
        ExactDedupConfig,
        ExactDedupFilter,
        ExactDedupSignature,
        ExactFindDedups,
    )
    from datatrove.pipeline.filters import GopherRepetitionFilter, LanguageFilter
    from datatrove.pipeline.filters.base_filter import BaseFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter, ParquetWriter
    from datatrove.utils.lid import FT176LID
    from datatrove.utils.word_tokenizers import WordTokenizer

    from data_preparation import paragraph_length_filter

    class ParagraphLengthFilter(BaseFilter):  # datatrove has no filter with this rule: ours, as a step
        name = "paragraph length"

        def filter(self, doc: Document):
            return paragraph_length_filter(doc.text, MIN_LINES, MIN_LONGEST_LINE_CHARS)

    class NoWords(WordTokenizer):
        """GopherRepetitionFilter splits every page into words (spaCy for English) even when its n-gram
        checks are off; with them off the words are unused, so skip that work."""

        def word_tokenize(self, text):
            return []

        def sent_tokenize(self, text):
            return [text]

        def span_tokenize(self, text):
            return [(0, len(text))]

    class LocalFT176(FT176LID):  # the same model file as the stage, not a download of lid.176.bin
        @property
        def model(self):
            if self._model is None:
                from fasttext.FastText import _FastText

                self._model = _FastText(lid_model_path())
            return self._model

    class OurLanguageFilter(LanguageFilter):
        # datatrove insists on the distribution fasttext-numpy2-wheel; fasttext-numpy2 gives the same module
        def __new__(cls, *args, **kwargs):
            return object.__new__(cls)

    def text_of(doc: Document) -> bytes:  # bytes: datatrove's str path hands str to xxhash, which xxhash 4 refuses
        return doc.text.encode("utf-8")

    config = ExactDedupConfig(content_getter=text_of)
    language_filter = OurLanguageFilter(languages=[LANGUAGE], language_threshold=MIN_LANGUAGE_SCORE)
    language_filter.model = LocalFT176([LANGUAGE])
    logs = out / "logs"
    filter_and_sign = LocalPipelineExecutor(
        [
            JsonlReader(str(corpus), glob_pattern="pages-*.jsonl"),
            ParagraphLengthFilter(),
            GopherRepetitionFilter(dup_line_frac=None, dup_line_char_frac=None, top_n_grams=(), dup_n_grams=(),
                                   dup_para_frac=MAX_DUP_PARAGRAPH_FRAC, dup_para_char_frac=MAX_DUP_CHAR_FRAC,
                                   language=NoWords()),
            JsonlWriter(str(out / "filtered"), compression=None),
            ExactDedupSignature(str(out / "signatures"), config),
        ],
        tasks=tasks, workers=tasks, logging_dir=str(logs / "1-filter"),
    )
    find = LocalPipelineExecutor([ExactFindDedups(str(out / "signatures"), str(out / "duplicates"), config)],
                                 tasks=1, logging_dir=str(logs / "2-find"), depends=filter_and_sign)
    dedup_and_language = LocalPipelineExecutor(
        [
            JsonlReader(str(out / "filtered")),
            ExactDedupFilter(str(out / "duplicates"), config),
            language_filter,
            ParquetWriter(str(out / "final"), compression="zstd"),
        ],
        tasks=tasks, workers=tasks, logging_dir=str(logs / "3-dedup-language"), depends=find,
    )
    dedup_and_language.run()


# ----------------------------------------------------------------------------------------------
# Measuring a contender: its own process, wall time, CPU time, peak RSS over the process tree


def command(name: str, out: Path, corpus: Path, candidate: str | None) -> list[str]:
    py = sys.executable
    if name.startswith(("ours", "cand")):
        script = str(PROJECT_DIR / "data_preparation.py") if name.startswith("ours") else candidate
        return [py, script, "--web_sources", str(corpus), "--code_sources", "none",
                "--num_proc", name.split("-")[1], "--output_dir", str(out), "--overwrite"]
    if name in ("course", "bare"):
        return [py, __file__, "--run", name, "--corpus", str(corpus), "--out", str(out)]
    return [py, __file__, "--run", "datatrove", "--tasks", name.split("-")[1], "--corpus", str(corpus), "--out", str(out)]


def measure(cmd: list[str], log: Path, until=None) -> dict:
    """Wall time, CPU time and peak RSS of a command's process tree. until: a function polled as it
    runs; when it returns True the command's processes are killed (SIGKILL), as by a crash, and the
    result says killed: True (bench_packaging's kill-and-resume)."""
    import psutil

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    load_before = os.getloadavg()[0]
    killed = [False]
    with open(log, "w") as f:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_DIR, start_new_session=until is not None)
        peak, cpu, done = [0], {}, threading.Event()

        def sample():
            root = psutil.Process(proc.pid)
            while not done.is_set():
                total = 0
                try:
                    tree = [root, *root.children(recursive=True)]
                except psutil.Error:
                    break
                for p in tree:
                    try:
                        with p.oneshot():
                            total += p.memory_info().rss
                            t = p.cpu_times()
                            cpu[p.pid] = t.user + t.system  # last seen, per process
                    except psutil.Error:
                        pass
                peak[0] = max(peak[0], total)
                if until is not None and until():
                    killed[0] = True
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rc = proc.wait()
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
    if rc != 0 and not killed[0]:
        sys.exit(f"error: {' '.join(cmd)} failed (exit {rc}); see {log}:\n" + log.read_text()[-3000:])
    return {"wall_s": wall, "cpu_s": sum(cpu.values()), "peak_rss_mb": peak[0] / 2**20, "load": load_before, "killed": killed[0]}


def kept_documents(name: str, out: Path) -> dict[str, str]:
    """{doc id: text} of what a contender kept."""
    import pyarrow.parquet as pq

    if name.startswith(("ours", "cand")):
        files, id_col = sorted(out.glob("cleaned-*.parquet")), "doc_id"
    elif name == "course":
        files, id_col = [out / "course.parquet"], "id"
    elif name == "bare":
        return dict.fromkeys(json.loads((out / "bare.json").read_text())["kept"])
    else:
        files, id_col = sorted((out / "final").glob("*.parquet")), "id"
    kept = {}
    for f in files:
        t = pq.read_table(f, columns=[id_col, "text"])
        kept.update(zip(t.column(id_col).to_pylist(), t.column("text").to_pylist()))
    return kept


def compare(reference: dict[str, str], other: dict[str, str]) -> str:
    if reference.keys() == other.keys():
        return "same documents"
    if None in other.values():  # the bare loop keeps ids only
        return f"DIFFERENT documents: {len(reference.keys() - other.keys())} only in ours-1, {len(other.keys() - reference.keys())} only here"
    texts_same = sorted(reference.values()) == sorted(other.values())
    only_ref, only_other = sorted(reference.keys() - other.keys()), sorted(other.keys() - reference.keys())
    what = "same texts, other copies of duplicates kept" if texts_same else "DIFFERENT texts"
    return f"{what}: {len(only_ref)} only in ours-1 (e.g. {only_ref[:2]}), {len(only_other)} only here (e.g. {only_other[:2]})"


def explain_language_differences(reference: dict[str, str], other: dict[str, str], limit: int = 5) -> list[str]:
    """fastText's view of documents one side kept and the other did not (for the report)."""
    import fasttext

    model = fasttext.load_model(lid_model_path())
    lines = []
    for side, ids in (("ours-1 only", reference.keys() - other.keys()), ("other only", other.keys() - reference.keys())):
        for doc_id in sorted(ids)[:limit]:
            text = (reference.get(doc_id) or other.get(doc_id)).replace("\n", " ")
            labels, scores = model.predict(text, k=3)
            top = ", ".join(f"{l.removeprefix('__label__')} {s:.3f}" for l, s in zip(labels, scores))
            lines.append(f"    {side}: {doc_id}: {top}")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default="work/bench/corpus", help="folder of pages-*.jsonl (made if missing)")
    ap.add_argument("--docs", type=int, default=60_000, help="pages in the corpus, if it is made")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="work/bench/stage1", help="where contenders write their outputs")
    ap.add_argument("--only", nargs="+", choices=CONTENDERS, default=CONTENDERS[:5])
    ap.add_argument("--repeats", type=int, default=1,
                    help="rounds over the contenders (interleaved, so that load from elsewhere hits all alike); "
                    "each contender's fastest run counts")
    ap.add_argument("--candidate", help="a changed copy of data_preparation.py, run as cand-1 / cand-2")
    ap.add_argument("--run", choices=["course", "datatrove", "bare"], help=argparse.SUPPRESS)  # one contender, in here
    ap.add_argument("--tasks", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    corpus = (PROJECT_DIR / a.corpus).resolve()

    if a.run == "course":
        return run_course(corpus, Path(a.out))
    if a.run == "bare":
        return run_bare(corpus, Path(a.out))
    if a.run == "datatrove":
        return run_datatrove(corpus, Path(a.out), a.tasks)

    import shutil

    from make_corpus import write_corpus

    info_path = corpus / "corpus.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if info.get("docs") != a.docs or info.get("seed") != a.seed:
        print(f"making the corpus: {a.docs} pages, seed {a.seed} -> {corpus}", flush=True)
        info = write_corpus(corpus, a.docs, a.seed)
    mb = info["text_bytes"] / 1e6
    print(f"corpus: {corpus} ({info['docs']} pages, {mb:.1f} MB of text, {info['shards']} files)", flush=True)

    work = (PROJECT_DIR / a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if any(n.startswith("cand") for n in a.only) and not a.candidate:
        ap.error("cand-1 / cand-2 need --candidate")
    results, kept, runs = {}, {}, {name: [] for name in a.only}
    for r in range(a.repeats):
        for name in a.only:
            out = work / name
            shutil.rmtree(out, ignore_errors=True)
            if not name.startswith(("ours", "cand")):
                out.mkdir(parents=True)
            m = measure(command(name, out, corpus, a.candidate), work / f"{name}.log")
            print(f"  {name} run {r + 1}: {m['wall_s']:.1f} s wall, {m['cpu_s']:.1f} s CPU, "
                  f"peak {m['peak_rss_mb']:.0f} MB, load before {m['load']:.2f}", flush=True)
            runs[name].append(m)
            if name not in results or m["wall_s"] < results[name]["wall_s"]:
                results[name] = m
            if name == "bare":
                m["fasttext_s"] = json.loads((out / "bare.json").read_text())["fasttext_s"]
                print(f"    of which fastText predict: {m['fasttext_s']:.1f} s", flush=True)
            if r == a.repeats - 1:
                kept[name] = kept_documents(name, out)
            shutil.rmtree(out / "hf-cache", ignore_errors=True)  # the course's arrow copy of the corpus

    print(f"\n{'contender':<12} {'wall s':>7} {'docs/s':>8} {'MB/s':>6} {'CPU s':>7} {'peak MB':>8} {'load':>5}  kept")
    for name, m in results.items():
        print(f"{name:<12} {m['wall_s']:7.1f} {info['docs'] / m['wall_s']:8.0f} {mb / m['wall_s']:6.2f} "
              f"{m['cpu_s']:7.1f} {m['peak_rss_mb']:8.0f} {m['load']:5.2f}  {len(kept[name])}")

    if "bare" in results:
        floor = min(m["fasttext_s"] for m in runs["bare"])
        print(f"floor: fastText predict on the pages that reach language ID, {floor:.1f} s in one process "
              f"({floor / 2:.1f} s if perfectly split over 2)")
    print("\nratios of wall time, A / B (> 1: B is faster); of CPU seconds in brackets:")
    pairs = [("course", "ours-1"), ("course", "ours-2"), ("ours-1", "bare"), ("course", "bare"), ("datatrove-1", "ours-1"), ("datatrove-2", "ours-2"),
             ("ours-1", "ours-2"), ("datatrove-1", "datatrove-2"), ("course", "cand-1"), ("course", "cand-2"),
             ("datatrove-1", "cand-1"), ("datatrove-2", "cand-2"), ("ours-1", "cand-1"), ("ours-2", "cand-2"),
             ("cand-1", "cand-2")]
    for slow, fast in pairs:
        if slow in results and fast in results:
            print(f"  {slow + ' / ' + fast:<26} {results[slow]['wall_s'] / results[fast]['wall_s']:5.2f}x "
                  f"(CPU s: {results[slow]['cpu_s'] / results[fast]['cpu_s']:4.2f}x)")

    if "ours-1" in kept:
        print("\nkept documents compared with ours-1:")
        for name in kept:
            if name != "ours-1":
                verdict = compare(kept["ours-1"], kept[name])
                print(f"  {name}: {verdict}")
                if verdict.startswith("DIFFERENT texts"):
                    print("\n".join(explain_language_differences(kept["ours-1"], kept[name])))
    (work / "results.json").write_text(json.dumps({"corpus": info, "best": results, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
