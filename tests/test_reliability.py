"""Reliability, round 2 (issue 13).

1. A model file that is not what it claims: any model-like file a user names (the language-ID
   model, a tokenizer file or folder, a .gguf, a base model folder, a checkpoint) that is empty,
   truncated, of another format or damaged ends the stage in one line `error: <file>: ...`, exit 1,
   whatever --num_proc is: no hang, no dead interpreter, no traceback, no output or temporary folder.
   A filter worker that cannot start, or dies, stops stage 1 instead of being started again.
2. Settings files are checked like flags: a value from a JSON or YAML file goes through the same
   conversion as the flag's text, every numeric setting has its range checked, and a bad value is
   one line naming the file (or flag) and the setting, before any work starts.

Fixtures are built in code (tiny tokenizers and Llamas from test_bad_input, a tiny fastText model
trained here, cut and garbled copies of the bundled files)."""

import importlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from test_bad_input import (
    PAGE,
    PROGRESS_BAR,
    cleaned_table,
    no_temporaries,
    tiny_tokenizer,
    write_cleaned,
    write_model,
    write_packed,
)

import data_packaging
import data_preparation
import inference_demo
import model_preparation
from minipretrain import loading, modelfiles
from minipretrain.filters import language_model_path
from minipretrain.settings import PROJECT_DIR, UserError, parse_settings

SCRIPTS = ["data_preparation", "data_packaging", "model_preparation", "model_training", "inference_demo"]


def no_output(folder: Path) -> bool:
    return not folder.exists() and no_temporaries(folder)


# ----------------------------------------------------------------------------------------------
# Part 1, stage 1: the language-ID model


@pytest.fixture(scope="module")
def lid_bytes():
    return language_model_path("lid.176.ftz").read_bytes()


def damaged_lid(folder: Path, kind: str, lid: bytes) -> Path:
    """A file named as a fastText model that is not a complete one. Cut at 4 bytes, fastText 0.9's
    loader dies of a floating-point exception; at 100 or 100,000 bytes it loops forever; at
    900,000 it segfaults; 13 bytes short it loads without a word."""
    data = {
        "empty": b"",
        "cut_at_4": lid[:4],
        "cut_at_100": lid[:100],
        "cut_at_100000": lid[:100_000],
        "cut_at_900000": lid[:900_000],
        "13_bytes_short": lid[:-13],
        "random_bytes": random.Random(0).randbytes(50_000),
        "text_file": b"__label__en hello world\n",
        "gguf_renamed": b"GGUF\x03\x00\x00\x00" + bytes(100),
        "magic_then_garbage": lid[:8] + random.Random(1).randbytes(2000),
        "extra_bytes_at_the_end": lid + b"\0" * 7,
    }[kind]
    path = folder / f"{kind}.ftz"
    path.write_bytes(data)
    return path


LID_CASES = {
    "empty": "empty file, not a fastText model",
    "cut_at_4": "a truncated fastText model",
    "cut_at_100": "a truncated fastText model",
    "cut_at_100000": "a truncated fastText model",
    "cut_at_900000": "a truncated fastText model",
    "13_bytes_short": r"a truncated fastText model \(937,000 bytes; what it holds needs at least 938,013\)",
    "random_bytes": "not a fastText model",
    "text_file": "not a fastText model",
    "gguf_renamed": "not a fastText model",
    "magic_then_garbage": "a (damaged|truncated) fastText model",
    "extra_bytes_at_the_end": r"a damaged fastText model \(7 bytes after the end of the model\)",
}


@pytest.mark.parametrize("kind", sorted(LID_CASES))
def test_stage1_damaged_language_model_is_one_line_naming_it(tmp_path, lid_bytes, kind, monkeypatch):
    """Checked before fastText ever reads it. Here in this process, with fastText's loader replaced:
    were the check gone, the test fails instead of hanging or crashing pytest (the commands below
    run the real thing with 2 worker processes)."""
    import fasttext

    def never(path):
        raise AssertionError(f"fastText was asked to read {path}")

    monkeypatch.setattr(fasttext, "load_model", never)
    bad = damaged_lid(tmp_path, kind, lid_bytes)
    message = LID_CASES[kind].replace("937,000", f"{len(lid_bytes) - 13:,}").replace("938,013", f"{len(lid_bytes):,}")
    out = tmp_path / "cleaned"
    with pytest.raises(UserError, match=rf"^{bad}: {message}"):
        data_preparation.main(["--language_model", str(bad), "--web_sources", str(tmp_path / "not-read-yet.jsonl"), "--code_sources",
                               "none", "--num_proc", "1", "--output_dir", str(out)])  # checked before any input is read
    assert no_output(out)


