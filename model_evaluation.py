"""Evaluation: measure one or more models on stage 2's held-out data, with the uncertainty of each number.

    python model_evaluation.py                     # the prepared model and the default run's final checkpoint
    python model_evaluation.py --models work/models/smollm2-dus work/runs/smollm2-dus work/runs/other/checkpoint-60
    python model_evaluation.py --models HuggingFaceTB/SmolLM2-135M   # a hub id (needs network)

For each model (a stage 3 folder, a stage 4 run folder: its final checkpoint, a checkpoint
folder, or a hub id), on data no model was trained on:

1. Perplexity over the whole validation split (`perplexity_split`), as stage 2 packs it (blocks of
   its block_size; every position but a block's first predicted), with a 95% percentile-bootstrap
   interval that resamples DOCUMENTS (tokens of one document are not independent); and bits per
   byte, the same loss in bits divided by the UTF-8 bytes of the predicted tokens' text, which
   does not depend on the tokenizer. The validation documents are packed with each model's own
   tokenizer (stage 2's way), so models with different tokenizers are measured on the same text;
   with the packing tokenizer the blocks are checked to be stage 2's.
2. A HellaSwag-style multiple-choice task built from the held-out documents (validation and eval
   splits) only: a passage as the context, its true next passage and three passages from three
   other held-out documents, cut to the same length (within a word). Accuracy (the choice with the
   highest log-likelihood) and lm-eval's acc_norm (log-likelihood per character), with standard
   errors: lm-eval's (items independent) and one clustered by source document (the table's).
   The items depend only on the documents and `seed`.
3. Comparisons with the first model on the same documents and items (paired: tighter than two
   separate intervals): bits per byte difference with a 95% interval, accuracy difference ± SE.

Output (default work/evaluation/): results.json (every number, the items' summary, timings),
results.md (the table printed at the end), comparison.png, and lm_eval_tasks/: the task as an
lm-evaluation-harness task (YAML, loader, the items as JSON lines), so that

    lm_eval --model hf --model_args pretrained=work/models/smollm2-dus,dtype=float32 \\
        --include_path work/evaluation/lm_eval_tasks --tasks minipretrain_mc --device cpu --batch_size 16

gives the same accuracies (tests/test_model_evaluation.py checks it). Memory: one model at a time;
logits are made for at most `head_chunk` positions at once (x 49,152 floats for SmolLM2).
Speed: batches of blocks or items, the positions that predict nothing left out; the work is the
model's matmuls, in float32 (`--precision bf16` on a CPU with bf16 arithmetic: faster, numbers
slightly off; see the README, "Stage 5").
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minipretrain.evaluation import (
    PRECISIONS,
    TASK_NAME,
    WITHIN_DOCUMENT_CORRELATION,
    bootstrap_weights,
    build_items,
    choice_report,
    document_sums,
    encode_items,
    length_match,
    load_model,
    pack_documents,
    paired_difference,
    perplexity_report,
    plot_comparison,
    resolve_model,
    results_table,
    score_items,
    se_at_half,
    token_byte_lengths,
    token_losses,
    use_precision,
    write_lm_eval_task,
)
from minipretrain.packing import packed_dataset
from minipretrain.settings import DEFAULT_MODEL_DIR, DEFAULT_RUN_DIR, PACKED_DIR, WORK_DIR, UserError, parse_settings, run_main
from minipretrain.stages import read_manifest, stage_output
from minipretrain.tokenization import document_boundaries, tokenizer_fingerprint

STAGE = "model_evaluation"
EVALUATION_DIR = f"{WORK_DIR}/evaluation"
HELD_OUT = ("validation", "eval")  # stage 2's splits that no model trains on


@dataclass
class Settings:
    models: list[str] = field(
        default_factory=lambda: [DEFAULT_MODEL_DIR, DEFAULT_RUN_DIR],
        metadata={"help": "Models to evaluate, the first being the reference of the comparisons: model folders, run folders "
                  "(their final checkpoint), checkpoint folders, or hub ids (need network)."},
    )
    labels: list[str] = field(default_factory=list, metadata={"help": "A name per model for the table (default: the folder names)."})
    packed_dir: str = field(default=PACKED_DIR, metadata={"help": "Stage 2's output: its held-out splits and documents."})
    output_dir: str = field(default=EVALUATION_DIR, metadata={"help": "Where results.json, results.md, comparison.png and lm_eval_tasks/ go."})
    overwrite: bool = field(default=False, metadata={"help": "Redo the output even when it is up to date."})
    perplexity_split: str = field(default="validation", metadata={"help": "The held-out split whose every block is scored: validation or eval."})
    items: int = field(
        default=450,
        metadata={"help": "Multiple-choice items (450 over the default 60 held-out documents: a standard error clustered by "
                  "document of at most 0.029 at any accuracy, lm-eval's at most 0.024; see the README)."},
    )
    context_chars: int = field(default=120, metadata={"help": "An item's context: the whole sentences of at most this many characters."})
    ending_chars: int = field(default=36, metadata={"help": "An item's choices: about this many characters, cut at a word end."})
    seed: int = field(default=0, metadata={"help": "Seed of the items (order, distractors, answer position) and of the bootstrap."})
    resamples: int = field(default=2000, metadata={"help": "Bootstrap resamples of the documents."})
    batch_size: int = field(default=16, metadata={"help": "Blocks (or items) per forward pass."})
    precision: str = field(
        default="fp32",
        metadata={"help": "fp32: what lm_eval --model_args dtype=float32 gives, to 1e-4 nats. bf16 (only on hardware with bf16 "
                  "arithmetic: a CPU with AVX512-BF16 or AMX): the decoder's matmuls and attention in bfloat16, the rest in "
                  "float32; faster, but its weights rounded to bfloat16 lose part of a short training run's small updates "
                  "(the default run's trained model: perplexity +1%; see the README)."},
    )
    head_chunk: int = field(default=1024, metadata={"help": "Positions whose logits are in memory at once (x vocabulary x 4 bytes)."})


def check(s: Settings) -> None:
    if not s.models:
        raise UserError("setting models: name at least one model")
    if s.labels and len(s.labels) != len(s.models):
        raise UserError(f"setting labels: {len(s.labels)} labels for {len(s.models)} models")
    if s.precision not in PRECISIONS:
        raise UserError(f"setting precision must be one of {', '.join(PRECISIONS)}, got {s.precision!r}")
    if s.perplexity_split not in HELD_OUT:
        raise UserError(f"setting perplexity_split must be one of {', '.join(HELD_OUT)}, got {s.perplexity_split!r}")
    for name in ("items", "context_chars", "ending_chars", "resamples", "batch_size", "head_chunk"):
        if getattr(s, name) < 1:
            raise UserError(f"setting {name} must be at least 1, got {getattr(s, name)}")
    if not 0 <= s.seed < 2**32:
        raise UserError(f"setting seed must be between 0 and {2**32 - 1}, got {s.seed}")


def held_out_documents(packed_dir: str, manifest: dict) -> dict[str, list[tuple[str, str]]]:
    """{split: [(doc_id, text), ...]} of stage 2's documents/ files, in packing order."""
    import pyarrow.parquet as pq

    found = {}
    for split in HELD_OUT:
        path = Path(packed_dir) / "documents" / f"{split}.parquet"
        if split not in manifest.get("counts", {}):
            continue
        if not path.is_file():
            raise UserError(f"{path}: missing; packed by an older data_packaging.py: run it again (python3 run.py --from data_packaging)")
        try:
            table = pq.read_table(path, columns=["doc_id", "text"])
        except Exception as e:  # pyarrow's ArrowInvalid, OSError, KeyError for a missing column
            raise UserError(f"{path}: not a readable documents file ({type(e).__name__}: {e}); run data_packaging.py again") from None
        found[split] = list(zip(table.column("doc_id").to_pylist(), table.column("text").to_pylist()))
    return found


