"""Stage 2: cleaned Parquet -> token blocks: every document tokenized and wrapped in its boundary
tokens, the train and validation documents concatenated and chopped into blocks of BLOCK_SIZE.

    python data_packaging.py                                  # work/cleaned -> work/packed
    python data_packaging.py --block_size 2048 --tokenizer mistral-32k
    python data_packaging.py --tokenizer path/to/model_folder_or.gguf_or.model

What it does, in order:
1. Split BY DOCUMENT, before packing, so no block mixes two splits: a document is in
   validation when its hash of (seed, doc_id) is among the smallest max(validation_fraction * N,
   min_validation_documents) of the N documents, and in eval (never trained on, never validated
   on during training: model_evaluation.py's held-out data) when among the next eval_documents.
   The choice depends only on the seed and the doc_id, not on batch sizes or file order, and
   eval_documents 0 gives the train and validation blocks of a packing without an eval split.
2. Tokenize in batches with the Rust tokenizer (encode_batch_fast), which spreads a batch over all cores.
   Special-token text inside a document (say a literal "<|endoftext|>") stays text: only the
   boundaries added here are boundary tokens.
3. Each document becomes BOS + tokens + EOS with the tokenizer's document boundaries
   (tokenization.document_boundaries; for SmolLM2 both are <|endoftext|>, not the chat tokens
   its GGUF reports, and one <|endoftext|> between two documents closes the one and opens the
   next; the manifest records the choice). Each split's documents, in input order, are
   concatenated and chopped into blocks with numpy, the remainder carried to the next batch; only
   each split's final incomplete block is dropped (the manifest counts its tokens).
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

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minipretrain.packing import BlockWriter, chop, document_stream, stream_start
from minipretrain.settings import (
    CLEANED_DIR,
    DEFAULT_BASE_MODEL,
    PACKED_DIR,
    SEED,
    Range,
    UserError,
    at_least,
    parse_settings,
    run_main,
)
from minipretrain.sources import parquet_batches
from minipretrain.stages import read_manifest, stage_output
from minipretrain.tokenization import load_tokenizer, tokenize, tokenizer_info

STAGE = "data_packaging"
SPLITS = ("train", "validation")
AGAIN = "; run data_preparation.py again"  # what to do about damaged cleaned data


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


def read_batches(files: list[Path], batch_size: int):
    """(texts, doc_ids) batches in input order; a null text or doc_id is an error naming the row."""
    import pyarrow.compute as pc

    for f in files:
        row = 0
        for batch in parquet_batches(f, batch_size, ["text", "doc_id"], AGAIN):
            for column in ("text", "doc_id"):
                nulls = batch.column(column).is_null()
                if pc.any(nulls).as_py():
                    first = row + pc.index(nulls, True).as_py()
                    raise UserError(f"{f}: row {first} has no {column}")
            yield batch.column("text").to_pylist(), batch.column("doc_id").to_pylist()
            row += batch.num_rows


def doc_id_batches(files: list[Path]):
    """Just the doc_id column, in input order."""
    for f in files:
        for batch in parquet_batches(f, 100_000, ["doc_id"], AGAIN):
            yield batch.column("doc_id").to_pylist()


# ----------------------------------------------------------------------------------------------
# The split


def split_hashes(doc_ids, seed: int) -> np.ndarray:
    """A uint64 per document from (seed, doc_id): the order in which documents go to validation."""
    digests = b"".join(hashlib.blake2b(f"{seed}\0{d}".encode(), digest_size=8).digest() for d in doc_ids)
    return np.frombuffer(digests, dtype="<u8")


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


def pack(files: list[Path], documents: int, tokenizer, boundaries: tuple[int, int], s: Settings, out_dir: Path) -> dict:
    """Tokenize, split, pack and write every document; returns the counts per split."""
    from tqdm import tqdm

    bos_id, eos_id = boundaries
    # Pass 1, over the doc_id column only: where the validation threshold lies.
    hashes = np.concatenate([split_hashes(ids, s.seed) for ids in doc_id_batches(files)])
    threshold = validation_threshold(hashes, s.validation_fraction, s.min_validation_documents)
    held_out = eval_threshold(hashes, threshold, s.eval_documents)
    splits = SPLITS + (("eval",) if held_out is not None else ())

    writers = {split: BlockWriter(out_dir / split, s.block_size, s.rows_per_shard, s.row_group_rows) for split in splits}
    texts_out = {split: DocumentWriter(out_dir / "documents" / f"{split}.parquet") for split in splits if split != "train"}
    carry = {split: stream_start(bos_id, eos_id) for split in splits}
    counts = {split: {"documents": 0} for split in splits}
    tokens = 0
    try:
        with tqdm(total=documents, desc="packing", unit="doc") as bar:
            for texts, doc_ids in read_batches(files, s.batch_size):
                hashes = split_hashes(doc_ids, s.seed)
                side = np.where(hashes <= threshold, "validation", "train")
                if held_out is not None:
                    side[(hashes > threshold) & (hashes <= held_out)] = "eval"
                token_lists = tokenize(tokenizer, texts)
                for split in splits:
                    chosen = [ids for ids, v in zip(token_lists, side) if v == split]
                    stream = document_stream(chosen, bos_id, eos_id)
                    blocks, carry[split] = chop(carry[split], stream, s.block_size)
                    writers[split].add(blocks)
                    if split in texts_out:
                        texts_out[split].add([d for d, v in zip(doc_ids, side) if v == split], [t for t, v in zip(texts, side) if v == split])
                    counts[split]["documents"] += len(chosen)
                    tokens += len(stream)
                bar.update(len(texts))
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

    with stage_output(s.output_dir, STAGE, s, inputs, s.overwrite) as out:
        if out is None:
            return
        counts = pack(files, documents, tokenizer, (info["bos_id"], info["eos_id"]), s, out.path)
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
    run_main(main)
