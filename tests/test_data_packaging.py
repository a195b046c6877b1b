"""Stage 2 and the tokenizer functions of minipretrain/tokenization.py: round trip, block arithmetic, the split,
the Parquet output, the manifest, clear errors; the bundled tokenizers and their fingerprints."""

import dataclasses
import json
import random
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import data_packaging as dp
from minipretrain import loading, packing, settings, stages, tokenization
from minipretrain.settings import UserError

BLOCK = 16
PROSE = [
    "The harbour town keeps its boats in a narrow basin behind the sea wall; in 1932 the wall was raised by 2.5 m.",
    "Caf\u00e9 owners open at 6:30, and by 08:15 most of the catch is sold.  Two spaces, then\ttabs\tand \u00fcml\u00e4uts.",
    "A literal <|endoftext|> and <|im_start|> or <s></s> inside a page must stay text, not become boundaries.",
    "Emoji \U0001f999 and CJK \u4e2d\u6587 and a long number 3141592653589793 are bytes the tokenizer must keep.",
]
CODE = "def area(r):\n    # circle\n    return 3.14159 * r ** 2\n\n\nclass Box:\n        pass\n"


def documents(n=24):
    """Varied documents, each much longer than BLOCK tokens, no two alike."""
    docs = []
    for i in range(n):
        if i % 6 == 5:
            text, source = CODE.replace("area", f"area_{i}"), "code"
        else:
            text, source = f"Page {i}. " + " ".join(PROSE[(i + k) % len(PROSE)] for k in range(1 + i % 3)), "web"
        docs.append({"text": text, "source": source, "doc_id": f"doc-{i:03d}"})
    return docs


@dataclasses.dataclass
class FakeStage1:
    note: str = "test fixture"


def write_cleaned(folder, docs, per_file=15):
    """A complete data_preparation output: cleaned-*.parquet (text, source, doc_id) and manifest."""
    schema = pa.schema([("text", pa.string()), ("source", pa.string()), ("doc_id", pa.string())])
    with stages.stage_output(folder, "data_preparation", FakeStage1(), {}, True) as out:
        chunks = [docs[i : i + per_file] for i in range(0, len(docs), per_file)] or [[]]
        for shard, chunk in enumerate(chunks):
            pq.write_table(pa.Table.from_pylist(chunk, schema=schema), out.path / f"cleaned-{shard:05d}.parquet")
    return folder


@pytest.fixture(scope="session")
def smollm():
    started = time.perf_counter()
    tokenizer = tokenization.load_tokenizer("smollm2-135m")
    print(f"\nloading the bundled SmolLM2 GGUF tokenizer took {time.perf_counter() - started:.2f} s")
    return tokenizer


@pytest.fixture(scope="module")
def mistral():
    return tokenization.load_tokenizer("mistral-32k")


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory):
    return write_cleaned(tmp_path_factory.mktemp("stage1") / "cleaned", documents())