def measure_perplexity(model, tokenizer, texts, packed_dir, split, manifest, s, weights) -> tuple[dict, dict]:
    """(report, per-document sums) over every block of the split, packed with this model's tokenizer."""
    bos_id, eos_id, _ = document_boundaries(tokenizer)
    blocks, owners = pack_documents(tokenizer, texts, manifest["block_size"], bos_id, eos_id)
    if tokenizer_fingerprint(tokenizer) == manifest["tokenizer"]["fingerprint"]:
        packed = np.asarray(packed_dataset(packed_dir, split)["input_ids"], dtype=np.int32)
        if not np.array_equal(blocks, packed):
            raise UserError(f"{Path(packed_dir) / split}: its blocks are not its documents/ packed again; run data_packaging.py again")
    losses = token_losses(model, blocks, s.batch_size, s.head_chunk, s.precision)
    sums = document_sums(losses, blocks, owners, token_byte_lengths(tokenizer), len(texts))
    return perplexity_report(sums, weights), sums


def evaluate_model(spec: str, label: str, identity, held_out, items, packed_dir, manifest, s, weights) -> tuple[dict, dict, np.ndarray]:
    """(table row, per-document sums, item scores) of one model."""
    started = time.perf_counter()
    tokenizer, model = load_model(spec)
    use_precision(model, s.precision)
    loaded = time.perf_counter()
    texts = [text for _, text in held_out[s.perplexity_split]]
    perplexity, sums = measure_perplexity(model, tokenizer, texts, packed_dir, s.perplexity_split, manifest, s, weights)
    measured = time.perf_counter()
    scores = score_items(model, encode_items(tokenizer, items), s.batch_size, s.head_chunk, s.precision)
    done = time.perf_counter()
    row = {
        "label": label, "model": spec, "identity": identity, "layers": model.config.num_hidden_layers, "parameters": model.num_parameters(),
        "perplexity": perplexity, "multiple_choice": choice_report(scores, items),
        "seconds": {"load": round(loaded - started, 2), "perplexity": round(measured - loaded, 2), "multiple_choice": round(done - measured, 2),
                    "total": round(done - started, 2)},
    }
    print(f"{label}: perplexity {perplexity['perplexity']:.1f}, {perplexity['bits_per_byte']:.3f} bits/byte, "
          f"accuracy {row['multiple_choice']['acc']:.3f} ({row['seconds']['total']:.0f} s)", flush=True)
    del model
    gc.collect()
    return row, sums, scores


