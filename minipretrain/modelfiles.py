"""Model files a user names, checked before a library parses them: a fastText model, a GGUF file, a
SentencePiece model, a model folder's JSON files and safetensors weights.

A damaged file must end a stage in one line naming it, never a hang or a dead interpreter; some
parsers do not promise that. fastText's C++ loader reads past the end of a truncated file without
noticing: it loops forever on a cut dictionary, or divides by zero or reads outside its buffers on
garbage (a floating-point exception or a segmentation fault, which no `except` catches). GGUF and
safetensors readers raise whatever their parsing meets (struct.error, a reshape error), or read a
cut tensor without a word. So each check walks the file's structure with plain reads, bounding every
count by the bytes left, and accepts the file only when the structure ends exactly where the file
does (or, for GGUF, covers every tensor's data): a truncated, padded, random or other-format file is
one DamagedFile (a UserError), `<file>: ...`. Damage to the numbers themselves (a flipped bit inside
the weights) passes: none of these formats has a checksum.
"""

from __future__ import annotations

import functools
import json
import math
import struct
from pathlib import Path

from minipretrain.settings import UserError


class DamagedFile(UserError):
    """A file that is empty, cut short, of another format or damaged: the message starts with its path.
    Callers that add advice to a UserError (which base to choose, the offline default) pass this
    one on as it is: the file is the problem, not the choice."""


# ----------------------------------------------------------------------------------------------
# fastText (.bin, .ftz): the layout of FastText::saveModel (fastText 0.9, format versions 11 and 12)

FASTTEXT_MAGIC = 793712314
FASTTEXT_VERSIONS = (11, 12)
_MAX_VOCAB_SIZE = 30_000_000  # fastText's word hash table: a dictionary this big would never load
_KSUB = 256  # centroids per product-quantizer sub-space (8-bit codes)
_MODELS = {1: "cbow", 2: "skipgram", 3: "supervised"}
_LOSSES = {1: "hs", 2: "ns", 3: "softmax", 4: "ova"}


class _Reader:
    """Little-endian reads from a bytes-like object that raise _Short past its end."""

    def __init__(self, data):
        self.data, self.pos = data, 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if size > self.left():
            raise _Short(self.pos + size)
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values if len(values) > 1 else values[0]

    def skip(self, size: int) -> None:
        if size < 0 or size > self.left():
            raise _Short(self.pos + max(size, 0))
        self.pos += size


class _Short(Exception):
    """The structure needs more bytes than the file has."""

    def __init__(self, needed: int):
        self.needed = needed


def _short_message(path: Path, what: str, size: int, needed: int) -> str:
    """A structure that runs past the end of the file: cut short, or a damaged size field."""
    if needed <= 2 * size + (1 << 20):
        return f"{path}: a truncated {what} ({size:,} bytes; what it holds needs at least {needed:,})"
    return f"{path}: a damaged {what} (a size in it, {needed:,} bytes, is far past the end of the {size:,}-byte file)"


def _file_bytes(path: Path, what: str):
    """The file's bytes (memory-mapped), or a UserError for a missing or empty file."""
    import mmap

    if not path.is_file():
        raise DamagedFile(f"{path}: no such file ({what})")
    if path.stat().st_size == 0:
        raise DamagedFile(f"{path}: empty file, not {what}")
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


@functools.lru_cache(maxsize=8)
def _check_fasttext_cached(path: Path, size: int, mtime_ns: int) -> dict:
    data = _file_bytes(path, "a fastText model")
    try:
        return _check_fasttext(path, data)
    finally:
        data.close()


