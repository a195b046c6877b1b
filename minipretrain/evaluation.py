"""Evaluation: perplexity with a bootstrap confidence interval, bits per byte, and a HellaSwag-style
multiple-choice task built from held-out documents, scored the way lm-evaluation-harness scores it.

- `pack_documents`: held-out documents -> blocks exactly as stage 2 packs them, with the document
  each token belongs to (so a confidence interval can resample documents, not tokens);
- `token_losses`: the loss of every predicted token, the logits made a chunk of positions at a
  time (a 49,152-token vocabulary makes 196 KB of logits per position);
- `token_byte_lengths`: the UTF-8 bytes each token id stands for (bits per byte);
- `perplexity_report`: perplexity and bits per byte with 95% percentile-bootstrap intervals over
  documents;
- `build_items`, `score_items`, `choice_report`: the multiple-choice task;
- `write_lm_eval_task`: the task as an lm-eval task folder (YAML, loader, JSON lines).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch

from minipretrain.packing import chop, document_stream, stream_start

# The families whose decoder body and LM head are called apart (the head a chunk at a time); any
# other model goes through its own forward (its full logits), which is correct for any head.
_SPLIT_HEAD = {"llama", "mistral", "qwen2"}
TARGET_DELIMITER = " "  # lm-eval's default between a context and a choice
TASK_NAME = "minipretrain_mc"


# ----------------------------------------------------------------------------------------------
# Bytes per token


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte (the inverse of bytes_to_unicode)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def token_byte_lengths(tokenizer) -> np.ndarray:
    """The number of UTF-8 bytes of text each token id stands for; 0 for special tokens.

    Byte-level BPE (GPT-2, SmolLM2): each character of a token is one byte of GPT-2's alphabet.
    SentencePiece-style pieces (Llama, Mistral): "▁" is a space, "<0xNN>" one byte, anything else
    its UTF-8. A SentencePiece tokenizer's dummy prefix (the space it adds before a text) counts as
    the byte it decodes to, so a document measures one byte more than its text there."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    decoder = json.dumps(state.get("decoder") or {})
    byte_level = '"ByteLevel"' in decoder
    table = _byte_decoder() if byte_level else None
    special = set(tokenizer.all_special_ids) | {t["id"] for t in state.get("added_tokens") or [] if t.get("special")}
    size = max(len(tokenizer), max(special, default=0) + 1)
    lengths = np.zeros(size, np.int64)
    for token, i in tokenizer.get_vocab().items():
        if i in special:
            continue
        if byte_level and all(c in table for c in token):
            lengths[i] = len(token)
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
            lengths[i] = 1
        else:
            lengths[i] = len(token.replace("▁", " ").encode("utf-8"))
    return lengths


# ----------------------------------------------------------------------------------------------
# Held-out documents as blocks


