"""Stage 2: cleaned Parquet -> token blocks: every document tokenized and wrapped in its boundary
tokens, the train and validation documents concatenated and chopped into blocks of BLOCK_SIZE.

    python data_packaging.py                                  # work/cleaned -> work/packed
    python data_packaging.py --block_size 2048 --tokenizer mistral-32k
    python data_packaging.py --tokenizer path/to/model_folder_or.gguf_or.model
    python data_packaging.py --engine ray                     # tokenize on Ray (--ray_address auto: a cluster)

What it does, in order:
1. Split BY DOCUMENT, before packing, so no block mixes two splits: a document is in
   validation when its hash of (seed, doc_id) is among the smallest max(validation_fraction * N,
   min_validation_documents) of the N documents, and in eval (never trained on, never validated
   on during training: model_evaluation.py's held-out data) when among the next eval_documents.
   The choice depends only on the seed and the doc_id, not on batch sizes or file order, and
   eval_documents 0 gives the train and validation blocks of a packing without an eval split.
2. Tokenize in units of work: `unit_documents` consecutive documents each, tokenized in batches
   with the Rust tokenizer (encode_batch_fast), on the `engine`: local (in this process with
   num_proc 1, else num_proc worker processes) or ray (a Ray Data actor pool, on this machine or a
   cluster). A finished unit is a file in the output's temporary folder (.NAME.partial-KEY/units,
   minipretrain.packing), so a run killed part-way (SIGKILL, Ctrl-C, a crash) and started again
   with the same command continues from its finished units, and ends with the same bytes as an
   uninterrupted run. Special-token text inside a document (say a literal "<|endoftext|>") stays
   text: only the boundaries added here are boundary tokens.
3. Each document becomes BOS + tokens + EOS with the tokenizer's document boundaries
   (tokenization.document_boundaries; for SmolLM2 both are <|endoftext|>, not the chat tokens
   its GGUF reports, and one <|endoftext|> between two documents closes the one and opens the
   next; the manifest records the choice). Each split's documents, in input order, are
   concatenated and chopped into blocks with numpy, the remainder carried to the next batch; only
   each split's final incomplete block is dropped (the manifest counts its tokens). This step
   reads the unit files in order in this process, so the blocks are the same on either engine,
   for any num_proc and unit_documents.
4. Blocks stream into Parquet shards (train/packed-00000.parquet, ..., validation/..., eval/...),
   an `input_ids` column of int32 lists of exactly block_size, in bounded row groups; memory holds
   a batch of documents and one row group per split, however large the corpus. The held-out
   documents' text goes beside them (documents/validation.parquet, documents/eval.parquet: doc_id,
   text), for evaluations that need documents rather than blocks (model_evaluation.py).

manifest.json: block_size, seed, the tokenizer (tokenization.tokenizer_info: name, vocab_size,
boundary ids and tokens, the choice, fingerprint), and per split: documents, tokens (boundaries
included), blocks, dropped_tokens, shards. Read the output with
minipretrain.packing.packed_dataset(folder, split).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minipretrain.engines import ENGINES, run_units
from minipretrain.packing import (
    CLEANED_AGAIN,
    SPLIT_CODES,
    BlockWriter,
    TokenizeJob,
    chop,
    document_stream,
    split_hashes,
    stream_start,
    tokenize_unit,
    unit_documents,
    unit_tokenizer,
)
from minipretrain.settings import (
    CLEANED_DIR,
    DEFAULT_BASE_MODEL,
    PACKED_DIR,
    SEED,
    Range,
    UserError,
    at_least,
    one_of,
    parse_settings,
    run_main,
)
from minipretrain.sources import cut_units, parquet_batches
from minipretrain.stages import read_manifest, stage_output, unit_done
from minipretrain.tokenization import load_tokenizer, tokenize, tokenizer_info  # noqa: F401 (tokenize: tests, benchmarks)

STAGE = "data_packaging"
SPLITS = ("train", "validation")
UNITS_FORMAT = "units-v1"  # the unit files' format (packing.tokenize_unit): a change makes killed runs start over


@dataclass
class Settings:
    input_dir: str = field(default=CLEANED_DIR, metadata={"help": "Output folder of data_preparation.py."})
    output_dir: str = field(default=PACKED_DIR, metadata={"help": "Where train/, validation/ and manifest.json go."})
    overwrite: bool = field(default=False, metadata={"help": "Redo the output even when it is up to date (one made from other settings or inputs is rebuilt anyway)."})
    tokenizer: str = field(
        default=DEFAULT_BASE_MODEL,
        metadata={"help": "Keyword (smollm2-135m: the default base model's; mistral-32k), a Hugging Face model "
                  "folder or hub id, a .gguf file or a SentencePiece .model file."},
    )
    block_size: int = field(default=32, metadata={"help": "Tokens per block (the seed's 32; 2048 for real runs)."})
    validation_fraction: float = field(default=0.02, metadata={"help": "Share of documents held out for validation."})
    min_validation_documents: int = field(default=10, metadata={"help": "Hold out at least this many documents."})
    eval_documents: int = field(
        default=50,
        metadata={"help": "Documents held out as the eval split, after validation's: model_evaluation.py's multiple-choice "
                  "items come from them and validation's (60 documents give its 450 items a standard error of at most "
                  "0.03); never trained on. 0: no eval split."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of the train/validation split."})
    batch_size: int = field(default=1_000, metadata={"help": "Documents read and tokenized per batch."})
    rows_per_shard: int = field(default=200_000, metadata={"help": "Blocks per output Parquet file."})
    row_group_rows: int = field(default=10_000, metadata={"help": "Blocks per Parquet row group (bounds memory)."})
    unit_documents: int = field(
        default=100,
        metadata={"help": "Documents per unit of work: a unit is tokenized on its own and kept when done, so a killed run "
                  "continues from its finished units (run the same command again). 100: the sample corpus's 138 documents "
                  "make 2 units; a unit of 100 web pages is ~0.1-0.5 s of one core, so a kill loses seconds; raise it for "
                  "corpora of millions (fewer, larger files) and on Ray (~30 ms a unit). Does not change the output."},
    )
    engine: str = field(
        default="local",
        metadata={"help": "Where the units are tokenized: local (this machine: num_proc worker processes, or this process "
                  "with num_proc 1) or ray (a Ray Data actor pool: see ray_address). The same output either way."},
    )
    ray_address: str = field(
        default="",
        metadata={"help": "With engine ray: empty starts a Ray instance on this machine for the run (num_proc CPUs); 'auto' "
                  "or 'ray://host:port' joins a running cluster, whose nodes must see input_dir and output_dir at the same paths."},
    )
    num_proc: int = field(
        default=os.cpu_count() or 1,
        metadata={"help": "Worker processes that tokenize (engine local; 1: in this process), or the CPUs of the Ray instance "
                  "started for the run (engine ray without ray_address). Does not change the output."},
    )


# The allowed values of every numeric setting, checked for flags and settings files alike (parse_settings).
CHECKS = {
    "block_size": at_least(2),  # an input and a target token
    "validation_fraction": Range(0, 1, high_open=True),
    "min_validation_documents": at_least(1),
    "eval_documents": at_least(0),
    "seed": SEED,
    "batch_size": at_least(1),
    "rows_per_shard": at_least(1),
    "row_group_rows": at_least(1),
    "unit_documents": at_least(1),
    "engine": one_of(*ENGINES),
    "num_proc": at_least(1),
}


# ----------------------------------------------------------------------------------------------
# Input


def cleaned_files(input_dir) -> tuple[dict, list[Path], int]:
    """(manifest, Parquet files, number of documents) of a complete data_preparation output."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = read_manifest(input_dir, "data_preparation", hint="run data_preparation.py first")
    files = sorted(Path(input_dir).glob("cleaned-*.parquet"))
    if not files:
        raise UserError(f"{input_dir}: no cleaned-*.parquet files; run data_preparation.py again")
    documents = 0
    for f in files:
        try:
            meta = pq.ParquetFile(f)
        except Exception as e:  # pyarrow raises ArrowInvalid, OSError...
            raise UserError(f"{f}: not a readable Parquet file ({e})") from None
        missing = {"text", "doc_id"} - set(meta.schema_arrow.names)
        if missing:
            raise UserError(f"{f}: no column {', '.join(sorted(missing))} (stage 1 writes text, source, doc_id)")
        text_type = meta.schema_arrow.field("text").type
        if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
            raise UserError(f"{f}: column text holds {text_type}, expected strings (stage 1 writes them)")
        documents += meta.metadata.num_rows
    if documents == 0:
        raise UserError(f"{input_dir}: the cleaned data holds no documents (did every page fail a filter? see its report.json)")
    return manifest, files, documents


