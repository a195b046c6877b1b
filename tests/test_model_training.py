"""model_training.py on a tiny random Llama and a tiny packed corpus built here."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    TrainerCallback,
)

import model_training as mt
from minipretrain import stages, tokenization
from minipretrain.settings import UserError

PROJECT = Path(__file__).resolve().parent.parent
WORDS = "the a cat dog sat ran on under mat rug and then it was big small red blue one two".split()
SPECIALS = ["<unk>", "<s>", "</s>"]
BLOCK = 16
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)


def tiny_tokenizer(words=WORDS):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(SPECIALS + words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@dataclass
class FixtureSettings:
    what: str = "test fixture"


def write_packed(folder: Path, tokenizer, train_blocks=64, valid_blocks=8):
    """A stage-2 output: a repetitive corpus (one 7-token sentence over and over, BOS-separated)."""
    sentence = tokenizer("the cat sat on a red mat")["input_ids"]
    stream = ([tokenizer.bos_token_id] + sentence + [tokenizer.eos_token_id]) * ((train_blocks + valid_blocks) * BLOCK // 9 + 1)
    blocks = [stream[i * BLOCK : (i + 1) * BLOCK] for i in range(train_blocks + valid_blocks)]
    with stages.stage_output(folder, "data_packaging", FixtureSettings(), {}, overwrite=True) as out:
        for split, rows in (("train", blocks[:train_blocks]), ("validation", blocks[train_blocks:])):
            (out.path / split).mkdir()
            table = pa.table({"input_ids": pa.array(rows, type=pa.list_(pa.int32()))})
            pq.write_table(table, out.path / split / "packed-00000.parquet")
        out.manifest |= {"block_size": BLOCK, "tokenizer": tokenization.tokenizer_info(tokenizer)}
    return folder


def write_model(folder: Path, tokenizer, vocab_size=None):
    """A stage-3 output: a tiny random Llama with the tokenizer, and a manifest."""
    torch.manual_seed(0)
    config = LlamaConfig(**TINY, vocab_size=vocab_size or len(tokenizer), bos_token_id=1, eos_token_id=2, max_position_embeddings=64)
    with stages.stage_output(folder, "model_preparation", FixtureSettings(), {}, overwrite=True) as out:
        LlamaForCausalLM(config).save_pretrained(out.path)
        tokenizer.save_pretrained(out.path)
        out.manifest["tokenizer"] = tokenization.tokenizer_info(tokenizer)
    return folder


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls: a second thread only adds synchronisation (and waits for a busy core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    tokenizer = tiny_tokenizer()
    return write_packed(root / "packed", tokenizer), write_model(root / "model", tokenizer)


def argv(inputs, run_dir, *extra):
    packed, model = inputs
    return [
        "--packed_dir", str(packed), "--model_dir", str(model), "--output_dir", str(run_dir),
        "--learning_rate", "3e-3", "--warmup_steps", "2", "--bf16", "false", "--disable_tqdm", "true",
        *map(str, extra),
    ]  # fmt: skip


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_loss_falls_and_run_folder_is_complete(inputs, tmp_path):
    run = tmp_path / "run"
    mt.main(argv(inputs, run, "--max_steps", 24, "--eval_steps", 12))

    report = json.loads((run / "eval.json").read_text())
    v = report["validation"]
    assert [e["step"] for e in v["history"]] == [0, 12, 24]  # before, every 12 steps, after
    assert v["after"]["loss"] < 0.5 * v["before"]["loss"]  # a repeated sentence is learnt
    assert v["before"]["perplexity"] == pytest.approx(2.718281828 ** v["before"]["loss"], rel=1e-3)
    rows = read_csv(run / "loss.csv")
    assert [int(r["step"]) for r in rows] == [3, 6, 9, 12, 15, 18, 21, 24]  # every 3 steps, once each
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert report["speed"]["steps_timed"] == 24 and report["speed"]["tokens_per_step"] == 2 * BLOCK
    assert report["speed"]["tokens_per_s"] > 0 and 0 < report["speed"]["mfu"] < 1
    assert (run / "loss.png").stat().st_size > 1000

    # the final checkpoint (and no other) loads as a plain model, with the tokenizer beside it
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-24"]
    model = AutoModelForCausalLM.from_pretrained(run / "checkpoint-24")
    assert tokenization.tokenizer_fingerprint(tokenization.load_tokenizer(run / "checkpoint-24")) == tokenization.tokenizer_fingerprint(tiny_tokenizer())
    ids = torch.tensor([tiny_tokenizer()("<s> the cat sat on a")["input_ids"]])
    assert tiny_tokenizer().decode(model(ids).logits[0, -1].argmax()) == "red"

    manifest = stages.read_manifest(run, "model_training")
    assert manifest["final_checkpoint"] == "checkpoint-24" and "checkpoint-24/model.safetensors" in manifest["files"]

    # a finished run: the same command is up to date; another one keeps it beside the new run
    mt.main(argv(inputs, run, "--max_steps", 24, "--eval_steps", 12))
    assert stages.read_manifest(run, "model_training")["fingerprint"] == manifest["fingerprint"]
    mt.main(argv(inputs, run, "--max_steps", 6))
    kept = run.parent / f"{run.name}.1"
    assert stages.read_manifest(kept, "model_training")["fingerprint"] == manifest["fingerprint"]
    assert (kept / "checkpoint-24" / "model.safetensors").is_file()
    assert stages.read_manifest(run, "model_training")["previous_run"] == str(kept)
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-6"]


def weights(checkpoint):
    return AutoModelForCausalLM.from_pretrained(checkpoint).state_dict()


def assert_same_weights(a, b):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "weights differ"


class StepRecorder(TrainerCallback):
    """Appends the Trainer's step count after each optimizer step that runs to `steps`."""

    def __init__(self, steps: list):
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