@pytest.fixture(scope="module")
def fasttext_models(tmp_path_factory):
    return tiny_fasttext(tmp_path_factory.mktemp("fasttext"))


def test_stage1_language_model_that_is_not_a_classifier_or_lacks_the_language(tmp_path, fasttext_models):
    model, vectors = fasttext_models
    out = tmp_path / "cleaned"
    # a classifier whose labels are en and fr: refused for de, before any work
    with pytest.raises(UserError, match=r"setting language 'de': not one of the labels of .*tiny.bin \(en, fr; 2 in all\)"):
        data_preparation.main(["--language_model", str(model), "--language", "de", "--web_sources", str(tmp_path / "pages.jsonl"),
                               "--code_sources", "none", "--output_dir", str(out), "--num_proc", "1"])
    if vectors is not None:  # a word-vector model has no labels to predict
        with pytest.raises(UserError, match=rf"{vectors}: a fastText (cbow|skipgram) model \(word vectors\), not a classifier"):
            data_preparation.main(["--language_model", str(vectors), "--output_dir", str(out)])


TRAIN_FASTTEXT = """
import random, sys
from pathlib import Path
import fasttext

folder = Path(sys.argv[1])
rng = random.Random(0)
words = {"en": "the cat sat on a mat and it was good".split(), "fr": "le chat est sur la table et il fait beau".split()}
train = folder / "train.txt"
train.write_text("".join(f"__label__{lang} {' '.join(rng.choices(words[lang], k=8))}\\n" for lang in rng.choices(["en", "fr"], k=400)))

def first_that_trains(train):  # on so little text fastText ends some runs with "Encountered NaN"
    for seed in range(30):
        try:
            return train(seed)
        except RuntimeError as e:
            error = e
    raise error

model = first_that_trains(lambda seed: fasttext.train_supervised(
    str(train), dim=8, epoch=5, minn=2, maxn=3, bucket=3000, wordNgrams=2, verbose=0, thread=1, seed=seed))
model.save_model(str(folder / "tiny.bin"))
model.quantize(input=str(train), cutoff=300, qnorm=True, retrain=False, dsub=2)
model.save_model(str(folder / "tiny.ftz"))
try:
    first_that_trains(lambda seed: fasttext.train_unsupervised(
        str(train), dim=8, epoch=1, minCount=1, bucket=100, verbose=0, thread=1)).save_model(str(folder / "vectors.bin"))
except RuntimeError:
    pass  # most runs of a word-vector model on this little text end in NaN: the test skips that part
"""


def tiny_fasttext(folder: Path):
    """A fastText classifier trained by fastText itself (.bin, dense), its quantized, pruned copy
    (.ftz), and a word-vector model (None when fastText did not manage to train one). Trained in a
    fresh interpreter: in one that has run the stages, fastText's training ends in NaN far more often."""
    script = folder / "train_fasttext.py"
    script.write_text(TRAIN_FASTTEXT)
    subprocess.run([sys.executable, str(script), str(folder)], check=True, timeout=120)
    vectors = folder / "vectors.bin"
    return folder / "tiny.bin", vectors if vectors.is_file() else None


def run_stage1(tmp_path, model: Path, *args) -> dict:
    pages = tmp_path / "pages.jsonl"
    pages.write_text("".join(json.dumps({"text": PAGE.replace("six", f"six ({i})")}) + "\n" for i in range(4)))
    out = tmp_path / f"cleaned-{model.suffix[1:]}"
    data_preparation.main(["--language_model", str(model), "--web_sources", str(pages), "--code_sources", "none",
                           "--output_dir", str(out), "--num_proc", "1", *args])
    return json.loads((out / "report.json").read_text())


def test_real_fasttext_models_pass_the_check(tmp_path, fasttext_models):
    """The check accepts what fastText writes: the bundled lid.176.ftz (quantized, pruned), a dense
    .bin and its quantized .ftz; and stage 1 runs on them (on words the toy model never saw: which
    label it gives does not matter here)."""
    info = modelfiles.check_fasttext_model(language_model_path("lid.176.ftz"), "classifier")
    assert info["model"] == "supervised" and len(info["labels"]) == 176 and info["quantized"]
    model, _ = fasttext_models
    assert sorted(modelfiles.check_fasttext_model(model, "classifier")["labels"]) == ["__label__en", "__label__fr"]
    assert not modelfiles.check_fasttext_model(model)["quantized"]
    assert modelfiles.check_fasttext_model(model.with_suffix(".ftz"), "classifier")["quantized"]
    for path in (model, model.with_suffix(".ftz")):
        report = run_stage1(tmp_path, path)
        assert report["input"]["documents"] == 4 and report["language_model"] == str(path)
    # a dense model's dictionary is not bounded by a pruning index: a cut inside it is found by its words
    for cut in (100, 120, 200):
        (tmp_path / "cut.bin").write_bytes(model.read_bytes()[:cut])
        with pytest.raises(UserError, match=rf"cut.bin: a truncated fastText model \({cut} bytes;"):
            modelfiles.check_fasttext_model(tmp_path / "cut.bin")