def doc_id_batches(f: Path, batch_size: int):
    """The doc_id column of one cleaned file, in the batches that packing takes the file's
    documents in (batch_size rows, the last fewer)."""
    for batch in parquet_batches(f, batch_size, ["doc_id"], CLEANED_AGAIN):
        yield batch.column("doc_id").to_pylist()


# ----------------------------------------------------------------------------------------------
# The split (packing.split_hashes: each document's hash)


def validation_threshold(hashes: np.ndarray, fraction: float, min_documents: int) -> int:
    """The largest hash that goes to validation: the smallest max(fraction * N, min_documents)
    hashes do. A UserError when that leaves no document for training."""
    n = len(hashes)
    k = max(math.ceil(fraction * n), min_documents)
    if k >= n:
        raise UserError(
            f"only {n} documents: holding out {k} for validation (validation_fraction={fraction}, "
            f"min_validation_documents={min_documents}) leaves none for training; lower --min_validation_documents"
        )
    return int(np.partition(hashes, k - 1)[k - 1])


def eval_threshold(hashes: np.ndarray, validation: int, eval_documents: int) -> int | None:
    """The largest hash that goes to the eval split: the eval_documents smallest hashes above
    validation's threshold go. None for no eval split: eval_documents 0, or a corpus that cannot
    spare them (fewer documents than that would be left to train on)."""
    rest = hashes[hashes > validation]
    if eval_documents == 0 or eval_documents > len(rest) // 2:
        return None
    return int(np.partition(rest, eval_documents - 1)[eval_documents - 1])