def run(cleaned, out, *flags):
    args = ["--input_dir", str(cleaned), "--output_dir", str(out), "--block_size", str(BLOCK),
            "--validation_fraction", "0.1", "--min_validation_documents", "4", "--batch_size", "5",
            "--rows_per_shard", "40", "--row_group_rows", "7", "--unit_documents", "5", "--num_proc", "1", *flags]
    dp.main(args)
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def packed(cleaned, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage2") / "packed"
    return out, run(cleaned, out)


def split_ids(folder, split):
    files = sorted((folder / split).glob("packed-*.parquet"))
    return np.concatenate([np.asarray(pq.read_table(f)["input_ids"].to_pylist(), dtype=np.int64).reshape(-1) for f in files])


def doc_tokens(tokenizer, text):
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def expected_stream(token_lists, bos, eos):
    """The reference stream, built one document at a time in plain Python."""
    if bos == eos:
        stream = [bos]
        for ids in token_lists:
            stream += ids + [eos]
        return stream
    return [t for ids in token_lists for t in [bos] + ids + [eos]]


def read_documents(ids, bos, eos, known):
    """The documents in a split's token stream, identified independently of the packer: complete
    ones by their exact tokens, the truncated last one by prefix. -> (complete indices, tail index)."""
    ids = list(ids)
    segments, current = [], []
    for t in ids:
        if t == eos:
            segments.append(current)
            current = []
        elif t != bos:
            current.append(t)
    if bos == eos:  # the stream opens with the shared boundary: nothing before it
        assert ids[0] == bos and segments[0] == []
        segments = segments[1:]
    complete = [known[tuple(s)] for s in segments]
    tail = None
    if current:
        tail = next(i for tokens, i in known.items() if tokens[: len(current)] == tuple(current))
    return complete, tail


@pytest.mark.parametrize("name", ["smollm2-135m", "mistral-32k"])
def test_round_trip_blocks_and_split(name, cleaned, packed, smollm, mistral, tmp_path):
    if name == "smollm2-135m":
        out, manifest = packed
        tokenizer = smollm
    else:
        out = tmp_path / "packed"
        manifest = run(cleaned, out, "--tokenizer", name)
        tokenizer = mistral
    docs = documents()
    per_doc = [doc_tokens(tokenizer, d["text"]) for d in docs]
    known = {tuple(ids): i for i, ids in enumerate(per_doc)}
    assert len(known) == len(docs) and min(map(len, per_doc)) > BLOCK
    info = manifest["tokenizer"]
    bos, eos = info["bos_id"], info["eos_id"]
    assert (bos, eos) == ((0, 0) if name == "smollm2-135m" else (1, 2))

    seen = {}
    for split in ("train", "validation"):
        ids = split_ids(out, split)
        c = manifest["counts"][split]
        assert len(ids) == c["blocks"] * BLOCK
        complete, tail = read_documents(ids, bos, eos, known)
        assert complete == sorted(complete), "documents keep their input order"
        in_split = complete + ([tail] if tail is not None else [])
        seen[split] = set(in_split)
        # the packed blocks are exactly the reference stream, minus the dropped tail
        reference = expected_stream([per_doc[i] for i in in_split], bos, eos)
        assert c["tokens"] == len(reference) and c["documents"] == len(in_split)
        assert c["blocks"] == len(reference) // BLOCK and c["dropped_tokens"] == len(reference) % BLOCK
        assert ids.tolist() == reference[: c["blocks"] * BLOCK]
        # decoding gives back the documents with their boundary tokens, in order
        end = len(expected_stream([per_doc[i] for i in complete], bos, eos))
        text = tokenizer.decode(ids[:end].tolist())
        b, e = tokenizer.convert_ids_to_tokens(bos), tokenizer.convert_ids_to_tokens(eos)
        if bos == eos:
            assert text == b + "".join(docs[i]["text"] + e for i in complete)
        else:  # a SentencePiece decoder writes the dummy-prefix space after a control token
            assert text == "".join(f"{b} {docs[i]['text']}{e}" for i in complete)
    assert not seen["train"] & seen["validation"], "no document in both splits"
    assert seen["train"] | seen["validation"] == set(range(len(docs)))
    assert len(seen["validation"]) == 4  # max(ceil(0.1 * 24), 4)


def test_literal_special_tokens_stay_text(smollm):
    ids = dp.tokenize(smollm, ["a <|endoftext|> b <|im_start|> c"])[0]
    assert 0 not in ids and 1 not in ids
    assert smollm.decode(ids) == "a <|endoftext|> b <|im_start|> c"


def test_parquet_is_int32_fixed_length_sharded_and_readable(packed):
    import datasets

    out, manifest = packed
    for split in ("train", "validation"):
        files = sorted((out / split).glob("packed-*.parquet"))
        assert [f.name for f in files] == [f"packed-{i:05d}.parquet" for i in range(len(files))]
        assert len(files) == manifest["counts"][split]["shards"]
        for f in files:
            pf = pq.ParquetFile(f)
            assert pf.schema_arrow.field("input_ids").type == pa.list_(pa.int32())
            assert pf.metadata.num_rows <= 40
            assert all(pf.metadata.row_group(g).num_rows <= 7 for g in range(pf.metadata.num_row_groups))
            assert set(pq.read_table(f)["input_ids"].to_pandas().map(len)) == {BLOCK}
        rows = manifest["counts"][split]["blocks"]
        assert sum(len(pd.read_parquet(f)) for f in files) == rows
        assert pq.read_table(out / split).num_rows == rows
        loaded = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
        assert len(loaded) == rows and len(loaded[0]["input_ids"]) == BLOCK
        ds = packing.packed_dataset(out, split)
        assert len(ds) == rows and ds.features["input_ids"].feature.dtype == "int32"
    assert manifest["counts"]["train"]["shards"] > 1  # 40 rows a shard: the sharding was exercised


def test_manifest_fields(packed, smollm):
    out, m = packed
    assert m["stage"] == "data_packaging" and len(m["fingerprint"]) == 64
    assert m["block_size"] == BLOCK and m["seed"] == 42
    assert m["tokenizer"] == tokenization.tokenizer_info(smollm) | {"name": "smollm2-135m"}
    assert "<|endoftext|>" in m["tokenizer"]["boundary_note"] and "<|im_start|>" in m["tokenizer"]["boundary_note"]
    assert m["inputs"]["tokenizer"] == m["tokenizer"]["fingerprint"]
    for split in ("train", "validation"):
        c = m["counts"][split]
        assert set(c) == {"documents", "tokens", "blocks", "dropped_tokens", "shards"}
        assert 0 <= c["dropped_tokens"] < BLOCK
    blocks = {f"{s}/packed-{i:05d}.parquet" for s in ("train", "validation") for i in range(m["counts"][s]["shards"])}
    assert set(m["files"]) == blocks | {"documents/validation.parquet"}  # too few documents for an eval split


def test_split_is_deterministic_and_independent_of_batching(cleaned, packed, tmp_path):
    out, m = packed
    again = run(cleaned, tmp_path / "other_batches", "--batch_size", "3", "--rows_per_shard", "1000", "--row_group_rows", "1000")
    for split in ("train", "validation"):
        assert split_ids(tmp_path / "other_batches", split).tolist() == split_ids(out, split).tolist()
    assert again["counts"] == {s: dict(c, shards=again["counts"][s]["shards"]) for s, c in m["counts"].items()}
    other_seed = run(cleaned, tmp_path / "seed7", "--seed", "7")
    assert split_ids(tmp_path / "seed7", "validation").tolist() != split_ids(out, "validation").tolist()
    assert other_seed["counts"]["validation"]["documents"] == 4


def test_validation_threshold_takes_fraction_or_minimum():
    hashes = dp.split_hashes([f"d{i}" for i in range(1000)], seed=1)
    assert (hashes <= dp.validation_threshold(hashes, 0.05, 10)).sum() == 50
    assert (hashes <= dp.validation_threshold(hashes, 0.001, 10)).sum() == 10
    # a document's side depends on its id and the seed only
    assert dp.split_hashes(["d5"], seed=1)[0] == hashes[5]
    with pytest.raises(UserError, match="min_validation_documents"):
        dp.validation_threshold(hashes[:10], 0.02, 10)


def test_validation_share_is_rounded_up():
    hashes = dp.split_hashes([f"d{i}" for i in range(1000)], seed=1)
    assert (hashes <= dp.validation_threshold(hashes, 0.0123, 10)).sum() == 13  # 12.3 documents: 13, not 12
    assert (hashes <= dp.validation_threshold(hashes, 0.0101, 10)).sum() == 11  # 10.1: 11, more than the minimum
    eleven = hashes[:11]
    assert (eleven <= dp.validation_threshold(eleven, 0.5, 1)).sum() == 6  # 5.5: 6
    assert (eleven <= dp.validation_threshold(eleven, 0.0, 10)).sum() == 10  # one document left to train on


def test_default_split_and_block_size_are_the_readmes():
    s = dp.Settings()
    assert (s.validation_fraction, s.min_validation_documents, s.block_size) == (0.02, 10, 32)
    assert s.tokenizer == "smollm2-135m"


def test_chop_carries_the_remainder():
    carry = np.empty(0, np.int32)
    blocks, carry = dp.chop(carry, np.arange(10, dtype=np.int32), 4)
    assert blocks.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]] and carry.tolist() == [8, 9]
    blocks, carry = dp.chop(carry, np.arange(10, 13, dtype=np.int32), 4)
    assert blocks.tolist() == [[8, 9, 10, 11]] and carry.tolist() == [12]


