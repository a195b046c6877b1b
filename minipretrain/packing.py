"""Stage 2's format: documents as one token stream, chopped into blocks, written as int32 Parquet
shards, and read back by the later stages (`packed_dataset`); and stage 2's units of work, which
tokenize the cleaned documents on either engine (`tokenize_unit`, run by engines.run_units).
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minipretrain.settings import UserError
from minipretrain.sources import parquet_batches
from minipretrain.stages import MANIFEST, read_manifest, read_unit, write_unit
from minipretrain.tokenization import tokenize

CLEANED_AGAIN = "; run data_preparation.py again"  # what to do about damaged cleaned data


def stream_start(bos_id: int, eos_id: int) -> np.ndarray:
    """What a split's token stream starts with, before its first document."""
    return np.array([bos_id] if bos_id == eos_id else [], np.int32)


def document_stream(token_lists, bos_id: int, eos_id: int) -> np.ndarray:
    """The documents' tokens as one int32 array, each wrapped as BOS + tokens + EOS.

    When BOS and EOS are one token (SmolLM2's <|endoftext|>), a single one sits between two
    documents, closing one and opening the next (the usual stream of GPT-2-style tokenizers; no
    block learns the pointless pair <|endoftext|><|endoftext|>): each document adds its tokens +
    EOS, and the split's stream opens with the one BOS of stream_start().
    """
    bos, eos = np.array([bos_id], np.int32), np.array([eos_id], np.int32)
    pieces = []
    for ids in token_lists:
        pieces += ([] if bos_id == eos_id else [bos]) + [np.asarray(ids, dtype=np.int32), eos]
    return np.concatenate(pieces) if pieces else np.empty(0, np.int32)


