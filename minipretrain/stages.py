"""Stage outputs: each stage writes one folder atomically, with a manifest.json that says what made it.

- `stage_output`: a stage's output folder, written atomically with its manifest.json; with
  `resumable`, a killed run's finished units of work are kept and the same command continues;
- `write_unit`, `read_unit`: one finished unit of a resumable stage (its table and its summary);
- `read_manifest`: the next stage's check that its input is a complete output of the stage it expects;
- `file_sha256`, `library_versions`: what a manifest records.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import time
from pathlib import Path

from minipretrain.settings import UserError, os_error, settings_dict

MANIFEST = "manifest.json"
LIBRARIES = ("torch", "transformers", "datasets", "tokenizers", "pyarrow", "numpy", "fasttext-numpy2")


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict:
    versions = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def read_manifest(folder, stage: str, hint: str = "") -> dict:
    """The manifest of a complete output of `stage` in `folder`, or a UserError saying what to run."""
    folder = Path(folder)
    hint = f"; {hint}" if hint else ""
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder{hint}")
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder}: no {MANIFEST}, so not a complete output of {stage}{hint}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(f"{path}: unreadable manifest ({e})") from None
    if manifest.get("stage") != stage:
        raise UserError(f"{folder}: an output of {manifest.get('stage')!r}, expected one of {stage!r}{hint}")
    return manifest


class StageOutput:
    """The temporary folder a stage writes into; `manifest` collects what goes into manifest.json."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest


