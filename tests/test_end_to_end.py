"""The five scripts run as a user runs them (subprocesses, in order) on tiny settings, and their
outputs and manifests chain together."""

import json
import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from minipretrain.settings import PROJECT_DIR


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A 'hub-style' model folder: a 3-layer random Llama with a byte-level BPE tokenizer trained in code."""
    folder = tmp_path_factory.mktemp("base")
    text = [json.loads(line)["text"] for line in (PROJECT_DIR / "sample_data/web/clean-a.jsonl").open()]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(text, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=0, eos_token_id=0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run(script, *args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(PROJECT_DIR / script), *map(str, args)], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{script} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def run_pipeline(base_dir, cwd):
    """The five scripts in order, into cwd/work; returns the four output folders and the demo's output."""
    work = cwd / "work"
    cleaned, packed, model, run_dir = work / "cleaned", work / "packed", work / "model", work / "run"
    run("data_preparation.py", "--output_dir", cleaned, cwd=cwd)
    run("data_packaging.py", "--input_dir", cleaned, "--output_dir", packed, "--tokenizer", base_dir, cwd=cwd)
    run("model_preparation.py", "--base", base_dir, "--packed_dir", packed, "--output_dir", model, cwd=cwd)
    run("model_training.py", "--model_dir", model, "--packed_dir", packed, "--output_dir", run_dir,
        "--max_steps", 6, "--warmup_steps", 2, "--learning_rate", 1e-3, cwd=cwd)
    run("model_evaluation.py", "--models", model, run_dir, "--packed_dir", packed, "--output_dir", work / "evaluation", "--items", 40,
        "--resamples", 200, cwd=cwd)
    out = run("inference_demo.py", "--checkpoint", run_dir, "--compare_with", model, "--max_new_tokens", 5,
              "--prompts", "The harbour", cwd=cwd)
    return (cleaned, packed, model, run_dir), out


@pytest.fixture(scope="module")
def first_run(base_dir, tmp_path_factory):
    return run_pipeline(base_dir, tmp_path_factory.mktemp("pipeline"))


def test_five_stages_chain(first_run):
    (cleaned, packed, model, run_dir), out = first_run
    cwd = cleaned.parent.parent

    # each stage names the previous stage's fingerprint as its input
    m1, m2, m3, m4 = manifest(cleaned), manifest(packed), manifest(model), manifest(run_dir)
    assert [m["stage"] for m in (m1, m2, m3, m4)] == ["data_preparation", "data_packaging", "model_preparation", "model_training"]
    assert m1["fingerprint"] in json.dumps(m2["inputs"])
    assert m2["fingerprint"] in json.dumps(m4["inputs"]) and m3["fingerprint"] in json.dumps(m4["inputs"])
    assert m2["tokenizer"]["fingerprint"] == m3["tokenizer"]["fingerprint"]

    # stage 1 -> 2: every kept document was packed, every block is block_size int32 tokens
    docs = sum(pq.read_metadata(f).num_rows for f in cleaned.glob("cleaned-*.parquet"))
    assert docs == m1["counts"]["documents_out_documents"] == 138
    assert m2["counts"]["train"]["documents"] + m2["counts"]["validation"]["documents"] + m2["counts"]["eval"]["documents"] == docs
    blocks = pq.read_table(packed / "train").column("input_ids")
    assert str(blocks.type) in ("list<item: int32>", "list<element: int32>") and set(map(len, blocks.to_pylist())) == {32}

    # stage 3: up-scaled 3 -> 4 layers, evaluated on stage 2's validation blocks
    prep = json.loads((model / "preparation.json").read_text())
    assert prep["plan"] == [[0, 2], [1, 3]] and AutoModelForCausalLM.from_pretrained(model).config.num_hidden_layers == 4

    # stage 4 -> 5: the final checkpoint loads, the demo generated from it and wrote samples.md
    assert (run_dir / "checkpoint-6").is_dir() and (run_dir / "loss.png").is_file()
    assert len((run_dir / "loss.csv").read_text().strip().splitlines()) == 1 + 2  # header + steps 3 and 6
    samples = (run_dir / "samples.md").read_text()
    assert "**trained, greedy**" in samples and "**before training, sampled**" in samples
    assert "[greedy] The harbour" in out

    # stage 2 + 3 + 4 -> evaluation: the prepared model and the run's final checkpoint, on the held-out data
    m5 = manifest(cwd / "work/evaluation")
    assert m5["inputs"] == {"packed": m2["fingerprint"], "models": [{"model": m3["fingerprint"]}, {"run": m4["fingerprint"], "checkpoint": "checkpoint-6"}]}
    rows = json.loads((cwd / "work/evaluation/results.json").read_text())["models"]
    assert [r["layers"] for r in rows] == [4, 4] and rows[1]["perplexity"]["loss"] < rows[0]["perplexity"]["loss"]

    # re-running a finished stage skips it
    assert "up to date" in run("data_preparation.py", "--output_dir", cleaned, cwd=cwd)