TRAIN = mt.train


def counting_steps(monkeypatch, *callbacks) -> list[int]:
    """From now on mt.main trains with `callbacks` and a StepRecorder: the list returned (a new one
    each call) gets the steps that actually run. Training is deterministic, so equal final weights
    cannot tell a run continued at step 17 from one started again; the steps that ran can."""
    steps = []
    monkeypatch.setattr(mt, "train", lambda s: TRAIN(s, callbacks=[*callbacks, StepRecorder(steps)]))
    return steps


def test_an_unfinished_run_continues_where_it_stopped(inputs, tmp_path, monkeypatch):
    run = tmp_path / "run"
    common_args = ("--max_steps", 12, "--save_strategy", "steps", "--save_steps", 6, "--eval_strategy", "no", "--eval_on_start", "false")
    mt.main(argv(inputs, run, *common_args))
    whole = read_csv(run / "loss.csv")
    final = weights(run / "checkpoint-12")
    fingerprint = stages.read_manifest(run, "model_training")["fingerprint"]

    # as if killed after step 6's checkpoint, at step 10
    shutil.rmtree(run / "checkpoint-12")
    for name in ("manifest.json", "eval.json", "loss.png"):
        (run / name).unlink()
    # another command keeps an unfinished run (of a copy here) beside its new run, unchanged
    other = tmp_path / "other"
    shutil.copytree(run, other)
    mt.main(argv(inputs, other, *common_args, "--learning_rate", "1e-3"))
    kept = tmp_path / "other.1"
    assert sorted(p.name for p in kept.glob("checkpoint-*")) == ["checkpoint-6"] and not (kept / "manifest.json").exists()
    assert stages.read_manifest(other, "model_training")["settings"]["learning_rate"] == 1e-3
    steps = counting_steps(monkeypatch)
    mt.main(argv(inputs, run, *common_args))  # the same command continues it
    assert steps == [7, 8, 9, 10, 11, 12]  # from checkpoint-6: 6 steps, not 12
    assert json.loads((run / "eval.json").read_text())["speed"]["steps_timed"] == 6

    resumed = read_csv(run / "loss.csv")
    assert [r["step"] for r in resumed] == ["3", "6", "9", "12"]
    for a, b in zip(whole, resumed):  # same data order, same optimizer state: the same losses
        assert float(a["loss"]) == float(b["loss"])
    assert_same_weights(final, weights(run / "checkpoint-12"))
    assert json.loads((run / "eval.json").read_text())["resumed_from"] == "checkpoint-6"
    assert stages.read_manifest(run, "model_training")["fingerprint"] == fingerprint
    with pytest.raises(UserError, match="pass a larger --max_steps"):
        mt.main(argv(inputs, run, *common_args, "--resume"))
    steps = counting_steps(monkeypatch)
    mt.main(argv(inputs, run, *common_args, "--resume", "--max_steps", 15))  # --resume extends a finished run
    assert steps == [13, 14, 15]
    assert [r["step"] for r in read_csv(run / "loss.csv")][-2:] == ["12", "15"]


