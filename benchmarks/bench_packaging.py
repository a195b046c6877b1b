"""Packing speed of stage 2 (data_packaging.py): tokens/s against the bare tokenizer (the limit) and
against the course-style way, side by side in one run.

    python benchmarks/bench_packaging.py                                   # SmolLM2's tokenizer, 2 rounds
    python benchmarks/bench_packaging.py --tokenizer mistral-32k --rounds 2
    python benchmarks/bench_packaging.py --only ours-core,bare --rounds 3
    python benchmarks/bench_packaging.py --candidate work/bench/stage2-cand/data_packaging.py \
        --only ours,ours-core,bare,cand,cand-core              # a changed copy of the stage beside it
    python benchmarks/bench_packaging.py --only ours,resume --rounds 1                 # kill at 50%, resume
    python benchmarks/bench_packaging.py --only ours,resume --engine ray --rounds 1    # the same on Ray

Input: stage 1's output on the benchmark corpus (work/bench/cleaned: data_preparation.py over
benchmarks/make_corpus.py's 60,000 pages; made if missing). Contenders, each its own process, the
same texts and the same tokenizer, TOKENIZERS_PARALLELISM=true (the library's default, which the
stage keeps):

- ours: `data_packaging.py` as a user runs it (wall time includes start-up: imports, loading the
  tokenizer from the GGUF file, the manifest's file hashes).
- ours-core: its pack() function alone, in-process (num_proc 1: its units tokenized in this
  process), after the tokenizer is loaded; the phases inside it timed apart (reading Parquet, split
  hashing, tokenizing, writing and reading the unit files, building the stream and chopping,
  writing, the rest) by wrapping the module's functions.
- resume: `data_packaging.py` as `ours`, killed (SIGKILL, its whole process group) when the units
  folder holds --kill_at of its units, then the same command again, which continues from the
  finished units. Its wall and CPU s are the two runs together; what the kill cost is its wall time
  minus the uninterrupted `ours` run's (run it in the same rounds). Its output is checked to be
  identical to ours.
- bare: the fast tokenizer alone, called as the stage calls it (transformers' __call__, same options,
  same batch size) over texts already in memory: the limit. Also timed apart in the same process:
  reading the texts from Parquet, and the Rust tokenizer's encode_batch_fast without transformers'
  wrapper (the library's own floor).
- course: the DeepLearning.AI "Pretraining LLMs" course's lesson 3 (Data Packaging): load_dataset
  ("parquet"), Dataset.map with a per-example function (tokenizer.tokenize, convert_tokens_to_ids,
  [bos] + ids + [eos], num_tokens), np.concatenate of every example's input_ids, reshape into blocks,
  .tolist(), Dataset.from_dict, to_parquet. No train/validation split.
- course-py (not in the default set): the same, but the concatenation and chopping in plain Python
  lists (`all_ids += ids`, slices of block_size), as the course is often paraphrased.
- cand, cand-core: `ours` / `ours-core` for a changed copy of the stage (--candidate); its output
  is checked to be identical to ours.

Tokens: every contender's tokens/s counts the same tokens, the documents' text tokens, boundary
tokens NOT included (the stage adds one <|endoftext|> per document for SmolLM2, the course two), and
the run checks that all contenders tokenized to the same number. Wall s and CPU s (user + system,
all threads) are for the whole process (psutil), the core's and phases' from inside; peak MB is
the process's largest RSS (psutil, every 20 ms). Rounds are interleaved; each contender's fastest
round counts. Prints a table; the figures go into benchmarks/RESULTS.md by hand, with the machine
(lscpu) and its load (uptime).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
sys.path[:0] = [str(PROJECT_DIR), str(BENCH_DIR)]

from minipretrain.settings import UserError, parse_settings, run_main  # noqa: E402

CONTENDERS = ["ours", "ours-core", "bare", "course", "course-py", "cand", "cand-core", "resume"]


@dataclass
class BenchSettings:
    cleaned: str = field(default="work/bench/cleaned", metadata={"help": "Stage 1's output to pack (made from work/bench/corpus if missing)."})
    tokenizer: str = field(default="smollm2-135m", metadata={"help": "Tokenizer, as data_packaging.py's --tokenizer (smollm2-135m, mistral-32k, ...)."})
    block_size: int = field(default=32, metadata={"help": "Tokens per block (the stage's default and the course's)."})
    batch_size: int = field(default=1_000, metadata={"help": "Documents per tokenizer call (the stage's default)."})
    only: str = field(default="ours,ours-core,bare,course", metadata={"help": f"Comma-separated contenders: {', '.join(CONTENDERS)}."})
    rounds: int = field(default=2, metadata={"help": "Rounds over the contenders, interleaved; each one's fastest round counts."})
    candidate: str = field(default="", metadata={"help": "A changed copy of data_packaging.py, run as cand / cand-core."})
    engine: str = field(default="local", metadata={"help": "--engine of the stage's runs (ours, cand, resume): local or ray."})
    num_proc: int = field(default=os.cpu_count() or 1, metadata={"help": "--num_proc of the stage's runs (ours, cand, resume)."})
    unit_documents: int = field(default=0, metadata={"help": "--unit_documents of the stage's runs and ours-core; 0: the stage's default."})
    kill_at: float = field(default=0.5, metadata={"help": "resume: the share of the units finished when the run is killed."})
    work: str = field(default="work/bench/stage2", metadata={"help": "Where contenders write their outputs, logs and results.json."})
    one: str = field(default="", metadata={"help": "(internal) run this one contender in this process and print its result as JSON."})
    out: str = field(default="", metadata={"help": "(internal) its output folder."})


def cleaned_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("cleaned-*.parquet"))


def text_tokens(counts: dict, bos_id: int, eos_id: int) -> int:
    """The documents' text tokens in a stage-2 count (whose tokens include the boundaries)."""
    total = 0
    for c in counts.values():
        boundaries = c["documents"] + 1 if bos_id == eos_id else 2 * c["documents"]  # see data_packaging.document_stream
        total += c["tokens"] - boundaries
    return total


