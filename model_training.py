"""Stage 4: train the prepared model on the packed blocks with the Hugging Face Trainer.

    python model_training.py                                  # the seed's run: 30 steps of 2 x 32 tokens, on CPU
    python model_training.py --max_steps 300 --eval_steps 50  # longer, validation every 50 steps
    python model_training.py --save_strategy steps --save_steps 100   # periodic checkpoints (default: final only)
    python model_training.py --resume                         # continue from the latest checkpoint
    (Ctrl-C while training: the current step finishes, a checkpoint is saved, and the same command
    run again continues from it)
    python model_training.py --resume --max_steps 60          # ... or extend a finished run
    python model_training.py --activation_checkpointing       # the seed's memory saver (slower)
    torchrun --nproc_per_node 2 model_training.py             # several processes (DDP; gloo on CPU, NCCL on GPUs)
    (several machines: the same command on each, with torchrun's --nnodes and rendezvous flags;
    README, GPUs, "Several machines". Every process checks that it sees the settings, inputs and run
    folder that process 0 sees, or all stop with one line.)

Reads stage 3's model folder (--model_dir; a Trainer checkpoint folder works too) and stage 2's
packed blocks (--packed_dir), and refuses a model whose tokenizer is not the one that packed the
data. The settings are TrainingArguments (every Trainer flag works) with the seed's defaults:
max_steps 30, batch 2 per device, AdamW at 5e-5, linear schedule after 10 warmup steps, the loss
logged every 3 steps; the block length comes from the data.

Speed on a CPU (benchmarks/bench_training.py, benchmarks/RESULTS.md): the seed trained in fp32
with gradient checkpointing and PyTorch's default AdamW. The defaults here: no activation
checkpointing (it recomputes the forward pass, which a 2 x 32-token batch never needs the memory
for), the fused AdamW kernel (one pass over the weights instead of a dozen), the batches built in
the main process (2 workers only fight the model for 2 cores), freed memory kept for reuse
(keep_freed_memory: no page faults for the gradients every step), and bf16 autocast where the
hardware has bf16 arithmetic (a GPU with bf16, or a CPU with AMX or AVX512-BF16: fp32 master
weights and optimizer, bf16 matmuls); without it (e.g. AVX2-only CPUs, where bf16 matmuls are
emulated and ~100x slower than fp32) training stays in fp32. `--bf16 true/false` overrides.

Stopping and crashes: Ctrl-C (SIGINT) or SIGTERM while training finishes the current step, saves
checkpoint-N there and exits (status 130 / 143); a second Ctrl-C stops at once. Running the same
command again continues an unfinished run from its latest complete checkpoint (or, with none, starts
it again), so a run stopped at step 17 of 30 and continued ends with the same weights as one never
stopped. After a crash (power cut, SIGKILL) it continues from the latest periodic checkpoint
(`--save_strategy steps --save_steps N`; by default only the final one is saved). The run folder is
complete only once manifest.json is written, and inference_demo.py reads nothing before that.

Output (default work/runs/smollm2-dus/), written while training, complete when manifest.json is:
    checkpoint-30/   a Trainer checkpoint (model, tokenizer, optimizer, scheduler, RNG, trainer
                     state) that AutoModelForCausalLM.from_pretrained loads and --resume continues
    loss.csv         step, training loss (mean of the last 3 steps; after a restart, of the steps
                     since it), learning rate, gradient norm
    loss.png         the training loss, with the validation loss points on it
    run.json         the settings and inputs of the run, written when it starts: a rerun with the same
                     ones continues it
    eval.json        validation loss and perplexity before training, every --eval_steps, and at the
                     end; s/step, tokens/s, and model FLOPs utilisation against a measured matmul peak
    manifest.json    stage, settings, inputs (the packed data's and the model's fingerprints), files

GPU: the same command; bf16 is used where the GPU supports it. Several GPUs or processes:
`torchrun --nproc_per_node N model_training.py` (or `accelerate launch`); each process takes
--per_device_train_batch_size blocks a step.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainingArguments

from minipretrain.loading import from_pretrained
from minipretrain.packing import packed_dataset
from minipretrain.settings import (
    DEFAULT_MODEL_DIR,
    DEFAULT_RUN_DIR,
    PACKED_DIR,
    UserError,
    at_least,
    parse_settings,
    run_main,
)
from minipretrain.stages import read_manifest, write_failure
from minipretrain.tokenization import load_tokenizer
from minipretrain.training import (
    EVAL_JSON,
    LOSS_CSV,
    LOSS_PNG,
    TRAINER_CHECKS,
    Monitor,
    StopOnSignal,
    bf16_supported,
    check_model_fits_data,
    collate_blocks,
    comparable_settings,
    evaluations,
    keep_freed_memory,
    leave_process_group,
    model_fingerprint,
    plot_losses,
    prepare_run_dir,
    same_on_every_process,
    speed_report,
    start_run_record,
    trainer_state,
    write_manifest,
)


@dataclass
class Settings(TrainingArguments):
    # Where from, where to
    model_dir: str = field(
        default=DEFAULT_MODEL_DIR,
        metadata={"help": "Stage 3's model folder (or any Hugging Face model folder with its tokenizer, e.g. a checkpoint)."},
    )
    packed_dir: str = field(default=PACKED_DIR, metadata={"help": "Stage 2's output: train/ and validation/ packed blocks."})
    output_dir: str = field(default=DEFAULT_RUN_DIR, metadata={"help": "The run folder: checkpoints, loss.csv, loss.png, eval.json."})
    resume: bool = field(
        default=False,
        metadata={"help": "Continue from the latest checkpoint in output_dir (same data order); with a larger --max_steps, extend a finished run."},
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace the run in output_dir (a plain rerun with other settings keeps it as NAME.1 instead)."})

    # The seed's training settings
    max_steps: int = field(default=30, metadata={"help": "Optimizer steps to train for."})
    per_device_train_batch_size: int = field(default=2, metadata={"help": "Blocks per step and process."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate of AdamW."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "Learning-rate schedule after the warmup."})
    warmup_steps: float = field(default=10, metadata={"help": "Steps of linear warmup (a float < 1: a fraction of max_steps)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    logging_steps: float = field(default=3, metadata={"help": "Log (and write loss.csv) every this many steps."})
    seed: int = field(default=0, metadata={"help": "Seed of the weights' dropout, the data order and everything else random."})
    report_to: str = field(default="none", metadata={"help": "Experiment trackers to report to (none, tensorboard, wandb, ...)."})

    # Speed (see the docstring and benchmarks/RESULTS.md)
    optim: str = field(default="adamw_torch_fused", metadata={"help": "Optimizer: the fused AdamW kernel (the seed's was adamw_torch)."})
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 autocast with fp32 master weights. Default: where the hardware has bf16 arithmetic (GPU, CPU with AMX/AVX512-BF16)."},
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "Data loader worker processes (0: build batches in the main process)."})
    keep_freed_memory: bool = field(
        default=True,
        metadata={"help": "On a CPU (Linux), keep freed memory for reuse rather than fault it in again every step (see keep_freed_memory)."},
    )

    # Checkpoints: the final one always; periodic ones when save_strategy is "steps"
    save_strategy: str = field(default="no", metadata={"help": "'steps' saves every --save_steps; the final checkpoint is always saved."})

    # Validation: before training, every eval_steps, and at the end
    eval_strategy: str = field(default="steps", metadata={"help": "'steps': validate every --eval_steps and at the end; 'no': never."})
    eval_steps: float | None = field(default=None, metadata={"help": "Validate every this many steps (default: only before and after training)."})
    eval_on_start: bool = field(default=True, metadata={"help": "Validate before the first step."})
    eval_blocks: int = field(
        default=32,
        metadata={"help": "Validation blocks per evaluation, the first ones of the split (0 = all); model_preparation.py evaluates the same 32."},
    )
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Blocks per forward pass when validating."})

    bf16_from_hardware: bool = field(default=False, init=False, repr=False)  # bf16 left to the default

    def __post_init__(self):
        if self.eval_steps is None:
            self.eval_steps = self.max_steps  # with eval_on_start: before and after only
        if not torch.accelerator.is_available():
            self.use_cpu = True  # the Trainer allows bf16 on a CPU only when told it is one
        if self.bf16 is None:
            self.bf16, self.bf16_from_hardware = bf16_supported(self.use_cpu), True
        super().__post_init__()


# The allowed values of this stage's own settings, and (TRAINER_CHECKS) of the TrainingArguments
# ones it inherits, checked for flags and settings files alike (parse_settings), before
# TrainingArguments' own checks.
CHECKS = TRAINER_CHECKS | {"max_steps": at_least(1), "eval_blocks": at_least(0)}


def load_blocks(packed_dir, eval_blocks: int):
    """(train, validation): stage 2's splits as torch-formatted Datasets of int32 blocks, read from
    memory-mapped Arrow; validation cut to its first `eval_blocks` blocks (0 = all)."""
    train = packed_dataset(packed_dir, "train").with_format("torch")
    validation = packed_dataset(packed_dir, "validation").with_format("torch")
    if len(train) == 0:
        raise UserError(f"{Path(packed_dir) / 'train'}: no blocks to train on")
    if eval_blocks > 0 and len(validation) > eval_blocks:
        validation = validation.select(range(eval_blocks))
    return train, validation


def look_at_inputs(s: Settings):
    """The inputs and the run folder as this process sees them: ({"settings", "inputs", "run_dir":
    prepare_run_dir's decision}, (the packed data's manifest, the tokenizer, what prepare_run_dir
    said)); a UserError for inputs that do not fit."""
    packed_manifest = read_manifest(s.packed_dir, "data_packaging", hint="run data_packaging.py first")
    model_dir = Path(s.model_dir)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: not a model folder (no config.json); run model_preparation.py first")
    inputs = {
        "packed": {"dir": str(s.packed_dir), "fingerprint": packed_manifest["fingerprint"]},
        "model": {"dir": str(model_dir), "fingerprint": model_fingerprint(model_dir)},
    }
    tokenizer = load_tokenizer(model_dir)
    config = from_pretrained(AutoConfig, model_dir, f"{model_dir}: cannot load its config")
    check_model_fits_data(model_dir, config, tokenizer, s.packed_dir, packed_manifest)
    settings_values = comparable_settings(s)
    with contextlib.redirect_stdout(io.StringIO()) as said:  # said once all processes agree
        decision = prepare_run_dir(s, settings_values, inputs)
    return {"settings": settings_values, "inputs": inputs, "run_dir": decision}, (packed_manifest, tokenizer, said.getvalue())


def train(s: Settings, callbacks=()) -> dict | None:
    """The whole stage: check inputs, train, write the run folder. Returns eval.json's content
    (None when the run folder is already up to date)."""
    started = time.time()
    run_dir, model_dir = Path(s.output_dir), Path(s.model_dir)
    # Every process (on every node) looks at the inputs and the run folder; they must all see the
    # same, or all stop here, before anything changes (same_on_every_process).
    seen, (packed_manifest, tokenizer, said) = same_on_every_process(s, lambda: look_at_inputs(s))
    settings_values, inputs, decision = seen["settings"], seen["inputs"], seen["run_dir"]
    if s.process_index == 0:
        print(said, end="")
    if decision == "up to date":
        print(f"{run_dir} is up to date with these settings and inputs: skipping it (--overwrite redoes it, --resume continues it)")
        return None
    resume_from, previous_run = decision

    # Everything that can still refuse the inputs comes before the run folder changes.
    with s.main_process_first(desc="reading the packed blocks"):
        train_blocks, valid_blocks = load_blocks(s.packed_dir, s.eval_blocks)
    block_size = len(train_blocks[0]["input_ids"])
    if s.eval_strategy != "no" and len(valid_blocks) == 0:
        raise UserError(f"{Path(s.packed_dir) / 'validation'}: no blocks to validate on (or pass --eval_strategy no --eval_on_start false)")
    if s.keep_freed_memory and s.device.type == "cpu":
        keep_freed_memory()
    # fp32 master weights; never a pickle or the folder's own code (from_pretrained)
    model = from_pretrained(AutoModelForCausalLM, model_dir, f"{model_dir}: cannot load its weights", dtype=torch.float32)

    resumed = trainer_state(resume_from) if resume_from else None
    if resumed:
        # A run resumed at its eval_on_start already has its "before" validation.
        s.eval_on_start = s.eval_on_start and not evaluations(resumed.log_history)
    if s.should_save:  # the main process
        if previous_run is not None:
            run_dir.rename(previous_run)  # kept, never deleted: a plain rerun with other settings
        elif resume_from is None:
            shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        start_run_record(run_dir, settings_values, inputs)
    PartialState().wait_for_everyone()  # the run folder is ready

    monitor, stopper = Monitor(run_dir, tokenizer), StopOnSignal()
    trainer = Trainer(
        model=model,
        args=s,
        data_collator=collate_blocks,
        train_dataset=train_blocks,
        eval_dataset=valid_blocks if s.eval_strategy != "no" or s.eval_on_start else None,
        callbacks=[monitor, stopper, *callbacks],
    )
    print(
        f"training {model_dir} ({model.num_parameters() / 1e6:.1f}M parameters) on {len(train_blocks)} blocks of {block_size} tokens"
        f" for {s.max_steps} steps; {'bf16 autocast' if s.bf16 else 'fp32'} on {s.device.type}, {s.world_size} process(es)"
    )
    if resume_from and s.should_save:  # a kill right after the Trainer's save can leave it without the tokenizer
        tokenizer.save_pretrained(resume_from)
    if resumed and resumed.global_step >= s.max_steps:
        # killed after its final checkpoint, before manifest.json: only the run folder is left to finish
        print(f"{resume_from} is the final checkpoint: finishing the run folder")
        trainer.state, result = resumed, None
    else:
        result = trainer.train(resume_from_checkpoint=resume_from)

    if stopper.stopped_at is not None:
        return {"stopped_at": stopper.stopped_at, "signal": stopper.received, "checkpoint": str(run_dir / f"checkpoint-{stopper.stopped_at}")}
    if not trainer.is_world_process_zero():
        return None
    history = trainer.state.log_history
    checkpoint = f"checkpoint-{trainer.state.global_step}"
    valid = evaluations(history)
    report = {
        "model_dir": str(model_dir),
        "final_checkpoint": checkpoint,
        "steps": trainer.state.global_step,
        "resumed_from": Path(resume_from).name if resume_from else None,
        "previous_run": str(previous_run) if previous_run else None,  # where this call kept the run it replaced
        "train_loss_last_logged": next((e["loss"] for e in reversed(history) if "loss" in e), None),
        "train_loss_mean_this_call": round(result.training_loss, 5) if result else None,
        "validation": {
            "blocks": len(valid_blocks),
            "tokens": len(valid_blocks) * (block_size - 1),
            "before": valid[0] if valid and valid[0]["step"] == 0 else None,
            "after": valid[-1] if valid and valid[-1]["step"] == trainer.state.global_step else None,
            "history": valid,
        },
        "speed": speed_report(s, trainer, monitor, model, block_size),
        "train_wall_s": round(result.metrics.get("train_runtime", 0.0), 2) if result else 0.0,
    }
    plot_losses(history, run_dir / LOSS_PNG, f"{model_dir.name}: {trainer.state.global_step} steps")
    (run_dir / EVAL_JSON).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    extra = {"final_checkpoint": checkpoint, "tokenizer": packed_manifest.get("tokenizer"), "block_size": block_size, "previous_run": report["previous_run"]}
    write_manifest(run_dir, settings_values, inputs, extra, started)
    return report


def main(argv=None):
    s = parse_settings(Settings, argv, CHECKS)
    if s.resume and s.overwrite:
        raise UserError("--resume continues the run in output_dir and --overwrite replaces it: pass one of them")
    finished = False
    try:
        report = train(s)
        finished = True
    except Exception as e:  # a full disk or read-only run folder while saving: one line, not a traceback
        failure = write_failure(e)
        if failure is None:
            raise
        raise UserError(f"{s.output_dir}: writing the run failed ({failure}); its complete checkpoints stay: "
                        "once it can be written (space, permissions), the same command continues from the latest one") from None
    finally:
        leave_process_group(all_here=finished)
    if report and "stopped_at" in report:
        print(
            f"stopped at step {report['stopped_at']} of {s.max_steps} ({report['signal']}); saved {report['checkpoint']}; "
            "run the same command again to continue", file=sys.stderr,
        )  # fmt: skip
        sys.exit(128 + signal.Signals[report["signal"]].value)  # as if the signal had ended it: 130, 143
    if report:
        v, sp = report["validation"], report["speed"]
        before, after = v["before"], v["after"]
        if before and after:
            print(f"validation loss {before['loss']:.4f} -> {after['loss']:.4f} (perplexity {before['perplexity']:.1f} -> {after['perplexity']:.1f})")
        if "s_per_step" in sp:
            print(f"{sp['s_per_step']:.3f} s/step, {sp['tokens_per_s']:.0f} tokens/s, MFU {sp['mfu']:.1%} ({sp['precision']})")
        print(f"wrote {Path(s.output_dir) / report['final_checkpoint']}, {LOSS_CSV}, {LOSS_PNG}, {EVAL_JSON}")
        if report["previous_run"]:
            print(f"the previous run, made with other settings or inputs, is kept in {report['previous_run']}")


if __name__ == "__main__":
    # A second Ctrl-C (or one before training starts) ends here: the checkpoints saved so far stay,
    # and the same command continues from the latest complete one (or starts again without one).
    run_main(main, interrupted="checkpoints already saved in the run folder stay; run the same command again to continue from the latest complete one")
