"""The pipeline on a GPU (issue 19): stages 3-5 on the device, training speed and MFU of the
TinySolar-308M shape, and peak memory, in one run that prints one table.

    python benchmarks/bench_gpu.py                        # whatever device there is (cuda if available)
    python benchmarks/bench_gpu.py --device cpu           # the same on the CPU
    python benchmarks/bench_gpu.py --parts device,train,compile       # only the training speed
    python benchmarks/bench_gpu.py --base tiny --train_steps 2 --layers 2 --hidden 64 --seq_len 32 \\
        --batch 2 --steps 2 --device cpu                  # a smoke test (tests/test_bench_gpu.py)

The parts, each run in a process of its own (forked from this one, which imports torch but never
touches CUDA), time-boxed, its failure or time-out reported in the table instead of ending the run:

    device   the device, its matmul peaks measured in fp32 and bf16 (training.matmul_peak_gflops)
             and its datasheet bf16 dense peak (DATASHEET_BF16_TFLOPS; "unknown" for other devices)
    stage1   data_preparation.py, stage2 data_packaging.py: the CPU stages that stages 3-5 need
    stage3   model_preparation.py (it has no device setting: the surgery runs on the CPU)
    stage4   model_training.py on the device (the Trainer takes the GPU; bf16 autocast where it has bf16)
    stage5   inference_demo.py on the device (--device)
    greedy   greedy generation with stage 4's checkpoint on the device and on the CPU, fp32, the same
             prompt: how many of the first greedy_tokens tokens agree
    train    the TinySolar-248m preset (models.PRESETS) with `layers` layers (16: the ~308M-parameter
             up-scaled shape), random weights, batch x seq_len random tokens a step, bf16 autocast,
             SDPA attention, fused AdamW, gradient clipping at 1.0: s/step, tokens/s and MFU
             (training.flops_per_token) against the measured and the datasheet peak
    compile  the same with torch.compile

Stages run as `python <script>.py` would (runpy as __main__) with their outputs under work_dir, on
their defaults unless a setting says otherwise (--base tiny: a 4-layer random Llama with the
packing tokenizer instead of SmolLM2-135M, for a quick check). Their wall time is the script's run
in its process, without Python's start-up and the imports of its modules (done once, before the fork).
Peak memory: torch.cuda.max_memory_allocated on CUDA; on the CPU the process's peak RSS (which
includes ~0.5 GB of libraries). Each part's output goes to work_dir/logs/<part>.log; the results go
to `output` (JSON) after every part, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import re
import resource
import runpy
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from minipretrain.settings import UserError, parse_settings, run_main  # noqa: E402
from minipretrain.stages import library_versions  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s; matched in order
# against torch.cuda.get_device_name().
DATASHEET_BF16_TFLOPS = [
    (r"\bH200 NVL\b", 835), (r"\bH200\b", 989), (r"\bGH200\b", 989),
    (r"\bH100 NVL\b", 835), (r"\bH100 PCIe\b", 756), (r"\bH100\b", 989),  # H100 SXM ("H100 80GB HBM3")
    (r"\bB200\b", 2250), (r"\bA100\b", 312), (r"\bL40S\b", 362), (r"\bL40\b", 181), (r"\bL4\b", 121), (r"\bA10\b", 125),
]  # fmt: skip

PARTS = ("device", "stage1", "stage2", "stage3", "stage4", "stage5", "greedy", "train", "compile")
RUN_ORDER = ("device", "train", "stage1", "stage2", "stage3", "stage4", "stage5", "greedy", "compile")  # compile last: the slowest and riskiest
NEEDS = {"stage2": "stage1", "stage3": "stage2", "stage4": "stage3", "stage5": "stage4", "greedy": "stage4"}
LABELS = {
    "device": "device: matmul peaks", "stage1": "1 stage 1 data_preparation", "stage2": "1 stage 2 data_packaging",
    "stage3": "1 stage 3 model_preparation", "stage4": "1 stage 4 model_training", "stage5": "1 stage 5 inference_demo",
    "greedy": "1 greedy: device vs CPU", "train": "2 train TinySolar, eager", "compile": "2 train TinySolar, compiled",
}  # fmt: skip


@dataclass
class BenchSettings:
    device: str = field(default="auto", metadata={"help": "auto (cuda if available, else cpu), cuda or cpu."})
    parts: str = field(default=",".join(PARTS), metadata={"help": f"Comma-separated, from: {', '.join(PARTS)} (device always runs)."})
    output: str = field(default="work/bench/gpu/results.json", metadata={"help": "The results as JSON, rewritten after every part."})
    work_dir: str = field(default="work/bench/gpu", metadata={"help": "Where the stages' outputs and the parts' logs go."})
    budget_s: float = field(default=420, metadata={"help": "Seconds for the whole run; a part starting late gets what is left."})
    part_timeout_s: float = field(default=240, metadata={"help": "At most this many seconds for one part (compile: 1.5x)."})
    # part 1: stages 3-5 and the greedy check
    base: str = field(default="", metadata={"help": "Stage 3's --base ('' = its default, SmolLM2-135M; 'tiny' = a 4-layer random Llama made here)."})
    tokenizer: str = field(default="", metadata={"help": "Stage 2's --tokenizer ('' = its default; passed to stage 3 too unless --base is '' or tiny)."})
    train_steps: int = field(default=30, metadata={"help": "Stage 4's --max_steps."})
    new_tokens: int = field(default=40, metadata={"help": "Stage 5's --max_new_tokens."})
    prompts: int = field(default=0, metadata={"help": "Stage 5 on its first this-many default prompts (0 = all)."})
    greedy_tokens: int = field(default=32, metadata={"help": "Greedy tokens compared between the device and the CPU."})
    # part 2: training speed of the TinySolar shape
    layers: int = field(default=16, metadata={"help": "Layers of the TinySolar-248m preset (12; 16 = up-scaled, ~308M parameters)."})
    hidden: int = field(default=0, metadata={"help": "Hidden size (0 = the preset's 1024); others scale heads (size 32) and the MLP (4x)."})
    seq_len: int = field(default=2048, metadata={"help": "Tokens per sequence."})
    batch: int = field(default=8, metadata={"help": "Sequences per step."})
    steps: int = field(default=10, metadata={"help": "Timed steps."})
    warmup: int = field(default=3, metadata={"help": "Untimed steps first (the first one compiles)."})
    precision: str = field(default="auto", metadata={"help": "bf16 (autocast, fp32 weights), fp32, or auto: bf16 where the hardware has bf16 arithmetic."})
    compile_backend: str = field(default="inductor", metadata={"help": "torch.compile backend (aot_eager: tracing without code generation)."})


# ----------------------------------------------------------------------------------------------
# The parts; each runs in its own process and returns a dict of figures


def part_device(b, device, ctx) -> dict:
    import torch

    from minipretrain import training

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: torch sees no CUDA device")
    info = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda, "cpu": cpu_name(), "cores": os.cpu_count()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info |= {"name": torch.cuda.get_device_name(0), "capability": f"{props.major}.{props.minor}",
                 "memory_gib": round(props.total_memory / 2**30, 1), "multiprocessors": props.multi_processor_count}  # fmt: skip
    else:
        info["name"] = info["cpu"]
    info["bf16_hardware"] = training.bf16_supported(cpu=device == "cpu")
    ctx.say(f"{info['name']}: measuring matmul peaks")
    info["peak_gflops"] = {p: training.matmul_peak_gflops(p, device) for p in ("fp32", "bf16")}
    info["datasheet_bf16_tflops"] = datasheet_peak(info["name"]) if device == "cuda" else None
    return info


def part_stage(stage: str):
    def run(b, device, ctx) -> dict:
        script, argv = stage_command(stage, b, device, ctx)
        sys.argv = [script, *argv]
        ctx.say(f"python {script} {' '.join(argv)}")
        start = time.perf_counter()
        try:
            runpy.run_path(str(PROJECT_DIR / script), run_name="__main__")
        except SystemExit as e:
            if e.code not in (None, 0):
                raise RuntimeError(f"{script} exited with status {e.code}: {ctx.last_log_line()}") from None
        result = {"wall_s": round(time.perf_counter() - start, 2), "command": f"{script} {' '.join(argv)}"}
        if stage == "stage4":
            result |= stage4_figures(Path(b.work_dir) / "runs" / "model")
        if stage == "stage5":  # each generation's "(N tokens, X tokens/s)" line, in its log
            sys.stdout.flush()
            rates = [float(x) for x in re.findall(r"\(\d+ tokens, ([\d.]+) tokens/s\)", ctx.log.read_text(errors="replace"))]
            result |= {"generations": len(rates), "tokens_s": round(sum(rates) / len(rates), 1) if rates else None}
        return result

    return run


def stage_command(stage: str, b, device: str, ctx) -> tuple[str, list[str]]:
    w = Path(b.work_dir)
    cleaned, packed, model, run = str(w / "cleaned"), str(w / "packed"), str(w / "models" / "model"), str(w / "runs" / "model")
    if stage == "stage1":
        return "data_preparation.py", ["--output_dir", cleaned, "--overwrite"]
    if stage == "stage2":
        return "data_packaging.py", ["--input_dir", cleaned, "--output_dir", packed, "--overwrite"] + (["--tokenizer", b.tokenizer] if b.tokenizer else [])
    if stage == "stage3":
        argv = ["--packed_dir", packed, "--output_dir", model, "--overwrite"]
        if b.base == "tiny":
            argv += ["--base", make_tiny_base(w / "tiny-base", b.tokenizer, ctx)]
        elif b.base:
            argv += ["--base", b.base] + (["--tokenizer", b.tokenizer] if b.tokenizer else [])
        return "model_preparation.py", argv
    if stage == "stage4":
        return "model_training.py", ["--model_dir", model, "--packed_dir", packed, "--output_dir", run, "--max_steps", str(b.train_steps), "--overwrite"]
    import inference_demo as demo

    prompts = demo.Settings().prompts[: b.prompts or None]
    return "inference_demo.py", ["--checkpoint", run, "--compare_with", model, "--max_new_tokens", str(b.new_tokens), "--device", device, "--prompts", *prompts]


def make_tiny_base(folder: Path, tokenizer_spec: str, ctx) -> str:
    """A random 4-layer Llama (hidden 64) with the packing tokenizer: stage 3's base for a quick check."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from minipretrain.settings import DEFAULT_BASE_MODEL
    from minipretrain.tokenization import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_spec or DEFAULT_BASE_MODEL)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ctx.say(f"made the tiny base {folder}")
    return str(folder)


