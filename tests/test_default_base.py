"""The real bases, as a user's run loads them: the bundled SmolLM2-135M GGUF up-scaled 30 -> 40
layers by model_preparation.py's defaults, the same file named by its path (`--base file.gguf`), and
the TinySolar preset. The other stage-3 tests use tiny random models; these are the slowest tests of
the suite (about 1.5 minutes together on 2 cores), and the only ones that read the bundled weights."""

import json

import pytest
import torch
import yaml
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

import model_preparation as mp
from minipretrain import loading, stages, tokenization

PROMPT = "The farmers' market in our town"
ENGLISH = (
    "The old harbour town keeps its fishing boats in a narrow basin behind the sea wall. Every morning the "
    "market opens at six, and by eight most of the catch has been sold to the restaurants along the quay."
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a busy 2-core machine a second one mostly waits (a forward pass of the
    default model took 10 s with two threads while other tests ran, 0.4 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """model_preparation.py with every default but where it writes, and without evaluation
    (no packed data here): SmolLM2-135M from the bundled GGUF, up-scaled."""
    out = tmp_path_factory.mktemp("default") / "smollm2-dus"
    mp.main(["--output_dir", str(out), "--packed_dir", ""])
    return out


def tensors(folder, *names):
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return [f.get_tensor(n) for n in names]


def layer_tensors(folder, i):
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        prefix = f"model.layers.{i}."
        return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_default_base_is_smollm2_up_scaled_30_to_40_layers(default_run):
    report = json.loads((default_run / "preparation.json").read_text())
    assert (report["base"], report["strategy"], report["dtype"]) == ("smollm2-135m", "upscale", "float32")
    assert report["plan"] == [[0, 20], [10, 30]]
    assert report["layers"] == {"before": 30, "after": 40}
    # the README's 134.5M -> 169.9M: 10 more layers of 3,540,096 parameters each
    assert report["parameters"] == {"before": 134_515_008, "after": 169_915_968}

    model = AutoModelForCausalLM.from_pretrained(default_run).eval()
    assert type(model) is LlamaForCausalLM and len(model.model.layers) == 40
    assert model.num_parameters() == report["parameters"]["after"]
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(40))
    # new layers 10 and 20 are copies of base layer 10, 19 and 29 of base layer 19
    assert same_tensors(layer_tensors(default_run, 10), layer_tensors(default_run, 20))
    assert same_tensors(layer_tensors(default_run, 19), layer_tensors(default_run, 29))
    assert not same_tensors(layer_tensors(default_run, 19), layer_tensors(default_run, 20))

    # the document boundary is <|endoftext|> (id 0), not the chat markers the GGUF reports
    tokenizer = AutoTokenizer.from_pretrained(default_run)
    assert len(tokenizer) == 49_152 and tokenizer.convert_ids_to_tokens(0) == "<|endoftext|>"
    assert tokenization.document_boundaries(tokenizer)[:2] == (0, 0)
    gen = json.loads((default_run / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (0, 0, 0)
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (0, 0, None)
    manifest = stages.read_manifest(default_run, "model_preparation")
    assert (manifest["tokenizer"]["bos_id"], manifest["tokenizer"]["eos_id"]) == (0, 0)
    assert manifest["tokenizer"]["fingerprint"] == tokenization.tokenizer_fingerprint(tokenizer)
    # the saved tokenizer keeps SmolLM2's digit-by-digit pre-tokenizer (the GGUF loading fix)
    assert tokenizer.convert_ids_to_tokens(tokenizer("x  5", add_special_tokens=False)["input_ids"]) == ["x", "\u0120\u0120", "5"]

    # the dequantized weights are SmolLM2's: English is far from the uniform guess (ln 49,152 = 10.8)
    ids = torch.tensor([[0] + tokenizer(ENGLISH, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert model(ids, labels=ids).loss.item() < 5.0
    # greedy generation with the key/value cache equals it without
    ids = torch.tensor([[0] + tokenizer(PROMPT, add_special_tokens=False)["input_ids"]])
    runs = []
    for use_cache in (True, False):
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                             do_sample=False, use_cache=use_cache)
        runs.append(out[0, ids.shape[1]:].tolist())
    assert runs[0] == runs[1] and len(runs[0]) == 12


def test_a_gguf_path_is_the_same_base_as_the_keyword(default_run, tmp_path):
    """--base path/to/file.gguf, here the bundled file by its path, downscaled (30 -> 25) in bfloat16:
    its layers are the default run's, rounded to bfloat16."""
    gguf = loading.bundled_file("smollm2-135m")
    out = tmp_path / "smollm2-down"
    mp.main(["--base", str(gguf), "--strategy", "downscale", "--dtype", "bfloat16", "--packed_dir", "",
             "--output_dir", str(out)])
    report = json.loads((out / "preparation.json").read_text())
    assert report["plan"] == [[0, 12], [17, 30]] and report["layers"] == {"before": 30, "after": 25}
    assert report["parameters"]["before"] == 134_515_008
    assert report["parameters"]["after"] == 134_515_008 - 5 * 3_540_096
    # new layer 12 is base layer 17, which the default run's plan put at 17 (and 27)
    down = {12: layer_tensors(out, 12), 11: layer_tensors(out, 11)}
    assert {t.dtype for t in down[12].values()} == {torch.bfloat16}
    as_bf16 = lambda d: {k: v.to(torch.bfloat16) for k, v in d.items()}  # noqa: E731
    assert same_tensors(down[12], as_bf16(layer_tensors(default_run, 17)))
    assert same_tensors(down[11], as_bf16(layer_tensors(default_run, 11)))
    (embed,), (default_embed,) = tensors(out, "model.embed_tokens.weight"), tensors(default_run, "model.embed_tokens.weight")
    assert torch.equal(embed, default_embed.to(torch.bfloat16))
    manifest = stages.read_manifest(out, "model_preparation")
    assert manifest["inputs"]["base"] == {"spec": str(gguf), "file": gguf.name, "bytes": gguf.stat().st_size}
    assert (manifest["tokenizer"]["bos_id"], manifest["tokenizer"]["eos_id"]) == (0, 0)
    assert "is a GGUF file" in (out / "plan.yaml").read_text()


def test_the_tinysolar_preset_up_scales_12_to_16_layers(tmp_path):
    """--base tinysolar-248m: random weights in TinySolar-248m's shape with the mistral-32k tokenizer,
    up-scaled 12 -> 16 (the seed's), in bfloat16 to keep it small; no evaluation."""
    out = tmp_path / "tinysolar-dus"
    mp.main(["--base", "tinysolar-248m", "--dtype", "bfloat16", "--packed_dir", "", "--output_dir", str(out)])
    report = json.loads((out / "preparation.json").read_text())
    assert report["plan"] == [[0, 8], [4, 12]] and report["layers"] == {"before": 12, "after": 16}
    # the README's 248.0M -> 308.8M: 4 more layers of 15,206,400 parameters each
    assert report["parameters"] == {"before": 248_013_824, "after": 308_839_424}

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "bfloat16"
    assert (config["hidden_size"], config["intermediate_size"], config["num_attention_heads"],
            config["num_key_value_heads"], config["num_hidden_layers"], config["vocab_size"]) == (1024, 4096, 32, 8, 16, 32_000)
    assert config["tie_word_embeddings"] is False
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        shapes = {n: tuple(f.get_slice(n).get_shape()) for n in names}
        dtypes = {f.get_slice(n).get_dtype() for n in names}
    assert dtypes == {"BF16"}
    assert {int(n.split(".")[2]) for n in names if n.startswith("model.layers.")} == set(range(16))
    assert shapes["model.embed_tokens.weight"] == shapes["lm_head.weight"] == (32_000, 1024)
    assert shapes["model.layers.15.self_attn.q_proj.weight"] == (1024, 1024)
    assert shapes["model.layers.15.self_attn.k_proj.weight"] == (256, 1024)  # 8 KV heads of 32
    assert shapes["model.layers.15.mlp.up_proj.weight"] == (4096, 1024)
    assert sum(torch.Size(s).numel() for s in shapes.values()) == report["parameters"]["after"]
    # new layers 4 and 8 are both copies of the random base's layer 4
    assert same_tensors(layer_tensors(out, 4), layer_tensors(out, 8))
    (embed,) = tensors(out, "model.embed_tokens.weight")
    assert 0.01 < embed.float().std().item() < 0.03  # random, with the config's initializer_range 0.02

    # the tokenizer: mistral-32k, documents <s> ... </s>
    tokenizer_info = stages.read_manifest(out, "model_preparation")["tokenizer"]
    assert tokenizer_info["name"] == "mistral-32k" and tokenizer_info["vocab_size"] == 32_000
    assert (tokenizer_info["bos_token"], tokenizer_info["bos_id"], tokenizer_info["eos_token"], tokenizer_info["eos_id"]) == ("<s>", 1, "</s>", 2)
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 2)
    assert len(AutoTokenizer.from_pretrained(out)) == 32_000
    plan = yaml.safe_load((out / "plan.yaml").read_text())
    assert [s["sources"][0]["layer_range"] for s in plan["slices"]] == [[0, 8], [4, 12]]