# ----------------------------------------------------------------------------------------------
# Packing


def pack(files: list[Path], documents: int, tokenizer, boundaries: tuple[int, int], s: Settings, out) -> dict:
    """Tokenize (in units), split, pack and write every document into out.path; returns the counts
    per split. out: the stage's resumable output (out.units holds the finished units)."""
    from tqdm import tqdm

    bos_id, eos_id = boundaries
    # Pass 1, over the doc_id column only: where the split thresholds lie, and the batches (file,
    # documents) in which the packing below takes the documents, as the stage always has.
    hashes, batches, rows = [], [], [0] * len(files)
    for i, f in enumerate(files):
        for ids in doc_id_batches(f, s.batch_size):
            hashes.append(split_hashes(ids, s.seed))
            batches.append((i, len(ids)))
            rows[i] += len(ids)
    hashes = np.concatenate(hashes)
    threshold = validation_threshold(hashes, s.validation_fraction, s.min_validation_documents)
    held_out = eval_threshold(hashes, threshold, s.eval_documents)
    splits = SPLITS + (("eval",) if held_out is not None else ())

    # Tokenizing, in units on s.engine; the units a killed run finished are kept.
    # absolute paths, for workers that run elsewhere
    units = cut_units([(str(Path(f).absolute()), n) for f, n in zip(files, rows)], s.unit_documents)
    sizes = [sum(end - start for _, start, end in pieces) for pieces in units]
    common = {"units": str(out.units.absolute()), "seed": s.seed, "validation": threshold, "held_out": held_out, "batch_size": s.batch_size}
    todo = [(i, {"index": i, "pieces": pieces, **common}) for i, pieces in enumerate(units) if not unit_done(out.units, i)]
    job = TokenizeJob(s.engine, s.num_proc, s.ray_address, tokenizer.backend_tokenizer.to_str(), threads=tokenizer_threads(s, len(todo)))
    print(f"{len(units)} units of {s.unit_documents} documents ({len(units) - len(todo)} finished before), {where(s, len(todo))}")
    run_units(todo, tokenize_unit, unit_tokenizer, job, desc="tokenizing")

    # Packing, in this process: the units' documents in input order, in the batches of pass 1.
    writers = {split: BlockWriter(out.path / split, s.block_size, s.rows_per_shard, s.row_group_rows) for split in splits}
    texts_out = {split: DocumentWriter(out.path / "documents" / f"{split}.parquet") for split in splits if split != "train"}
    carry = {split: stream_start(bos_id, eos_id) for split in splits}
    counts = {split: {"documents": 0} for split in splits}
    tokens = 0
    stored = unit_documents(out.units, sizes)
    try:
        with tqdm(total=documents, desc="packing", unit="doc") as bar:
            for _, n in batches:
                batch = [next(stored) for _ in range(n)]
                for split in splits:
                    code = SPLIT_CODES[split]
                    chosen = [ids for ids, v, _, _ in batch if v == code]
                    stream = document_stream(chosen, bos_id, eos_id)
                    blocks, carry[split] = chop(carry[split], stream, s.block_size)
                    writers[split].add(blocks)
                    if split in texts_out:
                        texts_out[split].add([d for _, v, d, _ in batch if v == code], [t for _, v, _, t in batch if v == code])
                    counts[split]["documents"] += len(chosen)
                    tokens += len(stream)
                bar.update(n)
                bar.set_postfix(tokens=tokens, refresh=False)
    finally:
        for writer in [*writers.values(), *texts_out.values()]:
            writer.close()
    for split in splits:
        c = counts[split]
        blocks, dropped = writers[split].rows, len(carry[split])
        c.update(tokens=blocks * s.block_size + dropped, blocks=blocks, dropped_tokens=dropped, shards=writers[split].files)
        if c["blocks"] == 0:
            raise UserError(
                f"the {split} split has {c['tokens']} tokens, fewer than block_size={s.block_size}: "
                f"lower --block_size{' or raise --min_validation_documents' if split == 'validation' else ''}"
                f"{' or raise --eval_documents' if split == 'eval' else ''}"
            )
    return counts