def stage4_figures(run_dir: Path) -> dict:
    report = json.loads((run_dir / "eval.json").read_text())
    speed, valid = report["speed"], report["validation"]
    return {
        "device_used": speed["device"], "precision": speed["precision"], "steps": report["steps"],
        "tokens_per_step": speed["tokens_per_step"], "s_step": speed.get("s_per_step"), "tokens_s": speed.get("tokens_per_s"),
        "achieved_gflops": speed.get("achieved_gflops"), "mfu_measured": speed.get("mfu"), "stage_peak_gflops": speed["matmul_peak_gflops"],
        "validation_loss": [(valid.get("before") or {}).get("loss"), (valid.get("after") or {}).get("loss")],
    }  # fmt: skip


def part_greedy(b, device, ctx) -> dict:
    """Stage 4's checkpoint, fp32, greedy on the CPU and on the device: how many first tokens agree."""
    from bench_generation import TokenClock

    import inference_demo as demo

    spec = demo.resolve_checkpoint(str(Path(b.work_dir) / "runs" / "model"))
    prompt = demo.Settings().prompts[0]
    s = demo.Settings(max_new_tokens=b.greedy_tokens, stream=False)
    ids, speed = {}, {}
    for where in dict.fromkeys(("cpu", device)):
        tokenizer, model = demo.load_model(spec, "float32", where)
        model.generation_config.min_new_tokens = b.greedy_tokens  # the same count everywhere
        demo.generate(model, tokenizer, prompt, demo.Settings(max_new_tokens=2, stream=False), sample=False)  # warm-up
        clock = TokenClock()
        r = demo.generate(model, tokenizer, prompt, s, sample=False, streamer=clock)
        ids[where], speed[where] = clock.ids, round(r["tokens"] / r["seconds"], 1)
        ctx.say(f"greedy on {where}: {r['tokens']} tokens, {speed[where]} tokens/s")
        del model
    agree = next((i for i, (x, y) in enumerate(zip(ids["cpu"], ids[device])) if x != y), min(len(ids["cpu"]), len(ids[device])))
    return {"checkpoint": str(spec), "prompt": prompt, "greedy_tokens": b.greedy_tokens, "agree": agree,
            "generated": [len(ids["cpu"]), len(ids[device])], "tokens_s": speed[device], "cpu_tokens_s": speed["cpu"],
            "text": tokenizer.decode(ids[device], skip_special_tokens=True)}  # fmt: skip