class InterruptAt(TrainerCallback):
    """Sends this process SIGINT while step `step` runs, as Ctrl-C would."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step - 1:
            os.kill(os.getpid(), signal.SIGINT)


def test_stopped_at_step_17_and_continued_equals_30_steps_uninterrupted(inputs, tmp_path, monkeypatch, capsys):
    args = ("--max_steps", 30, "--eval_steps", 10, "--learning_rate", "1e-3")
    mt.main(argv(inputs, tmp_path / "whole", *args))
    whole = stages.read_manifest(tmp_path / "whole", "model_training")

    run = tmp_path / "run"
    steps = counting_steps(monkeypatch, InterruptAt(17))
    with pytest.raises(SystemExit) as stopped:
        mt.main(argv(inputs, run, *args))
    assert stopped.value.code == 130
    assert steps == list(range(1, 18))
    assert "stopped at step 17 of 30 (SIGINT)" in capsys.readouterr().err
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-17"]
    assert not (run / "manifest.json").exists() and not (run / "eval.json").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    with pytest.raises(UserError, match="finish model_training.py first"):
        import inference_demo

        inference_demo.resolve_checkpoint(str(run))

    steps = counting_steps(monkeypatch)
    mt.main(argv(inputs, run, *args))  # the same command continues from checkpoint-17
    assert steps == list(range(18, 31))  # 13 optimizer steps: continued at 17, not started again
    assert "continuing from checkpoint-17" in capsys.readouterr().out
    assert_same_weights(weights(tmp_path / "whole" / "checkpoint-30"), weights(run / "checkpoint-30"))
    continued = stages.read_manifest(run, "model_training")
    assert continued["fingerprint"] == whole["fingerprint"]
    report = json.loads((run / "eval.json").read_text())
    assert [e["step"] for e in report["validation"]["history"]] == [0, 10, 20, 30]
    assert report["validation"] == json.loads((tmp_path / "whole" / "eval.json").read_text())["validation"]
    assert report["speed"]["steps_timed"] == 13 and report["resumed_from"] == "checkpoint-17"
    # loss.csv: the same rows, except step 18's, which after the restart covers step 18 only
    rows = lambda d: {r["step"]: float(r["loss"]) for r in read_csv(d / "loss.csv")}  # noqa: E731
    a, b = rows(tmp_path / "whole"), rows(run)
    assert a.keys() == b.keys() and {k for k in a if a[k] != b[k]} == {"18"}


def run_script(args, timeout=240, kill_when=None, sig=signal.SIGKILL):
    """model_training.py as a subprocess; with kill_when, `sig` is sent once kill_when() is true."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(PROJECT / "model_training.py"), *args], cwd=PROJECT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    if kill_when:
        import time

        deadline = time.monotonic() + timeout
        while proc.poll() is None and not kill_when() and time.monotonic() < deadline:
            time.sleep(0.001)
        if proc.poll() is None:
            proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def latest_complete_checkpoint(run) -> int:
    """The step of the run folder's latest checkpoint with its trainer_state.json (written last), or 0."""
    return max((int(p.name.split("-")[1]) for p in run.glob("checkpoint-*") if (p / "trainer_state.json").is_file()), default=0)


