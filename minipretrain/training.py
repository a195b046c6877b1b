"""Training helpers for stage 4: the data collator, the checks that a model fits the data, speed
(memory reuse, matmul peak, model FLOPs, the speed report), the callbacks (loss.csv, timing,
Ctrl-C), the loss chart, and the run folder (resume, run.json, manifest.json).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import signal
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback, TrainerState, TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType
from transformers.training_args import OptimizerNames

from minipretrain.settings import (
    SEED,
    Range,
    UserError,
    at_least,
    greater_than,
    one_of,
    settings_dict,
)
from minipretrain.stages import (
    MANIFEST,
    file_sha256,
    library_versions,
    read_manifest,
    what_changed,
)
from minipretrain.tokenization import tokenizer_fingerprint

STAGE = "model_training"
LOSS_CSV = "loss.csv"
LOSS_PNG = "loss.png"
EVAL_JSON = "eval.json"
RUN_JSON = "run.json"
LOSS_COLUMNS = ("step", "loss", "learning_rate", "grad_norm")


# The allowed values of the TrainingArguments settings stage 4 inherits (numbers and words), for
# parse_settings: a bad value is one line naming the flag or the file, before the Trainer sees it.
TRAINER_CHECKS = {
    "num_train_epochs": greater_than(0),
    "per_device_train_batch_size": at_least(1),
    "per_device_eval_batch_size": at_least(1),
    "gradient_accumulation_steps": at_least(1),
    "eval_accumulation_steps": at_least(1),
    "learning_rate": at_least(0),
    "warmup_steps": at_least(0),
    "weight_decay": at_least(0),
    "adam_beta1": Range(0, 1, high_open=True),
    "adam_beta2": Range(0, 1, high_open=True),
    "adam_epsilon": at_least(0),
    "max_grad_norm": at_least(0),
    "label_smoothing_factor": Range(0, 1, high_open=True),
    "neftune_noise_alpha": at_least(0),
    "logging_steps": greater_than(0),
    "eval_steps": greater_than(0),
    "eval_delay": at_least(0),
    "save_steps": greater_than(0),
    "save_total_limit": at_least(1),
    "seed": SEED,
    "data_seed": SEED,
    "dataloader_num_workers": at_least(0),
    "dataloader_prefetch_factor": at_least(1),
    "torch_empty_cache_steps": at_least(1),
    "ddp_bucket_cap_mb": at_least(1),
    "ddp_timeout": at_least(1),
    "local_rank": at_least(-1),
    "optim": one_of(*(o.value for o in OptimizerNames)),
    "lr_scheduler_type": one_of(*(t.value for t in SchedulerType)),
    "save_strategy": one_of(*(t.value for t in SaveStrategy)),
    "eval_strategy": one_of(*(t.value for t in IntervalStrategy)),
}


def bf16_supported(cpu: bool) -> bool:
    """Whether the hardware does bf16 arithmetic natively, so bf16 autocast is faster than fp32:
    a GPU with bf16, or a CPU with AMX or AVX512-BF16 (on AVX2 alone PyTorch emulates bf16 matmuls,
    ~100x slower than fp32). Decided from CPU flags, not timing, so every DDP process agrees."""
    if not cpu:
        from transformers.utils import is_torch_bf16_gpu_available

        return is_torch_bf16_gpu_available()
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())



# ----------------------------------------------------------------------------------------------
# Inputs: the packed blocks and a model that fits them


def collate_blocks(rows: list[dict]) -> dict:
    """A batch of packed blocks: the model shifts the labels itself, so labels are the input ids."""
    ids = torch.stack([row["input_ids"] for row in rows]).long()
    return {"input_ids": ids, "labels": ids}



def model_fingerprint(model_dir: Path) -> str:
    """Stage 3's fingerprint, or for another model folder (e.g. a checkpoint) a hash of its files."""
    if (model_dir / MANIFEST).is_file():
        return read_manifest(model_dir, "model_preparation", hint="train from stage 3's output or a model folder")["fingerprint"]
    h = hashlib.sha256()
    for f in sorted(model_dir.glob("*.json")) + sorted(model_dir.glob("*.safetensors")):
        h.update(f"{f.name}:{file_sha256(f)}".encode())
    return h.hexdigest()


