"""Settings and errors: the defaults several stages share, the settings parser, and the one-line error.

- the default folders and the default base model, defined once;
- `parse_settings`: a settings dataclass -> `--flags`, or a JSON/YAML file plus flags (HfArgumentParser);
- `UserError` + `run_main`: bad input ends in one clear line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent

# Default folders: each stage reads the one before it.
WORK_DIR = "work"
CLEANED_DIR = f"{WORK_DIR}/cleaned"  # data_preparation.py ->
PACKED_DIR = f"{WORK_DIR}/packed"  # data_packaging.py ->
MODELS_DIR = f"{WORK_DIR}/models"  # model_preparation.py -> MODELS_DIR/<name>
RUNS_DIR = f"{WORK_DIR}/runs"  # model_training.py -> RUNS_DIR/<name>
DEFAULT_MODEL_DIR = f"{MODELS_DIR}/smollm2-dus"  # model_preparation.py's default output
DEFAULT_RUN_DIR = f"{RUNS_DIR}/smollm2-dus"  # model_training.py's default output

# The default base model (stage 3) and so the default tokenizer (stage 2): a keyword of loading.BUNDLED.
DEFAULT_BASE_MODEL = "smollm2-135m"


class UserError(Exception):
    """A problem with the user's input or settings: reported as one line, exit status 1."""


def run_main(main, argv=None, interrupted: str = "no output was written; a previous output is as it was") -> None:
    """Run a stage's main(); a UserError becomes `error: ...` on stderr and exit status 1, a Ctrl-C
    that reaches here `interrupted: <what is true of the output then>` and exit status 130. An
    OSError (a full disk, a read-only or permission-denied path) is one line too, naming the path
    and what failed: the stage's temporary folder is gone by then (stages.stage_output)."""
    try:
        main(argv)
    except UserError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)  # one line, even when a library's message has several
        sys.exit(1)
    except OSError as e:
        print(f"error: {os_error(e)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"interrupted: {interrupted}", file=sys.stderr)
        sys.exit(130)



def os_error(e: OSError) -> str:
    """'PATH: what failed' in one line, e.g. 'work/cleaned: [Errno 28] No space left on device'."""
    what = f"[Errno {e.errno}] {e.strerror}" if e.strerror else " ".join(str(e).split()) or type(e).__name__
    path = f"{e.filename} -> {e.filename2}" if e.filename2 else e.filename
    return f"{path}: {what}" if path else what


def parse_settings(settings_class, argv=None):
    """Settings from the command line: `--name value` flags, and optionally a JSON or YAML file as
    the first argument whose values the flags then override.

        python data_preparation.py --min_lines 5
        python data_preparation.py my_settings.yaml --overwrite
    """
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(settings_class, allow_abbrev=False)  # a typo must not pass for another setting
    if argv and argv[0].endswith((".json", ".yaml", ".yml")) and not argv[0].startswith("-"):
        path = Path(argv.pop(0))
        values = _read_settings_file(path)
        known = {f.name for f in dataclasses.fields(settings_class) if f.init}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"{path}: unknown setting(s) {', '.join(unknown)} (see --help for the settings)")
        parser.set_defaults(**values)
    try:
        settings, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as e:  # a value that the dataclass's __post_init__ rejects (TrainingArguments)
        raise UserError(f"settings: {(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None
    if unknown:
        raise UserError(f"unknown setting(s): {' '.join(unknown)} (see --help for the settings)")
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