@contextlib.contextmanager
def stage_output(out_dir, stage: str, settings, inputs: dict, overwrite: bool, resumable: str = ""):
    """Write a stage's output folder atomically, make-style.

    Yields a StageOutput, or None when the existing output is up to date (same settings, same
    inputs) and `overwrite` is off: the caller then has nothing to do. A previous output of this
    stage made from other settings or inputs is rebuilt, with one line saying what changed; a
    folder or file the stage did not make is refused, with or without `overwrite`
    (previous_output): nothing a user made is ever deleted or moved.

    The stage writes its files into `out.path`, a temporary folder beside `out_dir`, and adds
    counts to `out.manifest`. On success the manifest is written and the folder renamed into
    place; on any error the temporary folder is removed, so a reader never sees a partial output
    and a previous output stays as it was: the rename is the commit. Replacing an output takes two
    renames (the old one aside, the new one in); a run killed between them leaves no output, and
    the stage's next run puts the old one back before it starts (_remove_stale_temporaries).

    `inputs` identifies what the stage read (files with sizes, or the previous stage's
    fingerprint); with the settings it decides whether an existing output is up to date.

    `resumable` (a name for the format of the stage's units, e.g. "units-v1") makes the run
    resumable: the temporary folder is named by what makes the output (stage, settings, inputs,
    that format), `.NAME.partial-KEY`, and outlives an error, a Ctrl-C or a SIGKILL (unless no unit
    was finished yet: then an error or a Ctrl-C removes it, as any temporary folder). The stage
    writes each finished unit of work into `out.units` (write_unit) and skips those already there;
    the same command run again finds them, whatever killed the first run. Files beside `units/`
    (a half-written output) are removed when a run resumes, `units/` when the output is complete.
    A partial folder made with other settings or inputs is removed (its units are useless); a lock
    keeps two runs from writing the same one.
    """
    out_dir = Path(out_dir)
    settings_values = settings_dict(settings)
    settings_values.pop("output_dir", None)
    inputs = json.loads(json.dumps(inputs, default=str))
    _remove_stale_temporaries(out_dir)

    previous = previous_output(out_dir, stage)
    if previous:  # not for no folder or an empty one
        changes = what_changed(previous, settings_values, inputs)
        if not changes and not overwrite:
            print(f"{out_dir} is up to date with these settings and inputs: skipping it (--overwrite redoes it)")
            yield None
            return
        print(f"{changes or '--overwrite'}: rebuilding {out_dir}")

    lock = None
    if resumable:
        key = hashlib.sha256(json.dumps([stage, settings_values, inputs, resumable], sort_keys=True).encode()).hexdigest()[:16]
        tmp = out_dir.parent / f".{out_dir.name}.partial-{key}"
        _remove_stale_partials(out_dir, keep=tmp)
    else:
        tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True, exist_ok=bool(resumable))
        if resumable:
            lock = _lock(tmp, out_dir)
            _clear_all_but_units(tmp)
    except OSError as e:
        raise UserError(f"{out_dir}: cannot write the output there ({os_error(e)})") from None
    started = time.time()
    manifest = {"stage": stage, "settings": settings_values, "inputs": inputs}
    out = StageOutput(tmp, manifest)
    if resumable:
        out.units = tmp / UNITS
        done = sorted(out.units.glob("*.json")) if out.units.is_dir() else []
        out.units.mkdir(exist_ok=True)
        if done:
            print(f"{out_dir}: resuming a run that stopped: {len(done)} finished units kept in {tmp}")
    try:
        yield out
        if resumable:
            shutil.rmtree(out.units)
            (tmp / LOCK).unlink()
        files = {}
        for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
            files[f.relative_to(tmp).as_posix()] = {"bytes": f.stat().st_size, "sha256": file_sha256(f)}
        # The fingerprint covers what the output is and what made it, not when or how fast, so two
        # identical runs have the same fingerprint and the next stage can tell when it is stale.
        manifest["files"] = files
        manifest["fingerprint"] = hashlib.sha256(
            json.dumps([stage, settings_values, inputs, files], sort_keys=True).encode()
        ).hexdigest()
        manifest["libraries"] = library_versions()
        manifest["wall_time_s"] = round(time.time() - started, 3)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if out_dir.exists():
            trash = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            out_dir.rename(trash)
            tmp.rename(out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except Exception as e:
        _remove_unless_resumable(tmp, resumable, e)
        failure = write_failure(e)
        if failure is None:
            raise
        if isinstance(e, OSError) and e.filename is not None:
            raise  # run_main names the file
        raise UserError(f"{out_dir}: writing the output failed ({failure}); the previous output, if any, is as it was") from None
    except BaseException:
        _remove_unless_resumable(tmp, resumable)
        raise
    finally:
        if lock is not None:
            lock.close()


UNITS, LOCK = "units", ".lock"


def _lock(tmp: Path, out_dir: Path):
    """An exclusive lock on a partial folder, released by the kernel when the process ends however
    it ends: a second run of the same command at the same time stops instead of sharing the units."""
    f = open(tmp / LOCK, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise UserError(f"{out_dir}: another run of this stage with the same settings is writing it now ({tmp}); "
                        "wait for it to end, or stop it first") from None
    return f


def _finished_units(tmp: Path) -> bool:
    return any((tmp / UNITS).glob("*.json"))


def _locked(folder: Path) -> bool:
    try:
        with open(folder / LOCK, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def _remove_stale_partials(out_dir: Path, keep: Path) -> None:
    """Partial folders of this output made with other settings or inputs: their units are of no
    use to this run. One that another running process holds is left to it."""
    for p in sorted(out_dir.parent.glob(f".{out_dir.name}.partial-*")):
        if p != keep and p.is_dir() and not _locked(p):
            shutil.rmtree(p, ignore_errors=True)


def _remove_unless_resumable(tmp: Path, resumable: str, error: BaseException | None = None) -> None:
    """After an error: the temporary folder goes, unless it holds finished units to continue from
    (a failed run with none leaves nothing). Bad input (a UserError not marked resumable) removes
    them too: mending the input changes the inputs' fingerprint, so they could never be used."""
    bad_input = isinstance(error, UserError) and not getattr(error, "resumable", False)
    if not resumable or not _finished_units(tmp) or bad_input:
        shutil.rmtree(tmp, ignore_errors=True)


def _clear_all_but_units(tmp: Path) -> None:
    """What a killed run wrote beside its finished units (a half-written output) goes."""
    for p in tmp.iterdir():
        if p.name not in (UNITS, LOCK):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def write_unit(units: Path, index: int, table, summary: dict) -> None:
    """Record finished unit `index`: its table (Parquet, may be None) and its summary (JSON). The
    summary is written last, by a rename, so a unit whose .json exists is complete: a kill at any
    moment leaves either a finished unit or none (the next run redoes it)."""
    import pyarrow.parquet as pq

    name = f"{index:06d}"
    if table is not None:
        pq.write_table(table, units / f"{name}.parquet.part", compression="zstd")
        os.replace(units / f"{name}.parquet.part", units / f"{name}.parquet")
    (units / f"{name}.json.part").write_text(json.dumps(summary, ensure_ascii=False), encoding="utf-8")
    os.replace(units / f"{name}.json.part", units / f"{name}.json")


def unit_done(units: Path, index: int) -> bool:
    return (units / f"{index:06d}.json").is_file()


def read_unit(units: Path, index: int, columns: list[str] | None = None):
    """(table or None, summary) of finished unit `index`."""
    import pyarrow.parquet as pq

    name = f"{index:06d}"
    summary = json.loads((units / f"{name}.json").read_text(encoding="utf-8"))
    path = units / f"{name}.parquet"
    return (pq.read_table(path, columns=columns) if path.is_file() else None), summary


def write_failure(e: BaseException) -> str | None:
    """What failed, in one line, when `e` is the operating system refusing a write (a full disk, a
    read-only place, no permission), whichever library met it: an OSError, safetensors' error
    ("I/O error: No space left on device (os error 28)") or torch.save's ("PytorchStreamWriter
    failed writing file ...", or "[enforce fail at inline_container.cc:672] . unexpected pos ..."
    when the disk fills); None for any other error, which stays a traceback (a bug)."""
    if isinstance(e, OSError):
        return os_error(e)
    text = " ".join(str(e).split())
    if type(e).__name__ == "SafetensorError" and "I/O error" in text:
        return text
    if isinstance(e, RuntimeError) and any(s in text for s in ("PytorchStreamWriter failed", "file write failed", "inline_container.cc")):
        return text[:300]
    return None


def previous_output(out_dir: Path, stage: str) -> dict | None:
    """The manifest of `stage`'s previous output in out_dir ({} for an empty folder, None for no
    folder), or a UserError when out_dir holds anything the stage did not make: a file, another
    stage's output, a folder without a manifest naming this stage. --overwrite does not change that."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return None
    keep = f"it is left as it is: choose another --output_dir ({stage} replaces only its own outputs, so --overwrite will not help)"
    if out_dir.is_symlink():
        raise UserError(f"{out_dir}: a symbolic link; {stage} writes a folder of its own there, so name the folder it points to as --output_dir")
    if not out_dir.is_dir():
        raise UserError(f"{out_dir}: a file, not a folder that {stage} made; {keep}")
    if not any(out_dir.iterdir()):
        return {}
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("stage") != stage:
        made_by = f"an output of {manifest.get('stage')!r}" if isinstance(manifest, dict) and manifest.get("stage") else f"a folder without a {MANIFEST} of {stage}"
        raise UserError(f"{out_dir}: {made_by}, not one that {stage} made; {keep}")
    return manifest


def what_changed(previous: dict, settings_values: dict, inputs: dict) -> str:
    """'' when `previous` (a manifest or run record) was made with these settings and inputs, else
    one line: 'max_dup_paragraph_frac 0.3 -> 0.25', 'input cleaned changed', ..."""
    old_settings, old_inputs = previous.get("settings") or {}, previous.get("inputs") or {}
    show = lambda v: v if isinstance(v, str) else json.dumps(v)  # noqa: E731
    changes = [
        f"{key} {show(old_settings.get(key))} -> {show(settings_values.get(key))}"
        for key in sorted(set(old_settings) | set(settings_values))
        if old_settings.get(key) != settings_values.get(key)
    ]
    changes += [f"input {key} changed" for key in sorted(set(old_inputs) | set(inputs)) if old_inputs.get(key) != inputs.get(key)]
    return ", ".join(changes)


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Remove what a killed run left beside out_dir (its process is gone). A run killed while it
    replaced an output, between moving the old one aside (.NAME.old-PID) and moving the new one in,
    left no out_dir: the old, complete output is put back, so the overwrite never happened."""
    if not out_dir.parent.is_dir():
        return
    for p in sorted(out_dir.parent.glob(f".{out_dir.name}.*-*")):
        kind, _, pid = p.name.removeprefix(f".{out_dir.name}.").rpartition("-")
        if kind not in ("tmp", "old") or not pid.isdigit() or _process_alive(int(pid)):
            continue  # another output's (.NAME.x.tmp-PID), or its run is still going
        if kind == "old" and not out_dir.exists() and (p / MANIFEST).is_file():
            p.rename(out_dir)
            print(f"{out_dir}: put back the previous output, which a killed --overwrite run had moved aside")
        else:
            shutil.rmtree(p, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