def test_document_boundaries_in_the_stream():
    docs = [[5, 6], [7], [8, 9]]
    # one shared token (SmolLM2's <|endoftext|> = 0) between two documents, and one before the first
    shared = np.concatenate([packing.stream_start(0, 0), packing.document_stream(docs, 0, 0)])
    assert shared.tolist() == [0, 5, 6, 0, 7, 0, 8, 9, 0]
    # distinct tokens (Mistral's <s> 1, </s> 2): each document is <s> ... </s>
    distinct = np.concatenate([packing.stream_start(1, 2), packing.document_stream(docs, 1, 2)])
    assert distinct.tolist() == [1, 5, 6, 2, 1, 7, 2, 1, 8, 9, 2]


def test_rerun_is_up_to_date_or_rebuilds_what_changed(cleaned, packed, capsys):
    out, m = packed
    run(cleaned, out)
    assert "up to date" in capsys.readouterr().out
    assert run(cleaned, out, "--block_size", "8")["block_size"] == 8
    assert f"block_size {BLOCK} -> 8: rebuilding {out}" in capsys.readouterr().out


def test_errors_name_the_problem(cleaned, packed, tmp_path):
    with pytest.raises(UserError, match="run data_preparation.py first"):
        run(tmp_path / "no_such_folder", tmp_path / "a")
    empty = write_cleaned(tmp_path / "empty", [])
    with pytest.raises(UserError, match="no documents"):
        run(empty, tmp_path / "b")
    with pytest.raises(UserError, match="no-such-tokenizer.*smollm2-135m"):
        run(cleaned, tmp_path / "c", "--tokenizer", "no-such-tokenizer.gguf")
    with pytest.raises(UserError, match="block_size"):
        run(cleaned, tmp_path / "d", "--block_size", "1")
    with pytest.raises(UserError, match="leaves none for training"):
        run(write_cleaned(tmp_path / "tiny", documents(3)), tmp_path / "e")
    with pytest.raises(UserError, match="validation split has .* fewer than block_size"):
        run(cleaned, tmp_path / "f", "--block_size", str(packed[1]["counts"]["validation"]["tokens"] + 1))
    broken = write_cleaned(tmp_path / "nulls", [{"text": None, "source": "web", "doc_id": "x"}] + documents(12))
    with pytest.raises(UserError, match="cleaned-00000.parquet: row 0 has no text"):
        run(broken, tmp_path / "g")
    for letter in "abcdefg":
        assert not (tmp_path / letter).exists()


