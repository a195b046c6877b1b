"""Tokenizers: loading them from every kind of spec (with the GGUF and SentencePiece fixes), the
document boundaries, the fingerprint that identifies a tokenizer, and fast batch tokenization.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from minipretrain.loading import (
    BUNDLED,
    bundled_file,
    from_pretrained,
    looks_like_hub_id,
)
from minipretrain.modelfiles import DamagedFile, check_gguf
from minipretrain.settings import DEFAULT_BASE_MODEL, UserError

# GGUF pre-tokenizer names for which llama.cpp splits every digit on its own before the GPT-2
# regex (as the original SmolLM2 tokenizer.json's Digits(individual_digits=True) does);
# transformers' GGUF conversion leaves this out, which changes the tokens of spaces before digits.
_GGUF_DIGIT_SPLIT = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}

# Chat-turn markers some tokenizers report as BOS/EOS, and the end-of-text tokens that bound a
# pretraining document instead.
_CHAT_TOKENS = {"<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|start_header_id|>", "<|end|>", "<start_of_turn>", "<end_of_turn>"}
_END_OF_TEXT = ("<|endoftext|>", "<|end_of_text|>")


def load_tokenizer(spec):
    """A fast tokenizer from a keyword of BUNDLED, a .gguf file, a SentencePiece .model file, or a
    Hugging Face model folder or hub id. Its `name_or_path` becomes `spec`."""
    spec = str(spec)
    path = bundled_file(spec) if spec in BUNDLED else Path(spec)
    offline_default = f"the offline default is {DEFAULT_BASE_MODEL!r}"
    if path.is_file() and path.suffix == ".gguf":
        tokenizer = _gguf_tokenizer(path)
    elif path.is_file() and (path.suffix == ".model" or ".model." in path.name):
        tokenizer = _sentencepiece_tokenizer(path)
    elif path.is_file():
        raise UserError(f"tokenizer {spec!r}: a file, but neither a .gguf nor a SentencePiece .model file; {offline_default}")
    elif path.is_dir() and not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise UserError(f"tokenizer {spec!r}: a folder without tokenizer files ({', '.join(_TOKENIZER_FILES)}); {offline_default}")
    elif path.is_dir() or looks_like_hub_id(spec):
        from transformers import AutoTokenizer

        where = "a folder" if path.is_dir() else "a Hugging Face hub id (not a local folder either)"
        try:
            tokenizer = from_pretrained(AutoTokenizer, spec, f"tokenizer {spec!r}: cannot load it as {where}")
        except DamagedFile:
            raise  # the file named is the problem, not the choice of tokenizer
        except UserError as e:
            raise UserError(f"{e}; {offline_default}") from None
    else:
        kinds = ", ".join(BUNDLED)
        raise UserError(
            f"tokenizer {spec!r}: not a keyword ({kinds}), an existing folder, .gguf or SentencePiece .model file, "
            f"or a Hugging Face hub id; {offline_default}"
        )
    if not tokenizer.is_fast:
        raise UserError(f"tokenizer {spec!r}: only a slow (Python) tokenizer is available; a fast one is needed")
    tokenizer.name_or_path = spec
    return tokenizer


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")



def _gguf_tokenizer(path: Path):
    """The tokenizer of a GGUF file. PreTrainedTokenizerFast reads only its metadata (seconds);
    AutoTokenizer would also parse all tensors to find the model type (much slower)."""
    from tokenizers import pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.reader import read_gguf_metadata

    check_gguf(path)  # a truncated or damaged file: one line naming it, before the readers meet it
    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path.parent), gguf_file=path.name, trust_remote_code=False)
        metadata, _ = read_gguf_metadata(str(path), ())
    except Exception as e:  # a damaged or unsupported file: many exception types
        raise UserError(f"{path}: cannot read a tokenizer from this GGUF file ({type(e).__name__}: {e})") from None
    if metadata.get("tokenizer.ggml.pre") in _GGUF_DIGIT_SPLIT:
        backend = tokenizer.backend_tokenizer
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), backend.pre_tokenizer])
    return tokenizer


def _sentencepiece_tokenizer(path: Path):
    """A fast tokenizer equal to a SentencePiece BPE model (ids tested against sentencepiece itself).

    transformers 5's LlamaTokenizer(vocab_file=...) comes out empty (vocabulary of 3), and its
    conversion orders the BPE merges by piece id where SentencePiece uses the piece scores (Llama/
    Mistral give whitespace runs a score of -1e9), so runs of spaces come out different. Here: the
    vocabulary read by transformers' SentencePieceExtractor, merges ordered by score, SentencePiece's
    dummy prefix and whitespace splitting, byte fallback.
    """
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SentencePieceExtractor
    from transformers.tokenization_utils_base import generate_merges

    if path.stat().st_size == 0:  # protobuf reads an empty file as an empty model
        raise DamagedFile(f"{path}: empty file, not a SentencePiece model")
    try:
        proto = SentencePieceExtractor(str(path)).proto
    except Exception as e:  # protobuf's DecodeError and friends
        raise DamagedFile(f"{path}: not a SentencePiece model ({type(e).__name__}: {e})") from None
    if not proto.pieces:
        raise DamagedFile(f"{path}: not a SentencePiece model (it holds no pieces)")
    ids = {"unk_id": proto.trainer_spec.unk_id, "bos_id": proto.trainer_spec.bos_id, "eos_id": proto.trainer_spec.eos_id}
    for name, i in ids.items():
        if i >= len(proto.pieces) or (name == "unk_id" and i < 0):
            raise DamagedFile(f"{path}: a damaged SentencePiece model (its {name} {i} is not one of its {len(proto.pieces)} pieces)")
    if proto.trainer_spec.model_type != 2:  # 1 unigram, 2 BPE
        raise UserError(f"{path}: a SentencePiece model of type {proto.trainer_spec.model_type}; only BPE models (type 2) are supported")
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    merges = generate_merges(vocab, {piece.piece: piece.score for piece in proto.pieces})
    unk = proto.trainer_spec.unk_piece
    backend = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=proto.trainer_spec.byte_fallback))
    norm = proto.normalizer_spec
    steps = [normalizers.Precompiled(norm.precompiled_charsmap)] if norm.precompiled_charsmap else []
    steps += [normalizers.Prepend("▁")] if norm.add_dummy_prefix else []
    backend.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "▁")])
    if proto.trainer_spec.split_by_whitespace:  # a word is a run of ▁ and the text up to the next ▁
        backend.pre_tokenizer = pre_tokenizers.Split(Regex("▁*[^▁]+|▁+"), behavior="isolated")
    strip = [decoders.Strip(content=" ", left=1)] if norm.add_dummy_prefix else []
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()] + strip)
    bos = proto.pieces[proto.trainer_spec.bos_id].piece if proto.trainer_spec.bos_id >= 0 else None
    eos = proto.pieces[proto.trainer_spec.eos_id].piece if proto.trainer_spec.eos_id >= 0 else None
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token=unk)


def document_boundaries(tokenizer) -> tuple[int, int, str]:
    """(bos_id, eos_id, note): the tokens that open and close a pretraining document.

    The tokenizer's own BOS/EOS, except where it reports chat-turn markers (the SmolLM2 Instruct
    GGUF says BOS <|im_start|>, EOS <|im_end|>): a document is not a chat turn, so its end-of-text
    token (SmolLM2: <|endoftext|>, id 0, the BOS and EOS of the SmolLM2 base model's tokenizer)
    takes their place. A missing BOS or EOS is the other one, as in GPT-2.
    """
    vocab = tokenizer.get_vocab()
    end_of_text = next((t for t in _END_OF_TEXT if t in vocab), None)
    reported = {"BOS": tokenizer.bos_token, "EOS": tokenizer.eos_token}
    chosen, notes = {}, []
    for role, token in reported.items():
        if token is not None and token in _CHAT_TOKENS and end_of_text is not None:
            chosen[role] = end_of_text
            notes.append(f"the tokenizer's {role} {token} (id {vocab[token]}) is a chat-turn marker, so {end_of_text} (id {vocab[end_of_text]}) is used")
        else:
            chosen[role] = token
    for role, other in (("BOS", "EOS"), ("EOS", "BOS")):
        if chosen[role] is None and chosen[other] is not None:
            chosen[role] = chosen[other]
            notes.append(f"the tokenizer has no {role}, so its {other} {chosen[other]} is used")
    if chosen["BOS"] is None:
        name = tokenizer.name_or_path
        raise UserError(f"tokenizer {name!r}: has neither a BOS nor an EOS token to mark document boundaries")
    note = "; ".join(notes) if notes else "the tokenizer's own BOS and EOS"
    note = f"documents are {chosen['BOS']} ... {chosen['EOS']}: {note}"
    return vocab[chosen["BOS"]], vocab[chosen["EOS"]], note


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what decides the token ids and their text: normalizer, pre-tokenizer, model
    (vocabulary, merges), decoder and added tokens. Unchanged by save_pretrained +
    AutoTokenizer.from_pretrained; padding, truncation and the post-processor do not count."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    parts = {key: state.get(key) for key in ("normalizer", "pre_tokenizer", "model", "decoder")}
    parts["added_tokens"] = sorted((t["id"], t["content"], t["special"]) for t in state.get("added_tokens") or [])
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def tokenizer_info(tokenizer) -> dict:
    """What identifies a tokenizer in a manifest. bos/eos are the document boundaries
    (document_boundaries), which may differ from the tokenizer's own reported tokens."""
    bos_id, eos_id, note = document_boundaries(tokenizer)
    return {
        "name": tokenizer.name_or_path,
        "vocab_size": len(tokenizer),
        "bos_id": bos_id,
        "bos_token": tokenizer.convert_ids_to_tokens(bos_id),
        "eos_id": eos_id,
        "eos_token": tokenizer.convert_ids_to_tokens(eos_id),
        "boundary_note": note,
        "fingerprint": tokenizer_fingerprint(tokenizer),
    }


def tokenize(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens; special-token text in it stays text.
    The Rust tokenizer's encode_batch_fast runs a batch on all cores and skips what packing does
    not use (character offsets, transformers' per-text conversion): the same ids as
    tokenizer(texts, add_special_tokens=False, split_special_tokens=True) for ~25% less CPU.
    `tokenizer`: a transformers fast tokenizer, or its Rust tokenizer (tokenizers.Tokenizer)."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    backend.encode_special_tokens = True  # what split_special_tokens=True sets
    backend.no_truncation()  # as transformers' call without truncation / padding does
    backend.no_padding()
    return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
