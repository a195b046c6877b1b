"""Settings and errors: the defaults several stages share, the settings parser, and the one-line error.

- the default folders and the default base model, defined once;
- `parse_settings`: a settings dataclass -> `--flags`, or a JSON/YAML file plus flags (HfArgumentParser);
- `UserError` + `run_main`: bad input ends in one clear line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import typing
from argparse import ArgumentTypeError
from argparse import _StoreFalseAction as _StoreFalse
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


# ----------------------------------------------------------------------------------------------
# What a setting may be: a range for a number, a list of choices for a word. Each script lists its
# settings' checks next to its Settings; parse_settings applies them to flags and files alike.


@dataclasses.dataclass(frozen=True)
class Range:
    """The allowed values of a numeric setting: `low` and `high` bounds (None: unbounded), each
    inclusive unless `low_open` / `high_open`. NaN and infinities are never allowed; None passes
    (a setting whose type allows None)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def problem(self, value) -> str | None:
        if value is None:
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value}"
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        return f"must be {self.describe()}, got {value}" if below or above else None

    def describe(self) -> str:
        if self.low is not None and self.high is not None and not (self.low_open or self.high_open):
            return f"between {self.low} and {self.high}"
        parts = []
        if self.low is not None:
            parts.append(f"greater than {self.low}" if self.low_open else f"at least {self.low}")
        if self.high is not None:
            parts.append(f"less than {self.high}" if self.high_open else f"at most {self.high}")
        return " and ".join(parts)


@dataclasses.dataclass(frozen=True)
class OneOf:
    """A setting that takes one of a few words."""

    choices: tuple

    def problem(self, value) -> str | None:
        if value in self.choices:
            return None
        return f"must be {_one_of(self.choices)}, got {value!r}"


def _one_of(choices) -> str:
    choices = list(choices)
    return f"one of {', '.join(map(str, choices[:8]))}" + (f", ... ({len(choices)} in all)" if len(choices) > 8 else "")


def at_least(low) -> Range:
    return Range(low=low)


def greater_than(low) -> Range:
    return Range(low=low, low_open=True)


def between(low, high) -> Range:
    return Range(low=low, high=high)


def one_of(*choices) -> OneOf:
    return OneOf(tuple(choices))


SEED = between(0, 2**32 - 1)  # what every library's seed accepts (numpy's is the narrowest)


# ----------------------------------------------------------------------------------------------
# Parsing: flags, and a JSON or YAML file whose values go through the same conversion


class _BadValue(Exception):
    """A value that its setting's type refuses; `expected` says what the type takes."""

    def __init__(self, expected: str):
        self.expected = expected


_KINDS = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings")}


def _kind(action, plural: bool = False) -> str:
    base = getattr(action, "_base_type", None)
    if action.choices is not None:
        return _one_of(action.choices)
    if getattr(base, "__name__", "") == "string_to_bool":
        return "true/false values" if plural else "true or false"
    if base in _KINDS:
        return _KINDS[base][plural]
    name = getattr(base, "__name__", "value")
    return f"{name} values" if plural else f"a {name}"


def _list_kind(action) -> str:
    return f"{_kind(action)} or a list of {_kind(action, plural=True)}"


def _convert(action, text: str):
    """One flag value (a string) -> the setting's value, as argparse converts it; _BadValue if not."""
    base = action._base_type
    try:
        value = base(text) if base is not None else text
    except (TypeError, ValueError, ArgumentTypeError):
        raise _BadValue(_kind(action)) from None
    if action.choices is not None and value not in action.choices:
        raise _BadValue(_kind(action))
    return value


def _strict_type(action):
    """The `type` argparse calls for a flag's value: _convert, whose refusal is one line naming the flag."""

    def convert(text: str):
        try:
            return _convert(action, text)
        except _BadValue as e:
            raise UserError(f"{action.option_strings[0]}: expected {e.expected}, got {text!r}") from None

    return convert