def _check_fasttext(path: Path, data) -> dict:
    r = _Reader(data)
    damaged = f"{path}: a damaged fastText model"
    try:
        magic, version = r.take("<ii")
        if magic != FASTTEXT_MAGIC:
            raise DamagedFile(f"{path}: not a fastText model (it does not start with fastText's magic number)")
        if version not in FASTTEXT_VERSIONS:
            raise DamagedFile(f"{path}: a fastText model of format version {version}; this fastText reads versions 11 and 12")
        dim, _ws, _epoch, _min_count, _neg, word_ngrams, loss, model, bucket, minn, maxn, _lr_update, _t = r.take("<12id")
        if model not in _MODELS or loss not in _LOSSES:
            raise DamagedFile(f"{damaged} (model kind {model}, loss {loss}: not fastText's)")
        if not (0 < dim <= 1_000_000 and 0 <= minn <= maxn <= 1000 and 0 <= word_ngrams <= 1000 and bucket >= 0):
            raise DamagedFile(f"{damaged} (its settings are out of range: dim {dim}, minn {minn}, maxn {maxn}, wordNgrams {word_ngrams}, bucket {bucket})")
        if version == 11 and model == 3:
            maxn = 0  # what fastText does for old supervised models
        if bucket == 0 and (maxn > 0 or word_ngrams > 1):
            raise DamagedFile(f"{damaged} (subwords or word n-grams with no hash buckets)")

        size, nwords, nlabels, _ntokens, prune_size = r.take("<iiiqq")
        if not (0 <= nwords and 0 <= nlabels and size == nwords + nlabels and size < _MAX_VOCAB_SIZE):
            raise DamagedFile(f"{damaged} (dictionary of {size} entries, {nwords} words and {nlabels} labels)")
        if prune_size > 0 and prune_size * 8 > r.left():
            raise _Short(r.pos + prune_size * 8)
        labels = []
        for i in range(size):
            end = data.find(b"\0", r.pos)
            if end < 0:
                raise _Short(len(data) + 1)
            word = bytes(data[r.pos : end])
            r.pos = end + 1
            _count, kind = r.take("<qb")
            if kind not in (0, 1) or (kind == 1) != (i >= nwords):  # the words, then the labels
                raise DamagedFile(f"{damaged} (dictionary entry {i} is neither a word nor a label where one is expected)")
            if kind == 1:
                labels.append(word.decode("utf-8", "replace"))
        prune = []
        if prune_size > 0:
            prune = [r.take("<ii") for _ in range(prune_size)]

        quant_input = r.take("<?")
        if prune_size >= 0 and not quant_input:
            raise DamagedFile(f"{damaged} (a pruned dictionary without quantized input vectors)")
        rows_in, cols_in = _fasttext_matrix(r, quant_input, damaged)
        ngram_rows = prune_size if prune_size >= 0 else (bucket if maxn > 0 or word_ngrams > 1 else 0)
        if cols_in != dim or rows_in < nwords + ngram_rows:
            raise DamagedFile(f"{damaged} (input matrix of {rows_in} x {cols_in}, expected {nwords + ngram_rows} x {dim})")
        if any(not (0 <= h < max(bucket, 1) and 0 <= row < prune_size) for h, row in prune):
            raise DamagedFile(f"{damaged} (its pruned n-gram index points outside the input matrix)")
        quant_output = r.take("<?")
        rows_out, cols_out = _fasttext_matrix(r, quant_input and quant_output, damaged)
        expected_out = nlabels if model == 3 else nwords
        if cols_out != dim or rows_out != expected_out:
            raise DamagedFile(f"{damaged} (output matrix of {rows_out} x {cols_out}, expected {expected_out} x {dim})")
    except _Short as e:
        raise DamagedFile(_short_message(path, "fastText model", len(data), e.needed)) from None
    if r.left():
        raise DamagedFile(f"{damaged} ({r.left():,} bytes after the end of the model)")
    return {"model": _MODELS[model], "labels": labels, "version": version, "quantized": bool(quant_input)}


def _fasttext_matrix(r: _Reader, quantized: bool, damaged: str) -> tuple[int, int]:
    """Skip over a DenseMatrix or QuantMatrix; (rows, columns)."""
    if not quantized:
        rows, cols = r.take("<qq")
        if rows < 0 or cols < 0:
            raise DamagedFile(f"{damaged} (a matrix of {rows} x {cols})")
        r.skip(rows * cols * 4)
        return rows, cols
    qnorm, rows, cols, codesize = r.take("<?qqi")
    if rows < 0 or cols < 0 or codesize < 0:
        raise DamagedFile(f"{damaged} (a quantized matrix of {rows} x {cols})")
    r.skip(codesize)
    nsubq = _fasttext_quantizer(r, cols, damaged)
    if codesize != rows * nsubq:
        raise DamagedFile(f"{damaged} ({codesize} codes for {rows} rows of {nsubq} sub-vectors)")
    if qnorm:
        r.skip(rows)
        _fasttext_quantizer(r, 1, damaged)
    return rows, cols


def _fasttext_quantizer(r: _Reader, dim: int, damaged: str) -> int:
    """Skip over a ProductQuantizer of vectors of `dim`; its number of sub-vectors."""
    qdim, nsubq, dsub, lastdsub = r.take("<iiii")
    if not (qdim == dim and nsubq >= 1 and dsub >= 1 and 1 <= lastdsub and (nsubq - 1) * dsub + lastdsub == dim):
        raise DamagedFile(f"{damaged} (a product quantizer of dim {qdim}, {nsubq} x {dsub} + {lastdsub}, for vectors of {dim})")
    r.skip(qdim * _KSUB * 4)
    return nsubq