def test_command_line_error_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "data_packaging.py", "--input_dir", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o")],
        cwd=settings.PROJECT_DIR, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing'}: no such folder; run data_preparation.py first"]


# ----------------------------------------------------------------------------------------------
# minipretrain/tokenization.py


def test_smollm2_tokenizer(smollm):
    assert smollm.is_fast and len(smollm) == 49_152
    assert (smollm.bos_token, smollm.eos_token) == ("<|im_start|>", "<|im_end|>")  # what the GGUF reports
    bos, eos, note = tokenization.document_boundaries(smollm)
    assert (bos, eos) == (0, 0) and smollm.convert_ids_to_tokens(0) == "<|endoftext|>" and "chat-turn" in note
    for text in PROSE + [CODE]:
        assert smollm.decode(doc_tokens(smollm, text)) == text
    # SmolLM2 splits digits one by one (GGUF pre-tokenizer "smollm"); transformers' GGUF loader forgets it
    assert smollm.convert_ids_to_tokens(doc_tokens(smollm, "x  5")) == ["x", "\u0120\u0120", "5"]


def test_mistral_tokenizer_matches_sentencepiece(mistral):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(loading.bundled_file("mistral-32k")))
    assert len(mistral) == sp.vocab_size() == 32_000
    assert tokenization.document_boundaries(mistral)[:2] == (1, 2)
    rng = random.Random(0)
    pieces = [" ", "  ", "   ", "\n", "\n    ", "\t", "a", "The", "x1", "\u00e9", "\U0001f999", "<s>", "</s>", "42", ".", ","]
    texts = PROSE + [CODE, "", " lead", "trail "] + ["".join(rng.choices(pieces, k=rng.randint(1, 25))) for _ in range(300)]
    for text in texts:
        assert doc_tokens(mistral, text) == sp.encode(text), repr(text)
        assert mistral.decode(sp.encode(text)) == sp.decode(sp.encode(text))