def _as_flag_text(value) -> str:
    """A value read from a JSON or YAML file, written as the flag's text would be."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _shown(value) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


def _file_value(action, hint, value):
    """A settings file's value -> the setting's value, through the flag's conversion; _BadValue if not.
    A single value for a list setting is a one-element list; null only where the type allows None."""
    args = typing.get_args(hint)
    if value is None:
        if hint is type(None) or type(None) in args or hint is typing.Any:
            return None
        raise _BadValue(_list_kind(action) if action.nargs in ("+", "*") else _kind(action))
    if isinstance(value, dict) and (hint is dict or dict in args or dict in map(typing.get_origin, args)):
        return value  # a mapping setting (TrainingArguments' *_kwargs, *_config): as the file gives it
    if action.nargs in ("+", "*"):
        items = value if isinstance(value, list) else [value]
        if not items and action.nargs == "+":
            raise _BadValue(f"{_kind(action)} or a non-empty list of {_kind(action, plural=True)}")
        return [_file_scalar(action, item, plural=True) for item in items]
    return _file_scalar(action, value)


def _file_scalar(action, value, plural: bool = False):
    expected = _list_kind(action) if plural else _kind(action)
    if isinstance(value, (list, dict)) or value is None:
        raise _BadValue(expected)
    is_bool_setting = getattr(action._base_type, "__name__", "") == "string_to_bool"
    if isinstance(value, bool) and not is_bool_setting:  # YAML reads yes/no/on/off unquoted as booleans
        raise _BadValue(expected + (" (in YAML, quote a word such as no, yes, on or off)" if action._base_type is str else ""))
    try:
        return _convert(action, _as_flag_text(value))
    except _BadValue:
        raise _BadValue(expected) from None


def parse_settings(settings_class, argv=None, checks: dict | None = None):
    """Settings from the command line: `--name value` flags, and optionally a JSON or YAML file as
    the first argument whose values the flags then override.

        python data_preparation.py --min_lines 5
        python data_preparation.py my_settings.yaml --overwrite

    A file's value goes through the conversion its flag's text would (an int setting takes 3 or
    "3", never 2.5 or "three"; a bool setting true/false; null only where the type allows None), a
    single value for a list setting is a one-element list, and a mapping passes only to a setting
    that takes one. Then each of `checks` ({name: Range or OneOf}) is applied to the value the
    setting ends with. Any bad value is one UserError naming its origin and the setting, before any
    work starts: `my.yaml: min_lines: expected an integer, got 2.5`, `--min_lines: expected an
    integer, got 'three'`, `--top_p: must be greater than 0 and at most 1, got 1.5`.
    """
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(settings_class, allow_abbrev=False)  # a typo must not pass for another setting
    parser.error = _parser_error
    fields = {f.name for f in dataclasses.fields(settings_class) if f.init}
    actions = {a.dest: a for a in parser._actions if a.dest in fields and a.option_strings and not isinstance(a, _StoreFalse)}
    for action in actions.values():
        action._base_type = action.type
        action.type = _strict_type(action)

    from_file, path = {}, None
    if argv and argv[0].endswith((".json", ".yaml", ".yml")) and not argv[0].startswith("-"):
        path = Path(argv.pop(0))
        values = _read_settings_file(path)
        unknown = sorted(map(str, set(values) - fields))
        if unknown:
            raise UserError(f"{path}: unknown setting(s) {', '.join(unknown)} (see --help for the settings)")
        hints = typing.get_type_hints(settings_class)
        for name, value in values.items():
            try:
                from_file[name] = _file_value(actions[name], hints[name], value)
            except _BadValue as e:
                raise UserError(f"{path}: {name}: expected {e.expected}, got {_shown(value)}") from None
        parser.set_defaults(**from_file)

    namespace, unknown = parser.parse_known_args(args=argv)
    if unknown:
        raise UserError(f"unknown setting(s): {' '.join(unknown)} (see --help for the settings)")
    from_flags = {parser._option_string_actions[a.split("=", 1)[0]].dest for a in argv
                  if a.startswith("--") and a.split("=", 1)[0] in parser._option_string_actions}
    for name, check in (checks or {}).items():
        problem = check.problem(getattr(namespace, name))
        if problem:
            if name in from_flags:
                raise UserError(f"--{name}: {problem}")
            if name in from_file:
                raise UserError(f"{path}: {name}: {problem}")
            script = Path(getattr(sys.modules.get(settings_class.__module__), "__file__", "") or settings_class.__module__).name
            raise UserError(f"setting {name}: {problem} (the default in {script}'s Settings)")
    try:
        return settings_class(**{name: value for name, value in vars(namespace).items() if name in fields})
    except ValueError as e:  # a value that the dataclass's __post_init__ rejects (TrainingArguments)
        raise UserError(f"settings: {(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None


def _parser_error(message: str):
    """argparse's own refusals (a flag without its value, ...): one line naming the flag, not usage + exit 2."""
    match = re.match(r"argument (--[\w-]+)(?:/[^:]*)?: (.*)", message)
    raise UserError(f"{match[1]}: {match[2]}" if match else message)


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


# Settings that change how a stage works, never what it writes (tests hold the stages to that: the
# same output for any num_proc, on either engine): not in manifests, fingerprints or resume keys,
# so changing them neither rebuilds an output nor loses a stopped run's finished units.
# unit_documents (how stages 1 and 2 cut their work) is one too, but it shapes the units: each
# stage puts it in its resume key itself (stage_output's resumable).
HOW_SETTINGS = ("overwrite", "num_proc", "engine", "ray_address", "unit_documents")


def settings_dict(settings) -> dict:
    """The settings as plain JSON values, without the ones that do not change the output."""
    d = settings.to_dict() if hasattr(settings, "to_dict") else dataclasses.asdict(settings)
    for name in HOW_SETTINGS:
        d.pop(name, None)
    return json.loads(json.dumps(d, default=str))
