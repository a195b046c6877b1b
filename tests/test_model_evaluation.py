"""The evaluation stage (model_evaluation.py, minipretrain/evaluation.py) and stage 2's eval split, on a
tiny Llama with a byte-level BPE tokenizer trained in code: bootstrap intervals over documents, bits
per byte by hand, the multiple-choice items (deterministic, held-out documents only, lengths
matched), the packed scoring against plain forward passes, lm-eval's own numbers, and bad input."""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import data_packaging
import model_evaluation
from minipretrain import evaluation, packing, stages, tokenization, training
from minipretrain.models import evaluate_loss
from minipretrain.settings import PROJECT_DIR, UserError

TEXTS = [json.loads(line)["text"] for name in ("clean-a", "clean-b") for line in (PROJECT_DIR / f"sample_data/web/{name}.jsonl").open()]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A hub-style model folder: a 2-layer random Llama and a byte-level BPE tokenizer trained in code."""
    folder = tmp_path_factory.mktemp("model")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=500, special_tokens=["<|endoftext|>"],
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=512, bos_token_id=0, eos_token_id=0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def packed(model_dir, tmp_path_factory):
    """Stage 2 on 84 sample pages: 6 validation documents, 12 eval documents, the rest training."""
    root = tmp_path_factory.mktemp("data")
    schema = pa.schema([("text", pa.string()), ("source", pa.string()), ("doc_id", pa.string())])
    with stages.stage_output(root / "cleaned", "data_preparation", data_packaging.Settings(), {}, True) as out:
        rows = [{"text": t, "source": "web", "doc_id": f"page-{i:03d}"} for i, t in enumerate(TEXTS)]
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), out.path / "cleaned-00000.parquet")
    data_packaging.main(["--input_dir", str(root / "cleaned"), "--output_dir", str(root / "packed"), "--tokenizer", str(model_dir),
                         "--min_validation_documents", "6", "--eval_documents", "12"])
    return root / "packed"


@pytest.fixture(scope="module")
def evaluated(model_dir, packed, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation") / "evaluation"
    model_evaluation.main(["--models", str(model_dir), "--packed_dir", str(packed), "--output_dir", str(out), "--items", "60",
                           "--resamples", "500", "--precision", "fp32"])
    return out


def held_out(packed):
    return {split: pq.read_table(packed / "documents" / f"{split}.parquet").to_pylist() for split in ("validation", "eval")}


# ----------------------------------------------------------------------------------------------
# Stage 2's eval split


def test_eval_split_is_held_out_by_document_and_leaves_validation_as_it_was(packed, model_dir, tmp_path):
    m = json.loads((packed / "manifest.json").read_text())
    assert {s: m["counts"][s]["documents"] for s in ("train", "validation", "eval")} == {"train": 66, "validation": 6, "eval": 12}
    docs = held_out(packed)
    assert len(docs["validation"]) == 6 and len(docs["eval"]) == 12
    assert not {d["doc_id"] for d in docs["validation"]} & {d["doc_id"] for d in docs["eval"]}
    # without the eval split: the same validation blocks, and the eval documents are training ones again
    data_packaging.main(["--input_dir", str(packed.parent / "cleaned"), "--output_dir", str(tmp_path / "p0"), "--tokenizer",
                         str(model_dir), "--min_validation_documents", "6", "--eval_documents", "0"])
    m0 = json.loads((tmp_path / "p0/manifest.json").read_text())
    assert "eval" not in m0["counts"] and m0["counts"]["train"]["documents"] == 78
    assert (tmp_path / "p0/validation/packed-00000.parquet").read_bytes() == (packed / "validation/packed-00000.parquet").read_bytes()
    # the eval split's blocks are its documents, packed
    tok = tokenization.load_tokenizer(model_dir)
    blocks, _ = evaluation.pack_documents(tok, [d["text"] for d in docs["eval"]], 32, 0, 0)
    assert np.array_equal(blocks, np.asarray(packing.packed_dataset(packed, "eval")["input_ids"]))
    # a corpus that cannot spare them: no eval split, said so, and training keeps every other document
    hashes = np.arange(20, dtype=np.uint64)
    assert (hashes[hashes > 3] <= data_packaging.eval_threshold(hashes, 3, 8)).sum() == 8  # 16 left: 8 go, 8 train
    assert data_packaging.eval_threshold(hashes, 3, 9) is None and data_packaging.eval_threshold(hashes, 3, 0) is None
    assert "no eval split" in m0["eval_split"] and m["eval_split"] == "12 documents held out for evaluation"


# ----------------------------------------------------------------------------------------------
# Perplexity, bits per byte, intervals


def test_bits_per_byte_and_perplexity_by_hand():
    # document A: 4 tokens of 1 bit each over 8 bytes; document B: 2 tokens of 3 bits each over 4 bytes
    sums = {"nats": np.array([4 * math.log(2), 6 * math.log(2)]), "tokens": np.array([4.0, 2.0]), "bytes": np.array([8.0, 4.0])}
    report = evaluation.perplexity_report(sums, np.array([[1, 1], [2, 0], [0, 2]]))
    assert report["bits_per_byte"] == pytest.approx(10 / 12, abs=1e-5)  # 10 bits over 12 bytes
    assert report["perplexity"] == pytest.approx(2 ** (10 / 6), abs=1e-3)  # 10 bits over 6 tokens
    assert report["bits_per_byte_ci95"][0] == pytest.approx(0.5 + 0.025 * (10 / 12 - 0.5) * 2, abs=1e-4)  # between A alone and both
    assert report["bits_per_byte_ci95"][1] > 1.4  # B alone: 6 bits / 4 bytes = 1.5
    assert (report["tokens"], report["bytes"], report["documents"]) == (6, 12, 2)


def test_token_bytes_add_up_to_the_text(model_dir):
    texts = TEXTS[:5] + ["Café 中文 \U0001f999 and  two spaces\tand a tab", "<|endoftext|> stays text"]
    tok = tokenization.load_tokenizer(model_dir)
    table = evaluation.token_byte_lengths(tok)
    assert table[tok.convert_tokens_to_ids("<|endoftext|>")] == 0
    for text in texts:
        assert table[tokenization.tokenize(tok, [text])[0]].sum() == len(text.encode("utf-8"))
    sp = tokenization.load_tokenizer("mistral-32k")  # SentencePiece pieces: the dummy prefix is one byte more
    sp_table = evaluation.token_byte_lengths(sp)
    assert sp_table[sp.convert_tokens_to_ids("<0xE4>")] == 1 and sp_table[sp.bos_token_id] == 0
    for text in texts:
        assert sp_table[tokenization.tokenize(sp, [text])[0]].sum() == len(text.encode("utf-8")) + 1


def test_interval_resamples_documents_not_tokens():
    rng = np.random.default_rng(0)
    nats, tokens = rng.uniform(100, 400, 20), np.full(20, 100.0)
    sums = {"nats": nats, "tokens": tokens, "bytes": tokens * 4}
    weights = evaluation.bootstrap_weights(20, 2000, seed=3)
    assert weights.shape == (2000, 20) and (weights.sum(1) == 20).all()
    assert np.array_equal(weights, evaluation.bootstrap_weights(20, 2000, seed=3))
    one = evaluation.perplexity_report(sums, weights)
    # ten times the tokens in each document, the same loss per token: as uncertain as before
    more = evaluation.perplexity_report({k: v * 10 for k, v in sums.items()}, weights)
    assert more["perplexity_ci95"] == pytest.approx(one["perplexity_ci95"], rel=1e-6)
    lo, hi = one["perplexity_ci95"]
    assert lo < one["perplexity"] < hi and hi / lo > 1.1
    same = evaluation.perplexity_report({"nats": tokens * 2, "tokens": tokens, "bytes": tokens * 4}, weights)
    assert same["perplexity_ci95"] == pytest.approx([math.exp(2)] * 2, abs=1e-3)


def test_token_losses_equal_the_models_loss_with_any_head_chunk(model_dir, packed):
    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    blocks = np.asarray(packing.packed_dataset(packed, "validation")["input_ids"], dtype=np.int32)
    reference = evaluate_loss(model, packing.packed_dataset(packed, "validation"), batch_size=4)
    for head_chunk in (7, 4096):
        losses = evaluation.token_losses(model, blocks, batch_size=3, head_chunk=head_chunk)
        assert losses.shape == (len(blocks), 31)
        assert losses.mean() == pytest.approx(reference["loss"], abs=1e-5)


def test_chunked_logits_give_the_full_logits_losses(model_dir, packed):
    """Every token's loss with the head run a few positions at a time equals log_softmax of the
    model's own full logits, to 1e-6 nats; the same for every choice of an item."""
    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    blocks = np.asarray(packing.packed_dataset(packed, "validation")["input_ids"], dtype=np.int32)[:10]
    with torch.inference_mode():
        ids = torch.as_tensor(blocks, dtype=torch.long)
        full = -torch.log_softmax(model(ids).logits[:, :-1].double(), -1).gather(2, ids[:, 1:, None])[..., 0].numpy()
    for head_chunk, batch_size in ((7, 3), (5, 10), (10_000, 4)):
        assert np.abs(evaluation.token_losses(model, blocks, batch_size, head_chunk) - full).max() < 1e-6
    tok = tokenization.load_tokenizer(model_dir)
    encoded = evaluation.encode_items(tok, evaluation.build_items(
        [(d["doc_id"], d["text"]) for split in held_out(packed).values() for d in split], 8, 120, 36, seed=0))
    unchunked = evaluation.score_items(model, encoded, 4, head_chunk=10_000)  # (other batch sizes: test_packed_scoring_...)
    tokens = np.array([[len(c) for c in conts] for _, conts in encoded])  # a choice's score sums its tokens' log-probabilities
    assert (np.abs(evaluation.score_items(model, encoded, 4, head_chunk=2) - unchunked) < 1e-6 * tokens).all()


