"""model_preparation.py on tiny random models: the layer plan, the surgery, the output folder."""

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import model_preparation as mp
from minipretrain import models, stages, tokenization
from minipretrain.settings import UserError

WORDS = "the a cat dog sat ran on under mat rug and then it was big small red blue one two".split()
SPECIALS = ["<unk>", "<s>", "</s>"]
VOCAB = len(SPECIALS) + len(WORDS)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
ARCHS = {
    "llama": (LlamaForCausalLM, LlamaConfig, {}),
    "mistral": (MistralForCausalLM, MistralConfig, dict(sliding_window=6)),
    # layers 2 and 3 slide, 0 and 1 attend fully: layer_types must follow the plan
    "qwen2": (Qwen2ForCausalLM, Qwen2Config, dict(use_sliding_window=True, sliding_window=6, max_window_layers=2)),
}


def tiny_model(arch="llama", tied=False, vocab=VOCAB, seed=0):
    model_class, config_class, extra = ARCHS[arch]
    torch.manual_seed(seed)
    config = config_class(**TINY, **extra, vocab_size=vocab, tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2,
                          pad_token_id=2)  # as the SmolLM2 GGUF's config has it
    return model_class(config).eval()


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(SPECIALS + WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture
def base_dir(tmp_path):
    """A local base-model folder: a tiny tied Llama and its tokenizer."""
    folder = tmp_path / "base"
    tiny_model(tied=True).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def write_packed(folder, tokenizer, blocks=6, block_size=16, seed=0):
    """A stage-2 output as the contract describes it: validation blocks + manifest."""
    g = torch.Generator().manual_seed(seed)
    for split in ("train", "validation"):
        rows = torch.randint(3, VOCAB, (blocks, block_size), generator=g).tolist()
        (folder / split).mkdir(parents=True)
        table = pa.table({"input_ids": pa.array(rows, type=pa.list_(pa.int32()))})
        pq.write_table(table, folder / split / "packed-00000.parquet")
    manifest = {
        "stage": "data_packaging",
        "fingerprint": "f" * 64,
        "block_size": block_size,
        "tokenizer": tokenization.tokenizer_info(tokenizer),
        "counts": {"train": {"blocks": blocks}, "validation": {"blocks": blocks}},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def greedy(model, ids, use_cache, new_tokens=12):
    out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=use_cache)
    return out[0, ids.shape[1]:].tolist()


# ----------------------------------------------------------------------------------------------
# Plans


def test_default_plans_are_the_seeds():
    assert mp.default_plan("upscale", 12) == [[0, 8], [4, 12]]  # the seed's bottom 8 + top 8 = 16
    assert mp.default_plan("upscale", 30) == [[0, 20], [10, 30]]  # SmolLM2: 30 -> 40
    assert mp.default_plan("downscale", 12) == [[0, 5], [7, 12]]  # the seed's 12 -> 10
    assert mp.default_plan("load", 12) == [[0, 12]]
    assert mp.plan_layers([[0, 2], [1, 3]]) == [0, 1, 1, 2]


@pytest.mark.parametrize(
    "n, plan",
    [
        # m = round(n/3): where n/3 rounds up (n = 2, 5, 8) it differs from n // 3 ...
        (2, [[0, 1], [1, 2]]),
        (5, [[0, 3], [2, 5]]),
        (8, [[0, 5], [3, 8]]),
        # ... and where it rounds down (n = 4, 7) from ceil(n/3)
        (4, [[0, 3], [1, 4]]),
        (7, [[0, 5], [2, 7]]),
        (30, [[0, 20], [10, 30]]),
    ],
)
def test_upscale_rounds_n_over_3(n, plan):
    assert mp.default_plan("upscale", n) == plan


@pytest.mark.parametrize(
    "n, plan",
    [
        (2, [[1, 2]]),  # k = max(1, round(2/6) = 0) = 1, start 0: an empty first slice is left out
        (3, [[0, 1], [2, 3]]),  # round(0.5) = 0, at least 1
        (8, [[0, 3], [4, 8]]),  # k = 1, start = (8-1)//2 = 3 (n//2 - k//2 would give 4)
        (9, [[0, 3], [5, 9]]),  # k = 2, start = (9-2)//2 = 3 ((n-k+1)//2 would give 4)
        (10, [[0, 4], [6, 10]]),  # k = round(10/6) = 2 (10 // 6 would give 1)
        (11, [[0, 4], [6, 11]]),
        (12, [[0, 5], [7, 12]]),  # the seed's
        (30, [[0, 12], [17, 30]]),  # SmolLM2: 30 -> 25
    ],
)
def test_downscale_drops_the_middle_sixth(n, plan):
    assert mp.default_plan("downscale", n) == plan


def test_defaults_are_the_readmes():
    s = mp.Settings()
    assert (s.base, s.strategy, s.plan, s.dtype) == ("smollm2-135m", "upscale", "", "float32")
    assert s.eval_blocks == 32  # the first 32 validation blocks, as stage 4 evaluates


def test_downscale_of_a_single_layer_is_refused():
    with pytest.raises(UserError, match="the base has 1 layer; nothing to drop"):
        mp.default_plan("downscale", 1)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[[0, 8], [4, 12]", "not JSON"),
        ("[[0, 8, 2]]", "[start, end] integer pairs"),
        ('[["0", 8]]', "[start, end] integer pairs"),
        ("[]", "empty"),
        ("[[2, 2]]", "[2, 2] is empty"),
        ("[[3, 1]]", "[3, 1] is empty"),
        ("[[0, 5]]", "[0, 5] is out of range"),
        ("[[-1, 2]]", "[-1, 2] is out of range"),
    ],
)
def test_bad_plans_are_one_clear_line(text, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        mp.validate_plan(mp.parse_plan(text), 4)
    assert "\n" not in str(e.value)


def test_plan_yaml_is_a_mergekit_passthrough_config():
    config = yaml.safe_load(mp.plan_yaml([[0, 8], [4, 12]], "upstage/TinySolar-248m-4k", "bfloat16", "a note"))
    assert config["merge_method"] == "passthrough"
    assert config["dtype"] == "bfloat16"
    assert [s["sources"][0]["layer_range"] for s in config["slices"]] == [[0, 8], [4, 12]]
    assert {s["sources"][0]["model"] for s in config["slices"]} == {"upstage/TinySolar-248m-4k"}


# ----------------------------------------------------------------------------------------------
# Surgery


@pytest.mark.parametrize("tied", [True, False])
def test_upscale_copies_every_tensor_from_its_source(tied):
    base = tiny_model(tied=tied)
    plan = [[0, 3], [1, 4]]
    model = mp.apply_plan(base, plan)

    assert model.config.num_hidden_layers == 6 and len(model.model.layers) == 6
    assert base.config.num_hidden_layers == 4  # the base is left as it was
    assert torch.equal(model.model.embed_tokens.weight, base.model.embed_tokens.weight)
    assert torch.equal(model.model.norm.weight, base.model.norm.weight)
    assert torch.equal(model.lm_head.weight, base.lm_head.weight)
    assert model.config.tie_word_embeddings == tied
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    for new_i, src_i in enumerate([0, 1, 2, 1, 2, 3]):
        new_sd, src_sd = model.model.layers[new_i].state_dict(), base.model.layers[src_i].state_dict()
        assert new_sd.keys() == src_sd.keys()
        for key in src_sd:
            assert torch.equal(new_sd[key], src_sd[key]), (new_i, key)
            assert new_sd[key].data_ptr() != src_sd[key].data_ptr()  # a copy, not the base's tensor
        assert model.model.layers[new_i].self_attn.layer_idx == new_i
    # layer 1 is used twice: two independent layers that training can move apart
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.add_(1.0)
    assert not torch.equal(model.model.layers[3].mlp.up_proj.weight, model.model.layers[1].mlp.up_proj.weight)
    assert mp.count_parameters(model) == mp.count_parameters(base) + 2 * sum(
        p.numel() for p in base.model.layers[0].parameters()
    )


@pytest.mark.parametrize("tied", [True, False])
def test_a_single_full_slice_reproduces_the_base_exactly(tied):
    base = tiny_model(tied=tied)
    model = mp.apply_plan(base, [[0, 4]])
    ids = torch.randint(3, VOCAB, (2, 10))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base(ids).logits)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_generation_with_kv_cache_equals_without(arch, tmp_path):
    model = mp.apply_plan(tiny_model(arch), [[0, 3], [1, 4]])
    ids = torch.randint(3, VOCAB, (1, 5), generator=torch.Generator().manual_seed(1))
    cached = greedy(model, ids, use_cache=True)
    assert cached == greedy(model, ids, use_cache=False)

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(model)
    assert greedy(reloaded, ids, use_cache=True) == greedy(reloaded, ids, use_cache=False) == cached