@pytest.mark.parametrize("name", ["smollm2-135m", "mistral-32k"])
def test_fingerprint_survives_save_and_reload(name, smollm, mistral, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = smollm if name == "smollm2-135m" else mistral
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenization.tokenizer_fingerprint(reloaded) == tokenization.tokenizer_fingerprint(tokenizer)
    via_folder = tokenization.load_tokenizer(str(tmp_path))  # the Hugging Face folder path of load_tokenizer
    assert tokenization.tokenizer_info(via_folder) == tokenization.tokenizer_info(tokenizer) | {"name": str(tmp_path)}
    text = PROSE[1] + CODE
    assert doc_tokens(via_folder, text) == doc_tokens(tokenizer, text)


def test_fingerprint_tells_tokenizers_apart(smollm, mistral):
    from transformers import PreTrainedTokenizerFast

    assert tokenization.tokenizer_fingerprint(smollm) != tokenization.tokenizer_fingerprint(mistral)
    gguf = loading.bundled_file("smollm2-135m")  # the same GGUF without the digit pre-tokenizer: other ids
    plain = PreTrainedTokenizerFast.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    assert tokenization.tokenizer_fingerprint(plain) != tokenization.tokenizer_fingerprint(smollm)


def test_document_boundaries_fallbacks(smollm):
    from transformers import PreTrainedTokenizerFast

    eos_only = PreTrainedTokenizerFast(tokenizer_object=smollm.backend_tokenizer, eos_token="<|endoftext|>")
    assert tokenization.document_boundaries(eos_only)[:2] == (0, 0)
    neither = PreTrainedTokenizerFast(tokenizer_object=smollm.backend_tokenizer)
    with pytest.raises(UserError, match="neither a BOS nor an EOS"):
        tokenization.document_boundaries(neither)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(UserError, match="not a keyword.*offline default is 'smollm2-135m'"):
        tokenization.load_tokenizer("missing/file.gguf")
    with pytest.raises(UserError, match="without tokenizer files"):
        tokenization.load_tokenizer(str(tmp_path))
    (tmp_path / "bad.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(UserError, match="bad.model"):
        tokenization.load_tokenizer(str(tmp_path / "bad.model"))
    with pytest.raises(UserError, match="no-such-org/no-such-tokenizer.*hub"):  # offline in tests (conftest)
        tokenization.load_tokenizer("no-such-org/no-such-tokenizer")