def test_killed_or_stopped_subprocess_reruns_to_the_uninterrupted_result(inputs, tmp_path):
    args = ("--max_steps", 30, "--save_strategy", "steps", "--save_steps", 5, "--eval_steps", 15)
    code, _, err = run_script(argv(inputs, tmp_path / "whole", *args))
    assert code == 0, err[-2000:]
    whole = stages.read_manifest(tmp_path / "whole", "model_training")

    # SIGKILL while checkpoint-10 is written; SIGTERM (as a scheduler stops a job) once checkpoint-20
    # is complete; SIGKILL after the final checkpoint, before manifest.json
    cases = [("mid-save", signal.SIGKILL, "checkpoint-10", -9, "continuing from checkpoint-"),
             ("stopped", signal.SIGTERM, "checkpoint-20/trainer_state.json", 143, "continuing from checkpoint-"),
             ("before-manifest", signal.SIGKILL, "checkpoint-30/trainer_state.json", -9, "is the final checkpoint: finishing the run folder")]  # fmt: skip
    for name, sig, path, expected, rerun_says in cases:
        run = tmp_path / name
        code, _, err = run_script(argv(inputs, run, *args), kill_when=lambda: (run / path).exists(), sig=sig)
        assert code == expected, f"{name}: {sig.name} did not land while the run was going (exit {code}): {err[-1500:]}"
        assert not (run / "manifest.json").exists()
        if sig == signal.SIGTERM:
            assert "stopped at step" in err and "run the same command again to continue" in err
        resume_at = latest_complete_checkpoint(run)
        code, out, err = run_script(argv(inputs, run, *args))
        assert code == 0, err[-2000:]
        assert rerun_says in out, f"{name}: {out[-1000:]}"
        # the steps that ran (eval.json counts each optimizer step of this process): only those after the checkpoint
        assert json.loads((run / "eval.json").read_text())["speed"]["steps_timed"] == 30 - resume_at, f"{name}: resumed at {resume_at}"
        assert_same_weights(weights(tmp_path / "whole" / "checkpoint-30"), weights(run / "checkpoint-30"))
        assert max(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*")) == 30  # no step past max_steps
        assert stages.read_manifest(run, "model_training")["fingerprint"] == whole["fingerprint"], name


def test_refuses_a_model_that_does_not_fit_the_data(inputs, tmp_path):
    packed, _ = inputs
    other = tiny_tokenizer(list(reversed(WORDS)))  # same size, other ids
    model = write_model(tmp_path / "other-tokenizer", other)
    with pytest.raises(UserError, match="is not the one that packed") as e:
        mt.main(argv((packed, model), tmp_path / "run"))
    assert "\n" not in str(e.value)

    # the right tokenizer, but an embedding too small for its ids
    small = write_model(tmp_path / "small-vocab", tiny_tokenizer(), vocab_size=10)
    with pytest.raises(UserError, match="vocabulary has 10 entries"):
        mt.main(argv((packed, small), tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_resume_without_a_checkpoint_is_refused(inputs, tmp_path):
    with pytest.raises(UserError, match="no checkpoint to resume"):
        mt.main(argv(inputs, tmp_path / "run", "--resume"))


@pytest.mark.parametrize("amx, avx512_bf16", [(False, False), (True, False), (False, True), (True, True)])
def test_bf16_default_follows_the_hardware(monkeypatch, amx, avx512_bf16):
    """bf16 autocast by default on a CPU with AMX or AVX512-BF16 (either), fp32 on one with neither."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    s = mt.Settings(output_dir="x", use_cpu=True)
    assert s.bf16 is (amx or avx512_bf16) and s.bf16_from_hardware
    chosen = mt.Settings(output_dir="x", use_cpu=True, bf16=False)
    assert chosen.bf16 is False and not chosen.bf16_from_hardware


def test_bf16_default_on_this_cpu_follows_its_flags():
    flags = Path("/proc/cpuinfo")
    if not flags.is_file():
        pytest.skip("no /proc/cpuinfo to read the CPU flags from")
    words = set(flags.read_text().split())
    assert mt.Settings(output_dir="x", use_cpu=True).bf16 is bool({"amx_tile", "avx512_bf16"} & words)


def test_defaults_are_the_readmes():
    """30 steps of 2 blocks per device, fused AdamW at 5e-5, linear after 10 warmup steps, the loss
    logged every 3 steps, only the final checkpoint, no activation checkpointing, batches built in
    the main process, validation on the first 32 blocks before and after training."""
    s = mt.Settings(output_dir="x", use_cpu=True)
    assert (s.max_steps, s.per_device_train_batch_size, s.learning_rate, s.warmup_steps, s.logging_steps) == (30, 2, 5e-5, 10, 3)
    assert (s.lr_scheduler_type.value, s.optim.value, s.save_strategy.value) == ("linear", "adamw_torch_fused", "no")
    assert not s.activation_checkpointing and s.dataloader_num_workers == 0 and s.keep_freed_memory
    assert (s.eval_blocks, s.eval_on_start, s.eval_steps) == (32, True, 30)


def free_port() -> int:
    """A port nothing listens on now (the kernel picks it: bind to port 0). Another process can
    still take it before torchrun binds it, so the launches below retry on "address already in use"."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The DDP runs: 6 steps of 2 blocks per process; a collective that waits for a process that is gone
# gives up after 120 s (--ddp_timeout) rather than gloo's 30 minutes.
DDP_ARGS = ("--max_steps", 6, "--ddp_timeout", 120)
LAUNCH_TIMEOUT = 240


def stop_process_tree(proc) -> None:
    """End a torchrun launch and its workers. torchrun starts each worker in a session of its own,
    so killing the launcher's process group alone would leave the workers waiting in a collective:
    SIGTERM to the launcher (it passes it on to its workers), then SIGKILL to whatever is left."""
    import psutil  # accelerate's dependency

    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    if proc.poll() is None:
        proc.terminate()
    _, alive = psutil.wait_procs(tree, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()


def torchrun(launches: list[list], logs: Path, timeout=LAUNCH_TIMEOUT, grace=30) -> list[tuple[int | None, str]]:
    """Start each launch (torchrun's flags, then model_training.py's) as its own torchrun process,
    all at once, as on separate machines; wait for all of them, or, once one has failed, `grace`
    seconds more for the others (a node whose peer is gone would wait for it until a timeout).
    Returns each one's (exit status, None if it was still running, and its output). Whatever
    happens (a timeout, a failed assertion, Ctrl-C), none of them is left running."""
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}  # one thread each: the same as torchrun's --nproc_per_node > 1
    logs.mkdir(parents=True, exist_ok=True)
    procs, files = [], []
    try:
        for i, (flags, script_args) in enumerate(launches):
            out = open(logs / f"launch-{i}.log", "w+")  # files, not pipes: nobody blocks on a full pipe
            files.append(out)
            procs.append(subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *map(str, flags), str(PROJECT / "model_training.py"),
                                           *map(str, script_args)], cwd=PROJECT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True))  # fmt: skip
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() for p in procs):  # one failed
                deadline = min(deadline, time.monotonic() + grace)
            time.sleep(0.2)
        results = []
        for p, out in zip(procs, files):
            out.seek(0)
            results.append((p.poll(), out.read()))
        assert any(code for code, _ in results) or all(code == 0 for code, _ in results), (
            f"still running after {timeout} s: " + "\n---\n".join(o[-1500:] for _, o in results))
        return results
    finally:
        for p in procs:
            stop_process_tree(p)
        for out in files:
            out.close()


