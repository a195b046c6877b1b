"""Stage 2's format: documents as one token stream, chopped into blocks, written as int32 Parquet
shards, and read back by the later stages (`packed_dataset`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minipretrain.settings import UserError
from minipretrain.stages import MANIFEST, read_manifest


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