def check_model_fits_data(model_dir, config, tokenizer, packed_dir, packed_manifest: dict) -> None:
    """Refuse, in one line, a model whose tokenizer is not the one that packed the data, whose
    vocabulary cannot hold the data's token ids, or whose context is shorter than a block."""
    data_tok = packed_manifest.get("tokenizer") or {}
    fingerprint = tokenizer_fingerprint(tokenizer)
    if data_tok.get("fingerprint") != fingerprint:
        raise UserError(
            f"{model_dir}: its tokenizer ({tokenizer.name_or_path}, {len(tokenizer)} tokens, fingerprint {fingerprint[:12]}) "
            f"is not the one that packed {packed_dir} ({data_tok.get('name')}, {data_tok.get('vocab_size')} tokens, "
            f"fingerprint {str(data_tok.get('fingerprint'))[:12]}); prepare the model with the packing tokenizer, or repack the data with the model's"
        )
    vocab_size = config.get_text_config().vocab_size
    if vocab_size < data_tok["vocab_size"]:
        raise UserError(
            f"{model_dir}: the model's vocabulary has {vocab_size} entries, fewer than the {data_tok['vocab_size']} tokens "
            f"of the tokenizer that packed {packed_dir}"
        )
    block_size = packed_manifest.get("block_size")
    max_positions = getattr(config.get_text_config(), "max_position_embeddings", None)
    if block_size and max_positions and block_size > max_positions:
        raise UserError(f"{packed_dir}: blocks of {block_size} tokens exceed the model's context of {max_positions} ({model_dir})")


# ----------------------------------------------------------------------------------------------
# Speed: memory reuse, matmul peak and model FLOPs


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse (Linux; elsewhere nothing happens).

    Every step frees the gradients (the Trainer zeroes them by setting them to None) and allocates
    them again in the next backward pass; the optimizer and autograd free and allocate their
    temporaries too. glibc serves each block over 128 KB (dynamically up to 32 MB) with its own
    mmap and gives it back to the kernel when freed, and it trims the heap's free top, so the next
    step faults the same memory in again, page by page, zero-filled: ~290,000 page faults a step
    for the 308M-parameter model's 1.2 GB of gradients, 470,000 with the default AdamW's
    temporaries. That costs ~0.5 s of kernel time a step on bare metal and several seconds in a
    VM whose host backs guest pages lazily. With mmap off and no trimming, freed blocks stay in
    the heap and the next step reuses them: no page faults after the first step. (Blocks a thread
    cannot place in its own arena still get an mmap of their own, so nothing fails; the process
    keeps its peak memory until it exits, which a training run does anyway.) Returns whether it
    applied."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
        return bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) and libc.mallopt(M_MMAP_MAX, 0))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


