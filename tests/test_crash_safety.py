"""Stages 1-3 killed with SIGKILL at the points where a partial output could exist (issue 8).

Each killed run is the real script as a subprocess, with a small hook (HOOK below) that pauses it
at an exact point, so the kill always lands there while it is still running (returncode -9):

  tmp_folder       stage_output has made the temporary folder .NAME.tmp-PID (.NAME.partial-KEY for a
                   resumable stage), nothing in it yet
  first_data_file  the first data file is being written (Parquet: one row group, no footer yet;
                   stage 3: model.safetensors written, tokenizer files and manifest not yet)
  before_rename    the manifest is written; the rename that commits the output is next
  between_renames  an --overwrite of a complete output: the old output moved aside
                   (.NAME.old-PID), the new one not yet renamed in

After each kill: the output folder does not exist, or is the previous complete output; the next
stage's reader gives its "run X first" error; a plain rerun completes, with files byte-identical
to an uninterrupted run's (the manifests' file hashes and fingerprints match). A run killed
between the renames loses nothing: the next run of the stage puts the previous output back.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import data_packaging
import data_preparation
import model_preparation
from minipretrain import packing, stages, tokenization
from minipretrain.settings import PROJECT_DIR, UserError

# The start of a hook (also test_resume_packaging's): `python -c HOOK POINT MARKER SCRIPT ARGS...`
# runs SCRIPT with ARGS; pause() writes POINT to the file MARKER and waits to be killed.
HOOK_START = r"""
import os, runpy, sys, time
from pathlib import Path

point, marker, script = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
sys.argv = [script, *sys.argv[4:]]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))


def pause():
    marker.write_text(point)
    time.sleep(600)  # the test kills the process here

"""

HOOK = HOOK_START + r"""
if point == "tmp_folder":
    mkdir = Path.mkdir
    def hooked(self, *args, **kwargs):
        mkdir(self, *args, **kwargs)
        if ".tmp-" in self.name or ".partial-" in self.name:
            pause()
    Path.mkdir = hooked
elif point == "first_data_file" and script.endswith("model_preparation.py"):
    import transformers.modeling_utils as mu
    save = mu.safe_save_file
    def hooked(*args, **kwargs):
        save(*args, **kwargs)
        pause()
    mu.safe_save_file = hooked
elif point == "first_data_file":
    import pyarrow.parquet as pq
    write_table = pq.ParquetWriter.write_table
    def hooked(self, *args, **kwargs):
        write_table(self, *args, **kwargs)
        pause()
    pq.ParquetWriter.write_table = hooked
elif point == "before_rename":
    rename = Path.rename
    def hooked(self, target):
        if ".tmp-" in self.name or ".partial-" in self.name:
            pause()
        return rename(self, target)
    Path.rename = hooked
elif point == "between_renames":
    rename = Path.rename
    def hooked(self, target):
        result = rename(self, target)
        if ".old-" in Path(target).name:
            pause()
        return result
    Path.rename = hooked
runpy.run_path(script, run_name="__main__")
"""

FRESH_POINTS = ["tmp_folder", "first_data_file", "before_rename"]
POINTS = FRESH_POINTS + ["between_renames"]


@dataclass
class FixtureSettings:
    what: str = "test fixture"


def start_paused(script: str, point: str, args: list[str], marker: Path) -> subprocess.Popen:
    """The stage as a subprocess, paused at `point` once it gets there."""
    return subprocess.Popen([sys.executable, "-c", HOOK, point, str(marker), f"{script}.py", *args], cwd=PROJECT_DIR,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def kill_when_paused(proc: subprocess.Popen, marker: Path, point: str, timeout=120.0) -> None:
    """SIGKILL the paused run and check the kill landed while it was running at `point`."""
    deadline = time.monotonic() + timeout
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    still_running = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)  # its whole process group
    _, stderr = proc.communicate()
    assert still_running and marker.read_text() == point, f"never reached {point} (exit {proc.returncode}):\n{stderr}"
    assert proc.returncode == -signal.SIGKILL


def temporaries(out: Path) -> list[str]:
    return sorted(p.name.rsplit("-", 1)[0] for p in out.parent.glob(f".{out.name}.*"))


def files_of(out: Path) -> dict:
    """What identifies an output: its files' hashes and its fingerprint (from the manifest)."""
    manifest = json.loads((out / stages.MANIFEST).read_text())
    return {"files": manifest["files"], "fingerprint": manifest["fingerprint"]}


class Stage:
    """One stage's crash test: its script, its two settings (A: the output an --overwrite replaces;
    B: the run that is killed), an in-process run, and the next stage's reader."""

    def __init__(self, script, main, args_a, args_b, read_next, next_error, temporary=".out.tmp"):
        self.temporary = temporary  # its temporary folder's name, less the -PID (-KEY for a resumable stage)
        self.script, self.main, self.args_a, self.args_b = script, main, args_a, args_b
        self.read_next, self.next_error = read_next, next_error  # next_error: the message, with {out}

    def run(self, out: Path, args: list[str], *extra: str) -> None:
        self.main([*args, "--output_dir", str(out), *extra])