# Stage 1 as a command with 2 worker processes: the hang and the crashes only show there.

WORKER_SCRIPT = """
import multiprocessing, os, signal, sys, threading, time
sys.path.insert(0, {project!r})
import data_preparation
from minipretrain import cleaning, engines
from minipretrain.settings import UserError

def busy(unit, context):  # a unit that takes long: the main process is killed meanwhile
    time.sleep(60)

def kill_main_soon():  # once the workers are busy: write down who they are, then die as a SIGKILL would end this
    time.sleep(3)
    open(sys.argv[2], "w").write(" ".join(str(p.pid) for p in multiprocessing.active_children()))
    os.kill(os.getpid(), signal.SIGKILL)

class DiesInWorker(data_preparation.Settings):
    def __reduce__(self):  # a worker that unpickles these settings at its start dies there
        return (os._exit, (3,))

if __name__ == "__main__":
    lid = {lid!r}
    case = sys.argv[1]
    s, work, units = data_preparation.Settings(language_model=lid, num_proc=2), cleaning.clean_unit, [(i, {{}}) for i in range(4)]
    if case == "model_damaged_after_the_check":  # the workers load a file the main process checked
        open(lid, "w").write("not a model any more\\n")
    elif case == "worker_dies_at_start":
        s = DiesInWorker(language_model=lid, num_proc=2)
    else:
        work = busy
        threading.Thread(target=kill_main_soon, daemon=True).start()
    try:
        engines.run_units(units, work, cleaning.setup, s)
    except UserError as e:
        print(f"error: {{e}}")
"""


@pytest.mark.parametrize("case", ["model_damaged_after_the_check", "worker_dies_at_start"])
def test_a_worker_that_fails_at_start_stops_the_stage(tmp_path, case):
    """multiprocessing.Pool would start a new worker after each failed start, forever, or wait for
    the lost batch of a dead one: the timeout turns such a hang into a failure."""
    r = run_workers(tmp_path, case)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    expected = {"model_damaged_after_the_check": f"error: {tmp_path / 'lid.ftz'}: not a fastText model",
                "worker_dies_at_start": "error: a worker process died"}[case]
    assert r.stdout.startswith(expected), r.stdout


def run_workers(tmp_path: Path, case: str):
    lid = tmp_path / "lid.ftz"
    shutil.copy(language_model_path("lid.176.ftz"), lid)
    script = tmp_path / "workers.py"
    script.write_text(WORKER_SCRIPT.format(project=str(PROJECT_DIR), lid=str(lid)))
    return subprocess.run([sys.executable, str(script), case, str(tmp_path / "workers.txt")], capture_output=True, text=True, timeout=60)


def test_workers_end_with_a_killed_main_process(tmp_path):
    """A worker busy with a unit when the main process is SIGKILLed ends too, instead of working on
    or waiting forever as an orphan."""
    r = run_workers(tmp_path, "main_process_killed")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert_workers_end(tmp_path / "workers.txt")


def assert_workers_end(pids_file: Path, seconds: float = 20) -> None:
    """The worker processes listed in pids_file (at least 2) are all gone within `seconds`."""
    pids = [int(pid) for pid in pids_file.read_text().split()]
    assert len(pids) >= 2
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.2)
    assert not [pid for pid in pids if alive(pid)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").is_file() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


# ----------------------------------------------------------------------------------------------
# Part 1, stages 2-5: tokenizer files and folders, .gguf files, model folders, checkpoints


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok):
    return write_model(tmp_path_factory.mktemp("stage3") / "model", tok)


@pytest.fixture(scope="module")
def packed_dir(tmp_path_factory, tok):
    return write_packed(tmp_path_factory.mktemp("stage2") / "packed", tok)


@pytest.fixture(scope="module")
def cleaned_dir(tmp_path_factory):
    return write_cleaned(tmp_path_factory.mktemp("stage1") / "cleaned", cleaned_table())


@pytest.fixture(scope="module")
def gguf_bytes():
    return loading.bundled_file("smollm2-135m").read_bytes()