def main(argv=None):
    s = parse_settings(Settings, argv)
    check(s)
    if s.precision == "bf16":
        from minipretrain.training import bf16_supported

        if not bf16_supported(cpu=True):
            raise UserError("setting precision bf16: this CPU has no bf16 arithmetic (AVX512-BF16 or AMX), where bf16 "
                            "matmuls are emulated and ~100x slower than fp32; use --precision fp32")
    manifest = read_manifest(s.packed_dir, "data_packaging", hint="run data_packaging.py first")
    held_out = held_out_documents(s.packed_dir, manifest)
    models = [resolve_model(spec) for spec in s.models]
    labels = s.labels or [label for _, label, _ in models]
    documents = [d for split in HELD_OUT for d in held_out.get(split, [])]
    try:
        items = build_items(documents, s.items, s.context_chars, s.ending_chars, s.seed)
    except ValueError as e:
        raise UserError(f"{s.packed_dir}: {e}") from None
    if len(items) < s.items:
        print(f"note: the held-out documents give {len(items)} items, fewer than items={s.items} "
              f"(more: data_packaging.py --eval_documents)")
    per_document = np.unique([it["doc_id"] for it in items], return_counts=True)[1]
    plain_se, clustered_se = se_at_half(per_document)
    if not clustered_se <= 0.03:
        print(f"note: at an accuracy of 0.5 the standard error of {len(items)} items from {len(per_document)} documents would be "
              f"~{clustered_se:.3f} clustered by document ({plain_se:.3f} lm-eval's), over 0.03 (more items: --items, more "
              f"documents: data_packaging.py --eval_documents)")

    inputs = {"packed": manifest["fingerprint"], "models": [identity for _, _, identity in models]}
    with stage_output(s.output_dir, STAGE, s, inputs, s.overwrite) as out:
        if out is None:
            print((Path(s.output_dir) / "results.md").read_text(encoding="utf-8"))
            return
        write_lm_eval_task(out.path / "lm_eval_tasks", items)
        weights = bootstrap_weights(len(held_out[s.perplexity_split]), s.resamples, s.seed)
        rows, sums, scores = [], [], []
        for (spec, _, identity), label in zip(models, labels):
            row, doc_sums, item_scores = evaluate_model(spec, label, identity, held_out, items, s.packed_dir, manifest, s, weights)
            rows.append(row), sums.append(doc_sums), scores.append(item_scores)
        for row, doc_sums, item_scores in zip(rows[1:], sums[1:], scores[1:]):
            row["versus_first"] = {"bits_per_byte": paired_difference(doc_sums, sums[0], weights),
                                   "multiple_choice": choice_report(item_scores, items, scores[0])}

        split_counts = manifest["counts"]
        results = {
            "models": rows,
            "precision": s.precision,
            "perplexity": {
                "split": s.perplexity_split, "documents": split_counts[s.perplexity_split]["documents"], "block_size": manifest["block_size"],
                "interval": f"95% percentile bootstrap over the split's documents ({s.resamples} resamples, seed {s.seed})",
                "bits_per_byte": "loss in bits / UTF-8 bytes of the predicted tokens (token bytes: byte-level alphabet or "
                                 "SentencePiece pieces; special tokens 0)",
            },
            "multiple_choice": {
                "task": TASK_NAME, "items": len(items), "documents": len({it["doc_id"] for it in items}),
                "from_splits": {split: len(docs) for split, docs in held_out.items()}, "choices": 4,
                "length_match": length_match(items), "context_chars": s.context_chars, "ending_chars": s.ending_chars,
                "standard_error": "table: clustered by source document; *_se: lm-eval's (sample sd / sqrt(n))",
                "standard_error_at_accuracy_0.5": {"lm_eval": round(plain_se, 5), "by_document": round(clustered_se, 5),
                                                   "assumed_within_document_correlation": WITHIN_DOCUMENT_CORRELATION},
            },
            "lm_eval": {
                "task_folder": "lm_eval_tasks",
                "command": f"lm_eval --model hf --model_args pretrained=MODEL,dtype=float32 --include_path "
                           f"{Path(s.output_dir) / 'lm_eval_tasks'} --tasks {TASK_NAME} --device cpu --batch_size 16",
                "standard_tasks_not_run_here": "lm_eval --model hf --model_args pretrained=MODEL,dtype=float32 "
                                               "--tasks hellaswag,arc_easy,lambada_openai --device cpu --batch_size 16 (needs network)",
            },
        }
        table = results_table(rows)
        (out.path / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        (out.path / "results.md").write_text(table + "\n", encoding="utf-8")
        plot_comparison(rows, out.path / "comparison.png", f"held-out data of {s.packed_dir}")
        out.manifest["counts"] = {"models": len(rows), "items": len(items), "perplexity_tokens": rows[0]["perplexity"]["tokens"]}

    print(f"\nperplexity and bits/byte: {s.perplexity_split} split, {split_counts[s.perplexity_split]['documents']} documents, "
          f"95% bootstrap intervals over documents; multiple choice: {len(items)} items from "
          f"{results['multiple_choice']['documents']} held-out documents, SE clustered by document\n")
    print(table)
    for row in rows[1:]:
        v = row["versus_first"]
        print(f"{row['label']} - {rows[0]['label']}: bits/byte {v['bits_per_byte']['bits_per_byte']:+.4f} "
              f"[{v['bits_per_byte']['ci95'][0]:+.4f}, {v['bits_per_byte']['ci95'][1]:+.4f}], accuracy "
              f"{v['multiple_choice']['acc_minus_reference']:+.3f} ± {v['multiple_choice']['acc_minus_reference_se_by_document']:.3f}")
    print(f"\nwrote {s.output_dir} (results.json, results.md, comparison.png, lm_eval_tasks/)")


if __name__ == "__main__":
    run_main(main)
