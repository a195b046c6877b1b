"""Models: the base (bundled GGUF, hub id or folder, preset), layer plans and the surgery that applies
them, and the loss of a model over packed blocks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from minipretrain.loading import BUNDLED, bundled_file, from_pretrained
from minipretrain.modelfiles import DamagedFile
from minipretrain.settings import DEFAULT_BASE_MODEL, UserError
from minipretrain.tokenization import document_boundaries, load_tokenizer

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
    if spec in BUNDLED and BUNDLED[spec][1].endswith(".gguf"):
        path = bundled_file(spec)
        return path.parent, path.name
    if spec.endswith(".gguf"):
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"--base {spec}: no such .gguf file")
        return path.parent, path.name
    return None


def base_choices() -> str:
    return (f"'{DEFAULT_BASE_MODEL}', a preset ({', '.join(PRESETS)}), a Hugging Face id or model folder, "
            "or a .gguf file")


def load_base_config(spec: str):
    """The base's config, without loading weights (so a wrong base fails before the slow part)."""
    from transformers import AutoConfig, LlamaConfig

    if spec in PRESETS:
        return LlamaConfig(**PRESETS[spec][0])
    gguf = gguf_location(spec)
    try:
        if gguf:
            config = from_pretrained(AutoConfig, gguf[0], f"--base {spec!r}: cannot load its config", gguf_file=gguf[1])
        else:
            config = from_pretrained(AutoConfig, spec, f"--base {spec!r}: cannot load its config")
    except DamagedFile:
        raise  # the file named is the problem, not the choice of base
    except UserError as e:
        if not Path(spec).exists() and "/" not in spec:
            raise UserError(f"--base {spec!r}: unknown base; choose {base_choices()}") from None
        raise UserError(f"{e}; choose {base_choices()} (the offline default is {DEFAULT_BASE_MODEL!r})") from None
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
        model = from_pretrained(
            AutoModelForCausalLM, gguf[0], what, gguf_file=gguf[1], config=config, dtype=dtype, quantization_config=GgufConfig(dequantize=True)
        )
    else:
        model = from_pretrained(AutoModelForCausalLM, spec, what, config=config, dtype=dtype)
    return model.eval()


def random_model(config, dtype: torch.dtype, seed: int):
    """A model of `config` with fresh weights (the library's init), reproducible from `seed`."""
    from transformers import AutoModelForCausalLM

    config = clean_config(config, config.num_hidden_layers, dtype)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def load_base_tokenizer(spec: str, tokenizer_spec: str):
    if tokenizer_spec:
        return load_tokenizer(tokenizer_spec)
    if spec in PRESETS:
        return load_tokenizer(PRESETS[spec][1])
    return load_tokenizer(spec)


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
    bos_id, eos_id, note = document_boundaries(tokenizer)
    model.config.bos_token_id, model.config.eos_token_id = bos_id, eos_id
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = bos_id, eos_id, eos_id
    return {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": eos_id, "note": note}


def count_parameters(model) -> int:
    return model.num_parameters()  # shared (tied) tensors counted once



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



# ----------------------------------------------------------------------------------------------
# Evaluation


def evaluate_loss(model, dataset, batch_size: int, max_batches: int | None = None) -> dict:
    """Mean next-token loss of `model` over packed blocks: {"loss", "perplexity", "tokens"}.

    `dataset` holds equal-length blocks in an `input_ids` column (a `datasets.Dataset`, or anything
    whose slices give {"input_ids": rows}). Every position but a block's first is predicted, so each
    block of T tokens counts T - 1 predictions; the loss is the mean over all of them, whatever the
    batch size. `max_batches` caps the work (the first max_batches * batch_size blocks).
    """
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