def chop(carry: np.ndarray, stream: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(blocks, new carry): carry + stream cut into rows of block_size; the rest waits for more."""
    tokens = np.concatenate([carry, stream])
    n = len(tokens) // block_size
    return tokens[: n * block_size].reshape(n, block_size), tokens[n * block_size :]


class BlockWriter:
    """One split's blocks as Parquet shards (packed-00000.parquet, ...) of at most rows_per_shard
    rows, written in row groups of row_group_rows rows; at most one row group waits in memory."""

    def __init__(self, folder: Path, block_size: int, rows_per_shard: int, row_group_rows: int):
        import pyarrow as pa

        self.folder, self.block_size = folder, block_size
        self.rows_per_shard, self.row_group_rows = rows_per_shard, row_group_rows
        self.schema = pa.schema([("input_ids", pa.list_(pa.int32()))])
        self.pending = np.empty((0, block_size), np.int32)
        self.writer, self.files, self.shard_rows, self.rows = None, 0, 0, 0

    def add(self, blocks: np.ndarray) -> None:
        self.pending = np.concatenate([self.pending, blocks])
        while len(self.pending) >= self._room():
            self._write(self._room())

    def close(self) -> None:
        if len(self.pending):
            self._write(len(self.pending))
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _room(self) -> int:
        return min(self.row_group_rows, self.rows_per_shard - self.shard_rows)

    def _write(self, n: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"packed-{self.files:05d}.parquet"
            self.writer = pq.ParquetWriter(path, self.schema, compression="zstd")
            self.files += 1
        rows = np.ascontiguousarray(self.pending[:n])
        offsets = np.arange(0, (n + 1) * self.block_size, self.block_size, dtype=np.int32)
        column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(rows.reshape(-1)))
        self.writer.write_table(pa.table([column], schema=self.schema), row_group_size=n)
        self.pending = self.pending[n:]
        self.shard_rows += n
        self.rows += n
        if self.shard_rows == self.rows_per_shard:
            self.writer.close()
            self.writer, self.shard_rows = None, 0


# ----------------------------------------------------------------------------------------------
# Stage 2's units of work. A unit is `unit_documents` consecutive cleaned documents (in input order
# across the cleaned-*.parquet files; a unit may end in one file and go on in the next). A worker
# (engines.run_units: this process, worker processes or a Ray actor) reads its rows, tokenizes
# them, gives each document its split, and writes the unit file (stages.write_unit): per document
# its token ids (list<int32>) and split, and a held-out document's doc_id and text. The driver
# then packs the unit files in order (data_packaging.pack), so the blocks do not depend on which
# worker tokenized what, nor on when a run was killed and continued.

SPLIT_CODES = {"train": 0, "validation": 1, "eval": 2}


def split_hashes(doc_ids, seed: int) -> np.ndarray:
    """A uint64 per document from (seed, doc_id): the order in which documents go to validation."""
    digests = b"".join(hashlib.blake2b(f"{seed}\0{d}".encode(), digest_size=8).digest() for d in doc_ids)
    return np.frombuffer(digests, dtype="<u8")


def split_codes(hashes: np.ndarray, validation: int, held_out: int | None) -> np.ndarray:
    """Each document's split (SPLIT_CODES): validation up to the validation threshold, eval up to
    the eval one (None: no eval split), train above."""
    codes = np.where(hashes <= validation, SPLIT_CODES["validation"], SPLIT_CODES["train"]).astype(np.int8)
    if held_out is not None:
        codes[(hashes > validation) & (hashes <= held_out)] = SPLIT_CODES["eval"]
    return codes


@dataclass
class TokenizeJob:
    """What run_units and its workers need: where to run (the stage's engine, num_proc and
    ray_address) and the tokenizer as the Rust tokenizer's JSON, from which a worker builds it in a
    tenth of a second (loading the GGUF takes seconds; the ids are the same: the stage's output is
    byte-identical either way). threads: the Rust tokenizer's threads in each worker, 0 for the
    library's default (one per core)."""

    engine: str
    num_proc: int
    ray_address: str
    tokenizer_json: str
    threads: int = 0


def unit_tokenizer(job: TokenizeJob):
    """run_units' setup: the worker's tokenizer."""
    from tokenizers import Tokenizer

    if job.threads:  # read by the Rust thread pool when it starts, at the worker's first batch
        os.environ["RAYON_NUM_THREADS"] = str(job.threads)
    return Tokenizer.from_str(job.tokenizer_json)


def tokenize_unit(unit: dict, tokenizer) -> dict:
    """run_units' work: read, tokenize and split one unit's documents and write its unit file.
    unit: index, units (the folder), pieces (sources.cut_units: absolute file paths, first row, end row), seed, validation and held_out (the split
    thresholds), batch_size (documents per tokenizer call)."""
    import pyarrow as pa

    texts, doc_ids = [], []
    for path, start, end in unit["pieces"]:
        more_texts, more_ids = read_rows(Path(path), start, end)
        texts += more_texts
        doc_ids += more_ids
    token_lists = []
    for i in range(0, len(texts), unit["batch_size"]):
        token_lists += tokenize(tokenizer, texts[i : i + unit["batch_size"]])
    codes = split_codes(split_hashes(doc_ids, unit["seed"]), unit["validation"], unit["held_out"])
    held = codes != SPLIT_CODES["train"]
    table = pa.table({
        "input_ids": pa.array(token_lists, pa.list_(pa.int32())),
        "split": pa.array(codes, pa.int8()),
        "doc_id": pa.array([str(d) if h else None for d, h in zip(doc_ids, held)], pa.string()),
        "text": pa.array([t if h else None for t, h in zip(texts, held)], pa.string()),
    })  # fmt: skip
    summary = {"documents": len(texts), "tokens": sum(map(len, token_lists)), "pieces": unit["pieces"],
               "worker": f"{socket.gethostname()}:{os.getpid()}"}  # fmt: skip
    write_unit(Path(unit["units"]), unit["index"], table, summary)
    return summary


def read_rows(path: Path, start: int, end: int) -> tuple[list, list]:
    """(texts, doc_ids) of rows start..end-1 of a cleaned Parquet file, from the row groups that
    hold them. A null text or doc_id is an error naming the file and the row."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError...
        raise UserError(f"{path}: not a readable Parquet file ({e}){CLEANED_AGAIN}") from None
    texts, doc_ids, row = [], [], 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        lo, hi = max(start, row), min(end, row + n)
        if lo < hi:
            part = _row_group(path, g, row, n).slice(lo - row, hi - lo)
            for column in ("text", "doc_id"):
                nulls = part.column(column).is_null()
                if pc.any(nulls).as_py():
                    raise UserError(f"{path}: row {lo + pc.index(nulls, True).as_py()} has no {column}")
            texts += part.column("text").to_pylist()
            doc_ids += part.column("doc_id").to_pylist()
        row += n
        if row >= end:
            break
    return texts, doc_ids


_last_row_group = {}  # the row group this process read last, and what identifies it


def _row_group(path: Path, group: int, first_row: int, rows: int):
    """Row group `group` (text, doc_id) of a cleaned file, whose first row is the file's first_row.
    Kept until another is read: a row group (stage 1 writes ~1,000 documents each) usually holds
    several units, and the units come to a worker in order, so it is decoded about once per worker
    rather than once per unit (measured on the 38,376-document benchmark corpus, units of 100:
    1.98 s of CPU to read every unit's rows in one process without it, 0.38 s with it)."""
    import pyarrow as pa

    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns, group)
    if _last_row_group.get("key") != key:
        _last_row_group.clear()
        batches = list(parquet_batches(path, max(rows, 1), ["text", "doc_id"], CLEANED_AGAIN, row_groups=[group], first_row=first_row))
        _last_row_group.update(key=key, table=pa.Table.from_batches(batches))
    return _last_row_group["table"]


def unit_documents(units: Path, sizes: list[int]):
    """(token ids, split code, doc_id, text) of each document of the finished units, in order;
    doc_id and text are None for a training document. sizes: each unit's documents, checked."""
    for index, size in enumerate(sizes):
        table, _ = read_unit(units, index)
        if table.num_rows != size:
            raise UserError(f"{units}: unit {index} holds {table.num_rows} documents, expected {size}; "
                            f"remove {units.parent} and run the same command again")
        ids = table.column("input_ids").combine_chunks()
        offsets, values = ids.offsets.to_numpy(), ids.values.to_numpy()
        codes = table.column("split").to_numpy()
        doc_ids, texts = table.column("doc_id").to_pylist(), table.column("text").to_pylist()
        for i in range(size):
            yield values[offsets[i] : offsets[i + 1]], codes[i], doc_ids[i], texts[i]


def packed_dataset(folder, split: str):
    """A split ("train" or "validation") of data_packaging.py's output as a `datasets.Dataset`
    with an `input_ids` column of equal-length int32 blocks: memory-mapped Arrow (datasets caches
    the Parquet files as Arrow once), so it costs no memory however large the corpus. A file of
    another type, or a block that is not the manifest's block_size long, is a UserError naming the
    file (and row)."""
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    folder = Path(folder)
    manifest = read_manifest(folder, "data_packaging", hint="run data_packaging.py first")
    files = sorted((folder / split).glob("*.parquet"))
    if not files:
        raise UserError(f"{folder / split}: no Parquet files; the splits are train and validation")
    rows = []  # per file, to name the file of a bad row
    for f in files:
        try:
            meta = pq.ParquetFile(f)
        except (pa.ArrowException, OSError) as e:
            raise UserError(f"{f}: not a readable Parquet file ({e})") from None
        column = meta.schema_arrow.field("input_ids").type if "input_ids" in meta.schema_arrow.names else None
        if column is None or not pa.types.is_list(column) or column.value_type != pa.int32():
            found = f"input_ids holds {column}" if column is not None else "no input_ids column"
            raise UserError(f"{f}: {found}; expected int32 blocks (list<int32>), as data_packaging.py writes them")
        rows.append(meta.metadata.num_rows)
    try:
        dataset = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    except Exception as e:  # datasets wraps pyarrow's errors on damaged data in its own
        cause = e.__cause__ or e
        raise UserError(f"{folder / split}: cannot read the packed Parquet files ({type(cause).__name__}: {cause})") from None
    # Every block block_size long: list lengths come from the offsets alone, no token is read.
    block_size = manifest.get("block_size") or (len(dataset[0]["input_ids"]) if len(dataset) else 0)
    lengths = pc.fill_null(pc.list_value_length(dataset.data.column("input_ids")), -1)
    wrong = pc.not_equal(lengths, block_size)
    if pc.any(wrong).as_py():
        row = pc.index(wrong, True).as_py()
        length = lengths[row].as_py()
        for f, n in zip(files, rows):
            if row < n:
                break
            row -= n
        what = "no block (null)" if length == -1 else f"a block of {length} tokens"
        raise UserError(f"{f}: row {row} holds {what}, but the blocks are {block_size} tokens long ({folder / MANIFEST})")
    return dataset
