"""What a stage may do to the place it writes (issue 13, classes 2 and 4):

- it replaces only its own previous output (a folder whose manifest names the stage): a folder
  of the user's, another stage's output, a file or a link is refused in one line, with or
  without --overwrite, and left exactly as it was;
- when the operating system says no (a full disk, a read-only place, no permission) the stage
  ends with one line naming the path and what failed, exit 1, no traceback, no temporary folder,
  and the previous output intact.

The full disk and the read-only place are real: a small tmpfs mounted for the test when the
tests run as root (as here and in CI); otherwise a file-size limit (RLIMIT_FSIZE) and a folder
without write permission make the writes fail the same way.
"""

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import data_packaging
import data_preparation
import model_preparation
import model_training
from minipretrain.settings import PROJECT_DIR, UserError, run_main
from test_model_training import argv, tiny_tokenizer, write_model, write_packed

PAGES = PROJECT_DIR / "sample_data/web/clean-a.jsonl"
STAGE1 = ["--web_sources", str(PAGES), "--code_sources", "none", "--num_proc", "1"]


def user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("mine")
    return path


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_stages_1_to_3_replace_only_their_own_outputs(tmp_path, capsys):
    mine = user_folder(tmp_path / "mine")
    for overwrite in ([], ["--overwrite"]):
        with pytest.raises(UserError, match=f"{mine}: a folder without a manifest.json of data_preparation.*will not help"):
            data_preparation.main([*STAGE1, "--output_dir", str(mine), *overwrite])
    assert snapshot(mine) == {"notes.txt": b"mine"}

    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    with pytest.raises(UserError, match=f"{a_file}: a file, not a folder that data_preparation made"):
        data_preparation.main([*STAGE1, "--output_dir", str(a_file), "--overwrite"])
    assert a_file.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "mine"]

    cleaned = tmp_path / "cleaned"
    data_preparation.main([*STAGE1, "--output_dir", str(cleaned)])
    link = tmp_path / "link"
    link.symlink_to(cleaned)
    with pytest.raises(UserError, match="a symbolic link"):
        data_preparation.main([*STAGE1, "--output_dir", str(link), "--min_lines", "4"])
    # another stage's output is not stage 2's to replace
    before = snapshot(cleaned)
    with pytest.raises(UserError, match=f"{cleaned}: an output of 'data_preparation', not one that data_packaging made"):
        data_packaging.main(["--input_dir", str(cleaned), "--output_dir", str(cleaned), "--overwrite", "--tokenizer", "mistral-32k"])
    assert snapshot(cleaned) == before
    # an empty folder holds nothing to lose: the output goes there
    empty = tmp_path / "empty"
    empty.mkdir()
    data_preparation.main([*STAGE1, "--output_dir", str(empty)])
    assert (empty / "manifest.json").is_file()

    base = tmp_path / "base"
    write_model(base, tiny_tokenizer())
    with pytest.raises(UserError, match="not one that model_preparation made"):
        model_preparation.main(["--base", str(base), "--packed_dir", "", "--output_dir", str(mine), "--overwrite"])
    assert snapshot(mine) == {"notes.txt": b"mine"}


def test_stage_4_replaces_only_its_own_run_folders(tmp_path):
    tokenizer = tiny_tokenizer()
    inputs = write_packed(tmp_path / "packed", tokenizer), write_model(tmp_path / "model", tokenizer)
    mine = user_folder(tmp_path / "mine")
    for extra in ([], ["--overwrite"], ["--resume"]):
        with pytest.raises(UserError, match=f"{mine}: a folder without the manifest.json or run.json of a training run.*will not help"):
            model_training.main(argv(inputs, mine, "--max_steps", 2, *extra))
    assert snapshot(mine) == {"notes.txt": b"mine"}
    with pytest.raises(UserError, match="not a run folder that model_training made"):
        model_training.main(argv(inputs, mine / "notes.txt", "--max_steps", 2, "--overwrite"))
    assert snapshot(mine) == {"notes.txt": b"mine"}