def tokenizer_threads(s: Settings, units: int) -> int:
    """The Rust tokenizer's threads in each worker process: the cores shared among the workers,
    so that they do not take turns on the same cores (0: the library's default, a thread per
    core, for a run in this process). A Ray actor has one CPU of its node."""
    if s.engine == "ray":
        return 1
    workers = min(s.num_proc, units)
    return 0 if workers <= 1 else max(1, (os.cpu_count() or 1) // workers)


def where(s: Settings, units: int) -> str:
    """Where run_units tokenizes, in words."""
    if units == 0:
        return "none left to tokenize"
    if s.engine == "ray":
        return f"tokenized on Ray ({f'the cluster at {s.ray_address}' if s.ray_address else f'a Ray instance of this machine, {s.num_proc} CPUs'})"
    workers = min(s.num_proc, units)
    return f"tokenized locally ({'in this process' if workers <= 1 else f'{workers} worker processes'})"


class DocumentWriter:
    """The text of a held-out split's documents, in input order: one Parquet file (doc_id, text)."""

    def __init__(self, path: Path):
        self.path, self.writer = path, None

    def add(self, doc_ids: list, texts: list[str]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"doc_id": pa.array([str(d) for d in doc_ids], pa.string()), "text": pa.array(texts, pa.string())})
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def documents_as(info: dict) -> str:
    """How a document sits in the token stream, in words, for the manifest."""
    if info["bos_id"] == info["eos_id"]:
        return f"{info['bos_token']} tokens {info['eos_token']}; one {info['eos_token']} between two documents closes one and opens the next"
    return f"{info['bos_token']} tokens {info['eos_token']}"


# ----------------------------------------------------------------------------------------------


def main(argv=None):
    s = parse_settings(Settings, argv, CHECKS)
    cleaned, files, documents = cleaned_files(s.input_dir)
    tokenizer = load_tokenizer(s.tokenizer)
    info = tokenizer_info(tokenizer)
    inputs = {"cleaned": {"folder": str(s.input_dir), "fingerprint": cleaned.get("fingerprint")}, "tokenizer": info["fingerprint"]}

    with stage_output(s.output_dir, STAGE, s, inputs, s.overwrite, resumable=f"{UNITS_FORMAT}/{s.unit_documents}") as out:
        if out is None:
            return
        counts = pack(files, documents, tokenizer, (info["bos_id"], info["eos_id"]), s, out)
        eval_split = f"{s.eval_documents} documents held out for evaluation" if "eval" in counts else (
            "no eval split" + (f": {documents - counts['validation']['documents']} documents after validation's cannot spare "
                               f"eval_documents={s.eval_documents} (fewer would be left to train on)" if s.eval_documents else ""))
        out.manifest.update(block_size=s.block_size, seed=s.seed, tokenizer=info, documents_as=documents_as(info), counts=counts,
                            eval_split=eval_split)
        print(f"tokenizer {info['name']} (vocabulary {info['vocab_size']}): {info['boundary_note']}")
        for split, c in counts.items():
            print(f"{split:>10}: {c['documents']:,} documents, {c['tokens']:,} tokens -> {c['blocks']:,} blocks of "
                  f"{s.block_size} ({c['dropped_tokens']} tokens dropped), {c['shards']} shard(s)")
        print(eval_split)
    held_out = "eval/, " if "eval" in counts else ""
    print(f"wrote {s.output_dir} (train/, validation/, {held_out}documents/, manifest.json)")


if __name__ == "__main__":
    run_main(main, interrupted="no output was written (a previous output is as it was); the units tokenized so far are kept: "
                               "run the same command again to continue")