@functools.lru_cache(maxsize=None)
def matmul_peak_gflops(dtype_name: str, device: str = "cpu", seconds: float = 0.3) -> float:
    """Measured GFLOP/s of a square matmul in `dtype_name` ("fp32"/"bf16") on `device`: the peak
    that model FLOPs utilisation is measured against. Starts small, so an emulated dtype costs
    a fraction of a second, not a minute."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    best = 0.0
    for n in (256, 512, 1024, 2048) if device == "cpu" else (1024, 4096, 8192):
        if best and 2 * n**3 / (best * 1e9) > seconds:  # one matmul of this size would take too long
            break
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        a @ b  # warm up
        sync()
        start, k = time.perf_counter(), 0
        while (elapsed := time.perf_counter() - start) < seconds / 3:
            a @ b
            k += 1
            sync()
        best = max(best, 2 * n**3 * k / elapsed / 1e9)
    return round(best, 1)


def flops_per_token(model, block_size: int) -> float:
    """Training FLOPs per token (forward + backward, no recomputation counted), PaLM's formula:
    6 x the parameters of the matmuls (the LM head included, the embedding lookup not) + the
    attention scores, 12 x layers x hidden x context."""
    matmul_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    config = model.config.get_text_config()
    return 6 * matmul_params + 12 * config.num_hidden_layers * config.hidden_size * block_size


# ----------------------------------------------------------------------------------------------
# Monitoring


class Monitor(TrainerCallback):
    """Appends the logged training loss to loss.csv as it comes, times the optimizer steps (forward,
    backward, optimizer; not validation or saving), asks for a checkpoint after the last step, and
    puts the tokenizer into each checkpoint. (Not the Trainer's processing_class: the Trainer would
    overwrite the model's BOS/EOS, the document boundaries stage 3 chose, with the tokenizer's own.)"""

    def __init__(self, run_dir: Path, tokenizer):
        self.run_dir = run_dir
        self.tokenizer = tokenizer
        self.step_times: list[float] = []
        self._started = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # on --resume: the rows up to the checkpoint, from its state
            write_loss_csv(self.run_dir / LOSS_CSV, loss_rows(state.log_history))

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_times.append(time.perf_counter() - self._started)
        if state.global_step >= state.max_steps:
            control.should_save = True  # the final checkpoint, whatever save_strategy says

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.tokenizer.save_pretrained(self.run_dir / f"checkpoint-{state.global_step}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "loss" in logs:
            with open(self.run_dir / LOSS_CSV, "a", newline="") as f:
                csv.writer(f).writerow(loss_rows([{**logs, "step": state.global_step}])[0])


class StopOnSignal(TrainerCallback):
    """Ctrl-C (SIGINT) or SIGTERM while training: finish the current step, save a checkpoint there
    and stop, so that the same command run again continues from it. A second signal interrupts at
    once (the handler is put back after the first). With several processes they agree, once per
    step, on whether any of them was told to stop: a single one leaving would hang the others."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: str | None = None
        self.stopped_at: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
        print(f"\n{self.received}: stopping after this step and saving a checkpoint (send it again to stop at once)", file=sys.stderr, flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        import threading

        if threading.current_thread() is threading.main_thread():  # only there can Python handle signals
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def on_step_end(self, args, state, control, **kwargs):
        stop = self.received is not None
        if args.world_size > 1:
            flag = torch.tensor([float(stop)], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop and state.global_step < state.max_steps:
            control.should_save = control.should_training_stop = True
            self.stopped_at = state.global_step

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def loss_rows(log_history: list[dict]) -> list[list]:
    return [[e["step"], e["loss"], e.get("learning_rate", ""), e.get("grad_norm", "")] for e in log_history if "loss" in e]


def write_loss_csv(path: Path, rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(LOSS_COLUMNS)
        writer.writerows(rows)


def evaluations(log_history: list[dict]) -> list[dict]:
    """Each validation of the run (its step, loss, perplexity), in order, one per step."""
    by_step = {}
    for e in log_history:
        if "eval_loss" in e:
            by_step[e["step"]] = {"step": e["step"], "loss": round(e["eval_loss"], 5), "perplexity": round(math.exp(e["eval_loss"]), 3)}
    return [by_step[k] for k in sorted(by_step)]


def plot_losses(log_history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    valid = evaluations(log_history)
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), marker=".", label="training loss (mean over the logging interval)")
    if valid:
        ax.plot([v["step"] for v in valid], [v["loss"] for v in valid], "o--", color="tab:red", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# The run folder


def last_complete_checkpoint(run_dir: Path) -> str | None:
    """The latest checkpoint-N with its trainer_state.json, which the Trainer writes after the model,
    optimizer and RNG states (a run killed while saving leaves a checkpoint without it)."""
    complete = [p for p in run_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return str(max(complete, key=lambda p: int(p.name.split("-")[-1]))) if complete else None


def prepare_run_dir(s, settings_values: dict, inputs: dict):
    """Decide what to do with the run folder, changing nothing. Returns "up to date", or (the
    checkpoint to resume from or None, where to keep the previous run or None). Every process
    decides, from what it sees (same_on_every_process stops them when they do not decide the same);
    process 0 alone acts on the decision.

    Only a run folder this stage made (its manifest.json or run.json) is ever touched; anything
    else is refused, --overwrite or not. A finished run with the same settings and inputs is up
    to date. An unfinished one (stopped, crashed, killed) with the same settings and inputs
    continues from its latest complete checkpoint, or starts again when it has none. --resume
    continues whatever the settings (e.g. a larger --max_steps); --overwrite replaces the run. A
    run with other settings or inputs is never thrown away by a plain rerun: it is kept beside
    the new one as NAME.1 (NAME.2, ...), and the new run starts in NAME, where stage 5 and the
    next rerun look for it. (Only an unfinished run without a single complete checkpoint, which
    holds nothing worth keeping, is replaced.)"""
    run_dir = Path(s.output_dir)
    keep = "it is left as it is: choose another --output_dir (model_training replaces only its own run folders, so --overwrite will not help)"
    if run_dir.is_symlink() or (run_dir.exists() and not run_dir.is_dir()):
        raise UserError(f"{run_dir}: not a run folder that model_training made (a file or a link); {keep}")
    if not (run_dir.is_dir() and any(run_dir.iterdir())):
        if s.resume:
            raise UserError(f"{run_dir}: no checkpoint to resume from (periodic checkpoints: --save_strategy steps --save_steps N)")
        return None, None
    finished, started = read_json(run_dir / MANIFEST), read_json(run_dir / RUN_JSON)
    finished = finished if isinstance(finished, dict) and finished.get("stage") == STAGE else None
    started = started if isinstance(started, dict) and "settings" in started else None
    if finished is None and started is None:
        raise UserError(f"{run_dir}: a folder without the manifest.json or run.json of a training run; {keep}")
    checkpoint = last_complete_checkpoint(run_dir)
    if s.resume:
        if checkpoint is None:
            raise UserError(f"{run_dir}: no checkpoint to resume from (periodic checkpoints: --save_strategy steps --save_steps N)")
        step = trainer_state(checkpoint).global_step
        if step >= s.max_steps:
            raise UserError(f"{checkpoint}: already at step {step} of --max_steps {s.max_steps}; pass a larger --max_steps to train on")
        return checkpoint, None
    if s.overwrite:
        print(f"--overwrite: replacing the run in {run_dir}")
        return None, None
    changes = what_changed(finished or started, settings_values, inputs)
    if not changes:
        if finished:
            return "up to date"
        if checkpoint is None:
            print(f"{run_dir}: an unfinished run with these settings and no complete checkpoint: starting it again")
            return None, None
        print(f"{run_dir}: an unfinished run with these settings: continuing from {Path(checkpoint).name}")
        return checkpoint, None
    if not finished and checkpoint is None:
        print(f"{changes}: replacing the unfinished run in {run_dir} (it has no complete checkpoint)")
        return None, None
    n = 1
    while (aside := run_dir.parent / f"{run_dir.name}.{n}").exists() or aside.is_symlink():
        n += 1
    print(f"{changes}: keeping the {'finished' if finished else 'unfinished'} run of {run_dir} as {aside}; a new run starts in {run_dir}")
    return None, aside


def run_dir_plan(decision) -> str:
    """prepare_run_dir's decision in words."""
    if decision == "up to date":
        return "leave the run as it is (up to date)"
    resume_from, previous_run = decision
    if resume_from:
        return f"continue from {Path(resume_from).name}"
    return f"keep the run there as {previous_run} and start a new one" if previous_run else "start the run"


def same_on_every_process(s: TrainingArguments, look):
    """look() on every process: (a dict of what every process must see alike, anything else),
    or an exception. With one process that is all. With several (DDP, on one node or many), they
    compare before anything changes, and all stop, with one line, when a process refused its
    inputs (alone, it would leave the others waiting for it in the next collective), or when one
    sees anything else than process 0: other settings (a flag given to one node only), other inputs
    (another version of the packed data or the model on its node), or another state of the run
    folder (a run folder on a disk that only one node has: one process would continue the run
    and another start it again, and they hang). Returns look()'s pair."""
    import socket

    s.device  # sets up the process group, once per process
    try:
        seen, rest = look()
        problem = None
    except Exception as e:  # noqa: BLE001 -- passed on to the others, then raised here as it was
        seen, rest, problem = None, None, e
    if s.world_size <= 1:
        if problem is not None:
            raise problem
        return seen, rest
    notes = [None] * s.world_size
    said = None if problem is None else " ".join((str(problem) if isinstance(problem, UserError) else f"{type(problem).__name__}: {problem}").split())
    torch.distributed.all_gather_object(notes, (socket.gethostname(), said, seen))
    if problem is not None:
        raise problem
    host0, _, first = notes[0]
    same = "Every node runs the same command, with the same packed data and model at the same paths, and the run folder (--output_dir) on storage they all share"
    for rank, (host, other_problem, _) in enumerate(notes):
        if other_problem is not None:  # the first one's
            raise UserError(f"process {rank} (on {host}) stopped: {other_problem}" + (f"; process 0 (on {host0}) did not. {same}" if rank else ""))
    for rank, (host, _, other) in enumerate(notes):
        if other == first:
            continue
        differences = []
        if (first["settings"], first["inputs"]) != (other["settings"], other["inputs"]):
            differences.append(f"process 0's -> process {rank}'s: {what_changed(first, other['settings'], other['inputs'])}")
        if first["run_dir"] != other["run_dir"]:
            differences.append(f"in the run folder, process 0 would {run_dir_plan(first['run_dir'])}, process {rank} would {run_dir_plan(other['run_dir'])}")
        raise UserError(f"process {rank} (on {host}) does not see what process 0 (on {host0}) sees: {'; '.join(differences)}. {same}")
    return seen, rest


def read_json(path: Path) -> dict | None:
    """A JSON file's content, or None when it is missing or unreadable (a write cut short)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def trainer_state(checkpoint) -> TrainerState:
    return TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))


def start_run_record(run_dir: Path, settings_values: dict, inputs: dict) -> None:
    """run.json, and no manifest.json or eval.json until the run has finished again."""
    for name in (MANIFEST, EVAL_JSON):
        (run_dir / name).unlink(missing_ok=True)
    tmp = run_dir / f".{RUN_JSON}.tmp"
    tmp.write_text(json.dumps({"settings": settings_values, "inputs": inputs}, indent=2) + "\n", encoding="utf-8")
    tmp.replace(run_dir / RUN_JSON)


def comparable_settings(s: TrainingArguments) -> dict:
    """The settings that decide a run's result (for the manifest and the up-to-date check)."""
    values = settings_dict(s)
    for key in ("output_dir", "resume", "local_rank", "logging_dir"):
        values.pop(key, None)
    return values


def write_manifest(run_dir: Path, settings_values: dict, inputs: dict, extra: dict, started: float) -> None:
    """manifest.json, written last: its presence says the run folder is complete."""
    files = {}
    for f in sorted(p for p in run_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
        files[f.relative_to(run_dir).as_posix()] = {"bytes": f.stat().st_size, "sha256": file_sha256(f)}
    manifest = {"stage": STAGE, "settings": settings_values, "inputs": inputs, **extra, "files": files}
    # The fingerprint covers the trained model (the final checkpoint's weights, config and tokenizer)
    # with the settings and inputs that made it, not how fast it ran (eval.json's speed and
    # trainer_state.json's runtimes differ between two identical runs) nor loss.csv (a run stopped
    # and continued logs, at its first logging step after the restart, only the steps since it).
    final = f"{extra['final_checkpoint']}/"
    result = {k: v for k, v in files.items() if k.startswith(final) and k.endswith((".safetensors", ".json")) and not k.endswith("trainer_state.json")}
    manifest["fingerprint"] = hashlib.sha256(json.dumps([STAGE, settings_values, inputs, result], sort_keys=True).encode()).hexdigest()
    manifest["libraries"] = library_versions()
    manifest["wall_time_s"] = round(time.time() - started, 3)
    tmp = run_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(run_dir / MANIFEST)


# ----------------------------------------------------------------------------------------------
# Training


def speed_report(s: TrainingArguments, trainer, monitor: Monitor, model, block_size: int) -> dict:
    """s/step, tokens/s and model FLOPs utilisation of the steps run in this call."""
    times = monitor.step_times
    tokens_per_step = s.per_device_train_batch_size * s.gradient_accumulation_steps * s.world_size * block_size
    device = str(s.device.type)
    precision = "bf16" if s.bf16 else "fp32"
    peaks = {p: matmul_peak_gflops(p, device if device == "cpu" else str(s.device)) for p in ("fp32", "bf16")}
    peak = peaks[precision]
    fpt = flops_per_token(model, block_size)
    hardware = "has bf16 arithmetic" if bf16_supported(device == "cpu") else "has no bf16 arithmetic"
    report = {
        "device": device,
        "processes": s.world_size,
        "threads_per_process": torch.get_num_threads() if device == "cpu" else None,
        "precision": "bf16 autocast, fp32 weights" if s.bf16 else "fp32",
        "precision_chosen_by": f"the hardware ({device} {hardware})" if s.bf16_from_hardware else "--bf16",
        "matmul_peak_gflops": peaks,
        "timing": "optimizer steps only (forward, backward, optimizer step), per process 0's clock; s/step and tokens/s leave out the first step (it allocates the optimizer state)",
        "activation_checkpointing": bool(s.activation_checkpointing),
        "optimizer": str(s.optim.value if hasattr(s.optim, "value") else s.optim),
        "steps_timed": len(times),
        "tokens_per_step": tokens_per_step,
    }
    if times:
        steady = times[1:] or times  # the first step also allocates the optimizer state
        s_per_step = sum(steady) / len(steady)
        tokens_per_s = tokens_per_step / s_per_step
        achieved = fpt * tokens_per_s / 1e9  # GFLOP/s, all processes
        report |= {
            "first_step_s": round(times[0], 3),
            "s_per_step": round(s_per_step, 4),
            "tokens_per_s": round(tokens_per_s, 1),
            "model_gflops_per_token": round(fpt / 1e9, 4),
            "achieved_gflops": round(achieved, 2),
            "mfu": round(achieved / (peak * s.world_size), 4) if peak else None,
        }
    return report


def leave_process_group(all_here: bool) -> None:
    """End this process's part in a distributed run (torchrun) before it exits. Left to the
    interpreter's exit, gloo's threads sometimes abort a process whose work is done (SIGABRT,
    "terminate called without an active exception"); its launcher then reports the node as failed and
    the other nodes' launchers wait for it. all_here: every process finished train() (a barrier
    first, so that none leaves while process 0 still writes the run folder); after an error, no wait."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if all_here:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()
