"""Safety: files a user did not make cannot run code. No pickle is loaded (weights come from
safetensors; the Trainer's own torch.load calls use weights_only=True), no model or tokenizer folder's
custom code runs (every from_pretrained passes trust_remote_code=False, so transformers neither runs it
nor asks), and a hub id that cannot be reached is one line naming the offline default."""

import ast
import json
import os
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_model_training import FixtureSettings, tiny_tokenizer, write_packed
from transformers import LlamaConfig, LlamaForCausalLM

import data_packaging
import inference_demo
import model_preparation
import model_training
from minipretrain import stages
from minipretrain.settings import PROJECT_DIR, UserError

STAGE_SOURCES = ["data_preparation.py", "data_packaging.py", "model_preparation.py", "model_training.py", "inference_demo.py"] + sorted(
    p.relative_to(PROJECT_DIR).as_posix() for p in (PROJECT_DIR / "minipretrain").glob("*.py")
)


def calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            helper = name == "from_pretrained" and (owner == "loading" or isinstance(func, ast.Name))
            yield ("loading.from_pretrained" if helper else name), owner, {k.arg: k.value for k in node.keywords}, f"{path.name}:{node.lineno}"


def test_the_stages_never_trust_remote_code_nor_unpickle():
    """Read from the stages' source: models, configs and tokenizers load through loading.from_pretrained,
    and every library from_pretrained says trust_remote_code=False; nothing unpickles (no pickle.load,
    no torch.load without weights_only=True, no numpy allow_pickle)."""
    seen = {"loading.from_pretrained": 0, "from_pretrained": 0}
    for source in STAGE_SOURCES:
        for name, owner, keywords, where in calls(PROJECT_DIR / source):
            seen[name] = seen.get(name, 0) + 1
            if name == "from_pretrained":
                value = keywords.get("trust_remote_code")
                assert isinstance(value, ast.Constant) and value.value is False, f"{where}: from_pretrained without trust_remote_code=False"
            assert not (owner == "pickle" and name in ("load", "loads", "Unpickler")), f"{where}: unpickles"
            if owner == "torch" and name == "load":
                value = keywords.get("weights_only")
                assert isinstance(value, ast.Constant) and value.value is True, f"{where}: torch.load without weights_only=True"
            assert "allow_pickle" not in keywords or keywords["allow_pickle"].value is False, where
        assert "trust_remote_code=True" not in (PROJECT_DIR / source).read_text(), source
    # the test reads the calls it means to: stages 3, 4 and 5 load their models through the helper
    assert seen["loading.from_pretrained"] >= 7 and seen["from_pretrained"] >= 2, seen


MARKER = "code-ran.txt"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A packed corpus and three model folders with the same tokenizer: a plain one, one whose
    config and tokenizer config point at custom code (which would write a marker file), and one
    whose only weights are a pickle that would run a command."""
    root = tmp_path_factory.mktemp("safety")
    tokenizer = tiny_tokenizer()
    packed = write_packed(root / "packed", tokenizer)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=64))  # fmt: skip

    custom = root / "custom-code"
    model.save_pretrained(custom)
    tokenizer.save_pretrained(custom)
    code = f"import pathlib\npathlib.Path({str(root / MARKER)!r}).write_text('ran')\n"
    for module in ("configuration_evil", "modeling_evil", "tokenization_evil"):
        (custom / f"{module}.py").write_text(code)
    config = json.loads((custom / "config.json").read_text())
    config |= {"model_type": "evil", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilModel"}}
    (custom / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((custom / "tokenizer_config.json").read_text())
    tokenizer_config |= {"tokenizer_class": "EvilTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}}
    (custom / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))

    pickled = root / "pickled"
    model.save_pretrained(pickled)
    tokenizer.save_pretrained(pickled)
    (pickled / "model.safetensors").unlink()

    class RunsACommand:
        def __reduce__(self):
            return os.system, (f"echo ran > {root / MARKER}",)

    with open(pickled / "pytorch_model.bin", "wb") as f:
        pickle.dump({**model.state_dict(), "payload": RunsACommand()}, f)
    cleaned = root / "cleaned"  # a stage-1 output for stage 2
    with stages.stage_output(cleaned, "data_preparation", FixtureSettings(), {}, overwrite=True) as out:
        table = pa.table({"text": ["the cat sat on a mat"] * 4, "source": ["web"] * 4, "doc_id": [f"d{i}" for i in range(4)]})
        pq.write_table(table, out.path / "cleaned-00000.parquet")
    return root, packed, custom, pickled


def stage_calls(root, packed, folder):
    """Each stage that reads a model or tokenizer folder, pointed at `folder`."""
    out = root / "out"
    return {
        "data_packaging --tokenizer": lambda: data_packaging.main(["--input_dir", str(root / "cleaned"), "--tokenizer", str(folder), "--output_dir", str(out / "2")]),
        "model_preparation --base": lambda: model_preparation.main(["--base", str(folder), "--strategy", "load", "--packed_dir", str(packed), "--output_dir", str(out / "3")]),
        "model_training --model_dir": lambda: model_training.main(["--model_dir", str(folder), "--packed_dir", str(packed), "--output_dir", str(out / "4"), "--max_steps", "1"]),
        "inference_demo --checkpoint": lambda: inference_demo.main(["--checkpoint", str(folder), "--compare_with", "", "--max_new_tokens", "2", "--output_file", str(out / "samples.md")]),
    }  # fmt: skip


MODEL_READERS = ["model_preparation --base", "model_training --model_dir", "inference_demo --checkpoint"]


# stage 2 reads only a folder's tokenizer files (plain JSON), so only custom tokenizer code concerns it
@pytest.mark.parametrize("stage, kind", [("data_packaging --tokenizer", "custom-code")] + [(stage, kind) for stage in MODEL_READERS for kind in ("custom-code", "pickled")])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_folder_that_would_run_code_is_refused_in_one_line(folders, stage, kind, capsys):
    root, packed, custom, pickled = folders
    folder = custom if kind == "custom-code" else pickled
    with pytest.raises(UserError) as e:
        stage_calls(root, packed, folder)[stage]()
    message = str(e.value)
    assert "\n" not in message and str(folder) in message
    assert not (root / MARKER).exists(), f"{stage} ran the folder's code"
    assert "run the custom code" not in capsys.readouterr().out  # transformers' [y/N] question never comes
    assert not (root / "out").exists() or not any((root / "out").iterdir())


@pytest.mark.parametrize("stage", ["data_packaging --tokenizer", "model_preparation --base", "inference_demo --checkpoint"])
def test_an_unreachable_hub_id_names_the_offline_default(folders, stage, monkeypatch):
    root, packed, _, _ = folders
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="offline default") as e:
        stage_calls(root, packed, "no-such-owner/no-such-model")[stage]()
    assert "no-such-owner/no-such-model" in str(e.value) and "\n" not in str(e.value)
