"""Generation speed of stage 5 (inference_demo.py): greedy new tokens/s with and without the KV cache.

    python benchmarks/bench_generation.py                          # stage 3's model, 32/128/256 new tokens, 2 rounds
    python benchmarks/bench_generation.py --new_tokens 32,128 --rounds 3
    python benchmarks/bench_generation.py --model work/runs/smollm2-dus   # a training run's latest checkpoint

The model and tokenizer are loaded with inference_demo.load_model and every generation goes through
inference_demo.generate (greedy: the demo's own prompt handling, boundary token, eos/pad ids and
torch.inference_mode), on the demo's first prompt. Only the cache differs: the model's
generation_config.use_cache is True or False, which model.generate takes as its default. fp32,
batch 1, `threads` torch threads, on the CPU.

So that every setting makes exactly the number of new tokens asked for, generation_config.
min_new_tokens is set to it (the document-closing token is not chosen before then; the same for
both cache settings). A streamer records when each new token arrives: the first one includes the
prompt's forward pass (prefill); without the cache every later one runs the whole sequence again,
so its cost grows with the length and the total grows quadratically.

Rounds are interleaved (every setting once per round; load from other work then hits them alike);
each setting's best round counts. Also checked: greedy output is token-identical with and without
the cache. Prints a table; the figures go into benchmarks/RESULTS.md by hand, with the machine
(lscpu) and its load (uptime).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from minipretrain.settings import DEFAULT_MODEL_DIR, UserError, parse_settings, run_main
from minipretrain.stages import library_versions  # noqa: E402


@dataclass
class BenchSettings:
    model: str = field(default=DEFAULT_MODEL_DIR, metadata={"help": "A model folder (stage 3's output), a training run folder or a hub id."})
    prompt: str = field(default="", metadata={"help": "Prompt ('' = inference_demo's first default prompt)."})
    new_tokens: str = field(default="32,128,256", metadata={"help": "Comma-separated numbers of new tokens."})
    rounds: int = field(default=2, metadata={"help": "Rounds over all settings, interleaved; each setting's best round counts."})
    threads: int = field(default=2, metadata={"help": "torch threads."})
    dtype: str = field(default="float32", metadata={"help": "float32 or bfloat16."})
    output: str = field(default="work/bench/generation/results.json", metadata={"help": "Where every round's figures go (JSON)."})


class TokenClock:
    """A streamer for model.generate: when each new token arrives, and its id. generate() calls
    put() once with the prompt, then once per new token, and end() at the end."""

    def __init__(self):
        self.start, self.times, self.ids = None, [], []

    def put(self, value):
        now = time.perf_counter()
        if self.start is None:  # the prompt
            self.start = now
            return
        self.times.append(now)
        self.ids.extend(value.reshape(-1).tolist())

    def end(self):
        pass


def one_generation(model, tokenizer, prompt: str, new_tokens: int, use_cache: bool) -> dict:
    import inference_demo as demo

    s = demo.Settings(max_new_tokens=new_tokens, stream=False)
    model.generation_config.use_cache = use_cache
    model.generation_config.min_new_tokens = new_tokens
    clock = TokenClock()
    r = demo.generate(model, tokenizer, prompt, s, sample=False, streamer=clock)
    steps = [b - a for a, b in zip([clock.start] + clock.times[:-1], clock.times)]
    later = steps[1:] or steps
    return {
        "new_tokens": r["tokens"], "seconds": r["seconds"], "tokens_s": r["tokens"] / r["seconds"],
        "ms_token": 1000 * r["seconds"] / r["tokens"], "first_ms": 1000 * steps[0],
        "later_mean_ms": 1000 * sum(later) / len(later), "last_ms": 1000 * steps[-1], "ids": clock.ids,
    }  # fmt: skip


def main(argv=None):
    b = parse_settings(BenchSettings, argv)
    import torch

    import inference_demo as demo

    counts = [int(n) for n in b.new_tokens.split(",") if n.strip()]
    if not counts or min(counts) < 1:
        raise UserError(f"setting new_tokens: positive numbers, comma-separated, got {b.new_tokens!r}")
    if not Path(b.model).exists() and b.model == DEFAULT_MODEL_DIR:
        raise UserError(f"{b.model}: no model; run `python model_preparation.py` first (stage 3)")
    torch.set_num_threads(b.threads)
    prompt = b.prompt or demo.Settings().prompts[0]
    spec = demo.resolve_checkpoint(b.model)
    t = time.perf_counter()
    tokenizer, model = demo.load_model(spec, b.dtype, "cpu")
    load_s = time.perf_counter() - t
    prompt_tokens = 1 + len(tokenizer(prompt, add_special_tokens=False)["input_ids"])  # + the opening boundary token
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    versions = library_versions()
    print(f"machine: {cpu}, {os.cpu_count()} cores; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"transformers {versions.get('transformers')}; load {os.getloadavg()[0]:.2f}")
    params = sum(p.numel() for p in model.parameters())
    print(f"model {spec}: {params / 1e6:.1f}M parameters, {model.config.num_hidden_layers} layers, {b.dtype}; loaded in {load_s:.1f} s")
    print(f"prompt {prompt!r}: {prompt_tokens} tokens with the opening boundary token; greedy, batch 1\n", flush=True)

    demo.generate(model, tokenizer, prompt, demo.Settings(max_new_tokens=4, stream=False), sample=False)  # warm-up
    settings = [(n, cache) for n in counts for cache in (True, False)]
    runs = {f"{n}/{cache}": [] for n, cache in settings}
    for i in range(b.rounds):
        for n, cache in settings:
            load = os.getloadavg()[0]
            r = one_generation(model, tokenizer, prompt, n, cache) | {"load": load, "round": i + 1}
            runs[f"{n}/{cache}"].append(r)
            print(f"round {i + 1}: {n:>4} new tokens, cache {'on ' if cache else 'off'}: {r['seconds']:6.2f} s, "
                  f"{r['tokens_s']:6.1f} tokens/s (load before {load:.2f})", flush=True)

    best = {key: min(rs, key=lambda r: r["seconds"]) for key, rs in runs.items()}
    print(f"\nbest of {b.rounds} round(s); ms/token = total / new tokens; first = prefill + first token; later = mean of the other steps")
    print(f"{'new':>5} {'cache':<6}{'s':>8}{'tokens/s':>10}{'ms/token':>10}{'first ms':>10}{'later ms':>10}{'last ms':>9}{'x off':>8}{'load':>6}")
    for n, cache in settings:
        r, off = best[f"{n}/{cache}"], best[f"{n}/False"]
        print(f"{n:>5} {'on' if cache else 'off':<6}{r['seconds']:8.2f}{r['tokens_s']:10.1f}{r['ms_token']:10.1f}{r['first_ms']:10.1f}"
              f"{r['later_mean_ms']:10.1f}{r['last_ms']:9.1f}{off['seconds'] / r['seconds']:7.2f}x{r['load']:6.2f}")

    print("\ngreedy output, cache on vs off:")
    identical = True
    for n in counts:
        for i in range(b.rounds):
            on, off = runs[f"{n}/True"][i]["ids"], runs[f"{n}/False"][i]["ids"]
            same = on == off
            identical &= same
            where = "" if same else f" (first difference at new token {next((k for k, (x, y) in enumerate(zip(on, off)) if x != y), min(len(on), len(off)))})"
            print(f"  {n} new tokens, round {i + 1}: {'token-identical' if same else 'DIFFERENT'}{where}")
    longest = runs[f"{max(counts)}/True"][0]["ids"]
    print(f"  all identical: {identical}; text of the longest: {tokenizer.decode(longest, skip_special_tokens=True)[:300]!r}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; load at the end {os.getloadavg()[0]:.2f}")

    out = PROJECT_DIR / b.output
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {"model": str(spec), "params": params, "prompt": prompt, "prompt_tokens": prompt_tokens, "threads": b.threads,
            "dtype": b.dtype, "cpu": cpu, "versions": versions, "identical": identical}
    out.write_text(json.dumps({"info": info, "runs": runs}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    run_main(main)