def check_fasttext_model(path, purpose: str = "") -> dict:
    """Check that `path` is a complete fastText model that fastText's loader reads safely; returns
    {"model": cbow/skipgram/supervised, "labels": [...], "version", "quantized"}. With `purpose`
    "classifier", a model that cannot predict labels (a word-vector model) is refused too."""
    path = Path(path)
    if not path.is_file():
        raise DamagedFile(f"{path}: no such file (a fastText model)")
    st = path.stat()
    info = _check_fasttext_cached(path, st.st_size, st.st_mtime_ns)
    if purpose == "classifier" and info["model"] != "supervised":
        raise DamagedFile(f"{path}: a fastText {info['model']} model (word vectors), not a classifier (a language-ID model such as lid.176.bin)")
    if purpose == "classifier" and not info["labels"]:
        raise DamagedFile(f"{path}: a fastText classifier without labels")
    return info


# ----------------------------------------------------------------------------------------------
# GGUF (v2, v3): header, metadata, tensor infos; every tensor's data inside the file

GGUF_MAGIC = b"GGUF"
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_U64 = struct.Struct("<Q")


def _gguf_string(r: _Reader) -> bytes:
    n = r.take("<Q")
    if n > r.left():
        raise _Short(r.pos + n)
    s = bytes(r.data[r.pos : r.pos + n])
    r.pos += n
    return s


def _gguf_value(r: _Reader, kind: int, damaged: str, depth: int = 0):
    if kind in _GGUF_SCALARS:
        return r.take(_GGUF_SCALARS[kind])
    if kind == _GGUF_STRING:
        return _gguf_string(r)
    if kind == _GGUF_ARRAY and depth < 2:
        item_kind, count = r.take("<IQ")
        smallest = struct.calcsize(_GGUF_SCALARS[item_kind]) if item_kind in _GGUF_SCALARS else 8
        if count * smallest > r.left():
            raise _Short(r.pos + count * smallest)
        if item_kind in _GGUF_SCALARS:  # numbers: skipped in one step, not read one by one
            r.skip(count * smallest)
            return None
        if item_kind == _GGUF_STRING:  # a vocabulary: tens of thousands of strings, skipped fast
            data, pos, end, length_at = r.data, r.pos, len(r.data), _U64.unpack_from
            for _ in range(count):
                if pos + 8 > end:
                    raise _Short(pos + 8)
                pos += 8 + length_at(data, pos)[0]
                if pos > end:
                    raise _Short(pos)
            r.pos = pos
            return None
        for _ in range(count):
            _gguf_value(r, item_kind, damaged, depth + 1)
        return None
    raise DamagedFile(f"{damaged} (a metadata value of unknown type {kind})")


@functools.lru_cache(maxsize=8)
def _check_gguf_cached(path: Path, size: int, mtime_ns: int) -> dict:
    data = _file_bytes(path, "a GGUF file")
    try:
        return _check_gguf(path, data)
    finally:
        data.close()