def load_stage(path: str):
    """data_packaging.py, or a changed copy of it, as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"data_packaging_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up there
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------
# The contenders that run inside this script (--one NAME)


class Phases:
    """Wall and CPU seconds spent in named phases (CPU: this process's, all threads)."""

    def __init__(self):
        self.wall, self.cpu = {}, {}

    def add(self, name, wall, cpu):
        self.wall[name] = self.wall.get(name, 0.0) + wall
        self.cpu[name] = self.cpu.get(name, 0.0) + cpu

    def timed(self, name, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            w, c = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - w, time.process_time() - c)

        return wrapper

    def timed_generator(self, name, fn):
        """A generator function whose time inside next() counts as `name`."""

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            it = fn(*args, **kwargs)
            while True:
                w, c = time.perf_counter(), time.process_time()
                try:
                    item = next(it)
                except StopIteration:
                    return
                finally:
                    self.add(name, time.perf_counter() - w, time.process_time() - c)
                yield item

        return wrapper


def run_core(b: BenchSettings, stage_path: str) -> dict:
    """pack() of the stage (or of a candidate), in this process, with its phases timed apart."""
    from types import SimpleNamespace

    from minipretrain import packing
    from minipretrain.tokenization import load_tokenizer, tokenizer_info

    dp = load_stage(stage_path)
    tokenizer = load_tokenizer(b.tokenizer)
    info = tokenizer_info(tokenizer)
    s = dp.Settings(input_dir=b.cleaned, output_dir=b.out, tokenizer=b.tokenizer, block_size=b.block_size, batch_size=b.batch_size,
                    num_proc=1, engine="local", **({"unit_documents": b.unit_documents} if b.unit_documents else {}))  # fmt: skip
    _, files, documents = dp.cleaned_files(s.input_dir)
    phases = Phases()
    dp.doc_id_batches = phases.timed_generator("read Parquet", dp.doc_id_batches)
    packing.read_rows = phases.timed("read Parquet", packing.read_rows)
    dp.split_hashes = phases.timed("split hashing", dp.split_hashes)
    packing.split_hashes = phases.timed("split hashing", packing.split_hashes)
    packing.tokenize = phases.timed("tokenize", packing.tokenize)
    packing.write_unit = phases.timed("write unit files", packing.write_unit)
    dp.unit_documents = phases.timed_generator("read unit files", dp.unit_documents)
    for name in ("document_stream", "chop"):
        setattr(dp, name, phases.timed("stream + chop", getattr(dp, name)))
    for name in ("add", "close"):
        setattr(dp.BlockWriter, name, phases.timed("write Parquet", getattr(dp.BlockWriter, name)))
    out = Path(b.out)
    shutil.rmtree(out, ignore_errors=True)
    (out / "units").mkdir(parents=True)
    w, c = time.perf_counter(), time.process_time()
    counts = dp.pack(files, documents, tokenizer, (info["bos_id"], info["eos_id"]), s, SimpleNamespace(path=out, units=out / "units"))
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    shutil.rmtree(out / "units")  # as the stage does once the output is complete
    phases.add("other (tqdm, unit tables, per-split selection, ...)", wall - sum(phases.wall.values()), cpu - sum(phases.cpu.values()))
    return {"core_wall_s": wall, "core_cpu_s": cpu, "text_tokens": text_tokens(counts, info["bos_id"], info["eos_id"]),
            "tokens_with_boundaries": sum(c["tokens"] for c in counts.values()), "documents": documents,
            "phases_wall": phases.wall, "phases_cpu": phases.cpu}  # fmt: skip


def run_bare(b: BenchSettings) -> dict:
    """The tokenizer alone over texts in memory; reading them is timed apart."""
    import pyarrow.parquet as pq

    import data_packaging as dp
    from minipretrain.tokenization import load_tokenizer

    tokenizer = load_tokenizer(b.tokenizer)
    result = {}
    w, c = time.perf_counter(), time.process_time()
    batches = []
    for f in cleaned_files(Path(b.cleaned)):
        for batch in pq.ParquetFile(f).iter_batches(batch_size=b.batch_size, columns=["text", "doc_id"]):
            batches.append(batch.column("text").to_pylist())
    result["read_wall_s"], result["read_cpu_s"] = time.perf_counter() - w, time.process_time() - c

    # the stage's own call (data_packaging.tokenize: transformers' __call__ with the stage's options)
    w, c = time.perf_counter(), time.process_time()
    tokens = 0
    for texts in batches:
        tokens += sum(map(len, dp.tokenize(tokenizer, texts)))
    result["core_wall_s"], result["core_cpu_s"] = time.perf_counter() - w, time.process_time() - c
    result["text_tokens"], result["documents"] = tokens, sum(map(len, batches))

    # the Rust tokenizer without transformers' wrapper: ids only, no offsets
    backend = tokenizer.backend_tokenizer
    backend.encode_special_tokens = True  # what split_special_tokens=True sets
    w, c = time.perf_counter(), time.process_time()
    rust_tokens = 0
    for texts in batches:
        rust_tokens += sum(len(e.ids) for e in backend.encode_batch_fast(texts, add_special_tokens=False))
    result["rust_wall_s"], result["rust_cpu_s"] = time.perf_counter() - w, time.process_time() - c
    result["rust_tokens"] = rust_tokens
    return result


def run_course(b: BenchSettings, python_lists: bool) -> dict:
    """The course's lesson 3, with our tokenizer and its document boundaries."""
    import datasets
    import numpy as np

    from minipretrain.tokenization import document_boundaries, load_tokenizer

    tokenizer = load_tokenizer(b.tokenizer)
    bos_id, eos_id, _ = document_boundaries(tokenizer)  # SmolLM2's GGUF reports chat tokens as bos/eos
    out, phases = Path(b.out), {}
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    w0, c0 = time.perf_counter(), time.process_time()
    w, c = w0, c0

    def phase(name):
        nonlocal w, c
        now_w, now_c = time.perf_counter(), time.process_time()
        phases[name] = (now_w - w, now_c - c)
        w, c = now_w, now_c

    dataset = datasets.load_dataset("parquet", data_files=[str(f) for f in cleaned_files(Path(b.cleaned))], split="train",
                                    cache_dir=str(out / "hf-cache"))
    phase("load_dataset")

    def tokenization(example):
        # Tokenize
        tokens = tokenizer.tokenize(example["text"])
        # Convert tokens to ids
        token_ids = tokenizer.convert_tokens_to_ids(tokens)
        # Add <bos>, <eos> tokens to the front and back of tokens_ids
        token_ids = [bos_id] + token_ids + [eos_id]
        example["input_ids"] = token_ids
        # We will be using this column to count the total number of tokens in the final dataset
        example["num_tokens"] = len(token_ids)
        return example

    dataset = dataset.map(tokenization, load_from_cache_file=False)
    phase("Dataset.map tokenization")
    total_tokens = int(np.sum(dataset["num_tokens"]))
    max_seq_length = b.block_size
    if python_lists:
        input_ids = []
        for ids in dataset["input_ids"]:
            input_ids += ids
        total_length = len(input_ids) - len(input_ids) % max_seq_length
        input_ids_list = [input_ids[i : i + max_seq_length] for i in range(0, total_length, max_seq_length)]
    else:
        input_ids = np.concatenate(dataset["input_ids"])
        total_length = len(input_ids) - len(input_ids) % max_seq_length
        input_ids = input_ids[:total_length]
        input_ids_reshaped = input_ids.reshape(-1, max_seq_length).astype(np.int32)
        input_ids_list = input_ids_reshaped.tolist()
    phase("concatenate + chop")
    packaged_pretrain_dataset = datasets.Dataset.from_dict({"input_ids": input_ids_list})
    packaged_pretrain_dataset.to_parquet(str(out / "packaged_pretrain_dataset.parquet"))
    phase("from_dict + to_parquet")
    return {"core_wall_s": time.perf_counter() - w0, "core_cpu_s": time.process_time() - c0,
            "text_tokens": total_tokens - 2 * len(dataset), "documents": len(dataset), "blocks": len(input_ids_list),
            "phases_wall": {k: v[0] for k, v in phases.items()}, "phases_cpu": {k: v[1] for k, v in phases.items()}}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# The parent: each contender in its own process


def command(name: str, b: BenchSettings, out: Path, argv) -> list[str]:
    py = sys.executable
    if name in ("ours", "cand", "resume"):
        script = b.candidate if name == "cand" else str(PROJECT_DIR / "data_packaging.py")
        units = ["--unit_documents", str(b.unit_documents)] if b.unit_documents else []
        return [py, script, "--input_dir", b.cleaned, "--output_dir", str(out), "--tokenizer", b.tokenizer,
                "--block_size", str(b.block_size), "--batch_size", str(b.batch_size), "--overwrite",
                "--engine", b.engine, "--num_proc", str(b.num_proc), *units]  # fmt: skip
    args = list(sys.argv[1:] if argv is None else argv)
    return [py, __file__, *args, f"--one={name}", f"--out={out}"]


def stage_result(out: Path) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    t = manifest["tokenizer"]
    counts = manifest["counts"]
    return {"text_tokens": text_tokens(counts, t["bos_id"], t["eos_id"]), "tokens_with_boundaries": sum(c["tokens"] for c in counts.values()),
            "documents": sum(c["documents"] for c in counts.values())}  # fmt: skip


def same_blocks(a: Path, b: Path) -> bool:
    """Whether two stage-2 outputs hold the same blocks in the same files."""
    import pyarrow.parquet as pq

    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*.parquet"))
    if names != sorted(p.relative_to(b).as_posix() for p in b.rglob("*.parquet")):
        return False
    return all(pq.read_table(a / n).equals(pq.read_table(b / n)) for n in names)


def finished_units(out: Path) -> int:
    """Finished units in the stage's partial folder beside `out`."""
    return sum(1 for _ in out.parent.glob(f".{out.name}.partial-*/units/*.json"))


def killed_and_resumed(b: BenchSettings, out: Path, argv, log: Path, measure) -> dict:
    """The stage killed when --kill_at of its units are finished, then the same command again."""
    import math

    import pyarrow.parquet as pq

    import data_packaging

    documents = sum(pq.ParquetFile(f).metadata.num_rows for f in cleaned_files(Path(b.cleaned)))
    units = math.ceil(documents / (b.unit_documents or data_packaging.Settings().unit_documents))
    at = max(1, math.ceil(b.kill_at * units))
    cmd = command("resume", b, out, argv)
    killed = measure(cmd, log, until=lambda: finished_units(out) >= at)
    if not killed["killed"]:
        sys.exit(f"error: the resume run ended before {at} of its {units} units were finished; see {log}")
    at_kill = finished_units(out)
    resumed = measure(cmd, log.with_suffix(".resumed.log"))
    return {"wall_s": killed["wall_s"] + resumed["wall_s"], "cpu_s": killed["cpu_s"] + resumed["cpu_s"],
            "peak_rss_mb": max(killed["peak_rss_mb"], resumed["peak_rss_mb"]), "load": killed["load"],
            "killed_wall_s": killed["wall_s"], "resumed_wall_s": resumed["wall_s"], "units": units, "units_at_kill": at_kill}  # fmt: skip


def ensure_cleaned(folder: Path) -> None:
    if (folder / "manifest.json").is_file():
        return
    corpus = PROJECT_DIR / "work/bench/corpus"
    if not (corpus / "corpus.json").is_file():
        subprocess.run([sys.executable, str(BENCH_DIR / "make_corpus.py"), "--out", str(corpus)], check=True)
    print(f"making {folder} with data_preparation.py (stage 1) from {corpus}", flush=True)
    subprocess.run([sys.executable, str(PROJECT_DIR / "data_preparation.py"), "--web_sources", str(corpus), "--code_sources", "none",
                    "--output_dir", str(folder), "--overwrite"], check=True, cwd=PROJECT_DIR)  # fmt: skip


def main(argv=None):
    b = parse_settings(BenchSettings, argv)
    if b.one:
        if b.one in ("ours-core", "cand-core"):
            result = run_core(b, str(PROJECT_DIR / "data_packaging.py") if b.one == "ours-core" else b.candidate)
        elif b.one == "bare":
            result = run_bare(b)
        else:
            result = run_course(b, python_lists=b.one == "course-py")
        print("RESULT " + json.dumps(result))
        return

    names = [n.strip() for n in b.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        raise UserError(f"--only: unknown {unknown}; choose from {CONTENDERS}")
    if any(n.startswith("cand") for n in names) and not b.candidate:
        raise UserError("--only cand / cand-core need --candidate (a changed copy of data_packaging.py)")
    if not 0 < b.kill_at < 1:
        raise UserError(f"--kill_at: a share of the units between 0 and 1, got {b.kill_at}")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    # a candidate copy outside the project still imports minipretrain
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_DIR), os.environ.get("PYTHONPATH")]))
    from bench_data_preparation import (
        measure,  # wall, CPU and peak RSS of a process tree
    )

    cleaned = (PROJECT_DIR / b.cleaned).resolve()
    ensure_cleaned(cleaned)
    b.cleaned = str(cleaned)
    work = (PROJECT_DIR / b.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    text_mb = sum(f.stat().st_size for f in cleaned_files(cleaned)) / 1e6
    print(f"machine: {cpu}, {os.cpu_count()} cores; input {cleaned} ({text_mb:.1f} MB of Parquet); tokenizer {b.tokenizer}; "
          f"block_size {b.block_size}, batch_size {b.batch_size}; engine {b.engine}, num_proc {b.num_proc}, "
          f"unit_documents {b.unit_documents or 'default'}; load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip

    runs = {name: [] for name in names}
    for i in range(b.rounds):
        for name in names:
            out = work / name
            shutil.rmtree(out, ignore_errors=True)
            for left in work.glob(f".{name}.*"):  # a partial folder of an earlier round: no resuming from it
                shutil.rmtree(left, ignore_errors=True)
            log = work / f"{name}.log"
            if name == "resume":
                m = killed_and_resumed(b, out, argv, log, measure) | stage_result(out)
                print(f"  round {i + 1}, resume: killed after {m['killed_wall_s']:.1f} s with {m['units_at_kill']} of {m['units']} units "
                      f"finished, the same command again {m['resumed_wall_s']:.1f} s", flush=True)  # fmt: skip
            else:
                m = measure(command(name, b, out, argv), log)
            if name in ("ours", "cand"):
                m |= stage_result(out)
            elif name != "resume":
                m |= json.loads(next(line for line in log.read_text().splitlines() if line.startswith("RESULT "))[len("RESULT ") :])
            shutil.rmtree(out / "hf-cache", ignore_errors=True)  # the course's Arrow copies
            runs[name].append(m)
            core = f", core {m['core_wall_s']:.1f} s" if "core_wall_s" in m else ""
            print(f"  round {i + 1}, {name}: {m['wall_s']:.1f} s wall{core}, {m['cpu_s']:.1f} s CPU, peak {m['peak_rss_mb']:.0f} MB, "
                  f"{m['text_tokens']:,} text tokens (load before {m['load']:.2f})", flush=True)  # fmt: skip

    best = {name: min(rs, key=lambda m: m.get("core_wall_s", m["wall_s"])) for name, rs in runs.items()}
    tokens = {m["text_tokens"] for m in best.values()}
    n = max(tokens)
    print(f"\nbest of {b.rounds} round(s); tokens/s over {n:,} text tokens (boundary tokens not counted)")
    print(f"{'contender':<12}{'what':<34}{'wall s':>8}{'tokens/s':>11}{'CPU s':>8}{'peak MB':>9}{'load':>6}")
    rows = []
    for name, m in best.items():
        rows.append((name, "whole process", m["wall_s"], m["cpu_s"], m["peak_rss_mb"], m["load"]))
        if "core_wall_s" in m:
            label = {"bare": "tokenizer call (stage's), in memory"}.get(name, "core (after start-up)")
            rows.append((name, label, m["core_wall_s"], m["core_cpu_s"], None, None))
        if name == "bare":
            rows.append(("bare", "read texts from Parquet", m["read_wall_s"], m["read_cpu_s"], None, None))
            rows.append(("bare", "read + tokenizer call", m["read_wall_s"] + m["core_wall_s"], m["read_cpu_s"] + m["core_cpu_s"], None, None))
            rows.append(("bare", "Rust encode_batch_fast, in memory", m["rust_wall_s"], m["rust_cpu_s"], None, None))
    for name, what, wall, cpu_s, peak, load in rows:
        peak_s = f"{peak:9.0f}" if peak is not None else f"{'':9}"
        load_s = f"{load:6.2f}" if load is not None else ""
        print(f"{name:<12}{what:<34}{wall:8.2f}{n / wall:11,.0f}{cpu_s:8.1f}{peak_s}{load_s}")
    if len(tokens) > 1:
        print(f"WARNING: contenders counted different text tokens: { {k: m['text_tokens'] for k, m in best.items()} }")
    else:
        print("all contenders tokenized the same number of text tokens")

    print("\nratios of wall time, A / B:")
    core = {name: m.get("core_wall_s", m["wall_s"]) for name, m in best.items()}
    if "bare" in best:
        bare = best["bare"]
        for name in ("ours-core", "cand-core"):
            if name in best:
                print(f"  {name} / bare tokenizer call          {core[name] / bare['core_wall_s']:5.2f}x   (goal: <= 1.15x)")
                print(f"  {name} / bare read + tokenizer call   {core[name] / (bare['read_wall_s'] + bare['core_wall_s']):5.2f}x")
        for name in ("ours", "cand"):
            if name in best:
                print(f"  {name} (whole process) / bare tokenizer call {best[name]['wall_s'] / bare['core_wall_s']:5.2f}x")
        print(f"  bare tokenizer call / Rust encode_batch_fast {bare['core_wall_s'] / bare['rust_wall_s']:5.2f}x")
    if "resume" in best and "ours" in best:
        r, o = best["resume"], best["ours"]
        lost = r["wall_s"] - o["wall_s"]
        print(f"  resume: killed at {r['units_at_kill']}/{r['units']} units after {r['killed_wall_s']:.1f} s, continued in "
              f"{r['resumed_wall_s']:.1f} s: {r['wall_s']:.1f} s in all against {o['wall_s']:.1f} s uninterrupted, "
              f"{lost:.1f} s lost ({lost / o['wall_s']:.0%} of a run; CPU {r['cpu_s'] - o['cpu_s']:+.1f} s)")  # fmt: skip
    for slow in ("course", "course-py"):
        for fast in ("ours", "ours-core", "cand", "cand-core"):
            if slow in best and fast in best:
                vs_core = f", {core[slow] / core[fast]:6.2f}x core" if fast.endswith("core") else ""
                print(f"  {slow} / {fast:<10} {best[slow]['wall_s'] / best[fast]['wall_s']:6.2f}x whole process{vs_core}")
    for name, m in best.items():
        if "phases_wall" in m:
            parts = ", ".join(f"{k} {v:.2f} s ({m['phases_cpu'][k]:.1f} CPU)" for k, v in m["phases_wall"].items())
            print(f"phases of {name}: {parts}")
    for fast, ref in (("cand", "ours"), ("cand-core", "ours-core"), ("ours-core", "ours"), ("resume", "ours")):
        if fast in best and ref in best:
            print(f"output of {fast} vs {ref}: {'identical blocks' if same_blocks(work / ref, work / fast) else 'DIFFERENT blocks'}")
    (work / "results.json").write_text(json.dumps({"settings": vars(b), "runs": runs}, indent=1, default=str) + "\n")
    print(f"load at the end {os.getloadavg()[0]:.2f}; wrote {work / 'results.json'}")


if __name__ == "__main__":
    run_main(main)