def test_run_main_says_what_is_true_of_the_output(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    def disk_full(argv):
        raise OSError(28, "No space left on device", "work/cleaned/cleaned-00000.parquet")

    with pytest.raises(SystemExit) as exit_:
        run_main(interrupted, [])
    assert exit_.value.code == 130 and capsys.readouterr().err == "interrupted: no output was written; a previous output is as it was\n"
    with pytest.raises(SystemExit) as exit_:
        run_main(interrupted, [], interrupted="checkpoints stay")
    assert capsys.readouterr().err == "interrupted: checkpoints stay\n"
    with pytest.raises(SystemExit) as exit_:
        run_main(disk_full, [])
    assert exit_.value.code == 1
    assert capsys.readouterr().err == "error: work/cleaned/cleaned-00000.parquet: [Errno 28] No space left on device\n"


# ----------------------------------------------------------------------------------------------
# The operating system says no


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a filesystem of `size` (a tmpfs where we are root), and how to fill or lock it.
    Yields (folder, limit): `limit(kind)` returns what a subprocess needs so that its writes fail
    ("full": no space; "readonly": no writes at all)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = can_mount() and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)]).returncode == 0

    def limit(kind):
        if kind == "full":
            if mounted:  # fill what is left with one file; the stage's next write meets a full disk
                with open(folder / "filler", "wb") as f:
                    try:
                        while True:
                            f.write(b"\0" * (1 << 16))
                    except OSError:
                        pass
                return None

            def no_large_files():  # without root: writes past 4 KB fail with EFBIG, as a full disk would
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

            return no_large_files
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        else:
            folder.chmod(0o555)
        return None

    yield folder, limit
    if mounted:
        subprocess.run(["umount", str(folder)], check=True)
    else:
        folder.chmod(0o755)


def run_script(script, *args, preexec=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(PROJECT_DIR / script), *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300, preexec_fn=preexec)


def assert_one_line(r, path, *what):
    assert r.returncode == 1, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {path}") and any(w in last for w in what), last


@pytest.mark.parametrize("kind", ["full", "readonly"])
def test_stage1_full_or_read_only_disk_keeps_the_previous_output(small_disk, kind):
    folder, limit = small_disk
    out = folder / "cleaned"
    assert run_script("data_preparation.py", *STAGE1, "--output_dir", out).returncode == 0
    before = snapshot(out)
    preexec = limit(kind)
    r = run_script("data_preparation.py", *STAGE1, "--output_dir", out, "--min_lines", "4", preexec=preexec)
    assert_one_line(r, out, "No space left on device", "File too large", "Read-only file system", "Permission denied")
    assert snapshot(out) == before
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".cleaned.")]


def test_stages_3_and_4_on_a_full_disk(small_disk, tmp_path):
    """safetensors and torch.save meet the full disk with errors of their own; both are one line."""
    folder, limit = small_disk
    tokenizer = tiny_tokenizer()
    packed, base = write_packed(tmp_path / "packed", tokenizer), write_model(tmp_path / "base", tokenizer)
    (big := tmp_path / "big").mkdir()  # a base too large for what is left of the disk
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig.from_pretrained(base)
    config.hidden_size, config.intermediate_size, config.num_attention_heads, config.num_key_value_heads = 256, 512, 4, 2
    AutoModelForCausalLM.from_config(config).save_pretrained(big)
    tokenizer.save_pretrained(big)
    preexec = limit("full")

    r = run_script("model_preparation.py", "--base", big, "--packed_dir", "", "--strategy", "load", "--output_dir", folder / "model", preexec=preexec)
    assert_one_line(r, folder / "model", "No space left on device", "File too large", "I/O error")
    assert not (folder / "model").exists() and not list(folder.glob(".model.*"))

    r = run_script("model_training.py", "--model_dir", big, "--packed_dir", packed, "--output_dir", folder / "run",
                   "--max_steps", 2, "--eval_strategy", "no", "--eval_on_start", "false", preexec=preexec)
    assert_one_line(r, folder / "run", "writing the run failed")
    assert "the same command continues from the latest one" in r.stderr


def test_a_permission_denied_input_is_one_line(tmp_path, monkeypatch, capsys):
    """As root every file is readable, so the refusal is made in code here: the read of the input
    raises what the operating system would."""
    pages = tmp_path / "pages.jsonl"
    shutil.copy(PAGES, pages)
    real_open = open

    def guarded_open(file, *args, **kwargs):
        if Path(file) == pages:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", guarded_open)
    with pytest.raises(SystemExit) as exit_:
        run_main(data_preparation.main, ["--web_sources", str(pages), "--code_sources", "none", "--num_proc", "1",
                                         "--output_dir", str(tmp_path / "out")])
    assert exit_.value.code == 1
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {pages}: [Errno 13] Permission denied"
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