def test_a_model_without_a_separate_head_gets_bounded_logits_too(packed):
    """GPT-2 is not in _SPLIT_HEAD: it runs whole, on as many rows as make head_chunk positions,
    with the same losses as one pass over the batch."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=500, n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval()
    blocks = np.asarray(packing.packed_dataset(packed, "validation")["input_ids"], dtype=np.int32)[:7]
    with torch.inference_mode():
        ids = torch.as_tensor(blocks, dtype=torch.long)
        full = -torch.log_softmax(model(ids).logits[:, :-1].double(), -1).gather(2, ids[:, 1:, None])[..., 0].numpy()
    shapes = []
    model.lm_head.register_forward_hook(lambda module, args, output: shapes.append(tuple(output.shape)))
    assert np.abs(evaluation.token_losses(model, blocks, batch_size=7, head_chunk=64) - full).max() < 1e-6
    assert shapes == [(2, 31, 500), (2, 31, 500), (2, 31, 500), (1, 31, 500)]  # 64 // 31 = 2 rows at a time
    shapes.clear()
    assert np.abs(evaluation.token_losses(model, blocks, batch_size=7, head_chunk=10) - full).max() < 1e-6
    assert set(shapes) == {(1, 31, 500)}  # at least one row


def test_the_model_reads_no_token_that_predicts_nothing(model_dir, packed):
    """A block's last token and each choice's last token predict nothing and no position attends to
    them: the body never sees them (the losses stay those of the full sequences: the tests above)."""
    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    widths = []
    model.model.register_forward_pre_hook(lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape), with_kwargs=True)
    blocks = np.asarray(packing.packed_dataset(packed, "validation")["input_ids"], dtype=np.int32)[:10]
    evaluation.token_losses(model, blocks, 4)
    assert widths == [(4, 31), (4, 31), (2, 31)]
    widths.clear()
    encoded = [([5, 6, 7], [[8], [9, 10], [11, 12, 13], [14]]), ([5, 6], [[8, 9], [10], [11], [12]])]
    evaluation.score_items(model, encoded, 2)
    assert widths == [(2, 3 + 0 + 1 + 2 + 0)]  # the longer item: its context and its choices but their last tokens


def test_bf16_runs_the_body_in_bf16_and_the_head_in_fp32(model_dir, packed):
    """precision bf16: the decoder layers' linear weights bfloat16, embeddings, norms and head float32;
    the losses are the body's hidden states (bf16 autocast) through the float32 head, close to fp32's."""
    blocks = np.asarray(packing.packed_dataset(packed, "validation")["input_ids"], dtype=np.int32)[:8]
    fp32 = LlamaForCausalLM.from_pretrained(model_dir).eval()
    model = evaluation.use_precision(LlamaForCausalLM.from_pretrained(model_dir).eval(), "bf16")
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes["model.layers.0.self_attn.q_proj.weight"] == dtypes["model.layers.1.mlp.down_proj.weight"] == torch.bfloat16
    assert {dtypes[n] for n in ("model.embed_tokens.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight")} == {torch.float32}
    assert model.lm_head.weight.dtype == torch.float32
    losses = evaluation.token_losses(model, blocks, 3, head_chunk=7, precision="bf16")
    with torch.inference_mode():
        ids = torch.as_tensor(blocks, dtype=torch.long)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = model.model(ids[:, :-1]).last_hidden_state  # (the last token predicts nothing: left out)
        expected = -torch.log_softmax(model.lm_head(hidden.float()).double(), -1).gather(2, ids[:, 1:, None])[..., 0].numpy()
    assert np.abs(losses - expected).max() < 1e-6
    exact = evaluation.token_losses(fp32, blocks, 3)
    assert 1e-4 < np.abs(losses - exact).max() < 0.05 and abs(losses.mean() - exact.mean()) < 2e-3
    with pytest.raises(ValueError, match="precision must be one of"):
        evaluation.use_precision(fp32, "fp16")


def test_se_at_half_by_hand():
    # 100 items in 10 documents of 10, rho 0.1: deff 1 + 9 * 0.1 = 1.9, times 10/9
    assert evaluation.se_at_half([10] * 10, rho=0.1) == pytest.approx((0.05, math.sqrt(0.25 / 100 * 1.9 * 10 / 9)))
    assert evaluation.se_at_half([10] * 10, rho=0.1)[1] < evaluation.se_at_half([55, 5, 5, 5, 5, 5, 5, 5, 5, 5], rho=0.1)[1]


def test_the_default_items_promise_a_standard_error_of_003_at_any_accuracy(model_dir, tmp_path):
    """Stages 1 and 2 on their defaults (the default corpus; the split depends on the doc_ids only, so
    the test's tokenizer holds out the same documents), then the stage's default items: at accuracy
    0.5, the worst case, their standard error is at most 0.03 clustered by document (with the
    largest within-document correlation measured) and 0.025 lm-eval's."""
    import data_preparation

    data_preparation.main(["--output_dir", str(tmp_path / "cleaned")])
    data_packaging.main(["--input_dir", str(tmp_path / "cleaned"), "--output_dir", str(tmp_path / "packed"), "--tokenizer", str(model_dir)])
    pool = [(d["doc_id"], d["text"]) for split in held_out(tmp_path / "packed").values() for d in split]
    s = model_evaluation.Settings()
    items = evaluation.build_items(pool, s.items, s.context_chars, s.ending_chars, s.seed)
    counts = np.unique([it["doc_id"] for it in items], return_counts=True)[1]
    plain, clustered = evaluation.se_at_half(counts)
    assert len(items) == s.items and plain <= 0.025 and clustered <= 0.03, (len(pool), counts.tolist())


def test_documents_own_their_tokens():
    class Tok:  # tokenization.tokenize needs a backend: a stand-in with fixed ids
        backend_tokenizer = type("B", (), {"encode_special_tokens": False, "no_truncation": lambda s: None, "no_padding": lambda s: None,
                                           "encode_batch_fast": lambda s, texts, add_special_tokens: [type("E", (), {"ids": [7] * len(t)}) for t in texts]})()

    blocks, owners = evaluation.pack_documents(Tok(), ["aaa", "bb", "cccc"], 4, 0, 0)  # <e> a a a <e> b b <e> c c c c <e>
    assert blocks.reshape(-1).tolist() == [0, 7, 7, 7, 0, 7, 7, 0, 7, 7, 7, 7]
    assert owners.reshape(-1).tolist() == [-1, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    blocks, owners = evaluation.pack_documents(Tok(), ["aa", "b"], 3, 1, 2)  # <s> a a </s> <s> b </s>
    assert owners.reshape(-1).tolist() == [0, 0, 0, 0, 1, 1]


# ----------------------------------------------------------------------------------------------
# The multiple-choice items


def test_items_are_deterministic_held_out_and_length_matched(packed, evaluated):
    docs = held_out(packed)
    pool = [(d["doc_id"], d["text"]) for split in docs.values() for d in split]
    texts = dict(pool)
    items = evaluation.build_items(pool, 60, 120, 36, seed=0)
    assert items == evaluation.build_items(pool[::-1], 60, 120, 36, seed=0)  # order of the documents does not matter
    assert items != evaluation.build_items(pool, 60, 120, 36, seed=1)
    written = [json.loads(line) for line in (evaluated / "lm_eval_tasks/minipretrain_mc.jsonl").open()]
    assert written == items and len(items) == 60
    cleaned = pq.read_table(packed.parent / "cleaned/cleaned-00000.parquet").to_pylist()
    trained_on = {r["doc_id"] for r in cleaned} - set(texts)
    assert len(trained_on) == 66
    for it in items:
        true = it["choices"][it["label"]]
        assert it["doc_id"] in texts and not {it["doc_id"], *it["distractor_doc_ids"]} & trained_on
        assert it["doc_id"] not in it["distractor_doc_ids"] and len(set(it["distractor_doc_ids"])) == 3
        gap = texts[it["doc_id"]].index(it["context"]) + len(it["context"])
        assert texts[it["doc_id"]][gap:].lstrip().startswith(true)  # the true ending follows its context
        assert len(it["context"]) <= 120
        for choice, source in zip([c for i, c in enumerate(it["choices"]) if i != it["label"]], it["distractor_doc_ids"]):
            assert choice in texts[source] and abs(len(choice) - len(true)) <= max(3, len(true) // 5)
    assert len({it["doc_id"] for it in items}) == 18  # spread over every held-out document
    assert sorted(np.bincount([it["label"] for it in items]).tolist())[0] >= 8  # the answer's position varies


def test_standard_errors_by_hand():
    items = [{"label": 0, "doc_id": d, "choices": ["aa", "b", "c", "d"]} for d in ("x", "x", "y", "y")]
    # the true choice "aa" has two characters: per character, items 2 and 3 turn right, item 4 stays wrong
    scores = np.array([[0.0, -1, -1, -1], [-1.8, -1, -1, -1], [-2.4, -1.5, -3, -3], [-3.0, -1, -1, -1]])
    report = evaluation.choice_report(scores, items)
    assert (report["acc"], report["acc_norm"]) == (0.25, 0.75)
    assert report["acc_se"] == pytest.approx(0.5 / 2, abs=1e-5)  # sample sd 0.5 over sqrt(4 items)
    # by document: residuals x +0.75 -0.25 (sum +0.5), y -0.25 -0.25 (sum -0.5): sqrt(2/1 * (0.25 + 0.25)) / 4
    assert report["acc_se_by_document"] == pytest.approx(0.25, abs=1e-5)
    assert (report["items"], report["documents"]) == (4, 2)
    paired = evaluation.choice_report(scores, items, reference=np.array([[0.0, -1, -1, -1]] * 4))  # a reference always right
    assert paired["acc_minus_reference"] == -0.75 and paired["acc_norm_minus_reference"] == -0.25


def test_packed_scoring_equals_one_sequence_per_choice(model_dir, packed, evaluated):
    tok = tokenization.load_tokenizer(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    items = [json.loads(line) for line in (evaluated / "lm_eval_tasks/minipretrain_mc.jsonl").open()][:12]
    encoded = evaluation.encode_items(tok, items)
    packed_scores = evaluation.score_items(model, encoded, batch_size=5, head_chunk=3)
    with torch.inference_mode():
        for (ctx, conts), row in zip(encoded, packed_scores):
            for cont, score in zip(conts, row):
                ids = torch.tensor([ctx + cont])
                logp = torch.log_softmax(model(ids).logits[0, len(ctx) - 1 : -1].float(), -1)
                assert score == pytest.approx(logp[torch.arange(len(cont)), torch.tensor(cont)].sum().item(), abs=1e-4)


# ----------------------------------------------------------------------------------------------
# The stage


def test_stage_output_and_rerun(evaluated, model_dir, packed, capsys):
    results = json.loads((evaluated / "results.json").read_text())
    row = results["models"][0]
    assert row["layers"] == 2 and row["perplexity"]["documents"] == 6
    assert row["multiple_choice"]["items"] == 60 and 0 <= row["multiple_choice"]["acc"] <= 1
    assert results["multiple_choice"]["standard_error_at_accuracy_0.5"]["lm_eval"] == pytest.approx(0.5 / math.sqrt(60), abs=1e-5)
    assert results["multiple_choice"]["from_splits"] == {"validation": 6, "eval": 12}
    assert {"results.json", "results.md", "comparison.png", "lm_eval_tasks/minipretrain_mc.yaml"} <= set(
        json.loads((evaluated / "manifest.json").read_text())["files"])
    model_evaluation.main(["--models", str(model_dir), "--packed_dir", str(packed), "--output_dir", str(evaluated), "--items", "60",
                           "--resamples", "500", "--precision", "fp32"])
    assert "up to date" in capsys.readouterr().out


def test_stage_precision(evaluated, model_dir, packed, tmp_path):
    fp32 = json.loads((evaluated / "results.json").read_text())
    assert fp32["precision"] == "fp32" and model_evaluation.Settings().precision == "fp32"
    args = ["--models", str(model_dir), "--packed_dir", str(packed), "--output_dir", str(tmp_path / "bf16"), "--items", "60",
            "--resamples", "500", "--precision", "bf16"]
    if not training.bf16_supported(cpu=True):  # emulated bf16: refused, not run ~100x slower
        with pytest.raises(UserError, match="this CPU has no bf16 arithmetic"):
            model_evaluation.main(args)
        return
    model_evaluation.main(args)
    bf16 = json.loads((tmp_path / "bf16/results.json").read_text())
    assert bf16["precision"] == "bf16"
    a, b = fp32["models"][0]["perplexity"], bf16["models"][0]["perplexity"]
    assert b["bits_per_byte"] == pytest.approx(a["bits_per_byte"], rel=2e-3)  # (the unit test above shows bf16 differs)


def test_lm_eval_gives_the_same_accuracies(evaluated, model_dir, tmp_path):
    """lm-eval 0.4's `--model hf` on the task folder the stage wrote: every choice's log-likelihood within
    1e-4 nats of the stage's, so the accuracies are equal (a tie closer than that could flip one item)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    lm_eval = shutil.which("lm_eval", path=os.path.dirname(sys.executable)) or "lm_eval"
    r = subprocess.run([lm_eval, "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32", "--include_path",
                        str(evaluated / "lm_eval_tasks"), "--tasks", "minipretrain_mc", "--device", "cpu", "--batch_size", "16",
                        "--output_path", str(tmp_path / "out"), "--log_samples"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ours = json.loads((evaluated / "results.json").read_text())["models"][0]["multiple_choice"]
    theirs = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]["minipretrain_mc"]
    samples = [json.loads(line) for line in next((tmp_path / "out").rglob("samples_minipretrain_mc_*.jsonl")).open()]
    tok = tokenization.load_tokenizer(model_dir)
    items = [json.loads(line) for line in (evaluated / "lm_eval_tasks/minipretrain_mc.jsonl").open()]
    scores = evaluation.score_items(LlamaForCausalLM.from_pretrained(model_dir).eval(), evaluation.encode_items(tok, items), 16)
    assert len(samples) == 60
    for sample in samples:
        assert [float(r[0][0]) for r in sample["resps"]] == pytest.approx(scores[sample["doc_id"]].tolist(), abs=1e-4)
    assert theirs["acc,none"] == pytest.approx(ours["acc"], abs=1e-5)  # ours are rounded to 5 places
    assert theirs["acc_norm,none"] == pytest.approx(ours["acc_norm"], abs=1e-5)
    assert theirs["acc_stderr,none"] == pytest.approx(ours["acc_se"], abs=1e-4)


def test_bad_input_is_one_line(packed, model_dir, tmp_path):
    broken = tmp_path / "packed"
    shutil.copytree(packed, broken)
    (broken / "documents/eval.parquet").write_bytes(b"not parquet")

    def run(*args):
        r = subprocess.run([sys.executable, str(PROJECT_DIR / "model_evaluation.py"), *map(str, args)], capture_output=True, text=True,
                           cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
        return r.stderr

    assert f"{broken / 'documents/eval.parquet'}: not a readable documents file" in run("--models", model_dir, "--packed_dir", broken)
    assert "work/models/nothing: no such model folder" in run("--models", "work/models/nothing", "--packed_dir", packed)
    assert "setting items must be at least 1" in run("--models", model_dir, "--packed_dir", packed, "--items", "0")
    assert "setting precision must be one of fp32, bf16, got 'fp16'" in run("--models", model_dir, "--packed_dir", packed, "--precision", "fp16")
    assert not (tmp_path / "work/evaluation").exists()
