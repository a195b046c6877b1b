"""Stage 5 on a tiny random Llama with a tokenizer trained in code."""

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import inference_demo as demo
from minipretrain.settings import UserError

CORPUS = ["the harbour opens at six and the boats go out", "fresh bread from the bakery by the square",
          "def add(a, b):\n    return a + b"] * 20


def tiny_tokenizer():
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<unk>")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_model")
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=0, eos_token_id=0, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def settings(model_dir, tmp_path, *extra):
    return ["--checkpoint", str(model_dir), "--compare_with", "", "--prompts", "the harbour", "def add(a, b):",
            "--max_new_tokens", "8", "--output_file", str(tmp_path / "samples.md"), *extra]


def test_greedy_equals_a_manual_argmax_loop_from_the_document_token(model_dir, tmp_path):
    s = demo.parse_settings(demo.Settings, settings(model_dir, tmp_path))
    tok, model = demo.load_model(model_dir, "float32", "cpu")
    out = demo.generate(model, tok, "the harbour", s, sample=False)
    ids = [0] + tok("the harbour", add_special_tokens=False)["input_ids"]  # <|endoftext|> opens a document
    new = []
    with torch.no_grad():
        for _ in range(8):
            nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            new.append(nxt)
            if nxt == 0:
                break
    assert out["tokens"] == len(new)
    assert out["text"] == tok.decode(new, skip_special_tokens=True)


def test_sampling_is_seeded(model_dir, tmp_path):
    s = demo.parse_settings(demo.Settings, settings(model_dir, tmp_path, "--temperature", "1.5", "--top_k", "0", "--top_p", "1.0"))
    tok, model = demo.load_model(model_dir, "float32", "cpu")
    a = demo.generate(model, tok, "the harbour", s, sample=True)
    b = demo.generate(model, tok, "the harbour", s, sample=True)
    others = {demo.generate(model, tok, "the harbour", s, sample=True)["text"] for s.seed in range(1, 6)}
    assert a["text"] == b["text"]
    assert others - {a["text"]}, "five other seeds all gave the same sample"


def test_main_streams_and_writes_samples_for_both_models(model_dir, tmp_path, capsys, monkeypatch):
    shown = []  # (generated text, what the terminal got during that generation)
    real_generate = demo.generate

    def generate(*args, **kwargs):
        result = real_generate(*args, **kwargs)
        shown.append((result["text"], capsys.readouterr().out))
        return result

    monkeypatch.setattr(demo, "generate", generate)
    demo.main(settings(model_dir, tmp_path, "--compare_with", str(model_dir)))
    # streamed as generated: each text was on the terminal before its generate() call returned
    assert len(shown) == 8 and all(text and text in out for text, out in shown)
    printed = "".join(out for _, out in shown) + capsys.readouterr().out
    md = (tmp_path / "samples.md").read_text()
    assert md.count("**trained, greedy**") == 2 and md.count("**before training, sampled**") == 2
    tok, model = demo.load_model(model_dir, "float32", "cpu")
    s = demo.parse_settings(demo.Settings, settings(model_dir, tmp_path))
    greedy = demo.generate(model, tok, "the harbour", s, sample=False)["text"]
    assert f"[greedy] the harbour{greedy}" in printed  # on the terminal after its prompt
    assert f"> the harbour{greedy}".replace("\n", "\n> ") in md


def test_defaults_are_the_readmes():
    s = demo.Settings()
    assert (s.temperature, s.top_k, s.top_p, s.seed) == (0.8, 50, 0.95, 0)
    assert s.stream is True and s.compare_with == "work/models/smollm2-dus" and s.checkpoint == "work/runs/smollm2-dus"


def test_run_folder_resolves_to_its_latest_checkpoint(model_dir, tmp_path):
    run = tmp_path / "run"
    for step in (9, 30, 12):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        (run / f"checkpoint-{step}" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="no manifest.json"):
        demo.resolve_checkpoint(str(run))
    (run / "manifest.json").write_text(json.dumps({"stage": "model_training"}))
    assert demo.resolve_checkpoint(str(run)) == run / "checkpoint-30"


def test_clear_errors(model_dir, tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        demo.main(settings(tmp_path / "missing", tmp_path))
    empty = tmp_path / "no_weights"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UserError, match="no_weights: cannot load a model"):
        demo.main(settings(empty, tmp_path))
    with pytest.raises(UserError, match="--max_new_tokens: must be at least 1, got 0"):
        demo.main(settings(model_dir, tmp_path, "--max_new_tokens", "0"))
    assert not (tmp_path / "samples.md").exists()  # no output for bad input