def _check_gguf(path: Path, data) -> dict:
    from gguf.constants import GGML_QUANT_SIZES

    r = _Reader(data)
    damaged = f"{path}: a damaged GGUF file"
    try:
        if bytes(data[:4]) != GGUF_MAGIC:
            raise DamagedFile(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
        r.skip(4)
        version, n_tensors, n_kv = r.take("<IQQ")
        if version not in (2, 3):
            raise DamagedFile(f"{path}: a GGUF file of version {version}; versions 2 and 3 are supported")
        if n_kv * 13 > r.left() or n_tensors * 25 > r.left():  # the smallest key/value and tensor info
            raise _Short(r.pos + max(n_kv * 13, n_tensors * 25))
        alignment = 32
        keys = set()
        for _ in range(n_kv):
            key = _gguf_string(r)
            kind = r.take("<I")
            value = _gguf_value(r, kind, damaged)
            keys.add(key)
            if key == b"general.alignment":
                alignment = value
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise DamagedFile(f"{damaged} (general.alignment {alignment!r} is not a power of 2)")
        tensors = []
        for _ in range(n_tensors):
            name = _gguf_string(r)
            n_dims = r.take("<I")
            if n_dims > 8:
                raise DamagedFile(f"{damaged} (tensor {name.decode('utf-8', 'replace')!r} has {n_dims} dimensions)")
            dims = r.take(f"<{n_dims}Q") if n_dims else ()
            dims = (dims,) if isinstance(dims, int) else dims
            ggml_type, offset = r.take("<IQ")
            tensors.append((name, dims, ggml_type, offset))
    except _Short as e:
        raise DamagedFile(_short_message(path, "GGUF file", len(data), e.needed)) from None
    start = -(-r.pos // alignment) * alignment
    end = start
    for name, dims, ggml_type, offset in tensors:
        label = name.decode("utf-8", "replace")
        if ggml_type not in GGML_QUANT_SIZES:
            raise DamagedFile(f"{damaged} (tensor {label!r} has unknown data type {ggml_type})")
        block, type_size = GGML_QUANT_SIZES[ggml_type]
        count = math.prod(dims)
        if count % block or offset % alignment:
            raise DamagedFile(f"{damaged} (tensor {label!r}: {count} values in blocks of {block}, at offset {offset})")
        end = max(end, start + offset + count // block * type_size)
    if end > len(data):
        raise DamagedFile(f"{path}: a truncated GGUF file ({len(data):,} bytes; its tensors end at byte {end:,})")
    return {"version": version, "tensors": len(tensors), "keys": len(keys)}


def check_gguf(path) -> dict:
    """Check that `path` is a complete GGUF file: readable header and metadata, and every tensor's
    data inside the file. Returns {"version", "tensors", "keys"}. Cached by (path, size, mtime)."""
    path = Path(path)
    if not path.is_file():
        raise DamagedFile(f"{path}: no such file (a GGUF file)")
    st = path.stat()
    return _check_gguf_cached(path, st.st_size, st.st_mtime_ns)


# ----------------------------------------------------------------------------------------------
# A Hugging Face model or tokenizer folder: its JSON files and its safetensors weights

# The JSON files that transformers reads from a model or tokenizer folder: each must be a JSON object.
FOLDER_JSON = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "model.safetensors.index.json",
)
_SAFETENSORS_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8,
}


def read_json_object(path: Path) -> dict:
    """A JSON file that must hold one object; anything else is a UserError naming the file."""
    data = path.read_bytes()
    if not data.strip():
        raise DamagedFile(f"{path}: empty file, not JSON")
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DamagedFile(f"{path}: not JSON (not UTF-8 text: {e.reason} at byte {e.start})") from None
    except ValueError as e:
        raise DamagedFile(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise DamagedFile(f"{path}: holds a JSON {type(value).__name__}, expected an object ({{...}})")
    return value


def check_safetensors(path: Path) -> int:
    """Check a safetensors file's header and that its tensors fill the file exactly; the number of tensors."""
    size = path.stat().st_size
    what = f"{path}: not a safetensors file"
    if size < 8:
        raise DamagedFile(f"{path}: a truncated safetensors file ({size} bytes)" if size else f"{path}: empty file, not safetensors weights")
    with open(path, "rb") as f:
        (header_size,) = struct.unpack("<Q", f.read(8))
        if header_size > size - 8:
            if header_size > 100_000_000:  # safetensors' own limit: no real header is this big
                raise DamagedFile(f"{what} (no safetensors header at its start)")
            raise DamagedFile(f"{path}: a truncated safetensors file ({size:,} bytes; its header alone needs {header_size + 8:,})")
        header_bytes = f.read(header_size)
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise DamagedFile(f"{path}: a damaged safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise DamagedFile(f"{path}: a damaged safetensors file (its header is not a JSON object)")
    data_size, covered = size - 8 - header_size, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            count = math.prod(info["shape"])
            itemsize = _SAFETENSORS_DTYPES.get(info["dtype"])
            ok = 0 <= begin <= end and (itemsize is None or end - begin == count * itemsize)
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise DamagedFile(f"{path}: a damaged safetensors file (the header's entry for {name!r} is not a valid tensor)")
        if end > data_size:
            raise DamagedFile(f"{path}: a truncated safetensors file ({size:,} bytes; tensor {name!r} ends at byte {8 + header_size + end:,})")
        covered = max(covered, end)
    if covered != data_size:
        raise DamagedFile(f"{path}: a damaged safetensors file ({data_size - covered:,} bytes after its last tensor)")
    return len(header) - ("__metadata__" in header)


@functools.lru_cache(maxsize=32)
def _check_folder_cached(folder: Path, stamp: tuple) -> None:
    for name in FOLDER_JSON:
        path = folder / name
        if path.is_file():
            read_json_object(path)
    if (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        try:
            Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:  # the Rust parser's error: a plain Exception
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DamagedFile(f"{folder / 'tokenizer.json'}: not a tokenizer file ({reason})") from None
    for path in sorted(folder.glob("*.safetensors")):
        check_safetensors(path)


def check_model_folder(folder) -> None:
    """Check the files of a Hugging Face model or tokenizer folder that transformers reads, before it
    does: each JSON file (config, generation config, tokenizer files, the weights index) is a JSON
    object, tokenizer.json is a tokenizer, and each .safetensors file is complete. A failure is one
    UserError naming the file. Cached by the files' sizes and times."""
    folder = Path(folder)
    names = [*FOLDER_JSON, *(p.name for p in folder.glob("*.safetensors"))]
    stamp = tuple((n, st.st_size, st.st_mtime_ns) for n in names if (folder / n).is_file() for st in [(folder / n).stat()])
    _check_folder_cached(folder, stamp)