def test_a_second_run_of_the_pipeline_is_identical(base_dir, first_run):
    """Same inputs and settings (the same folders too: settings name them), run again from scratch:
    byte-identical cleaned and packed Parquet and model weights, the same fingerprints."""
    first_folders, _ = first_run
    cwd = first_folders[0].parent.parent
    kept = cwd / "first-work"
    (cwd / "work").rename(kept)
    try:
        second_folders, _ = run_pipeline(base_dir, cwd)
        for a, b in zip(first_folders, second_folders):
            a = kept / a.relative_to(cwd / "work")
            assert manifest(a)["fingerprint"] == manifest(b)["fingerprint"], f"{b.name}: fingerprints differ"
        cleaned, packed, model, run_dir = (kept / f.name for f in first_folders)
        cleaned2, packed2, model2, run_dir2 = second_folders
        for pattern, first, second in (("cleaned-*.parquet", cleaned, cleaned2), ("*/packed-*.parquet", packed, packed2),
                                       ("model.safetensors", model, model2),
                                       ("checkpoint-6/model.safetensors", run_dir, run_dir2)):  # fmt: skip
            files = sorted(p.relative_to(first) for p in first.glob(pattern))
            assert files and files == sorted(p.relative_to(second) for p in second.glob(pattern))
            for f in files:
                assert (first / f).read_bytes() == (second / f).read_bytes(), f"{f} differs between the two runs"
    finally:
        shutil.rmtree(cwd / "work", ignore_errors=True)
        kept.rename(cwd / "work")


def test_four_way_experiment(base_dir, first_run, tmp_path):
    """python3 run.py experiment on the tiny base: the four strategies prepared, trained alike and
    evaluated, the base as it is first so that every other row carries its paired difference from it."""
    (_, packed, _, _), _ = first_run
    out = tmp_path / "four-ways"
    printed = run("experiments/four_ways.py", "--base", base_dir, "--packed_dir", packed, "--max_steps", 3,
                  "--output_dir", out, cwd=tmp_path)
    summary = json.loads((out / "results.json").read_text())
    rows = summary["rows"]
    assert [(r["strategy"], r["stage"]) for r in rows] == [
        (s, stage) for s in ("random", "load", "downscale", "upscale") for stage in ("before training", "after 3 steps")]
    assert [r["layers"] for r in rows] == [3, 3, 3, 3, 2, 2, 4, 4]
    assert rows[0]["parameters"] == rows[2]["parameters"] > rows[4]["parameters"]

    # the evaluation's reference (its first model) is the loaded base before training
    evaluation = json.loads((out / "evaluation/results.json").read_text())["models"]
    assert evaluation[0]["model"] == str(out / "models/load")
    base = rows[2]
    assert "versus_first" not in base and "(the base" in (out / "results.md").read_text().splitlines()[4]
    for r in rows[:2] + rows[3:]:
        got = r["versus_first"]["bits_per_byte"]["bits_per_byte"]
        assert got == pytest.approx(r["perplexity"]["bits_per_byte"] - base["perplexity"]["bits_per_byte"], abs=2e-5)
        assert r["versus_first"]["multiple_choice"]["acc_minus_reference"] == pytest.approx(
            r["multiple_choice"]["acc"] - base["multiple_choice"]["acc"], abs=2e-5)

    # trained alike: the same steps, seed and data for every strategy; four curves in the chart
    runs = [manifest(out / "runs" / s) for s in ("random", "load", "downscale", "upscale")]
    assert len({json.dumps(m["inputs"]["packed"]) for m in runs}) == 1
    for m in runs:
        assert m["settings"]["max_steps"] == 3 and m["settings"]["seed"] == runs[0]["settings"]["seed"]
    assert set(summary["loss_curves"]) == {"random", "load", "downscale", "upscale"}
    assert all(len(summary["loss_curves"][s][0]) == 1 for s in summary["loss_curves"])  # step 3, logged every 3
    assert (out / "losses.png").stat().st_size > 10_000 and len((out / "results.md").read_text().splitlines()) == 2 + 8
    assert "wall time:" in printed
