"""Training speed on this machine: the seed's (course's) Trainer settings against model_training.py's
defaults, side by side in one run, at the seed's configuration (2 blocks x 32 tokens a step).

    python benchmarks/bench_training.py                          # TinySolar-308M shape, 2 + 5 steps each
    python benchmarks/bench_training.py --shape smollm2-180m     # the default run's model (40 layers)
    python benchmarks/bench_training.py --variants course,ours   # just the two ends
    python benchmarks/bench_training.py --variants ours,ours+compile   # torch.compile too
    python benchmarks/bench_training.py --batch_size 8 --block_size 256 --variants course,ours --steps 2 --warmup 1 --breakdown false
                                                                 # a larger step (issue 7 item 3)

Random weights (the speed does not depend on them), random token ids, no checkpoint saving, no
validation: only optimizer steps are timed (forward + backward + optimizer, measured by a Trainer
callback from on_step_begin to on_step_end), after `warmup` untimed steps. Each variant runs in a
fresh process and changes one thing more than the one before it:

    course            fp32, gradient checkpointing, adamw_torch, 2 data loader workers (the seed's)
    no-checkpointing  ... without gradient checkpointing
    fused-adamw       ... and the fused AdamW kernel
    keep-memory       ... and malloc keeping freed memory (model_training.keep_freed_memory)
    ours              model_training.py's defaults: the above, no loader workers, and bf16 autocast
                      where the hardware has bf16 arithmetic
    ours+compile      ours with --torch_compile

Then a breakdown of one of our steps (forward, backward, optimizer; the LM head's share) and the
measured matmul peaks that MFU is computed against. Prints a table; the figures go into
benchmarks/RESULTS.md by hand, with the machine (lscpu) and its load (uptime).
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback

import model_training as mt
from minipretrain import training
from minipretrain.settings import UserError, parse_settings, run_main

SHAPES = {
    # the seed's 12-layer TinySolar-248m depth up-scaled to 16 layers (bottom 8 + top 8)
    "tinysolar-308m": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=16, num_attention_heads=32,
                           num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False),
    # SmolLM2-135M up-scaled 30 -> 40 layers: the default run's model
    "smollm2-180m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=40, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    # a smoke test of this script
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False),
}  # fmt: skip

# Each variant changes one thing more than the one before it, "course" -> "ours".
COURSE = dict(bf16=False, activation_checkpointing=True, optim="adamw_torch", dataloader_num_workers=2, keep_freed_memory=False)
VARIANTS = {
    "course": COURSE,
    "no-checkpointing": COURSE | dict(activation_checkpointing=False),
    "fused-adamw": COURSE | dict(activation_checkpointing=False, optim="adamw_torch_fused"),
    "keep-memory": COURSE | dict(activation_checkpointing=False, optim="adamw_torch_fused", keep_freed_memory=True),
    "ours": dict(),  # the above, no loader workers, and bf16 autocast where the hardware has bf16
    "ours+compile": dict(torch_compile=True),
}


@dataclass
class BenchSettings:
    shape: str = field(default="tinysolar-308m", metadata={"help": f"Model shape: {', '.join(SHAPES)}."})
    variants: str = field(default="course,no-checkpointing,fused-adamw,keep-memory,ours", metadata={"help": f"Comma-separated, from: {', '.join(VARIANTS)}."})
    steps: int = field(default=5, metadata={"help": "Timed steps per variant."})
    warmup: int = field(default=2, metadata={"help": "Untimed steps first (allocation of the optimizer state, caches)."})
    rounds: int = field(default=1, metadata={"help": "Run the variants this many times, interleaved; each one's best round counts (load from other work then hits every variant alike)."})
    batch_size: int = field(default=2, metadata={"help": "Blocks per step (the seed's: 2)."})
    block_size: int = field(default=32, metadata={"help": "Tokens per block (the seed's: 32)."})
    breakdown: bool = field(default=True, metadata={"help": "Also time forward, backward and optimizer of one of our steps."})
    one: str = field(default="", metadata={"help": "(internal) run this one variant ('breakdown' for the breakdown) and print its result as JSON."})


class StepTimer(TrainerCallback):
    """Wall time, kernel (system) time and page faults of each optimizer step."""

    def __init__(self):
        self.times, self.sys, self.faults = [], [], []

    def on_step_begin(self, args, state, control, **kwargs):
        self._t, self._r = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)

    def on_step_end(self, args, state, control, **kwargs):
        r = resource.getrusage(resource.RUSAGE_SELF)
        self.times.append(time.perf_counter() - self._t)
        self.sys.append(r.ru_stime - self._r.ru_stime)
        self.faults.append(r.ru_minflt - self._r.ru_minflt)


def random_blocks(n: int, block_size: int, vocab: int):
    import datasets

    ids = np.random.default_rng(0).integers(0, vocab, (n, block_size), dtype=np.int32)
    return datasets.Dataset.from_dict({"input_ids": ids}).with_format("torch")


def make_model(shape: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=2048)
    config.use_cache = False
    return LlamaForCausalLM(config)


def run_variant(name: str, b: BenchSettings, blocks) -> dict:
    args = mt.Settings(
        output_dir="/tmp/bench_training_run", max_steps=b.warmup + b.steps, per_device_train_batch_size=b.batch_size,
        eval_strategy="no", eval_on_start=False, save_strategy="no", disable_tqdm=True, logging_steps=1000,
        **VARIANTS[name],
    )  # fmt: skip
    if args.keep_freed_memory:
        mt.keep_freed_memory()
    model = make_model(b.shape)
    timer = StepTimer()
    trainer = Trainer(model=model, args=args, data_collator=mt.collate_blocks, train_dataset=blocks, callbacks=[timer])
    trainer.train()
    timed = timer.times[b.warmup :]
    s_step = sum(timed) / len(timed)
    n = len(timed)
    precision = "bf16" if args.bf16 else "fp32"
    fpt = training.flops_per_token(model, b.block_size)
    tokens_s = b.batch_size * b.block_size / s_step
    result = {
        "variant": name, "precision": precision, "checkpointing": bool(args.activation_checkpointing),
        "optim": args.optim.value, "workers": args.dataloader_num_workers,
        "s_step": s_step, "min_s_step": min(timed), "tokens_s": tokens_s, "achieved_gflops": fpt * tokens_s / 1e9,
        "sys_s_step": sum(timer.sys[b.warmup :]) / n, "faults_step": sum(timer.faults[b.warmup :]) / n,
        "first_steps": [round(t, 2) for t in timer.times[: b.warmup]],
    }  # fmt: skip
    del trainer, model
    gc.collect()
    return result


def breakdown(b: BenchSettings, blocks) -> dict:
    """Forward, backward and optimizer of our default step, timed apart in a hand loop."""
    args = mt.Settings(output_dir="/tmp/bench_training_run")
    mt.keep_freed_memory()
    model = make_model(b.shape).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
    batch = mt.collate_blocks([blocks[i] for i in range(b.batch_size)])
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(args.bf16))
    parts = {"forward": [], "backward": [], "optimizer": []}
    for i in range(b.warmup + b.steps):
        t0 = time.perf_counter()
        with autocast:
            loss = model(**batch).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        if i >= b.warmup:
            for k, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
                parts[k].append(dt)
    out = {k: sum(v) / len(v) for k, v in parts.items()}
    # the LM head alone: its forward + backward matmuls
    head = model.lm_head
    h = torch.randn(b.batch_size * b.block_size, head.in_features, requires_grad=True)
    t0 = time.perf_counter()
    for _ in range(3):
        head(h).sum().backward()
    out["lm_head_fwd_bwd"] = (time.perf_counter() - t0) / 3
    params = sum(p.numel() for p in model.parameters())
    out["params_M"] = params / 1e6
    out["adamw_bytes_GB"] = params * 4 * 7 / 1e9  # read param, grad, m, v; write param, m, v (fp32)
    del model, opt
    gc.collect()
    return out


def in_subprocess(name: str, argv) -> dict:
    """One variant in a fresh process: no memory layout, allocator setting or thread pool carried over."""
    args = list(sys.argv[1:] if argv is None else argv) + [f"--one={name}"]
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise UserError(f"variant {name} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv=None):
    b = parse_settings(BenchSettings, argv)
    if b.one:
        blocks = random_blocks(64, b.block_size, SHAPES[b.shape]["vocab_size"])
        result = breakdown(b, blocks) if b.one == "breakdown" else run_variant(b.one, b, blocks)
        print("RESULT " + json.dumps(result))
        return
    names = [v.strip() for v in b.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or b.shape not in SHAPES:
        raise UserError(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}" if unknown else f"--shape: one of {list(SHAPES)}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cpu = open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(" :\t") if Path("/proc/cpuinfo").exists() else "?"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, load {load:.2f}")
    peaks = {d: training.matmul_peak_gflops(d) for d in ("fp32", "bf16")}
    print(f"matmul peak: fp32 {peaks['fp32']} GFLOP/s, bf16 {peaks['bf16']} GFLOP/s; bf16 hardware: {mt.bf16_supported(cpu=True)}")
    print(f"shape {b.shape}, {b.batch_size} x {b.block_size} tokens a step, {b.warmup} warm-up + {b.steps} timed steps per variant\n")

    rounds: dict[str, list] = {name: [] for name in names}
    for i in range(b.rounds):
        for name in names:
            load = os.getloadavg()[0]
            r = in_subprocess(name, argv) | {"load": load}
            rounds[name].append(r)
            print(f"round {i + 1}, {name}: {r['s_step']:.3f} s/step (load before {load:.2f})", flush=True)
    results = [min(rounds[name], key=lambda r: r["s_step"]) for name in names]
    base = next((r for r in results if r["variant"] == "course"), results[0])
    for r in results:  # against this process's measurement, the same for every variant
        r["mfu"] = r["achieved_gflops"] / peaks[r["precision"]]
    print(f"\nbest of {b.rounds} round(s) each; s/step is the mean of its {b.steps} timed steps, min the fastest step")
    print(f"{'variant':<17}{'precision':<10}{'ckpt':<6}{'optimizer':<19}{'workers':<8}{'s/step':>8}{'min':>7}{'sys s':>7}{'faults':>8}{'tokens/s':>9}{'MFU':>7}{'x course':>9}{'load':>6}")
    for r in results:
        print(
            f"{r['variant']:<17}{r['precision']:<10}{str(r['checkpointing']):<6}{r['optim']:<19}{r['workers']:<8}"
            f"{r['s_step']:>8.3f}{r['min_s_step']:>7.3f}{r['sys_s_step']:>7.2f}{r['faults_step']:>8.0f}{r['tokens_s']:>9.1f}"
            f"{r['mfu']:>7.1%}{r['tokens_s'] / base['tokens_s']:>8.2f}x{r['load']:>6.2f}"
        )
    print("first (untimed) steps, s:", {r["variant"]: r["first_steps"] for r in results})
    print("achieved GFLOP/s against both measured peaks:", {
        r["variant"]: f"{r['achieved_gflops']:.1f} = {r['achieved_gflops'] / peaks['fp32']:.1%} of fp32, {r['achieved_gflops'] / peaks['bf16']:.0%} of bf16"
        for r in results})  # fmt: skip

    if b.breakdown:
        d = in_subprocess("breakdown", argv)
        print(
            f"\nour step, hand loop: forward {d['forward']:.3f} s, backward {d['backward']:.3f} s, optimizer {d['optimizer']:.3f} s "
            f"(fused AdamW streams ~{d['adamw_bytes_GB']:.1f} GB for {d['params_M']:.0f}M parameters); "
            f"LM head forward+backward {d['lm_head_fwd_bwd']:.3f} s"
        )
    print(f"load at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    run_main(main)