def run_crash_test(stage: Stage, root: Path) -> None:
    """Every kill point of one stage; the killed runs start side by side, each in its own folder."""
    reference_a, reference_b = root / "reference_a", root / "reference_b"
    stage.run(reference_a, stage.args_a)
    stage.run(reference_b, stage.args_b)
    assert files_of(reference_a)["files"] != files_of(reference_b)["files"]

    procs, old_manifest_inode = {}, None
    for point in POINTS:
        out = root / point / "out"
        out.parent.mkdir()
        overwrite = []
        if point == "between_renames":  # a complete output with settings A, replaced by one with B
            shutil.copytree(reference_a, out)
            old_manifest_inode = (out / stages.MANIFEST).stat().st_ino
            overwrite = ["--overwrite"]
        procs[point] = start_paused(stage.script, point, [*stage.args_b, "--output_dir", str(out), *overwrite],
                                    root / point / "paused")
    try:
        for point in POINTS:
            kill_when_paused(procs[point], root / point / "paused", point)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    for point in POINTS:
        out = root / point / "out"
        # No partial output where the next stage looks: the temporary folder holds the pieces.
        assert not out.exists(), point
        assert temporaries(out) == sorted([".out.old", stage.temporary] if point == "between_renames" else [stage.temporary]), point
        with pytest.raises(UserError) as error:
            stage.read_next(out)
        assert str(error.value) == stage.next_error.format(out=out)
        if point == "between_renames":
            # The next run of the stage puts the previous complete output back (the very files,
            # not a new run's): with settings A it is up to date, nothing redone.
            stage.run(out, stage.args_a)
            assert (out / stages.MANIFEST).stat().st_ino == old_manifest_inode
            # A resumable stage's partial folder of settings B stays until a run with B (it could hold
            # finished units that run continues from); that run, next, clears it.
            assert files_of(out) == files_of(reference_a)
            assert temporaries(out) == ([] if stage.temporary == ".out.tmp" else [stage.temporary])
            stage.run(out, stage.args_b, "--overwrite")
        else:
            stage.run(out, stage.args_b)  # a plain rerun
        assert temporaries(out) == [], point  # the killed run's leftovers are gone
        assert files_of(out) == files_of(reference_b), point
    return reference_b


# ----------------------------------------------------------------------------------------------
# The stages' inputs: tiny, built in code

PAGE = (
    "The old harbour town keeps its fishing boats in a narrow basin behind the sea wall.\n\n"
    "Every morning the market opens at six, and by eight most of the catch has been sold.\n\n"
    "Visitors who arrive later can still buy smoked fish from the shop beside the lighthouse."
)
WORDS = "the a cat dog sat ran on under mat rug and then it was big small red blue one two".split()
SPECIALS = ["<unk>", "<s>", "</s>"]


def tiny_tokenizer():
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(SPECIALS + WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_stage1_data_preparation(tmp_path):
    pages = tmp_path / "pages.jsonl"
    lines = [{"id": f"p{i}", "text": PAGE.replace("six", f"six ({i})") + ("\nshort" if i % 3 else "")} for i in range(300)]
    pages.write_text("".join(json.dumps(r) + "\n" for r in lines))
    common_args = ["--web_sources", str(pages), "--code_sources", "none", "--num_proc", "1", "--rows_per_shard", "100",
                   "--near_dedup", "false"]  # the pages differ by a number: near-duplicates, which would leave one
    stage = Stage(  # B drops the 100 pages of 5 lines
        "data_preparation", data_preparation.main, common_args, [*common_args, "--min_lines", "6"],
        read_next=data_packaging.cleaned_files, next_error="{out}: no such folder; run data_preparation.py first",
        temporary=".out.partial",
    )
    reference = run_crash_test(stage, tmp_path)
    assert len(list(reference.glob("cleaned-*.parquet"))) == 2  # B keeps 200 pages: two shards


def test_stage2_data_packaging(tmp_path):
    cleaned = tmp_path / "cleaned"
    texts = [" ".join(WORDS[(i + k) % len(WORDS)] for k in range(30 + i % 17)) for i in range(200)]
    with stages.stage_output(cleaned, "data_preparation", FixtureSettings(), {}, overwrite=True) as out:
        table = pa.table({"text": texts, "source": ["web"] * 200, "doc_id": [f"d{i}" for i in range(200)]})
        pq.write_table(table, out.path / "cleaned-00000.parquet")
    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    common_args = ["--input_dir", str(cleaned), "--tokenizer", str(tmp_path / "tok"), "--rows_per_shard", "200",
                   "--row_group_rows", "50", "--batch_size", "40"]
    stage = Stage(
        "data_packaging", data_packaging.main, [*common_args, "--block_size", "16"], [*common_args, "--block_size", "8"],
        read_next=lambda out: packing.packed_dataset(out, "train"), next_error="{out}: no such folder; run data_packaging.py first",
        temporary=".out.partial",
    )
    reference = run_crash_test(stage, tmp_path)
    assert len(list((reference / "train").glob("packed-*.parquet"))) > 1


def test_stage3_model_preparation(tmp_path):
    import model_training

    tokenizer = tiny_tokenizer()
    base = tmp_path / "base"
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    packed = tmp_path / "packed"  # for the next stage's reader: model_training.py needs packed data first
    with stages.stage_output(packed, "data_packaging", FixtureSettings(), {}, overwrite=True) as out:
        out.manifest |= {"block_size": 8, "tokenizer": tokenization.tokenizer_info(tokenizer)}

    def read_next(model_dir):
        model_training.main(["--model_dir", str(model_dir), "--packed_dir", str(packed), "--output_dir", str(tmp_path / "run")])

    common_args = ["--base", str(base), "--packed_dir", ""]
    stage = Stage(
        "model_preparation", model_preparation.main, [*common_args, "--strategy", "load"],
        [*common_args, "--strategy", "upscale"], read_next=read_next,
        next_error="{out}: not a model folder (no config.json); run model_preparation.py first",
    )
    reference = run_crash_test(stage, tmp_path)
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= set(files_of(reference)["files"])
