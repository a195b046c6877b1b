"""The edit-and-rerun loop as a user runs it: `python3 run.py`, edit a constant at the top of a
script (or give a settings file), `python3 run.py` again. Only the stages that need it rebuild,
the ones before them are skipped, the result equals a fresh run's with the new constant, and a
finished training run made with other settings is kept, never deleted.

The project is copied into a temporary folder whose one shared default, the base model, points at
a tiny random Llama (so each full run takes seconds); `.venv` is the checkout's own.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from minipretrain.settings import PROJECT_DIR

STAGES = ["data_preparation.py", "data_packaging.py", "model_preparation.py", "model_training.py", "inference_demo.py"]


def tiny_base(folder: Path) -> Path:
    """A 2-layer random Llama with a byte-level BPE tokenizer trained in code on the sample corpus."""
    text = [json.loads(line)["text"] for line in (PROJECT_DIR / "sample_data/web/clean-a.jsonl").open()]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def project_copy(root: Path, base: Path) -> Path:
    """The scripts, the package, the sample corpus and run.py, with DEFAULT_BASE_MODEL set to `base`."""
    for name in [*STAGES, "run.py", "requirements.txt", "requirements-data.txt"]:
        shutil.copy(PROJECT_DIR / name, root / name)
    for folder in ("minipretrain", "sample_data"):
        shutil.copytree(PROJECT_DIR / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (root / ".venv").symlink_to(PROJECT_DIR / ".venv")
    edit(root / "minipretrain/settings.py", 'DEFAULT_BASE_MODEL = "smollm2-135m"', f'DEFAULT_BASE_MODEL = "{base}"')
    edit(root / "inference_demo.py", 'max_new_tokens: int = field(default=40,', "max_new_tokens: int = field(default=4,")
    return root


def edit(path: Path, old: str, new: str) -> None:
    """What a user does in an editor: one constant changed."""
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not once in {path}"
    path.write_text(text.replace(old, new))


def run(root: Path, *args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{args} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr
    return r.stdout


def stage_lines(out: str) -> dict[str, str]:
    """What each stage run by run.py printed, by stage."""
    parts = re.split(r"^=== (\S+) ===$", out, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def fingerprints(root: Path) -> dict:
    work = root / "work"
    folders = {"cleaned": work / "cleaned", "packed": work / "packed", "model": work / "models/smollm2-dus", "run": work / "runs/smollm2-dus"}
    return {name: json.loads((f / "manifest.json").read_text())["fingerprint"] for name, f in folders.items()}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_base(tmp_path_factory.mktemp("tiny-base"))


def test_edit_a_constant_and_run_again(base, tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    project_copy(root, base)
    first = stage_lines(run(root, "run.py"))
    assert list(first) == STAGES
    before = fingerprints(root)
    finished_run = (root / "work/runs/smollm2-dus/checkpoint-30/model.safetensors").read_bytes()

    # nothing changed: every stage with an output skips it
    again = stage_lines(run(root, "run.py"))
    for stage in STAGES[:4]:
        assert "is up to date with these settings and inputs: skipping it" in again[stage], stage
    assert "samples.md is up to date with these settings and models: skipping the generations" in again["inference_demo.py"]
    assert "**trained, greedy**" in again["inference_demo.py"]  # the samples are shown all the same
    assert fingerprints(root) == before

    # a training constant: stages 1-3 skip, stage 4 trains anew and keeps the finished run beside it
    edit(root / "model_training.py", "learning_rate: float = field(default=5e-5,", "learning_rate: float = field(default=1e-3,")
    second = stage_lines(run(root, "run.py"))
    for stage in STAGES[:3]:
        assert "up to date" in second[stage], stage
    kept = root / "work/runs/smollm2-dus.1"
    assert f"learning_rate 5e-05 -> 0.001: keeping the finished run of work/runs/smollm2-dus as {kept.relative_to(root)}" in second["model_training.py"]
    assert (kept / "checkpoint-30/model.safetensors").read_bytes() == finished_run
    assert "wrote work/runs/smollm2-dus/samples.md" in second["inference_demo.py"]  # the new run's generations
    assert json.loads((kept / "manifest.json").read_text())["fingerprint"] == before["run"]
    after_lr = fingerprints(root)
    assert {k: v for k, v in after_lr.items() if k != "run"} == {k: v for k, v in before.items() if k != "run"}
    assert after_lr["run"] != before["run"]

    # a cleaning constant: everything after it rebuilds, saying why
    edit(root / "data_preparation.py", "max_dup_paragraph_frac: float = field(default=0.30,", "max_dup_paragraph_frac: float = field(default=0.25,")
    third = stage_lines(run(root, "run.py"))
    assert "max_dup_paragraph_frac 0.3 -> 0.25: rebuilding work/cleaned" in third["data_preparation.py"]
    assert "input cleaned changed: rebuilding work/packed" in third["data_packaging.py"]
    assert "input packed changed: rebuilding work/models/smollm2-dus" in third["model_preparation.py"]
    assert "keeping the finished run of work/runs/smollm2-dus as work/runs/smollm2-dus.2" in third["model_training.py"]
    edited = fingerprints(root)
    assert all(edited[k] != after_lr[k] for k in edited)

    # ... and ends where a fresh run with both constants ends
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    project_copy(fresh, base)
    for name in ("model_training.py", "data_preparation.py"):
        shutil.copy(root / name, fresh / name)
    run(fresh, "run.py")
    # (the fingerprints differ: stage 1's record its input files' paths and times, which differ in a copy)
    for path in ["work/cleaned/cleaned-00000.parquet", "work/packed/train/packed-00000.parquet",
                 "work/packed/validation/packed-00000.parquet", "work/models/smollm2-dus/model.safetensors",
                 "work/runs/smollm2-dus/checkpoint-30/model.safetensors"]:
        assert (fresh / path).read_bytes() == (root / path).read_bytes(), path

    # a settings file for one stage, then the rest from the stage after it
    (root / "packing.yaml").write_text("block_size: 16\n")
    run(root, "data_packaging.py", "packing.yaml")
    fourth = stage_lines(run(root, "run.py", "--from", "model_preparation"))
    assert list(fourth) == STAGES[2:]
    assert "input packed changed: rebuilding work/models/smollm2-dus" in fourth["model_preparation.py"]
    assert "keeping the finished run of work/runs/smollm2-dus as work/runs/smollm2-dus.3" in fourth["model_training.py"]
    assert json.loads((root / "work/runs/smollm2-dus/manifest.json").read_text())["block_size"] == 16
    # --overwrite redoes an up-to-date stage; the finished runs kept so far are all still there
    fifth = stage_lines(run(root, "run.py", "--from", "4", "--overwrite"))
    assert "--overwrite: replacing the run in work/runs/smollm2-dus" in fifth["model_training.py"]
    assert sorted(p.name for p in (root / "work/runs").iterdir()) == [f"smollm2-dus{s}" for s in ("", ".1", ".2", ".3")]


def test_run_py_help_and_a_wrong_stage(tmp_path):
    r = subprocess.run([sys.executable, str(PROJECT_DIR / "run.py"), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--from STAGE" in r.stdout and "--overwrite" in r.stdout
    r = subprocess.run([sys.executable, str(PROJECT_DIR / "run.py"), "--from", "model_trainin"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--from model_trainin: choose one of data_preparation" in r.stderr