def tinysolar_config(b):
    """TinySolar-248m's shape (models.PRESETS) with `layers` layers; another `hidden` scales the rest."""
    from transformers import LlamaConfig

    from minipretrain.models import PRESETS

    shape = dict(PRESETS["tinysolar-248m"][0])
    if b.hidden and b.hidden != shape["hidden_size"]:
        heads = max(1, b.hidden // 32)  # the preset's head size: 1024 / 32
        shape |= dict(hidden_size=b.hidden, intermediate_size=4 * b.hidden, num_attention_heads=heads, num_key_value_heads=max(1, heads // 4))
    shape["num_hidden_layers"] = b.layers
    shape["max_position_embeddings"] = max(shape["max_position_embeddings"], b.seq_len)
    return LlamaConfig(**shape, use_cache=False)


def part_train(compiled: bool):
    def run(b, device, ctx) -> dict:
        import torch
        from transformers import LlamaForCausalLM

        from minipretrain import training

        bf16 = b.precision == "bf16" or (b.precision == "auto" and training.bf16_supported(cpu=device == "cpu"))
        torch.manual_seed(0)
        config = tinysolar_config(b)
        model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa").to(device).train()  # fp32 master weights
        params = sum(p.numel() for p in model.parameters())
        flops_per_token = training.flops_per_token(model, b.seq_len)
        result = {"compiled": compiled, "precision": "bf16 autocast, fp32 weights" if bf16 else "fp32", "attention": model.config._attn_implementation,
                  "optimizer": "AdamW fused", "params_M": round(params / 1e6, 1), "layers": config.num_hidden_layers,
                  "hidden": config.hidden_size, "tokens_per_step": b.batch * b.seq_len,
                  "gflops_per_token": round(flops_per_token / 1e9, 4)}  # fmt: skip
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
        step_model = torch.compile(model, backend=b.compile_backend) if compiled else model
        ids = torch.randint(0, config.vocab_size, (b.batch, b.seq_len), generator=torch.Generator().manual_seed(0)).to(device)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        times, losses = [], []
        ctx.say(f"{result['params_M']}M parameters, {b.batch} x {b.seq_len} tokens a step, {result['precision']}, compiled: {compiled}")
        for i in range(b.warmup + b.steps):
            sync()
            start = time.perf_counter()
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                loss = step_model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync()
            times.append(time.perf_counter() - start)
            losses.append(round(loss.item(), 4))
            ctx.say(f"step {i + 1}/{b.warmup + b.steps}: {times[-1]:.3f} s, loss {losses[-1]}")
            timed = times[b.warmup :]
            if timed:
                s_step = sum(timed) / len(timed)
                tokens_s = b.batch * b.seq_len / s_step
                result |= {"steps_timed": len(timed), "s_step": round(s_step, 4), "min_s_step": round(min(timed), 4), "tokens_s": round(tokens_s, 1),
                           "achieved_gflops": round(flops_per_token * tokens_s / 1e9, 3)}  # fmt: skip
            result |= {"first_steps_s": [round(t, 3) for t in times[: b.warmup]], "losses": [losses[0], losses[-1]]}
            ctx.save(result)  # a part cut short keeps its steps so far
            if timed and ctx.seconds_left() < 0.15 * ctx.timeout:
                ctx.say(f"stopping after {len(timed)} timed steps: the part's time is nearly up")
                break
        if not timed:
            raise RuntimeError("no timed step")
        return result

    return run


RUNNERS = {"device": part_device, **{f"stage{i}": part_stage(f"stage{i}") for i in range(1, 6)},
           "greedy": part_greedy, "train": part_train(False), "compile": part_train(True)}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Running a part in a process of its own


class PartContext:
    """What a part's process has: its progress line to the terminal, its log, partial results."""

    def __init__(self, name: str, log: Path, result: Path, terminal, timeout: float):
        self.name, self.log, self.result, self.terminal, self.timeout = name, log, result, terminal, timeout
        self.started = time.perf_counter()

    def say(self, text: str) -> None:
        print(f"  [{self.name}] {text}", file=self.terminal, flush=True)
        print(f"[bench_gpu] {text}", flush=True)  # and into the log

    def save(self, result: dict) -> None:
        tmp = self.result.with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(self.result)

    def seconds_left(self) -> float:
        return self.timeout - (time.perf_counter() - self.started)

    def last_log_line(self) -> str:
        sys.stdout.flush(), sys.stderr.flush()
        lines = [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1].strip()[:300] if lines else ""


def part_process(name: str, b, device: str, log: Path, result: Path, timeout: float) -> None:
    """The body of a part's process: its own process group (so a time-out ends its children too),
    its output into its log, its result (or its error) into `result` as JSON."""
    os.setpgrp()
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the stages then run on the CPU too
    terminal = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout.flush(), sys.stderr.flush()
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(out, 1), os.dup2(out, 2)
    ctx = PartContext(name, log, result, terminal, timeout)
    try:
        figures = RUNNERS[name](b, device, ctx) | {"status": "ok"}
    except BaseException as e:  # noqa: BLE001 -- every failure becomes a row of the table
        traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0][:300]
        partial = json.loads(result.read_text()) if result.exists() else {}  # what it measured before failing
        figures = partial | {"status": f"FAILED: {type(e).__name__}: {first}"}
    import torch

    figures["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    figures["peak_kind"] = "rss"
    if torch.cuda.is_initialized():
        figures["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
        figures["rss_peak_mb"], figures["peak_mb"], figures["peak_kind"] = figures["peak_mb"], figures["cuda_peak_mb"], "cuda"
    ctx.save(figures)
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)


def run_part(name: str, b, device: str, timeout: float) -> dict:
    work = Path(b.work_dir)
    log, result = work / "logs" / f"{name}.log", work / "logs" / f"{name}.json"
    log.parent.mkdir(parents=True, exist_ok=True)
    result.unlink(missing_ok=True)
    started = time.perf_counter()
    process = multiprocessing.get_context("fork").Process(target=part_process, args=(name, b, device, log, result, timeout))
    process.start()
    try:
        process.join(timeout)
    finally:
        if process.is_alive():
            os.killpg(process.pid, signal.SIGKILL)  # the part's process group: it and what it started
            process.join()
    seconds = round(time.perf_counter() - started, 1)
    figures = json.loads(result.read_text()) if result.exists() else {}
    if process.exitcode == -signal.SIGKILL and seconds >= timeout:
        figures["status"] = f"timed out after {round(timeout, 1):g} s"
    elif "status" not in figures:
        figures["status"] = f"FAILED: its process ended with exit code {process.exitcode} (see {log})"
    return figures | {"part_s": seconds, "log": str(log)}


# ----------------------------------------------------------------------------------------------
# The table


def datasheet_peak(name: str):
    return next((tflops for pattern, tflops in DATASHEET_BF16_TFLOPS if re.search(pattern, name)), None)


def cpu_name() -> str:
    if Path("/proc/cpuinfo").exists():
        return next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    return platform.processor() or "?"


def add_mfu(r: dict, info: dict) -> None:
    """MFU against the measured peak of the precision used, and against the datasheet bf16 peak."""
    achieved, peaks = r.get("achieved_gflops"), info.get("peak_gflops") or {}
    if not achieved:
        return
    bf16 = str(r.get("precision", "")).startswith("bf16")
    if "mfu_measured" not in r and peaks.get("bf16" if bf16 else "fp32"):
        r["mfu_measured"] = round(achieved / peaks["bf16" if bf16 else "fp32"], 4)
    sheet = info.get("datasheet_bf16_tflops")
    r["mfu_datasheet"] = round(achieved / (sheet * 1000), 4) if sheet and bf16 else None


def notes(name: str, r: dict) -> str:
    if not r.get("status", "").startswith("ok") and not r.get("steps_timed"):
        return ""
    if name == "device":
        sheet = r.get("datasheet_bf16_tflops")
        return (f"{r.get('name')}; measured fp32 {flops(r['peak_gflops']['fp32'])}, bf16 {flops(r['peak_gflops']['bf16'])}; "
                f"datasheet bf16 {sheet or 'unknown'}{' TFLOP/s' if sheet else ''}")  # fmt: skip
    if name == "stage3":
        return "runs on the CPU (no device setting)"
    if name == "stage5":
        return f"{r['generations']} generations (greedy + sampled, trained + untrained), mean tokens/s of them"
    if name == "stage4":
        return f"{r['steps']} steps of {r['tokens_per_step']} tokens, {r['s_step']} s/step, {r['precision']} on {r['device_used']}, val loss {r['validation_loss'][0]} -> {r['validation_loss'][1]}"
    if name == "greedy":
        return f"{r['agree']} of the first {r['greedy_tokens']} greedy tokens agree; CPU {r['cpu_tokens_s']} tokens/s"
    if name in ("train", "compile"):
        return (f"{r['params_M']}M params, {r['tokens_per_step']} tokens/step, {r['s_step']} s/step, first steps {r['first_steps_s']} s, "
                f"{flops(r['achieved_gflops'])}, {r['precision']}, {r['attention']}")  # fmt: skip
    return ""


def flops(gflops: float) -> str:
    return f"{gflops / 1000:.1f} TFLOP/s" if gflops >= 1000 else f"{gflops:.1f} GFLOP/s"


def fmt(value, kind: str) -> str:
    if value is None:
        return "-"
    return {"s": f"{value:.1f}", "rate": f"{value:,.0f}", "pct": f"{value:.1%}", "mb": f"{value:,}"}[kind]


def print_table(info: dict, results: dict, device: str) -> None:
    print(f"\nmachine: {info.get('name', '?')} ({device}); CPU {info.get('cpu', cpu_name())}, {os.cpu_count()} cores; "
          f"torch {info.get('torch', '?')}, CUDA {info.get('cuda')}; load {os.getloadavg()[0]:.2f}")  # fmt: skip
    print("wall s: stages, the script's run (without Python's start-up and its modules' imports); other parts, the whole part; "
          "peak MB: cuda = torch.cuda.max_memory_allocated, rss = the process's peak RSS")
    header = f"{'part':<29}{'device':<7}{'status':<24}{'wall s':>8}{'tokens/s':>10}{'MFU meas.':>10}{'MFU sheet':>10}{'peak MB':>14}  notes"
    print(header)
    print("-" * len(header))
    for name in PARTS:
        if name not in results:
            continue
        r = results[name]
        where = "cpu" if name in ("stage1", "stage2", "stage3") else (r.get("device") or device)
        wall = r.get("wall_s", r.get("part_s"))
        peak = f"{r['peak_mb']:,} {r['peak_kind']}" if r.get("peak_mb") is not None else "-"
        print(f"{LABELS[name]:<29}{str(where):<7}{r['status'][:23]:<24}{fmt(wall, 's'):>8}{fmt(r.get('tokens_s'), 'rate'):>10}"
              f"{fmt(r.get('mfu_measured'), 'pct'):>10}{fmt(r.get('mfu_datasheet'), 'pct'):>10}{peak:>14}  {notes(name, r)}")  # fmt: skip
    for name, r in results.items():
        if r["status"] != "ok":
            print(f"{name}: {r['status']}")


MODULES = {"stage1": ["datasets", "data_preparation"], "stage2": ["datasets", "data_packaging"], "stage3": ["datasets", "model_preparation"],
           "stage4": ["datasets", "model_training"], "stage5": ["inference_demo"], "greedy": ["inference_demo"]}  # fmt: skip


def preload(parts) -> None:
    """Import the libraries and the stages' modules once here, so that each part's process starts
    with them (fork). Nothing here touches CUDA, so each part's process can start it. A module that
    does not import is left to fail in its part, with its error in the table."""
    import importlib

    for module in dict.fromkeys(["torch", "transformers"] + [m for part in parts for m in MODULES.get(part, [])]):
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001
            pass
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM  # noqa: F401 -- lazy modules


def main(argv=None):
    b = parse_settings(BenchSettings, argv)
    wanted = ["device"] + [p.strip() for p in b.parts.split(",") if p.strip()]  # the device part always: it names the device and its peaks
    if [p for p in wanted if p not in PARTS] or b.device not in ("auto", "cuda", "cpu") or b.precision not in ("auto", "bf16", "fp32"):
        raise UserError(f"--parts from {', '.join(PARTS)}; --device auto, cuda or cpu; --precision auto, bf16 or fp32")
    if min(b.steps, b.train_steps, b.new_tokens, b.greedy_tokens, b.batch, b.seq_len, b.layers) < 1 or b.warmup < 0:
        raise UserError("--steps, --train_steps, --new_tokens, --greedy_tokens, --batch, --seq_len and --layers must be at least 1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")  # the stages' default; set before any fork
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    preload(wanted)

    start = time.perf_counter()
    out = PROJECT_DIR / b.output if not Path(b.output).is_absolute() else Path(b.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    info: dict = {}
    device = b.device
    print(f"bench_gpu: parts {', '.join(p for p in RUN_ORDER if p in wanted)}; budget {b.budget_s:.0f} s; results -> {out}", flush=True)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # `timeout`: the running part's processes go too (run_part)
    try:
        for name in (p for p in RUN_ORDER if p in wanted):
            left = b.budget_s - (time.perf_counter() - start)
            need = NEEDS.get(name)
            if need in wanted and results.get(need, {}).get("status") != "ok":
                results[name] = {"status": f"skipped: {need} did not run"}
            elif left < 10:
                results[name] = {"status": "skipped: out of time"}
            else:
                timeout = min(b.part_timeout_s * (1.5 if name == "compile" else 1), left)
                print(f"{name}: started (at most {timeout:.0f} s; log {Path(b.work_dir) / 'logs' / name}.log)", flush=True)
                results[name] = run_part(name, b, device, timeout)
                print(f"{name}: {results[name]['status']} in {results[name]['part_s']} s", flush=True)
                if name == "device" and results[name]["status"] == "ok":
                    info, device = results[name], results[name]["device"]
            if device == "auto":  # the device part did not say
                device = "cpu"
            add_mfu(results[name], info)
            record = {"settings": vars(b), "device": device, "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "load": os.getloadavg()[0]},
                      "versions": library_versions(), "parts": results}  # fmt: skip
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, indent=1) + "\n")
            tmp.replace(out)
    finally:  # also when stopped: the table of the parts done so far
        print_table(info, results, device)
        print(f"\ntotal {time.perf_counter() - start:.0f} s; wrote {out}")


if __name__ == "__main__":
    run_main(main)