@pytest.fixture(scope="module")
def spm_bytes():
    return loading.bundled_file("mistral-32k").read_bytes()


def damaged_file(folder: Path, kind: str, gguf: bytes, spm: bytes) -> Path:
    """A .gguf or SentencePiece .model file that is not a complete one."""
    name, data = {
        "gguf_empty": ("e.gguf", b""),
        "gguf_cut_in_the_header": ("h.gguf", gguf[:1000]),
        "gguf_cut_in_the_tensors": ("t.gguf", gguf[: len(gguf) // 2]),  # its tokenizer is whole: still refused
        "gguf_one_byte_short": ("s.gguf", gguf[:-1]),
        "gguf_random_bytes": ("r.gguf", random.Random(0).randbytes(5000)),
        "gguf_magic_then_random": ("m.gguf", b"GGUF\x03\x00\x00\x00" + random.Random(0).randbytes(5000)),
        "gguf_text_file": ("x.gguf", b"hello\n"),
        "gguf_length_garbled": ("g.gguf", gguf[:24] + b"\xff" * 8 + gguf[32:3_000_000]),
        "spm_empty": ("e.model", b""),
        "spm_cut": ("c.model", spm[: len(spm) // 2]),
        "spm_random_bytes": ("r.model", random.Random(0).randbytes(5000)),
        "spm_a_gguf_renamed": ("g.model", gguf[:5000]),
    }[kind]
    path = folder / name
    path.write_bytes(data)
    return path


FILE_CASES = {
    "gguf_empty": "empty file, not a GGUF file",
    "gguf_cut_in_the_header": r"a truncated GGUF file \(1,000 bytes",
    "gguf_cut_in_the_tensors": "a truncated GGUF file .* its tensors end at byte",
    "gguf_one_byte_short": "a truncated GGUF file .* its tensors end at byte",
    "gguf_random_bytes": r"not a GGUF file \(it does not start with the GGUF magic bytes\)",
    "gguf_magic_then_random": "a (damaged|truncated) GGUF file",
    "gguf_text_file": "not a GGUF file",
    "gguf_length_garbled": "a damaged GGUF file",
    "spm_empty": "empty file, not a SentencePiece model",
    "spm_cut": "not a SentencePiece model",
    "spm_random_bytes": "not a SentencePiece model",
    "spm_a_gguf_renamed": "not a SentencePiece model",
}


@pytest.mark.parametrize("kind", sorted(FILE_CASES))
def test_stage2_damaged_tokenizer_file(tmp_path, cleaned_dir, gguf_bytes, spm_bytes, kind):
    bad = damaged_file(tmp_path, kind, gguf_bytes, spm_bytes)
    out = tmp_path / "packed"
    with pytest.raises(UserError, match=rf"^{bad}: {FILE_CASES[kind]}"):
        data_packaging.main(["--input_dir", str(cleaned_dir), "--tokenizer", str(bad), "--output_dir", str(out)])
    assert no_output(out)


@pytest.mark.parametrize("kind", ["gguf_cut_in_the_header", "gguf_cut_in_the_tensors", "gguf_random_bytes", "gguf_length_garbled"])
def test_stage3_damaged_gguf_base(tmp_path, gguf_bytes, spm_bytes, kind):
    bad = damaged_file(tmp_path, kind, gguf_bytes, spm_bytes)
    out = tmp_path / "model"
    with pytest.raises(UserError, match=rf"^{bad}: {FILE_CASES[kind]}"):
        model_preparation.main(["--base", str(bad), "--packed_dir", "", "--output_dir", str(out)])
    assert no_output(out)


def test_stage3_damaged_tokenizer_beside_a_good_base(tmp_path, model_dir, spm_bytes, gguf_bytes):
    bad = damaged_file(tmp_path, "spm_empty", gguf_bytes, spm_bytes)
    out = tmp_path / "model"
    with pytest.raises(UserError, match=rf"^{bad}: empty file, not a SentencePiece model"):
        model_preparation.main(["--base", str(model_dir), "--tokenizer", str(bad), "--packed_dir", "", "--output_dir", str(out)])
    assert no_output(out)


def damage_folder(tmp_path: Path, model_dir: Path, kind: str) -> tuple[Path, str]:
    """A copy of a model folder with one file damaged: (the folder, what the error must say)."""
    folder = tmp_path / f"model-{kind}"
    shutil.copytree(model_dir, folder)
    file, data, message = {
        "tokenizer_json_not_json": ("tokenizer.json", b'{"version": ', r"tokenizer.json: not valid JSON \("),
        "tokenizer_json_random_bytes": ("tokenizer.json", bytes(range(128, 256)) * 8, r"tokenizer.json: not JSON \(not UTF-8 text"),
        "tokenizer_json_not_a_tokenizer": ("tokenizer.json", b'{"model": {"type": "BPE"}}', r"tokenizer.json: not a tokenizer file \("),
        "tokenizer_json_a_list": ("tokenizer.json", b"[]", r"tokenizer.json: holds a JSON list, expected an object"),
        "tokenizer_config_empty": ("tokenizer_config.json", b"", r"tokenizer_config.json: empty file, not JSON"),
        "config_a_list": ("config.json", b"[1, 2]", r"config.json: holds a JSON list, expected an object"),
        "generation_config_not_json": ("generation_config.json", b"{", r"generation_config.json: not valid JSON \("),
        "weights_random_bytes": ("model.safetensors", random.Random(0).randbytes(3000), r"model.safetensors: not a safetensors file"),
        "weights_empty": ("model.safetensors", b"", r"model.safetensors: empty file, not safetensors weights"),
        "weights_a_gguf_renamed": ("model.safetensors", b"GGUF\x03\x00\x00\x00" + bytes(5000), r"model.safetensors: not a safetensors file"),
        "weights_one_byte_short": ("model.safetensors", None, r"model.safetensors: a truncated safetensors file"),
        "weights_missing_a_tensor": ("model.safetensors", None, r"cannot load .*\(1 tensor\(s\) missing from its weights: model.layers.1.mlp.down_proj.weight\)"),
        "weights_of_another_shape": ("model.safetensors", None, r"cannot load .*\(its weights have other shapes than its config.json says"),
    }[kind]
    if kind == "weights_one_byte_short":
        data = (folder / file).read_bytes()[:-1]
    elif kind == "weights_missing_a_tensor":
        tensors = load_file(folder / file)
        del tensors["model.layers.1.mlp.down_proj.weight"]
        save_file(tensors, folder / file, metadata={"format": "pt"})
    elif kind == "weights_of_another_shape":
        tensors = load_file(folder / file)
        key = "model.layers.0.mlp.up_proj.weight"
        tensors[key] = tensors[key][:-1].clone()
        save_file(tensors, folder / file, metadata={"format": "pt"})
    if data is not None:
        (folder / file).write_bytes(data)
    return folder, message


FOLDER_CASES = ["tokenizer_json_not_json", "tokenizer_json_random_bytes", "tokenizer_json_not_a_tokenizer", "tokenizer_json_a_list",
                "tokenizer_config_empty", "config_a_list", "generation_config_not_json", "weights_random_bytes", "weights_empty",
                "weights_a_gguf_renamed", "weights_one_byte_short", "weights_missing_a_tensor", "weights_of_another_shape"]
TOKENIZER_CASES = [c for c in FOLDER_CASES if c.startswith("tokenizer")]


def stage_call(stage: str, folder: Path, tmp_path: Path, packed_dir: Path, cleaned_dir: Path):
    """Run `stage` on the folder as its model (stage 2: as its tokenizer); returns its output path."""
    if stage == "data_packaging":
        out = tmp_path / "packed"
        data_packaging.main(["--input_dir", str(cleaned_dir), "--tokenizer", str(folder), "--output_dir", str(out)])
    elif stage == "model_preparation":
        out = tmp_path / "prepared"
        model_preparation.main(["--base", str(folder), "--strategy", "load", "--packed_dir", "", "--output_dir", str(out)])
    elif stage == "model_training":
        import model_training

        out = tmp_path / "run"
        model_training.main(["--model_dir", str(folder), "--packed_dir", str(packed_dir), "--output_dir", str(out),
                             "--max_steps", "1", "--bf16", "false"])
    else:
        out = tmp_path / "samples.md"
        inference_demo.main(["--checkpoint", str(folder), "--compare_with", "", "--max_new_tokens", "2", "--output_file", str(out)])
    return out


@pytest.mark.parametrize("stage, kind", [("data_packaging", k) for k in TOKENIZER_CASES] + [
    (stage, kind) for stage in ("model_preparation", "model_training", "inference_demo") for kind in FOLDER_CASES])
def test_damaged_model_or_tokenizer_folder(tmp_path, model_dir, packed_dir, cleaned_dir, stage, kind):
    folder, message = damage_folder(tmp_path, model_dir, kind)
    with pytest.raises(UserError, match=rf"{folder}(/| |:).*{message}") as raised:
        stage_call(stage, folder, tmp_path, packed_dir, cleaned_dir)
    if "cannot load" not in message:  # the file itself is named first
        assert str(raised.value).startswith(f"{folder}/"), raised.value
    outputs = {"data_packaging": "packed", "model_preparation": "prepared", "model_training": "run", "inference_demo": "samples.md"}
    assert no_output(tmp_path / outputs[stage])


def test_a_damaged_file_passes_unchanged_through_the_advice(tmp_path, model_dir):
    """A base or tokenizer that is the wrong choice gets advice (the offline default); a damaged
    file does not: the one line is about the file."""
    folder, _ = damage_folder(tmp_path, model_dir, "config_a_list")
    with pytest.raises(UserError) as raised:
        model_preparation.main(["--base", str(folder), "--packed_dir", "", "--output_dir", str(tmp_path / "out")])
    assert str(raised.value) == f"{folder / 'config.json'}: holds a JSON list, expected an object ({{...}})"


# ----------------------------------------------------------------------------------------------
# Part 2: settings files are checked like flags

# Per script: settings of each kind, and a value its range refuses (flag text, YAML/JSON value, message).
KINDS = {
    "data_preparation": {"int": "min_lines", "float": "max_dup_char_frac", "bool": "overwrite", "list": "web_sources",
                         "range": ("min_lines", 0, "must be at least 1, got 0")},
    "data_packaging": {"int": "block_size", "float": "validation_fraction", "bool": "overwrite",
                       "range": ("validation_fraction", 1.0, "must be at least 0 and less than 1, got 1.0")},
    "model_preparation": {"int": "eval_blocks", "bool": "overwrite", "choice": "strategy",
                          "range": ("eval_batch_size", 0, "must be at least 1, got 0")},
    "model_training": {"int": "max_steps", "float": "learning_rate", "bool": "resume",
                       "range": ("warmup_steps", -1, "must be at least 0, got -1")},
    "inference_demo": {"int": "max_new_tokens", "float": "temperature", "bool": "stream", "list": "prompts",
                       "range": ("top_p", 1.5, "must be greater than 0 and at most 1, got 1.5")},
}

# (kind, file value, what the message says it got): values that the setting's flag would refuse too
BAD_FILE_VALUES = [
    ("int", 2.5, "expected an integer, got 2.5"),
    ("int", "three", 'expected an integer, got "three"'),
    ("int", None, "expected an integer, got null"),
    ("int", [2], "expected an integer, got [2]"),
    ("int", True, "expected an integer, got true"),
    ("int", {"a": 1}, 'expected an integer, got {"a": 1}'),
    ("float", "lots", 'expected a number, got "lots"'),
    ("float", [0.5], "expected a number, got [0.5]"),
    ("bool", "maybe", 'expected true or false, got "maybe"'),
    ("bool", None, "expected true or false, got null"),
    ("list", None, "expected a string or a list of strings, got null"),
    ("list", [], "expected a string or a non-empty list of strings, got []"),
    ("list", ["a", ["b"]], 'expected a string or a list of strings, got ["a", ["b"]]'),
    ("choice", False, "expected a string (in YAML, quote a word such as no, yes, on or off), got false"),
    ("choice", ["load"], 'expected a string, got ["load"]'),
]


def output_flag(script: str, out: Path) -> list[str]:
    return ["--output_file" if script == "inference_demo" else "--output_dir", str(out)]


def settings_file(tmp_path: Path, suffix: str, values: dict) -> Path:
    path = tmp_path / f"my{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(values))
    else:
        import yaml

        path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_values_in_a_settings_file(tmp_path, script, suffix):
    """Each bad value is one line naming the file and the setting: main() stops in parse_settings,
    before any work (no input exists here, and no output appears)."""
    main = importlib.import_module(script).main
    cases = [(KINDS[script][kind], value, message) for kind, value, message in BAD_FILE_VALUES if kind in KINDS[script]]
    name, value, problem = KINDS[script]["range"]
    cases.append((name, value, problem.replace("got -1", "got -1.0") if script == "model_training" else problem))
    assert len(cases) >= 9
    for name, value, message in cases:
        path = settings_file(tmp_path, suffix, {name: value, output_flag(script, tmp_path / "out")[0][2:]: str(tmp_path / "out")})
        with pytest.raises(UserError) as raised:
            main([str(path)])
        assert str(raised.value) == f"{path}: {name}: {message}", (name, value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_values_as_flags(tmp_path, script):
    main = importlib.import_module(script).main
    kinds = KINDS[script]
    cases = [(kinds["int"], "2.5", "expected an integer, got '2.5'"), (kinds["int"], "three", "expected an integer, got 'three'"),
             (kinds["bool"], "maybe", "expected true or false, got 'maybe'"), (kinds["int"], None, "expected one argument")]
    if "float" in kinds:
        cases.append((kinds["float"], "lots", "expected a number, got 'lots'"))
    name, value, problem = kinds["range"]
    cases.append((name, str(value), problem.replace("got -1", "got -1.0") if script == "model_training" else problem))
    for name, text, message in cases:
        with pytest.raises(UserError) as raised:
            main([f"--{name}", *([text] if text is not None else []), *output_flag(script, tmp_path / "out")])
        assert str(raised.value) == f"--{name}: {message}"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_near_misses_are_read_as_their_flags_are(tmp_path, suffix):
    """A file's value is the flag's text converted: an int setting takes 2 and "2" (what the flag
    gets) but never 2.0 or 2.5; a single string for a list setting is a one-element list, as one
    flag value is; a flag given after the file overrides it."""
    cases = [
        ({"min_lines": 2}, ["--min_lines", "2"], {"min_lines": 2}),
        ({"min_lines": "2"}, ["--min_lines", "2"], {"min_lines": 2}),
        ({"web_sources": "/data/pages.jsonl"}, ["--web_sources", "/data/pages.jsonl"], {"web_sources": ["/data/pages.jsonl"]}),
        ({"web_sources": ["/data/pages.jsonl"]}, ["--web_sources", "/data/pages.jsonl"], {"web_sources": ["/data/pages.jsonl"]}),
        ({"web_sources": ["a", "b"]}, ["--web_sources", "a", "b"], {"web_sources": ["a", "b"]}),
        ({"max_dup_char_frac": 1}, ["--max_dup_char_frac", "1"], {"max_dup_char_frac": 1.0}),
        ({"overwrite": True}, ["--overwrite", "true"], {"overwrite": True}),
        ({"overwrite": "false"}, ["--overwrite", "false"], {"overwrite": False}),
    ]
    for values, flags, expected in cases:
        path = settings_file(tmp_path, suffix, values)
        from_file = parse_settings(data_preparation.Settings, [str(path)], data_preparation.CHECKS)
        from_flags = parse_settings(data_preparation.Settings, flags, data_preparation.CHECKS)
        assert {k: getattr(from_file, k) for k in expected} == expected == {k: getattr(from_flags, k) for k in expected}, values
    for value in (2.0, 2.5):
        path = settings_file(tmp_path, suffix, {"min_lines": value})
        with pytest.raises(UserError, match=rf"my{suffix}: min_lines: expected an integer, got {value}$"):
            parse_settings(data_preparation.Settings, [str(path)], data_preparation.CHECKS)
    path = settings_file(tmp_path, suffix, {"min_lines": 0})  # out of range in the file, overridden by the flag
    assert parse_settings(data_preparation.Settings, [str(path), "--min_lines", "5"], data_preparation.CHECKS).min_lines == 5
    path = settings_file(tmp_path, suffix, {"prompts": "Once upon a time"})
    assert parse_settings(inference_demo.Settings, [str(path)], inference_demo.CHECKS).prompts == ["Once upon a time"]


def test_null_only_where_the_type_allows_none_and_mappings_only_where_it_takes_one(tmp_path):
    import model_training

    def parse(values, suffix=".yaml"):
        return parse_settings(model_training.Settings, [str(settings_file(tmp_path, suffix, values))], model_training.CHECKS)

    assert parse({"bf16": None, "eval_steps": None, "save_total_limit": None}).save_total_limit is None  # bool | None, float | None
    assert parse({"lr_scheduler_kwargs": {"power": 2.0}}).lr_scheduler_kwargs == {"power": 2.0}  # dict | str | None
    with pytest.raises(UserError, match=r"my.yaml: max_steps: expected an integer, got null$"):
        parse({"max_steps": None})
    with pytest.raises(UserError, match=r"my.yaml: eval_steps: must be greater than 0, got 0.0$"):
        parse({"eval_steps": 0})
    with pytest.raises(UserError, match=r"my.yaml: save_strategy: must be one of no, steps, epoch, best, got 'sometimes'$"):
        parse({"save_strategy": "sometimes"})
    with pytest.raises(UserError, match=r"my.json: temperature: must be a finite number, got nan$"):
        parse_settings(inference_demo.Settings, [str(settings_file(tmp_path, ".json", {"temperature": float("nan")}))], inference_demo.CHECKS)


def test_a_bad_default_is_named_as_the_default():
    @dataclass
    class Edited(data_preparation.Settings):
        min_lines: int = 0  # a constant edited to a value out of range

    with pytest.raises(UserError, match=r"^setting min_lines: must be at least 1, got 0 \(the default in .*'s Settings\)$"):
        parse_settings(Edited, [], data_preparation.CHECKS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_numeric_setting_has_a_range(script):
    """Each int or float setting (model_training: with the inherited TrainingArguments ones) is in
    the script's CHECKS, and its default passes."""
    module = importlib.import_module(script)
    hints = typing.get_type_hints(module.Settings)
    numeric = {f.name for f in fields(module.Settings) if f.init and {int, float} & ({hints[f.name]} | set(typing.get_args(hints[f.name])))}
    assert numeric and numeric <= set(module.CHECKS), sorted(numeric - set(module.CHECKS))
    parse_settings(module.Settings, [], module.CHECKS)  # the defaults pass their own checks


# ----------------------------------------------------------------------------------------------
# What the user sees: the scripts as commands, all started side by side


def command_cases(tmp: Path, lid: bytes, model_dir: Path):
    """name -> (script, args, the one error line's start, the output that must not exist)."""
    (tmp / "lid").mkdir()
    cut = damaged_lid(tmp / "lid", "cut_at_100000", lid)  # fastText 0.9 loops forever on it
    text = damaged_lid(tmp / "lid", "text_file", lid)  # ... raises in each worker, which Pool restarted forever
    weights, _ = damage_folder(tmp, model_dir, "weights_missing_a_tensor")
    yaml_file = tmp / "bad.yaml"
    yaml_file.write_text("min_lines: 2.5\n")
    json_file = tmp / "bad.json"
    json_file.write_text('{"top_p": 1.5}')
    stage1 = ["--code_sources", "none", "--num_proc", "2"]
    return {
        "lid_cut": ("data_preparation", [*stage1, "--language_model", str(cut), "--output_dir", str(tmp / "o1")],
                    f"{cut}: a truncated fastText model", tmp / "o1"),
        "lid_text": ("data_preparation", [*stage1, "--language_model", str(text), "--output_dir", str(tmp / "o3")],
                     f"{text}: not a fastText model", tmp / "o3"),
        "base_missing_weights": ("model_preparation", ["--base", str(weights), "--packed_dir", "", "--output_dir", str(tmp / "o5")],
                                 f"--base {weights}: cannot load its weights (1 tensor(s) missing", tmp / "o5"),
        "yaml_value": ("data_preparation", [str(yaml_file), "--output_dir", str(tmp / "o7")],
                       f"{yaml_file}: min_lines: expected an integer, got 2.5", tmp / "o7"),
        "json_range": ("inference_demo", [str(json_file), "--output_file", str(tmp / "o8.md")],
                       f"{json_file}: top_p: must be greater than 0 and at most 1, got 1.5", tmp / "o8.md"),
        "flag_value": ("model_training", ["--max_steps", "three", "--output_dir", str(tmp / "o9")],
                       "--max_steps: expected an integer, got 'three'", tmp / "o9"),
    }


@pytest.fixture(scope="module")
def commands(tmp_path_factory, lid_bytes, model_dir):
    """Six commands started side by side (the damaged files and folders of the other stages are
    run in this process above, and as commands in test_bad_input)."""
    tmp = tmp_path_factory.mktemp("commands")
    cases = command_cases(tmp, lid_bytes, model_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = {name: subprocess.Popen([sys.executable, f"{script}.py", *args], cwd=PROJECT_DIR, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env) for name, (script, args, _, _) in cases.items()}
    results = {}
    try:
        for name, proc in procs.items():
            _, stderr = proc.communicate(timeout=120)  # a hang fails the test instead of hanging it
            results[name] = (proc.returncode, stderr)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    return cases, results


@pytest.mark.parametrize("name", ["lid_cut", "lid_text", "base_missing_weights", "yaml_value", "json_range", "flag_value"])
def test_each_command_ends_in_one_error_line_and_exit_1(commands, name):
    cases, results = commands
    _, _, expected, output = cases[name]
    returncode, stderr = results[name]
    assert returncode == 1, f"exit {returncode}\n{stderr}"
    assert "Traceback" not in stderr
    # one error line, the last; before it at most a progress bar of loading (stage 3's weights)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(f"error: {expected}"), stderr
    assert all(PROGRESS_BAR.match(line) for line in lines[:-1]), stderr
    assert no_output(output)


def test_commands_leave_nothing_beside_their_outputs(commands):
    cases, _ = commands
    folder = next(iter(cases.values()))[3].parent
    assert not [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
