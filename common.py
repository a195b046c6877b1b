"""What several stages share, and nothing else.

- the default folders and the default base model, defined once;
- `parse_settings`: a settings dataclass -> `--flags`, or a JSON/YAML file plus flags (HfArgumentParser);
- `UserError` + `run_main`: bad input ends in one clear line and a non-zero exit, never a traceback;
- `stage_output`: a stage's output folder, written atomically with its manifest.json;
- `read_manifest`: the next stage's check that its input is a complete output of the stage it expects.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent

# Default folders: each stage reads the one before it.
WORK_DIR = "work"
CLEANED_DIR = f"{WORK_DIR}/cleaned"  # data_preparation.py ->
PACKED_DIR = f"{WORK_DIR}/packed"  # data_packaging.py ->
MODELS_DIR = f"{WORK_DIR}/models"  # model_preparation.py -> MODELS_DIR/<name>
RUNS_DIR = f"{WORK_DIR}/runs"  # model_training.py -> RUNS_DIR/<name>
DEFAULT_MODEL_DIR = f"{MODELS_DIR}/smollm2-dus"  # model_preparation.py's default output
DEFAULT_RUN_DIR = f"{RUNS_DIR}/smollm2-dus"  # model_training.py's default output

MANIFEST = "manifest.json"
LIBRARIES = ("torch", "transformers", "datasets", "tokenizers", "pyarrow", "numpy", "fasttext-numpy2")


class UserError(Exception):
    """A problem with the user's input or settings: reported as one line, exit status 1."""


def run_main(main, argv=None) -> None:
    """Run a stage's main(); a UserError becomes `error: ...` on stderr and exit status 1."""
    try:
        main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: no output was written", file=sys.stderr)
        sys.exit(130)


# ----------------------------------------------------------------------------------------------
# Settings


def parse_settings(settings_class, argv=None):
    """Settings from the command line: `--name value` flags, and optionally a JSON or YAML file as
    the first argument whose values the flags then override.

        python data_preparation.py --min_lines 5
        python data_preparation.py my_settings.yaml --overwrite
    """
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(settings_class)
    if argv and argv[0].endswith((".json", ".yaml", ".yml")) and not argv[0].startswith("-"):
        path = Path(argv.pop(0))
        values = _read_settings_file(path)
        known = {f.name for f in dataclasses.fields(settings_class) if f.init}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"{path}: unknown setting(s) {', '.join(unknown)} (see --help for the settings)")
        parser.set_defaults(**values)
    (settings,) = parser.parse_args_into_dataclasses(args=argv)
    return settings


def _read_settings_file(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: settings file not found")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text)
    except (ValueError, UnicodeDecodeError) as e:  # json and yaml errors are ValueErrors or YAMLError
        raise UserError(f"{path}: not a valid settings file: {str(e).splitlines()[0]}") from None
    except Exception as e:  # yaml.YAMLError
        raise UserError(f"{path}: not a valid settings file: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: a settings file holds one mapping of setting names to values")
    return values


def settings_dict(settings) -> dict:
    """The settings as plain JSON values, without the ones that do not change the output."""
    d = settings.to_dict() if hasattr(settings, "to_dict") else dataclasses.asdict(settings)
    d.pop("overwrite", None)
    return json.loads(json.dumps(d, default=str))


# ----------------------------------------------------------------------------------------------
# Stage outputs: atomic folders with a manifest


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
def stage_output(out_dir, stage: str, settings, inputs: dict, overwrite: bool):
    """Write a stage's output folder atomically.

    Yields a StageOutput (or None when the existing output is up to date and `overwrite` is off:
    the caller then has nothing to do). The stage writes its files into `out.path`, a temporary
    folder beside `out_dir`, and adds counts to `out.manifest`. On success the manifest is written
    and the folder renamed into place; on any error the temporary folder is removed, so a reader
    never sees a partial output: the rename is the commit.

    `inputs` identifies what the stage read (files with sizes, or the previous stage's
    fingerprint); with the settings it decides whether an existing output is up to date.
    """
    out_dir = Path(out_dir)
    settings_values = settings_dict(settings)
    settings_values.pop("output_dir", None)
    inputs = json.loads(json.dumps(inputs, default=str))
    _remove_stale_temporaries(out_dir)

    if out_dir.exists():
        previous = None
        if (out_dir / MANIFEST).is_file():
            with contextlib.suppress(ValueError):
                previous = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
        up_to_date = bool(previous) and previous.get("settings") == settings_values and previous.get("inputs") == inputs
        if not overwrite:
            if up_to_date:
                print(f"{out_dir} is up to date with these settings and inputs: nothing to do (--overwrite redoes it)")
                yield None
                return
            what = "an output made with other settings or inputs" if previous else "a folder that is not a complete output"
            raise UserError(f"{out_dir} already exists ({what}); pass --overwrite to replace it, or choose another --output_dir")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    started = time.time()
    manifest = {"stage": stage, "settings": settings_values, "inputs": inputs}
    out = StageOutput(tmp, manifest)
    try:
        yield out
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Remove what a killed run left beside out_dir (its process is gone)."""
    if not out_dir.parent.is_dir():
        return
    for p in out_dir.parent.glob(f".{out_dir.name}.*-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------------------------
# Evaluation


def evaluate_loss(model, dataset, batch_size: int, max_batches: int | None = None) -> dict:
    """Mean next-token loss of `model` over packed blocks: {"loss", "perplexity", "tokens"}.

    `dataset` holds equal-length blocks in an `input_ids` column (a `datasets.Dataset`, or anything
    whose slices give {"input_ids": rows}). Every position but a block's first is predicted, so each
    block of T tokens counts T - 1 predictions; the loss is the mean over all of them, whatever the
    batch size. `max_batches` caps the work (the first max_batches * batch_size blocks).
    """
    import math

    import numpy as np
    import torch
    from tqdm.auto import tqdm

    starts = range(0, len(dataset), batch_size)
    if max_batches is not None:
        starts = starts[:max_batches]
    if len(starts) == 0:
        raise UserError("evaluation: the dataset has no blocks")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        with torch.inference_mode():
            for start in tqdm(starts, desc="evaluating", unit="batch", leave=False):
                ids = torch.as_tensor(np.asarray(dataset[start : start + batch_size]["input_ids"]), dtype=torch.long)
                ids = ids.to(device)
                predicted = ids.shape[0] * (ids.shape[1] - 1)
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss  # mean over the shifted positions
                total += loss.float().item() * predicted
                tokens += predicted
    finally:
        model.train(was_training)
    loss = total / tokens
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": tokens}
