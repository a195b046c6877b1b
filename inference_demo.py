"""Stage 5: read what the model now writes. Greedy and sampled generations from the trained checkpoint.

    python inference_demo.py                                   # the default run's final checkpoint
    python inference_demo.py --prompts "The harbour" "def add(a, b):" --max_new_tokens 60
    python inference_demo.py --checkpoint work/runs/mine/checkpoint-30 --compare_with ""

Tokens stream to the terminal as they are generated. With `compare_with` set (default: the prepared,
untrained model of stage 3), the same prompts also go through that model, so you can see what the
training changed. Everything lands in samples.md (default: in the run folder).

A prompt starts with the document-opening token the data was packed with (for SmolLM2:
<|endoftext|>), as every training block's documents did, and generation stops at the
document-closing token or after max_new_tokens.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from minipretrain.loading import from_pretrained, looks_like_hub_id
from minipretrain.settings import (
    DEFAULT_MODEL_DIR,
    DEFAULT_RUN_DIR,
    SEED,
    Range,
    UserError,
    at_least,
    greater_than,
    one_of,
    parse_settings,
    run_main,
    settings_dict,
)
from minipretrain.stages import read_manifest
from minipretrain.tokenization import document_boundaries


@dataclass
class Settings:
    checkpoint: str = field(
        default=DEFAULT_RUN_DIR,
        metadata={"help": "A training run folder (its latest checkpoint-N is used), a model folder, or a hub id."},
    )
    compare_with: str = field(
        default=DEFAULT_MODEL_DIR,
        metadata={"help": "A second model run on the same prompts (default: stage 3's prepared model); '' for none."},
    )
    prompts: list[str] = field(
        default_factory=lambda: [
            "The farmers' market in our town",
            "How to repot a houseplant:",
            "The history of the printing press",
            "def fibonacci(n):",
        ],
        metadata={"help": "Prompts to continue."},
    )
    max_new_tokens: int = field(default=40, metadata={"help": "Tokens generated per prompt and mode."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature."})
    top_k: int = field(default=50, metadata={"help": "Sample from the k most likely tokens (0: no limit)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling: smallest set with this much probability."})
    seed: int = field(default=0, metadata={"help": "Seed for sampling (the same seed gives the same samples)."})
    dtype: str = field(default="float32", metadata={"help": "float32 or bfloat16."})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu or cuda."})
    output_file: str = field(default="", metadata={"help": "Where samples.md goes ('' = samples.md in the run folder)."})
    stream: bool = field(default=True, metadata={"help": "Print tokens as they are generated."})
    overwrite: bool = field(default=False, metadata={"help": "Generate again even when samples.md is up to date with these settings and models."})


# The allowed values of every numeric setting and of the word settings, checked for flags and
# settings files alike (parse_settings).
CHECKS = {
    "max_new_tokens": at_least(1),
    "temperature": greater_than(0),
    "top_k": at_least(0),
    "top_p": Range(0, 1, low_open=True),
    "seed": SEED,
    "dtype": one_of("float32", "bfloat16"),
    "device": one_of("auto", "cpu", "cuda"),
}


def resolve_checkpoint(spec: str, missing: str = "run model_training.py first, or name a model folder") -> Path | str:
    """A run folder -> its latest checkpoint; a model folder as is; anything else is a hub id.
    `missing`: what to do when the folder does not exist."""
    path = Path(spec)
    if (path / "config.json").is_file():
        return path
    if path.is_dir():
        read_manifest(path, "model_training", hint="finish model_training.py first, or name a checkpoint folder")
        checkpoints = sorted(path.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
        if not checkpoints:
            raise UserError(f"{path}: a training run without a checkpoint-N folder")
        return checkpoints[-1]
    if looks_like_hub_id(spec):
        return spec
    raise UserError(f"{spec}: no such folder ({missing})")


def model_identity(spec) -> str | None:
    """What identifies a model's weights for the up-to-date check: the fingerprint of the stage
    output it is (stage 3's folder) or belongs to (a checkpoint of stage 4's run), with its name;
    None for a hub id or a folder without a manifest (always generated again)."""
    path = Path(spec)
    for folder in (path, path.parent):
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if manifest.get("stage") in ("model_preparation", "model_training") and manifest.get("fingerprint"):
            return f"{manifest['fingerprint']}:{path.name}"
    return None


def samples_key(s: Settings, models: list, device: str) -> str | None:
    """samples.md's first line: the settings and models that made it (an HTML comment, invisible
    when rendered), or None when a model has no identity."""
    identities = [model_identity(m) for m in models]
    if None in identities:
        return None
    values = {k: v for k, v in settings_dict(s).items() if k not in ("output_file", "stream")} | {"device": device}
    return f"<!-- inference_demo {json.dumps({'settings': values, 'models': identities}, sort_keys=True)} -->"


def load_model(spec, dtype: str, device: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in ("float32", "bfloat16"):
        raise UserError(f"setting dtype must be float32 or bfloat16, got {dtype!r}")
    # a folder without weights, a truncated file, a config that is not JSON, an unreachable hub id: one line
    hint = "" if Path(spec).is_dir() else f"; the offline default is the default run's folder {DEFAULT_RUN_DIR} (python model_training.py makes it)"
    try:
        tokenizer = from_pretrained(AutoTokenizer, spec, f"{spec}: cannot load a model and tokenizer from it")
        model = from_pretrained(AutoModelForCausalLM, spec, f"{spec}: cannot load a model and tokenizer from it", dtype=getattr(torch, dtype))
    except UserError as e:
        raise UserError(f"{e}{hint}") from None
    vocab_size = model.config.get_text_config().vocab_size
    if len(tokenizer) > vocab_size:  # its ids past the embedding would crash generation
        raise UserError(f"{spec}: its tokenizer has {len(tokenizer):,} tokens, more than the model's {vocab_size:,} embeddings; "
                        "the tokenizer files do not belong to this model")
    return tokenizer, model.to(device).eval()


def generate(model, tokenizer, prompt: str, s: Settings, sample: bool, streamer=None) -> dict:
    """One continuation of `prompt`: {"text", "tokens", "seconds"}."""
    import torch
    from transformers import set_seed

    bos_id, eos_id, _ = document_boundaries(tokenizer)
    ids = [bos_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    input_ids = torch.tensor([ids], device=model.device)
    options = dict(do_sample=sample, max_new_tokens=s.max_new_tokens, eos_token_id=eos_id, pad_token_id=eos_id)
    if sample:
        set_seed(s.seed)
        options.update(temperature=s.temperature, top_k=s.top_k or None, top_p=s.top_p)
    else:
        options.update(temperature=None, top_k=None, top_p=None)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer, **options)
    seconds = time.perf_counter() - start
    new = out[0, input_ids.shape[1]:].tolist()
    return {"text": tokenizer.decode(new, skip_special_tokens=True), "tokens": len(new), "seconds": seconds}


def run_model(label: str, spec, s: Settings, device: str) -> list[dict]:
    from transformers import TextStreamer

    print(f"\n##### {label}: {spec}", flush=True)
    tokenizer, model = load_model(spec, s.dtype, device)
    results = []
    for prompt in s.prompts:
        row = {"prompt": prompt}
        for mode, sample in (("greedy", False), ("sampled", True)):
            print(f"\n[{mode}] {prompt}", end="", flush=True)
            streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if s.stream else None
            row[mode] = generate(model, tokenizer, prompt, s, sample, streamer)
            if not s.stream:
                print(row[mode]["text"], end="")
            print(f"\n    ({row[mode]['tokens']} tokens, {row[mode]['tokens'] / row[mode]['seconds']:.1f} tokens/s)", flush=True)
        results.append(row)
    return results


def samples_markdown(s: Settings, runs: list[tuple[str, str, list[dict]]]) -> str:
    lines = ["# Samples", "", f"Greedy decoding, and sampling with temperature {s.temperature}, top-k {s.top_k}, "
             f"top-p {s.top_p}, seed {s.seed}; at most {s.max_new_tokens} new tokens; {s.dtype}.", ""]
    for label, spec, _ in runs:
        lines.append(f"- **{label}**: `{spec}`")
    for i, prompt in enumerate(s.prompts):
        lines += ["", f"## {prompt!r}", ""]
        for label, _, results in runs:
            for mode in ("greedy", "sampled"):
                r = results[i][mode]
                text = (prompt + r["text"]).replace("\n", "\n> ")
                lines += [f"**{label}, {mode}** ({r['tokens']} tokens, {r['tokens'] / r['seconds']:.1f} tokens/s):", "", f"> {text}", ""]
    return "\n".join(lines) + "\n"


def main(argv=None):
    import torch

    s = parse_settings(Settings, argv, CHECKS)
    if not s.prompts or not all(p.strip() for p in s.prompts):
        raise UserError("setting prompts: give at least one non-empty prompt")
    if s.device == "cuda" and not torch.cuda.is_available():
        raise UserError("setting device cuda: no CUDA device is available")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if s.device == "auto" else s.device

    trained = resolve_checkpoint(s.checkpoint)
    before = resolve_checkpoint(s.compare_with, "run model_preparation.py first, or pass --compare_with ''") if s.compare_with else None
    if s.output_file:
        out = Path(s.output_file)
    else:
        out = (Path(s.checkpoint) if Path(s.checkpoint).is_dir() else Path(".")) / "samples.md"
    key = samples_key(s, [trained] + ([before] if before is not None else []), device)
    if key and not s.overwrite and out.is_file() and out.read_text(encoding="utf-8").partition("\n")[0] == key:
        print(f"{out} is up to date with these settings and models: skipping the generations (--overwrite redoes them); they were:\n")
        print(out.read_text(encoding="utf-8").partition("\n")[2])
        return
    runs = [("trained", str(trained), run_model("trained", trained, s, device))]
    if before is not None:
        runs.append(("before training", str(before), run_model("before training", before, s, device)))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text((f"{key}\n" if key else "") + samples_markdown(s, runs), encoding="utf-8")
    tmp.replace(out)  # atomic: a reader never sees half a file
    print(f"\nwrote {out}")


if __name__ == "__main__":
    run_main(main)