def pack_documents(tokenizer, texts: list[str], block_size: int, bos_id: int, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(blocks, owner): the documents packed as stage 2 packs a split (tokenization.tokenize, the
    same boundaries, the same chopping; the final incomplete block dropped), and for every token
    of the blocks the index of the document it belongs to. A boundary token belongs to the
    document it closes (one shared <|endoftext|> closes the one before it) or opens (<s>); the
    split's opening token belongs to none (-1) and is never predicted."""
    from minipretrain.tokenization import tokenize

    token_lists = tokenize(tokenizer, texts)
    stream = np.concatenate([stream_start(bos_id, eos_id), document_stream(token_lists, bos_id, eos_id)])
    per_document = [len(ids) + (1 if bos_id == eos_id else 2) for ids in token_lists]
    owner = np.concatenate([np.full(len(stream_start(bos_id, eos_id)), -1), np.repeat(np.arange(len(texts)), per_document)])
    blocks, _ = chop(np.empty(0, np.int32), stream, block_size)
    owners, _ = chop(np.empty(0, np.int64), owner, block_size)
    return blocks, owners


# ----------------------------------------------------------------------------------------------
# Losses, with bounded logits


def _body_and_head(model):
    """(decoder body, LM head) for the families whose logits are just head(hidden), else None."""
    if model.config.model_type in _SPLIT_HEAD and model.get_output_embeddings() is not None:
        return model.get_decoder(), model.get_output_embeddings()
    return None


PRECISIONS = ("fp32", "bf16")


def use_precision(model, precision: str):
    """Get a loaded float32 model ready for `precision`: for "bf16", the decoder body's linear
    weights become bfloat16 once, so that autocast does not cast 140M weights again on every call
    (which took longer than the matmuls). The embeddings, norms and LM head stay float32. Other
    families (no body and head apart) keep float32 weights: autocast casts them as it goes, the
    head included. Returns the model."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    split = _body_and_head(model)
    if precision == "bf16" and split is not None:
        for module in split[0].modules():
            if isinstance(module, torch.nn.Linear):
                module.to(torch.bfloat16)
    return model


def _autocast(model, precision: str):
    """bf16: the decoder body's matmuls (and attention) in bfloat16, accumulating in float32,
    everything else (residual stream, norms, softmax, the LM head) in float32; fp32: nothing."""
    device = next(model.parameters()).device.type
    return torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")


def _log_probs(model, ids, where_rows, where_cols, targets, head_chunk: int, precision: str = "fp32", **inputs) -> torch.Tensor:
    """log p(targets[k] | the sequence up to position where_cols[k] of row where_rows[k]), for every
    k, in float32. The head runs on head_chunk positions at a time, so the logits in memory are at
    most head_chunk x vocabulary floats, whatever the batch; it runs in float32 in either precision
    (bfloat16 logits would round a logit of 20 by up to 0.06). A model whose head cannot be called
    apart runs whole on as many rows as make head_chunk positions (at least one row: its logits are
    then at most max(head_chunk, sequence length) x vocabulary)."""
    split = _body_and_head(model)
    if split is None:
        out = torch.empty(len(targets), dtype=torch.float32, device=targets.device)
        step = max(1, head_chunk // ids.shape[1])
        for first in range(0, len(ids), step):
            here = (where_rows >= first) & (where_rows < first + step)
            rows_inputs = {name: value[first : first + step] for name, value in inputs.items()}
            with _autocast(model, precision):
                logits = model(input_ids=ids[first : first + step], use_cache=False, **rows_inputs).logits
            logits = logits[where_rows[here] - first, where_cols[here]].float()
            out[here] = torch.log_softmax(logits, -1).gather(1, targets[here][:, None])[:, 0]
        return out
    body, head = split
    with _autocast(model, precision):
        hidden = body(input_ids=ids, use_cache=False, **inputs).last_hidden_state[where_rows, where_cols]
    hidden = hidden.to(head.weight.dtype)
    parts = []
    for h, t in zip(hidden.split(head_chunk), targets.split(head_chunk)):
        parts.append(-torch.nn.functional.cross_entropy(head(h).float(), t, reduction="none"))
    return torch.cat(parts)


def token_losses(model, blocks: np.ndarray, batch_size: int, head_chunk: int = 1024, precision: str = "fp32") -> np.ndarray:
    """The loss (nats) of every predicted token of the blocks, shape (blocks, block_size - 1):
    position t of a block predicts token t + 1, as in training. A block's last token predicts
    nothing and, causal attention, changes nothing before it: the model reads the first
    block_size - 1 tokens only (1/block_size less work, the same losses)."""
    n, length = blocks.shape
    out = np.empty((n, length - 1), np.float64)
    device = next(model.parameters()).device
    rows = torch.arange(batch_size, device=device).repeat_interleave(length - 1)
    cols = torch.arange(length - 1, device=device).repeat(batch_size)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            ids = torch.as_tensor(blocks[start : start + batch_size], dtype=torch.long, device=device)
            b = len(ids)
            targets = ids[:, 1:].reshape(-1)
            logp = _log_probs(model, ids[:, :-1], rows[: b * (length - 1)], cols[: b * (length - 1)], targets, head_chunk, precision)
            out[start : start + b] = -logp.reshape(b, length - 1).double().cpu().numpy()
    return out


# ----------------------------------------------------------------------------------------------
# Perplexity and bits per byte with bootstrap intervals over documents


def bootstrap_weights(n_documents: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_documents) counts: each row draws n_documents documents with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_documents, np.full(n_documents, 1 / n_documents), size=resamples)


def document_sums(losses: np.ndarray, blocks: np.ndarray, owners: np.ndarray, byte_lengths: np.ndarray, n_documents: int) -> dict:
    """Per document: summed loss (nats), predicted tokens, and their bytes."""
    doc = owners[:, 1:].reshape(-1)
    keep = doc >= 0
    doc = doc[keep]
    return {
        "nats": np.bincount(doc, losses.reshape(-1)[keep], n_documents),
        "tokens": np.bincount(doc, None, n_documents).astype(np.float64),
        "bytes": np.bincount(doc, byte_lengths[blocks[:, 1:].reshape(-1)][keep].astype(np.float64), n_documents),
    }


def perplexity_report(sums: dict, weights: np.ndarray) -> dict:
    """Perplexity = exp(total loss / predicted tokens) and bits per byte = total loss / ln 2 / their
    bytes, each with a 95% percentile-bootstrap interval: the documents resampled with
    replacement (the rows of `weights`), the ratio of sums recomputed each time."""
    nats, tokens, size = sums["nats"], sums["tokens"], sums["bytes"]
    loss = nats.sum() / tokens.sum()
    bpb = nats.sum() / math.log(2) / size.sum()
    boot_loss = (weights @ nats) / (weights @ tokens)
    boot_bpb = (weights @ nats) / math.log(2) / (weights @ size)
    lo, hi = np.percentile(boot_loss, [2.5, 97.5])
    blo, bhi = np.percentile(boot_bpb, [2.5, 97.5])
    return {
        "loss": round(float(loss), 5),
        "perplexity": round(math.exp(loss), 3),
        "perplexity_ci95": [round(math.exp(lo), 3), round(math.exp(hi), 3)],
        "bits_per_byte": round(float(bpb), 5),
        "bits_per_byte_ci95": [round(float(blo), 5), round(float(bhi), 5)],
        "tokens": int(tokens.sum()),
        "bytes": int(size.sum()),
        "documents": int((tokens > 0).sum()),
    }


def paired_difference(sums: dict, reference: dict, weights: np.ndarray) -> dict:
    """Bits per byte of a model minus the reference's on the same documents, with a 95% interval
    from the same resamples for both (paired): far tighter than comparing two separate intervals."""
    def bpb(s):
        return (weights @ s["nats"]) / math.log(2) / (weights @ s["bytes"])

    diff = bpb(sums) - bpb(reference)
    point = sums["nats"].sum() / math.log(2) / sums["bytes"].sum() - reference["nats"].sum() / math.log(2) / reference["bytes"].sum()
    lo, hi = np.percentile(diff, [2.5, 97.5])
    return {"bits_per_byte": round(float(point), 5), "ci95": [round(float(lo), 5), round(float(hi), 5)]}


# ----------------------------------------------------------------------------------------------
# The multiple-choice task


_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*\s+|\n\s*")


def sentence_starts(text: str) -> list[int]:
    """Where sentences (and lines, for code) start: after . ! ? (and closing quotes) + space, or a newline."""
    starts = {0} | {m.end() for m in _SENTENCE_END.finditer(text)}
    return sorted(s for s in starts if s < len(text) and not text[s].isspace())


def cut_at_word(text: str, start: int, length: int) -> str:
    """text[start:end], end the word end nearest start + length ('' when none follows start)."""
    window = text[start : start + 2 * length + 40]
    ends = [m.end() for m in re.finditer(r"\S+", window)]
    if not ends:
        return ""
    return window[: min(ends, key=lambda e: (abs(e - length), e))]


def document_items(text: str, context_chars: int, ending_chars: int) -> list[tuple[str, str]]:
    """(context, true ending) pairs of one document, none overlapping another: a context is the
    whole sentences (or lines) of at most context_chars before a sentence start, the ending the
    text from that start cut at the word end nearest ending_chars."""
    items, free = [], 0
    starts = sentence_starts(text)
    for s in starts:
        if s <= free:
            continue
        first = next((c for c in starts if c >= max(free, s - context_chars)), s)
        context = text[first:s].rstrip()
        ending = cut_at_word(text, s, ending_chars)
        if len(context) < context_chars // 4 or len(ending) < ending_chars // 2:
            continue
        items.append((context, ending))
        free = s + len(ending)
    return items


def build_items(documents: list[tuple[str, str]], n_items: int, context_chars: int, ending_chars: int, seed: int) -> list[dict]:
    """HellaSwag-style items from held-out documents ((doc_id, text) pairs) only: a passage as the
    context, its true next passage and three passages from three other documents, each starting
    at a sentence start and cut at the word end nearest the true one's length. Items are spread
    evenly over the documents (round robin, in a seeded order); the same documents and seed give
    the same items."""
    rng = np.random.default_rng(seed)
    documents = sorted(documents)
    if len(documents) < 4:
        raise ValueError(f"{len(documents)} held-out documents: a multiple-choice item needs 4 (its own and 3 others)")
    per_document = []
    for doc_id, text in documents:
        pairs = document_items(text, context_chars, ending_chars)
        order = rng.permutation(len(pairs))
        per_document.append([pairs[i] for i in order])
    chosen = []
    for rank in range(max(map(len, per_document), default=0)):
        for d in rng.permutation(len(documents)):
            if rank < len(per_document[d]) and len(chosen) < n_items:
                chosen.append((d, *per_document[d][rank]))
    starts = [sentence_starts(text) for _, text in documents]
    items = []
    for number, (d, context, ending) in enumerate(chosen):
        others = rng.permutation([i for i in range(len(documents)) if i != d])
        distractors, sources = [], []
        for o in others:
            text = documents[o][1]
            for s in rng.permutation(starts[o]):
                candidate = cut_at_word(text, int(s), len(ending))
                if candidate and abs(len(candidate) - len(ending)) <= max(3, len(ending) // 5) and candidate not in (ending, *distractors):
                    distractors.append(candidate)
                    sources.append(documents[o][0])
                    break
            if len(distractors) == 3:
                break
        if len(distractors) < 3:
            continue  # too few other documents with a passage of this length
        label = int(rng.integers(4))
        choices = distractors[:label] + [ending] + distractors[label:]
        items.append({"id": number, "doc_id": documents[d][0], "context": context, "choices": choices, "label": label,
                      "distractor_doc_ids": sources})
    return items


def encode_items(tokenizer, items: list[dict]) -> list[tuple[list[int], list[list[int]]]]:
    """(context ids, [continuation ids per choice]) as lm-eval's HFLM makes a request: the context
    and the context + " " + choice each encoded whole (the tokenizer's defaults), the choice's
    tokens being what follows the context's."""
    contexts = tokenizer([it["context"] for it in items])["input_ids"]
    wholes = tokenizer([it["context"] + TARGET_DELIMITER + c for it in items for c in it["choices"]])["input_ids"]
    out, k = [], 0
    for it, ctx in zip(items, contexts):
        conts = []
        for _ in it["choices"]:
            conts.append(wholes[k][len(ctx) :])
            k += 1
        out.append((ctx, conts))
    return out


def score_items(model, encoded, batch_size: int, head_chunk: int = 1024, precision: str = "fp32") -> np.ndarray:
    """Log-likelihood (nats) of each choice's continuation after its context, shape (items, choices).

    One sequence per item: the context once, then each choice's tokens, each choice attending to
    the context and to itself only (a 4-D attention mask) at the positions it would have after the
    context alone, so the context is computed once for its four choices and the result equals
    four separate sequences (lm-eval's way) up to float rounding. A choice's last token predicts
    nothing and no other position sees it, so it is left out (~8% less work on the defaults). Items
    of similar length go in one batch, padded on the right."""
    n, k = len(encoded), max(len(c) for _, c in encoded)
    scores = np.zeros((n, k))
    device = next(model.parameters()).device
    lengths = np.array([len(ctx) + sum(len(cont) - 1 for cont in conts) for ctx, conts in encoded])
    order = np.argsort(lengths, kind="stable")
    dtype = next(model.parameters()).dtype
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            width = int(lengths[batch].max())
            ids = np.zeros((len(batch), width), np.int64)
            pos = np.zeros((len(batch), width), np.int64)
            seg = np.full((len(batch), width), -1, np.int64)
            rows, cols, targets, owners = [], [], [], []
            for r, i in enumerate(batch):
                ctx, conts = encoded[i]
                ids[r, : len(ctx)], pos[r, : len(ctx)], seg[r, : len(ctx)] = ctx, np.arange(len(ctx)), 0
                at = len(ctx)
                for c, cont in enumerate(conts):
                    span = np.arange(at, at + len(cont) - 1)  # the choice's tokens but its last
                    ids[r, span], pos[r, span], seg[r, span] = cont[:-1], len(ctx) + np.arange(len(cont) - 1), c + 1
                    rows.append(np.full(len(cont), r))
                    cols.append(np.concatenate([[len(ctx) - 1], span]))  # the position that predicts each token
                    targets.append(cont)
                    owners.append(np.full(len(cont), i * k + c))
                    at += len(cont) - 1
                pos[r, at:] = np.arange(width - at)
            seg_t = torch.as_tensor(seg)
            causal = torch.ones(width, width, dtype=torch.bool).tril()
            allowed = causal & ((seg_t[:, None, :] == 0) | (seg_t[:, None, :] == seg_t[:, :, None]))
            mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
            logp = _log_probs(
                model, torch.as_tensor(ids, device=device), torch.as_tensor(np.concatenate(rows), device=device),
                torch.as_tensor(np.concatenate(cols), device=device), torch.as_tensor(np.concatenate(targets), device=device),
                head_chunk, precision, attention_mask=mask.to(device), position_ids=torch.as_tensor(pos, device=device),
            )
            np.add.at(scores.reshape(-1), np.concatenate(owners), logp.double().cpu().numpy())
    return scores


def _standard_errors(correct: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """(lm-eval's standard error of a mean: sample sd / sqrt(n); the same clustered by document)."""
    n = len(correct)
    se = float(np.std(correct, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    residual = correct - correct.mean()
    _, group = np.unique(groups, return_inverse=True)
    per_group = np.bincount(group, residual)
    g = len(per_group)
    clustered = float(math.sqrt(g / (g - 1) * (per_group**2).sum()) / n) if g > 1 else float("nan")
    return se, clustered


# The correlation between two items of one document being answered right, assumed for the
# standard error an item set can promise before any model has answered (se_at_half): the largest of
# the eight values the default run's standard errors implied (0.015-0.071; README, "Stage 5").
WITHIN_DOCUMENT_CORRELATION = 0.07


def se_at_half(items_per_document, rho: float = WITHIN_DOCUMENT_CORRELATION) -> tuple[float, float]:
    """(lm-eval's standard error, the one clustered by document) that accuracy would have at 0.5,
    where p(1 - p) is largest, so at any accuracy: sqrt(0.25 / n) and sqrt(0.25 / n * deff * g / (g - 1)),
    the design effect of n items in g documents of m_d items each with a correlation rho between
    items of one document being deff = 1 + (sum of m_d^2 / n - 1) * rho (1 + (m - 1) * rho for m
    items in every document), g / (g - 1) the small-sample factor of the clustered estimator."""
    m = np.asarray([c for c in items_per_document if c > 0], np.float64)
    n, g = m.sum(), len(m)
    if n == 0:
        return float("nan"), float("nan")
    deff = 1 + ((m**2).sum() / n - 1) * rho
    return math.sqrt(0.25 / n), math.sqrt(0.25 / n * deff * g / (g - 1)) if g > 1 else float("nan")


def choice_report(scores: np.ndarray, items: list[dict], reference: np.ndarray | None = None) -> dict:
    """Accuracy (the highest log-likelihood is the true ending) and length-normalised accuracy
    (log-likelihood per character of the choice, lm-eval's acc_norm), each with lm-eval's standard
    error and one clustered by source document (items from one document are not independent)."""
    labels = np.array([it["label"] for it in items])
    groups = np.array([it["doc_id"] for it in items])
    chars = np.array([[len(c) for c in it["choices"]] for it in items], np.float64)
    report = {"items": len(items), "documents": len(set(groups.tolist()))}
    for name, values in (("acc", scores), ("acc_norm", scores / chars)):
        correct = (values.argmax(1) == labels).astype(np.float64)
        se, clustered = _standard_errors(correct, groups)
        report[name] = round(float(correct.mean()), 5)
        report[f"{name}_se"] = round(se, 5)
        report[f"{name}_se_by_document"] = round(clustered, 5)
        if reference is not None:
            ref_values = reference if name == "acc" else reference / chars
            diff = correct - (ref_values.argmax(1) == labels)
            report[f"{name}_minus_reference"] = round(float(diff.mean()), 5)
            report[f"{name}_minus_reference_se_by_document"] = round(_standard_errors(diff, groups)[1], 5)
    return report


def length_match(items: list[dict]) -> dict:
    """How close the distractors' lengths are to the true ending's, in characters."""
    gaps = [abs(len(c) - len(it["choices"][it["label"]])) for it in items for i, c in enumerate(it["choices"]) if i != it["label"]]
    true = [len(it["choices"][it["label"]]) for it in items]
    return {"mean_true_chars": round(float(np.mean(true)), 1), "mean_abs_gap_chars": round(float(np.mean(gaps)), 2),
            "max_abs_gap_chars": int(max(gaps))}


# ----------------------------------------------------------------------------------------------
# lm-evaluation-harness


_LOADER = '''"""The items of {name}, read from the JSON lines beside this file (lm-eval's custom_dataset)."""

from pathlib import Path


def load(**kwargs):
    import datasets

    return datasets.load_dataset("json", data_files={{"test": str(Path(__file__).with_name("{name}.jsonl"))}})
'''

_YAML = """# Written by model_evaluation.py: a HellaSwag-style task from this project's held-out documents.
#   lm_eval --model hf --model_args pretrained=MODEL_FOLDER,dtype=float32 --include_path THIS_FOLDER --tasks {name}
task: {name}
custom_dataset: !function {name}.load
output_type: multiple_choice
test_split: test
doc_to_text: context
doc_to_choice: choices
doc_to_target: label
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_lm_eval_task(folder: Path, items: list[dict], name: str = TASK_NAME) -> None:
    """The task as lm-eval reads it with --include_path folder: NAME.yaml, NAME.py (its loader) and
    NAME.jsonl (the items: context, choices, label, and where each came from)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(_YAML.format(name=name), encoding="utf-8")
    (folder / f"{name}.py").write_text(_LOADER.format(name=name), encoding="utf-8")
    with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------------------------
# Models to evaluate, and what the results look like


def resolve_model(spec: str) -> tuple[str, str, object]:
    """(what to load, a label, what identifies its weights) for a model folder, a run folder of
    stage 4 (its final checkpoint), a checkpoint folder, or a hub id (needs network)."""
    from minipretrain.loading import looks_like_hub_id
    from minipretrain.settings import UserError
    from minipretrain.stages import read_manifest
    from minipretrain.training import model_fingerprint

    path = Path(spec)
    if path.is_dir() and not (path / "config.json").is_file():
        manifest = read_manifest(path, "model_training", hint="finish model_training.py first, or name a model or checkpoint folder")
        checkpoint = path / manifest.get("final_checkpoint", "")
        if not (checkpoint / "config.json").is_file():
            raise UserError(f"{path}: its final checkpoint {checkpoint.name} has no config.json")
        return str(checkpoint), f"{path.name}/{checkpoint.name}", {"run": manifest["fingerprint"], "checkpoint": checkpoint.name}
    if path.is_dir():
        if (path.parent / "manifest.json").is_file() and path.name.startswith("checkpoint-"):  # a checkpoint of a finished run
            run = read_manifest(path.parent, "model_training", hint="finish the run, or name a model folder")
            return str(path), f"{path.parent.name}/{path.name}", {"run": run["fingerprint"], "checkpoint": path.name}
        return str(path), path.name, {"model": model_fingerprint(path)}
    if looks_like_hub_id(spec) and not spec.startswith(("work/", "./", "../")):
        return spec, spec, {"hub": spec}
    raise UserError(f"{spec}: no such model folder (run model_preparation.py and model_training.py first, or name a model folder or hub id)")


def load_model(spec: str):
    """(tokenizer, model in float32, eval mode) from a folder or hub id, never running its code."""
    from transformers import AutoModelForCausalLM

    from minipretrain.loading import from_pretrained
    from minipretrain.settings import UserError
    from minipretrain.tokenization import load_tokenizer

    tokenizer = load_tokenizer(spec)
    model = from_pretrained(AutoModelForCausalLM, spec, f"{spec}: cannot load a model from it", dtype=torch.float32)
    if len(tokenizer) > model.config.get_text_config().vocab_size:
        raise UserError(f"{spec}: its tokenizer has {len(tokenizer):,} tokens, more than the model's embeddings; they do not belong together")
    return tokenizer, model.eval()


def results_table(rows: list[dict]) -> str:
    """The printed (and Markdown) comparison table."""
    head = "| model | layers | parameters | perplexity [95% CI] | bits/byte [95% CI] | accuracy ± SE | acc_norm ± SE | seconds |"
    lines = [head, "| --- | ---: | ---: | --- | --- | --- | --- | ---: |"]
    for r in rows:
        p, c = r["perplexity"], r["multiple_choice"]
        lines.append(
            f"| {r['label']} | {r['layers']} | {r['parameters'] / 1e6:.1f}M | {p['perplexity']:,.1f} [{p['perplexity_ci95'][0]:,.1f}, "
            f"{p['perplexity_ci95'][1]:,.1f}] | {p['bits_per_byte']:.3f} [{p['bits_per_byte_ci95'][0]:.3f}, {p['bits_per_byte_ci95'][1]:.3f}] | "
            f"{c['acc']:.3f} ± {c['acc_se_by_document']:.3f} | {c['acc_norm']:.3f} ± {c['acc_norm_se_by_document']:.3f} | "
            f"{r['seconds']['total']:.0f} |"
        )
    return "\n".join(lines)


def plot_comparison(rows: list[dict], path: Path, title: str) -> None:
    """Bits per byte with its 95% interval, and multiple-choice accuracy ± 1.96 SE, one row per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["label"] for r in rows][::-1]
    y = np.arange(len(rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 1.2 + 0.55 * len(rows)), sharey=True)
    bpb = np.array([r["perplexity"]["bits_per_byte"] for r in rows][::-1])
    ci = np.array([r["perplexity"]["bits_per_byte_ci95"] for r in rows][::-1])
    left.errorbar(bpb, y, xerr=[bpb - ci[:, 0], ci[:, 1] - bpb], fmt="o", capsize=4)
    left.set_xlabel("bits per byte, 95% bootstrap CI (lower is better)")
    acc = np.array([r["multiple_choice"]["acc"] for r in rows][::-1])
    se = np.array([r["multiple_choice"]["acc_se_by_document"] for r in rows][::-1])
    right.errorbar(acc, y, xerr=1.96 * se, fmt="o", capsize=4, label="accuracy")
    norm = np.array([r["multiple_choice"]["acc_norm"] for r in rows][::-1])
    right.plot(norm, y + 0.15, "s", color="tab:orange", alpha=0.7, label="length-normalised")
    right.axvline(0.25, color="grey", ls="--", lw=1, label="chance (1 in 4)")
    right.set_xlabel("multiple-choice accuracy ± 1.96 SE (higher is better)")
    right.set_xlim(0, 1)
    right.legend(loc="lower right", fontsize=8)
    left.set_yticks(y, labels)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