def launch_with_a_free_port(make_launches, run: Path, tries=3, timeout=LAUNCH_TIMEOUT) -> list[tuple[int | None, str]]:
    """torchrun(make_launches(port)), again with another port when the port was taken between
    free_port() and torchrun binding it (then no process has started, nothing is written)."""
    for attempt in range(tries):
        results = torchrun(make_launches(free_port()), run.parent / f"{run.name}-logs-{attempt}", timeout)
        if not any(code and "address already in use" in out.lower() for code, out in results):
            return results
    return results


@pytest.fixture(scope="module")
def ddp_one_node(inputs, tmp_path_factory):
    """One node, two processes: torchrun --nproc_per_node 2 (gloo on the CPU)."""
    run = tmp_path_factory.mktemp("ddp-one-node") / "run"
    [(code, out)] = launch_with_a_free_port(lambda port: [(["--nproc_per_node", 2, "--master_port", port], argv(inputs, run, *DDP_ARGS))], run)
    assert code == 0, out[-3000:]
    return run


def test_two_processes_ddp(ddp_one_node):
    run = ddp_one_node
    report = json.loads((run / "eval.json").read_text())
    assert report["speed"]["processes"] == 2 and report["speed"]["tokens_per_step"] == 2 * 2 * BLOCK
    assert [int(r["step"]) for r in read_csv(run / "loss.csv")] == [3, 6]
    assert (run / "checkpoint-6" / "model.safetensors").is_file()
    assert sorted(p.name for p in (run / "checkpoint-6").glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]


def two_nodes(rendezvous: str, port: int, node_args: list[list]) -> list[tuple[list, list]]:
    """The torchrun launches of a two-node job, one process per node, both on this machine.
    static: node 0's torchrun hosts the store at --master_addr:--master_port and --node_rank gives
    each node its ranks, so node 0's process is rank 0 (the one that saves), and nothing depends
    on host names. c10d: the rendezvous the README recommends for real machines; it ignores
    --node_rank (ranks go by host name, then launcher pid) and each launcher whose host is the
    endpoint's tries to host its store, so on one machine is_host says which one does."""
    common = ["--nnodes", 2, "--nproc_per_node", 1]
    if rendezvous == "static":
        flags = [[*common, "--node_rank", i, "--master_addr", "127.0.0.1", "--master_port", port] for i in (0, 1)]
    else:
        flags = [[*common, "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_conf", f"is_host={int(i == 0)}"] for i in (0, 1)]
    return list(zip(flags, node_args))


def final_weights(run: Path, step=6) -> dict:
    from safetensors.torch import load_file

    return load_file(run / f"checkpoint-{step}" / "model.safetensors")