def test_the_cache_check_catches_a_copied_layer_index():
    """What the test above guards against: a copied attention module that kept its source's index."""
    model = mp.apply_plan(tiny_model(), [[0, 3], [1, 4]])
    ids = torch.randint(3, VOCAB, (1, 5), generator=torch.Generator().manual_seed(1))
    model.model.layers[3].self_attn.layer_idx = 1  # what deep-copying layer 1 without renumbering gives
    assert greedy(model, ids, use_cache=True) != greedy(model, ids, use_cache=False)


def test_per_layer_attention_types_follow_the_plan(tmp_path):
    base = tiny_model("qwen2")
    assert base.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    model = mp.apply_plan(base, [[0, 3], [1, 4]])
    expected = ["full_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]
    assert model.config.layer_types == expected
    assert [layer.self_attn.sliding_window for layer in model.model.layers] == [None, None, 6, None, 6, 6]
    model.save_pretrained(tmp_path)
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.layer_types == expected


def test_bfloat16_option():
    model = mp.apply_plan(tiny_model(), [[0, 2], [2, 4]], torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config.dtype == torch.bfloat16 or str(model.config.dtype).endswith("bfloat16")


# ----------------------------------------------------------------------------------------------
# The base


def test_unknown_base_names_the_choices():
    with pytest.raises(UserError, match="unknown base.*smollm2-135m.*tinysolar-248m"):
        mp.load_base_config("no-such-model")


def test_non_llama_architecture_is_refused(tmp_path):
    GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="'gpt2' is not supported.*LlamaForCausalLM.*MistralForCausalLM"):
        mp.load_base_config(str(tmp_path))


def test_tinysolar_preset_is_the_seeds_shape():
    config = mp.load_base_config("tinysolar-248m")
    assert (config.hidden_size, config.intermediate_size, config.num_attention_heads, config.num_key_value_heads) == (
        1024, 4096, 32, 8)
    assert (config.num_hidden_layers, config.vocab_size, config.max_position_embeddings) == (12, 32_000, 4096)
    assert type(config).__name__ == "LlamaConfig"
    # the seed's parameter counts: ~248M, and ~308M after up-scaling to 16 layers (counted on the meta device)
    with torch.device("meta"):
        assert round(LlamaForCausalLM(config).num_parameters() / 1e6) == 248
        config.num_hidden_layers = 16
        assert LlamaForCausalLM(config).num_parameters() // 10**6 == 308


def test_tokenizer_larger_than_the_embedding_is_refused():
    with pytest.raises(UserError, match=f"vocabulary \\({VOCAB} tokens\\) does not fit.*\\(10 rows\\)"):
        mp.check_tokenizer_fits(tiny_tokenizer(), 10, "tiny")


# ----------------------------------------------------------------------------------------------
# The stage


def run(base_dir, out, *extra):
    mp.main(["--base", str(base_dir), "--output_dir", str(out), *extra])
    return json.loads((out / "preparation.json").read_text())


def test_main_writes_a_standard_model_folder(base_dir, tmp_path):
    tokenizer = tiny_tokenizer()
    packed = write_packed(tmp_path / "packed", tokenizer)
    out = tmp_path / "model"
    report = run(base_dir, out, "--packed_dir", str(packed), "--eval_blocks", "3", "--eval_batch_size", "2")

    assert report["strategy"] == "upscale" and report["plan"] == [[0, 3], [1, 4]]  # 4 -> 6: round(4/3) = 1
    assert report["layers"] == {"before": 4, "after": 6}
    assert report["parameters"]["after"] > report["parameters"]["before"]
    ev = report["evaluation"]
    assert ev["base"]["tokens"] == ev["prepared"]["tokens"] == 3 * 15  # the first 3 blocks of 16: 15 predictions each
    assert math.isclose(ev["prepared"]["perplexity"], math.exp(ev["prepared"]["loss"]), rel_tol=1e-3)
    assert ev["uniform_guess_loss"] == round(math.log(VOCAB), 4)

    model = AutoModelForCausalLM.from_pretrained(out)  # no custom code
    assert type(model) is LlamaForCausalLM and model.config.num_hidden_layers == 6
    assert model.lm_head.weight is model.model.embed_tokens.weight  # the base ties them
    # no padding_idx: the document-boundary token's embedding (here </s> = the base's pad) must train
    assert model.config.pad_token_id is None and model.model.embed_tokens.padding_idx is None
    reloaded_tokenizer = AutoTokenizer.from_pretrained(out)
    assert reloaded_tokenizer("the cat sat").input_ids == tokenizer("the cat sat").input_ids
    bos_id, eos_id, _ = tokenization.document_boundaries(tokenizer)
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (bos_id, eos_id, eos_id)
    assert (out / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((out / "config.json").read_text())

    plan = yaml.safe_load((out / "plan.yaml").read_text())
    assert [s["sources"][0]["layer_range"] for s in plan["slices"]] == [[0, 3], [1, 4]]
    manifest = stages.read_manifest(out, "model_preparation")
    assert manifest["tokenizer"]["fingerprint"] == tokenization.tokenizer_info(reloaded_tokenizer)["fingerprint"]
    assert manifest["tokenizer"]["fingerprint"] == tokenization.tokenizer_info(tokenizer)["fingerprint"]

    # the same settings again: up to date, nothing redone
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    mp.main(["--base", str(base_dir), "--output_dir", str(out), "--packed_dir", str(packed), "--eval_blocks", "3",
             "--eval_batch_size", "2"])
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime


def test_load_keeps_the_base_and_random_draws_fresh_weights(base_dir, tmp_path):
    packed = write_packed(tmp_path / "packed", tiny_tokenizer())
    loaded = run(base_dir, tmp_path / "load", "--strategy", "load", "--packed_dir", str(packed))
    assert loaded["plan"] == [[0, 4]] and loaded["parameters"]["before"] == loaded["parameters"]["after"]
    assert loaded["evaluation"]["base"] == loaded["evaluation"]["prepared"]

    fresh = run(base_dir, tmp_path / "random", "--strategy", "random", "--seed", "3", "--packed_dir", str(packed))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "random")
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    assert model.config.num_hidden_layers == 4
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
    assert fresh["plan"] is None and "base" not in fresh["evaluation"]
    assert model.model.embed_tokens.weight[2].abs().sum() > 0  # the EOS row is initialised like the rest
    assert "prepared" in fresh["evaluation"]


def test_random_weights_are_seeded():
    config = tiny_model().config
    draws = [models.random_model(config, torch.float32, seed).state_dict() for seed in (3, 3, 4)]
    assert all(torch.equal(draws[0][k], draws[1][k]) for k in draws[0])  # the same seed, the same weights
    assert not torch.equal(draws[0]["model.layers.0.mlp.up_proj.weight"], draws[2]["model.layers.0.mlp.up_proj.weight"])


def test_packed_data_from_another_tokenizer_is_refused(base_dir, tmp_path):
    packed = write_packed(tmp_path / "packed", tiny_tokenizer())
    manifest = json.loads((packed / "manifest.json").read_text())
    manifest["tokenizer"]["fingerprint"] = "0" * 64
    (packed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="packed with tokenizer.*re-run data_packaging.py"):
        run(base_dir, tmp_path / "model", "--packed_dir", str(packed))
    assert not (tmp_path / "model").exists()


def test_main_without_packed_data_skips_evaluation(base_dir, tmp_path):
    report = run(base_dir, tmp_path / "model", "--packed_dir", str(tmp_path / "nothing"), "--strategy", "downscale")
    assert report["plan"] == [[0, 1], [2, 4]] and report["layers"]["after"] == 3
    assert "skipped" in report["evaluation"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--strategy", "grow"], "--strategy: must be one of random, load, downscale, upscale, got 'grow'"),
        (["--dtype", "float16"], "--dtype: must be one of float32, bfloat16, got 'float16'"),
        (["--strategy", "load", "--plan", "[[0, 2]]"], "--plan applies to"),
        (["--plan", "[[0, 9]]"], r"\[0, 9\] is out of range"),
    ],
)
def test_bad_settings(base_dir, tmp_path, args, message):
    with pytest.raises(UserError, match=message):
        run(base_dir, tmp_path / "model", *args)


# ----------------------------------------------------------------------------------------------
# models.evaluate_loss


def test_evaluate_loss_is_the_mean_over_all_predicted_tokens():
    model = tiny_model()
    blocks = torch.randint(3, VOCAB, (3, 8), generator=torch.Generator().manual_seed(2))
    dataset = {"input_ids": blocks.tolist()}

    class Blocks:  # the slicing interface of a datasets.Dataset
        def __len__(self):
            return 3

        def __getitem__(self, s):
            return {"input_ids": dataset["input_ids"][s]}

    with torch.no_grad():
        logits = model(blocks).logits[:, :-1]
        per_token = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), blocks[:, 1:].reshape(-1))
    result = models.evaluate_loss(model, Blocks(), batch_size=2)  # batches of 2 and 1: weighted by tokens
    assert result["tokens"] == 3 * 7
    assert math.isclose(result["loss"], per_token.item(), rel_tol=1e-5)
    assert math.isclose(result["perplexity"], math.exp(per_token.item()), rel_tol=1e-5)
    assert models.evaluate_loss(model, Blocks(), batch_size=2, max_batches=1)["tokens"] == 2 * 7