@pytest.mark.parametrize("rendezvous", ["static", "c10d"])
def test_two_nodes_train_the_same_weights_as_one_node_with_two_processes(inputs, ddp_one_node, tmp_path, rendezvous):
    """torchrun --nnodes 2 --nproc_per_node 1 on each of two 'nodes' (two torchrun launchers on this
    machine, talking over TCP as separate machines would) against torchrun --nproc_per_node 2: the
    same world of 2 processes, the same ranks, data shards and gloo all-reduce of 2 gradients, so the
    same weights, bit for bit (a + b == b + a in floating point: 2 processes leave the sum no order
    to differ in)."""
    run = tmp_path / "run"
    args = argv(inputs, run, *DDP_ARGS)
    results = launch_with_a_free_port(lambda port: two_nodes(rendezvous, port, [args, args]), run)
    for node, (code, out) in enumerate(results):
        assert code == 0, f"node {node}: exit {code}\n{out[-3000:]}"

    # both nodes took part: a world of 2 processes, 2 x 2 blocks a step, each process's RNG state
    # saved by that process, and each node's process saw the same job
    report = json.loads((run / "eval.json").read_text())
    assert report["speed"]["processes"] == 2 and report["speed"]["tokens_per_step"] == 2 * 2 * BLOCK
    assert sorted(p.name for p in (run / "checkpoint-6").glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    for node, (_, out) in enumerate(results):
        assert "for 6 steps; fp32 on cpu, 2 process(es)" in out, f"node {node}: {out[-2000:]}"
    writers = [node for node, (_, out) in enumerate(results) if f"wrote {run / 'checkpoint-6'}" in out]
    assert len(writers) == 1  # process 0 alone finishes the run folder
    if rendezvous == "static":
        assert writers == [0]  # --node_rank 0 holds rank 0
    assert [int(r["step"]) for r in read_csv(run / "loss.csv")] == [3, 6]

    one_node, two = final_weights(ddp_one_node), final_weights(run)
    assert one_node.keys() == two.keys() and len(two) > 0
    differ = [k for k in one_node if not torch.equal(one_node[k], two[k])]
    assert not differ, f"{len(differ)} of {len(two)} tensors differ, e.g. {differ[:3]}"
    assert json.loads((ddp_one_node / "eval.json").read_text())["validation"] == report["validation"]


@pytest.mark.parametrize("case", ["a flag on one node", "the run folder on one node's disk", "an input one node lacks"])
def test_nodes_that_see_different_things_all_stop_with_one_line(inputs, ddp_one_node, tmp_path, case):
    """Each node reads its own command line, inputs and run folder. Where one node's differ from
    node 0's, training on would mix two runs (another learning rate on one node), or hang (one node
    continuing a run from a checkpoint that the other, on its own disk, does not have), and a node
    that refuses its inputs alone would leave the other waiting for it: every process stops,
    before anything changes, with one line naming the process, its host and what differs."""
    run = tmp_path / "run"
    args = argv(inputs, run, *DDP_ARGS)
    if case == "a flag on one node":
        node1 = [*args, "--learning_rate", "1e-3"]
        expected = "does not see what process 0 (on {host}) sees: process 0's -> process 1's: learning_rate 0.003 -> 0.001."
    elif case == "the run folder on one node's disk":
        shutil.copytree(ddp_one_node, run)  # the same settings; unfinished (no manifest.json): continued from checkpoint-6
        (run / "manifest.json").unlink()
        node1 = argv(inputs, tmp_path / "node1-disk" / "run", *DDP_ARGS)
        expected = "in the run folder, process 0 would continue from checkpoint-6, process 1 would start the run."
    else:
        node1 = argv((tmp_path / "missing", inputs[1]), run, *DDP_ARGS)
        expected = "{missing}: no such folder; run data_packaging.py first"  # process 1's own line, the others' with "process 1 (on HOST) stopped: "
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    results = launch_with_a_free_port(lambda port: two_nodes("static", port, [args, node1]), run, timeout=120)  # a hang: killed, code None
    expected = expected.format(host=socket_host(), missing=tmp_path / "missing")
    for node, (code, out) in enumerate(results):
        errors = [line for line in out.splitlines() if line.startswith("error: ")]
        assert code == 1 and len(errors) == 1 and expected in errors[0], f"node {node}: exit {code}\n{out[-3000:]}"
        if case == "an input one node lacks" and node == 0:
            assert errors[0].startswith(f"error: process 1 (on {socket_host()}) stopped: ") and "; process 0 (on " in errors[0]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "-logs-" not in str(p)) == before  # nothing changed


def socket_host() -> str:
    import socket

    return socket.gethostname()
