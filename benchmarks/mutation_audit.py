"""Mutation audit: do the tests fail when the code is wrong?

    .venv/bin/python benchmarks/mutation_audit.py                   # every mutation below, one at a time
    .venv/bin/python benchmarks/mutation_audit.py --only M1 P3 T1   # some of them
    .venv/bin/python benchmarks/mutation_audit.py --list            # what they are

Each mutation replaces one line of one file by a near miss of it (`m = round(n / 3)` ->
`m = n // 3`, `>` -> `>=`, a default changed, a step left out): the rule the README states next to
the nearest wrong version of it. It is applied to a temporary copy of the project (never to this
checkout: other work goes on here), and the tests named with it run there, with this checkout's
.venv python. A mutation is *killed* when those tests fail, and *survives* when they pass: a
survivor is code that can be wrong with every test green. Before any mutation, each set of tests
runs once on the unmutated copy; a set that fails there cannot judge anything ("baseline fails").

A mutation's line is matched without its indentation, which the new line keeps; `after` names a
line above it to pick one of several identical lines. A line that is not found (the code moved
on) is reported "not applicable", not counted; P5 and P5b are the same mutation before and after
stage 2 got its eval split. Not part of CI: every mutation takes a pytest run, about 30 minutes
in all on 2 cores shared with other work (the resume and default-base ones are the slow ones).

`--tests_from REV` judges the same mutations with another revision's tests (whole test files),
e.g. the tests before a change, to see which mutations they let survive.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
PYTHON = PROJECT / ".venv" / "bin" / "python"


@dataclass
class Mutation:
    id: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest arguments: test files or node ids
    why: str  # the rule the old line holds
    after: str | None = None  # a line above `old`, when `old` is not unique


# ----------------------------------------------------------------------------------------------
# Which tests judge which code

PREP = "tests/test_data_preparation.py::"
FILTER_TESTS = tuple(PREP + t for t in (
    "test_paragraph_length_guard_thresholds", "test_repetition_paragraph_fraction_threshold",
    "test_repetition_character_fraction_threshold", "test_repetition_paragraphs_split_on_any_blank_lines",
    "test_language_filter_keeps_english_drops_others", "test_language_filter_reads_one_line",
))
STAGE1_TESTS = tuple(PREP + t for t in (
    "test_dedup_keeps_first_and_drops_exact_repeats_only", "test_a_copy_of_a_page_an_earlier_filter_removed_is_counted_by_that_filter",
    "test_code_goes_through_paragraph_length_and_deduplication", "test_every_document_filtered_out_is_a_valid_empty_output",
    "test_report_counts_add_up_and_code_skips_prose_filters",
))
PLAN_TESTS = ("tests/test_model_preparation.py",)
DEFAULT_BASE = ("tests/test_default_base.py",)
PACK = "tests/test_data_packaging.py::"
PACKING_TESTS = tuple(PACK + t for t in (
    "test_validation_threshold_takes_fraction_or_minimum", "test_validation_share_is_rounded_up",
    "test_default_split_and_block_size_are_the_readmes", "test_chop_carries_the_remainder",
    "test_document_boundaries_in_the_stream", "test_round_trip_blocks_and_split", "test_parquet_is_int32_fixed_length_sharded_and_readable",
    "test_split_is_deterministic_and_independent_of_batching",
))
SMOLLM_TOKENIZER = (PACK + "test_smollm2_tokenizer",)
TRAIN = "tests/test_model_training.py::"
RESUME_TESTS = (TRAIN + "test_an_unfinished_run_continues_where_it_stopped",
                TRAIN + "test_stopped_at_step_17_and_continued_equals_30_steps_uninterrupted")
RESUME_ALL = RESUME_TESTS + (TRAIN + "test_killed_or_stopped_subprocess_reruns_to_the_uninterrupted_result",)
BF16_TESTS = (TRAIN + "test_bf16_default_follows_the_hardware",)
NODES_TESTS = (TRAIN + "test_nodes_that_see_different_things_all_stop_with_one_line",)

F, E, D = "minipretrain/filters.py", "minipretrain/engines.py", "data_preparation.py"
M, K, P = "minipretrain/models.py", "minipretrain/packing.py", "data_packaging.py"
TOK, T, MT = "minipretrain/tokenization.py", "minipretrain/training.py", "model_training.py"
LONGEST = "if min(sorted(map(len, lines))[-3:]) < min_longest_line_chars:  # the 3 longest lines"
SPLIT = 'paragraphs = stripped.split("\\n\\n") if "\\n\\n\\n" not in stripped else PARAGRAPH_BREAK.split(stripped)'
BOUNDARY = "return np.array([bos_id] if bos_id == eos_id else [], np.int32)"
VALIDATION_K = "k = max(math.ceil(fraction * n), min_documents)"
CHAT = "if token is not None and token in _CHAT_TOKENS and end_of_text is not None:"

MUTATIONS = [
    # Stage 1: the filters at their thresholds
    Mutation("F1", F, "if len(lines) < min_lines:", "if len(lines) <= min_lines:", FILTER_TESTS, "fewer than min_lines lines (3 lines pass)"),
    Mutation("F2", F, LONGEST, LONGEST.replace("[-3:]", "[-2:]"), FILTER_TESTS, "the 3 longest lines, not 2"),
    Mutation("F3", F, LONGEST, LONGEST.replace("[-3:]", "[-4:]"), FILTER_TESTS, "the 3 longest lines, not 4"),
    Mutation("F4", F, LONGEST, LONGEST.replace("[-3:]", "[:3]"), FILTER_TESTS, "the longest lines, not the shortest"),
    Mutation("F5", F, LONGEST, LONGEST.replace(") < ", ") <= "), FILTER_TESTS, "shorter than 3 chars (3 passes)"),
    Mutation("F6", F, "if dup_paragraphs / len(paragraphs) > max_dup_paragraph_frac:", "if dup_paragraphs / len(paragraphs) >= max_dup_paragraph_frac:",
             FILTER_TESTS, "more than 30% of paragraphs (30% passes)"),
    Mutation("F7", F, "if dup_chars / len(text) > max_dup_char_frac:", "if dup_chars / len(text) >= max_dup_char_frac:",
             FILTER_TESTS, "more than 20% of characters (20% passes)"),
    Mutation("F8", F, "if dup_chars / len(text) > max_dup_char_frac:", "if dup_chars / len(stripped) > max_dup_char_frac:",
             FILTER_TESTS, "a share of all the page's characters"),
    Mutation("F9", F, "stripped = text.strip()", "stripped = text", FILTER_TESTS, "blank lines around a page make no paragraphs"),
    Mutation("F10", F, SPLIT, 'paragraphs = stripped.split("\\n\\n")', FILTER_TESTS, "3+ newlines are one paragraph break"),
    Mutation("F11", F, 'PARAGRAPH_BREAK = re.compile(r"\\n{2,}")', 'PARAGRAPH_BREAK = re.compile(r"\\n\\n")', FILTER_TESTS,
             "a paragraph break is any run of 2+ newlines"),
    Mutation("F12", F, "if score <= min_score:", "if score < min_score:", FILTER_TESTS, "probability > 0.4 (0.4 goes)"),
    Mutation("F13", F, "if label != language:", "if False:", FILTER_TESTS, "the top label must be the language"),
    Mutation("F14", F, '(label,), (score,) = model.predict(text.replace("\\n", " "))  # fastText predicts one line',
             "(label,), (score,) = model.predict(text)", FILTER_TESTS, "newlines become spaces first"),
    # Stage 1: which documents go through which filter, and the output
    Mutation("E1", E, 'items.append((None if digest in sent else d["text"], d["source"]))',
             'items.append((None if digest in sent and d["source"] == "web" else d["text"], d["source"]))', STAGE1_TESTS,
             "exact de-duplication applies to code too"),
    Mutation("E2", E, "if ok is not True:", 'if ok is not True and source == "web":', STAGE1_TESTS,
             "paragraph_length applies to code too", after="ok = paragraph_length_filter(text, s.min_lines, s.min_longest_line_chars)"),
    Mutation("E3", E, 'if source == "web":', "if True:", STAGE1_TESTS, "code skips repetition and language"),
    Mutation("E4", D, 'pq.write_table(pa.Table.from_pylist([], schema=schema), out_dir / "cleaned-00000.parquet", compression="zstd")',
             "pass", STAGE1_TESTS, "every document filtered out: a valid, empty output"),
    Mutation("E5", D, 'step, reason = removed_before_dedup.get(doc["digest"], ("deduplication", "exact_duplicate"))',
             'step, reason = ("deduplication", "exact_duplicate")', STAGE1_TESTS, "a copy of a removed page counts for the filter that removed it"),
    # Stage 3: layer plans
    Mutation("M1", M, "m = round(n / 3)", "m = n // 3", PLAN_TESTS, "upscale m = round(n/3), not n // 3"),
    Mutation("M2", M, "m = round(n / 3)", "m = -(-n // 3)", PLAN_TESTS, "upscale m = round(n/3), not ceil"),
    Mutation("M3", M, "k = max(1, round(n / 6))", "k = max(1, n // 6)", PLAN_TESTS, "downscale k = round(n/6), not n // 6"),
    Mutation("M4", M, "k = max(1, round(n / 6))", "k = round(n / 6)", PLAN_TESTS, "downscale drops at least 1 layer"),
    Mutation("M5", M, "start = (n - k) // 2", "start = (n - k + 1) // 2", PLAN_TESTS, "downscale start = (n-k)//2, rounded down"),
    Mutation("M6", M, "start = (n - k) // 2", "start = n // 2 - k // 2", PLAN_TESTS, "downscale start = (n-k)//2"),
    Mutation("M7", M, "if n < 2:", "if n < 1:", PLAN_TESTS, "a 1-layer base cannot be downscaled"),
    Mutation("M8", M, "return [s for s in ([0, start], [start + k, n]) if s[0] < s[1]]", "return [[0, start], [start + k, n]]",
             PLAN_TESTS, "an empty slice is left out of the plan"),
    Mutation("M9", M, "if start >= end:", "if start > end:", PLAN_TESTS, "a slice [a, a] is empty"),
    Mutation("M10", M, "if start < 0 or end > n:", "if start < 0 or end >= n:", PLAN_TESTS, "slices are half-open: end = n is in range"),
    Mutation("M11", M, "model.tie_weights()", "pass", PLAN_TESTS + DEFAULT_BASE, "tied embeddings stay tied"),
    Mutation("M12", M, 'values["pad_token_id"] = None', "pass", PLAN_TESTS, "the model config keeps no pad id"),
    Mutation("M13", M, "torch.manual_seed(seed)", "pass", PLAN_TESTS, "random weights are seeded"),
    Mutation("M14", M, "num_key_value_heads=8,", "num_key_value_heads=32,", PLAN_TESTS + DEFAULT_BASE, "TinySolar's 8 KV heads"),
    Mutation("M15", M, 'if spec.endswith(".gguf"):', "if False:", DEFAULT_BASE, "--base file.gguf"),
    Mutation("M16", "model_preparation.py",
             'strategy: str = field(default="upscale", metadata={"help": f"One of {\', \'.join(STRATEGIES)}."})',
             'strategy: str = field(default="load", metadata={"help": "One of them."})', DEFAULT_BASE, "the default strategy is upscale"),
    Mutation("K1", TOK, CHAT, "if False:", SMOLLM_TOKENIZER + DEFAULT_BASE, "SmolLM2 documents are bounded by <|endoftext|> (id 0), not chat markers"),
    Mutation("K2", TOK, 'if metadata.get("tokenizer.ggml.pre") in _GGUF_DIGIT_SPLIT:', "if False:", SMOLLM_TOKENIZER + DEFAULT_BASE,
             "SmolLM2's digit-by-digit pre-tokenizer is put back"),
    # Stage 2: the split and the packing
    Mutation("P1", P, VALIDATION_K, "k = max(int(fraction * n), min_documents)", PACKING_TESTS, "validation_fraction x N rounded up, not down"),
    Mutation("P2", P, VALIDATION_K, "k = max(round(fraction * n), min_documents)", PACKING_TESTS, "validation_fraction x N rounded up, not to nearest"),
    Mutation("P3", P, VALIDATION_K, "k = min(math.ceil(fraction * n), min_documents)", PACKING_TESTS, "at least min_validation_documents"),
    Mutation("P4", P, "if k >= n:", "if k > n:", PACKING_TESTS, "at least one document left for training"),
    Mutation("P5", P, "is_validation = split_hashes(doc_ids, s.seed) <= threshold", "is_validation = split_hashes(doc_ids, s.seed) < threshold",
             PACKING_TESTS, "the k smallest hashes, the k-th included"),
    Mutation("P5b", P, 'side = np.where(hashes <= threshold, "validation", "train")', 'side = np.where(hashes < threshold, "validation", "train")',
             PACKING_TESTS, "the k smallest hashes, the k-th included (P5 where stage 2 has an eval split)"),
    Mutation("P6", P, "min_validation_documents: int = field(default=10, metadata={\"help\": \"Hold out at least this many documents.\"})",
             "min_validation_documents: int = field(default=5, metadata={\"help\": \"x\"})", PACKING_TESTS, "the default minimum is 10"),
    Mutation("P7", P, "validation_fraction: float = field(default=0.02, metadata={\"help\": \"Share of documents held out for validation.\"})",
             "validation_fraction: float = field(default=0.05, metadata={\"help\": \"x\"})", PACKING_TESTS, "the default fraction is 2%"),
    Mutation("P8", P, "blocks, carry[split] = chop(carry[split], stream, s.block_size)",
             "blocks, carry[split] = chop(stream_start(bos_id, eos_id), stream, s.block_size)", PACKING_TESTS,
             "only each split's final incomplete block is dropped (the remainder is carried)"),
    Mutation("P9", P, "c.update(tokens=blocks * s.block_size + dropped, blocks=blocks, dropped_tokens=dropped, shards=writers[split].files)",
             "c.update(tokens=blocks * s.block_size, blocks=blocks, dropped_tokens=dropped, shards=writers[split].files)", PACKING_TESTS,
             "the manifest counts the dropped tokens"),
    Mutation("P10", P, 'digests = b"".join(hashlib.blake2b(f"{seed}\\0{d}".encode(), digest_size=8).digest() for d in doc_ids)',
             'digests = b"".join(hashlib.blake2b(f"{d}".encode(), digest_size=8).digest() for d in doc_ids)', PACKING_TESTS,
             "the split depends on the seed"),
    Mutation("K3", K, BOUNDARY, "return np.array([bos_id], np.int32)", PACKING_TESTS, "distinct BOS/EOS: no extra BOS opens the stream"),
    Mutation("K4", K, BOUNDARY, "return np.array([], np.int32)", PACKING_TESTS, "BOS == EOS: one boundary opens the stream"),
    Mutation("K5", K, "pieces += ([] if bos_id == eos_id else [bos]) + [np.asarray(ids, dtype=np.int32), eos]",
             "pieces += [bos, np.asarray(ids, dtype=np.int32), eos]", PACKING_TESTS, "BOS == EOS: one token between two documents"),
    Mutation("K6", K, "if len(self.pending):", "if False:", PACKING_TESTS, "every complete block is written"),
    Mutation("K7", K, "n = len(tokens) // block_size", "n = max(len(tokens) // block_size - 1, 0)", PACKING_TESTS,
             "only the final incomplete block is dropped"),
    # Stage 4: resume, the final checkpoint, bf16
    Mutation("T1", MT, "result = trainer.train(resume_from_checkpoint=resume_from)", "result = trainer.train(resume_from_checkpoint=None)",
             RESUME_TESTS, "a stopped run continues from its checkpoint (not from step 0)"),
    Mutation("T2", T, "return checkpoint, None", "return None, None", RESUME_TESTS,
             "an unfinished run with the same settings continues (not only says so)",
             after='print(f"{run_dir}: an unfinished run with these settings: continuing from {Path(checkpoint).name}")'),
    Mutation("T3", T, 'return str(max(complete, key=lambda p: int(p.name.split("-")[-1]))) if complete else None',
             'return str(min(complete, key=lambda p: int(p.name.split("-")[-1]))) if complete else None', RESUME_ALL,
             "continue from the latest complete checkpoint"),
    Mutation("T4", MT, "if resumed and resumed.global_step >= s.max_steps:", "if False:", RESUME_ALL,
             "a run killed after its final checkpoint is finished, not trained a step past max_steps"),
    Mutation("T5", T, "control.should_save = True  # the final checkpoint, whatever save_strategy says", "pass", RESUME_TESTS,
             "the final checkpoint is always saved"),
    Mutation("T6", T, "return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())",
             "return bool(torch.cpu._is_amx_tile_supported() and torch.cpu._is_avx512_bf16_supported())", BF16_TESTS,
             "bf16 with AMX or AVX512-BF16 (either)"),
    Mutation("T7", T, "return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())",
             "return bool(torch.cpu._is_amx_tile_supported())", BF16_TESTS, "AVX512-BF16 alone is enough"),
    Mutation("T8", T, "if other == first:", "if True:", NODES_TESTS,
             "DDP processes (nodes) that see other settings, inputs or run folder than process 0 all stop, before training"),
    Mutation("T9", T, "if other_problem is not None:  # the first one's", "if False:", NODES_TESTS,
             "a process that refuses its inputs stops the others with its reason (they do not wait for it)"),
    # Stages 4 and 5: no output for bad input, streaming
    Mutation("B1", MT, "decision = prepare_run_dir(s, settings_values, inputs)",
             "decision = prepare_run_dir(s, settings_values, inputs); Path(s.output_dir).mkdir(parents=True, exist_ok=True)",
             ("tests/test_bad_input.py::test_stage4_model_dir_damaged",), "bad input: no output folder (not even an empty one)"),
    Mutation("I1", "inference_demo.py",
             'stream: bool = field(default=True, metadata={"help": "Print tokens as they are generated."})',
             'stream: bool = field(default=False, metadata={"help": "Print tokens as they are generated."})',
             ("tests/test_inference_demo.py::test_main_streams_and_writes_samples_for_both_models",), "tokens stream as generated"),
    # The README's defaults
    Mutation("D1", D, 'max_dup_paragraph_frac: float = field(default=0.30, metadata={"help": "Max share of paragraphs that repeat."})',
             'max_dup_paragraph_frac: float = field(default=0.35, metadata={"help": "x"})',
             (PREP + "test_default_thresholds_are_the_readmes",), "stage 1: more than 30% of paragraphs"),
    Mutation("D2", MT, 'max_steps: int = field(default=30, metadata={"help": "Optimizer steps to train for."})',
             'max_steps: int = field(default=20, metadata={"help": "x"})', (TRAIN + "test_defaults_are_the_readmes",), "stage 4: 30 steps"),
    Mutation("D3", "inference_demo.py", 'temperature: float = field(default=0.8, metadata={"help": "Sampling temperature."})',
             'temperature: float = field(default=1.0, metadata={"help": "x"})', ("tests/test_inference_demo.py::test_defaults_are_the_readmes",),
             "stage 5: temperature 0.8"),
]


# ----------------------------------------------------------------------------------------------


def copy_project(dest: Path) -> Path:
    """The working tree (with uncommitted changes) without .git, .venv and caches; .venv as a link."""
    shutil.copytree(PROJECT, dest, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "work", "__pycache__", ".pytest_cache", "*.pyc", "tmp"))
    (dest / ".venv").symlink_to(PROJECT / ".venv")
    return dest


def mutated(text: str, m: Mutation) -> str | None:
    """`text` with m's line replaced (indentation kept), or None when the line is not there once."""
    lines = text.splitlines(keepends=True)
    start = 0
    if m.after:
        anchors = [i for i, line in enumerate(lines) if line.strip() == m.after.strip()]
        if len(anchors) != 1:
            return None
        start = anchors[0] + 1
    hits = [i for i in range(start, len(lines)) if lines[i].strip() == m.old.strip()]
    if not hits or (not m.after and len(hits) > 1):
        return None
    i = hits[0]
    line = lines[i]
    indent = line[: len(line) - len(line.lstrip())]
    lines[i] = indent + m.new.strip() + ("\n" if line.endswith("\n") else "")
    return "".join(lines)


def default_signals() -> None:
    """In the test process, Ctrl-C and SIGTERM as in a terminal: a run started in the background
    (nohup, &) inherits SIGINT ignored, and the tests of stage 4's Ctrl-C handling see that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_tests(root: Path, tests: tuple[str, ...], timeout: float, stop_early: bool = True) -> tuple[str, float, str, set]:
    """(outcome, seconds, last output lines, failed test ids): outcome "pass", "fail", "timeout" or
    "error". stop_early: stop at the first failure (-x)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [str(PYTHON), "-m", "pytest", *(["-x"] if stop_early else []), "-q", "-rfE", "-p", "no:cacheprovider", "-o", "addopts=", *tests]
    started = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout, preexec_fn=default_signals)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - started, "", set()
    seconds = time.perf_counter() - started
    lines = (r.stdout + r.stderr).strip().splitlines()
    tail = "\n".join([line for line in lines if line.startswith("E ")][:12] + lines[-3:])
    failed = {line.split()[1] for line in lines if line.startswith(("FAILED ", "ERROR ")) and len(line.split()) > 1}
    return {0: "pass", 1: "fail"}.get(r.returncode, "error"), seconds, tail, failed


def tests_at_revision(root: Path, rev: str, chosen: list[Mutation]) -> list[Mutation]:
    """Replace the copy's tests/ by git revision `rev`'s, and each mutation's tests by the whole
    files of them that exist there."""
    import dataclasses
    import io
    import tarfile

    archive = subprocess.run(["git", "archive", rev, "tests"], cwd=PROJECT, capture_output=True, check=True).stdout
    shutil.rmtree(root / "tests")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    judged = []
    for m in chosen:
        files = tuple(dict.fromkeys(t.split("::")[0] for t in m.tests if (root / t.split("::")[0]).is_file()))
        judged.append(dataclasses.replace(m, tests=files))
    print(f"tests/ of {rev}: each mutation runs whole test files", flush=True)
    return judged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="ID", help="run only these mutations")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per pytest run (a run past it counts as killed)")
    parser.add_argument("--no_baseline", action="store_true", help="skip the unmutated runs (when they are known to pass)")
    parser.add_argument("--tests_from", metavar="REV",
                        help="judge with the tests/ of git revision REV instead (e.g. before a test change): each mutation "
                             "runs the whole test files it names that exist there; with none, it survives")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # kill: the running tests stop, the copy goes
    chosen = [m for m in MUTATIONS if not args.only or m.id in args.only]
    if args.only and len(chosen) != len(set(args.only)):
        sys.exit(f"unknown mutation id(s): {sorted(set(args.only) - {m.id for m in chosen})}")
    if args.list:
        for m in chosen:
            print(f"{m.id:>4}  {m.file}: {m.old.strip()}\n      -> {m.new.strip()}\n      ({m.why}; {len(m.tests)} test(s))")
        return

    results = []
    with tempfile.TemporaryDirectory(prefix="mutation-audit-") as tmp:
        root = copy_project(Path(tmp) / "project")
        print(f"project copied to {root}; {len(chosen)} mutation(s)", flush=True)
        if args.tests_from:
            chosen = tests_at_revision(root, args.tests_from, chosen)
        # A set of tests that fails unmutated (other work in the checkout) still judges: a mutation
        # is killed when it makes a test fail that passed unmutated.
        baseline: dict[tuple, set | None] = {}  # tests -> the ids that fail unmutated (None: cannot judge)
        if not args.no_baseline:
            for tests in dict.fromkeys(m.tests for m in chosen if m.tests):
                outcome, seconds, tail, failed = run_tests(root, tests, args.timeout)
                if outcome == "fail":  # again to the end, for the whole set of failures
                    outcome, seconds, tail, failed = run_tests(root, tests, args.timeout, stop_early=False)
                baseline[tests] = failed if outcome in ("pass", "fail") and (outcome == "pass" or failed) else None
                print(f"baseline {outcome:>7} {seconds:6.1f}s  {' '.join(t.split('::')[-1] for t in tests)[:100]}", flush=True)
                if outcome != "pass":
                    print("         " + tail.replace("\n", "\n         "))
        for m in chosen:
            path = root / m.file
            original = path.read_text(encoding="utf-8")
            text = mutated(original, m)
            if text is None:
                status, seconds = "not applicable (line not found once)", 0.0
            elif not m.tests:
                status, seconds = "SURVIVED", 0.0  # no test file to judge it
            elif baseline.get(m.tests, set()) is None:
                status, seconds = "baseline fails", 0.0
            else:
                known = baseline.get(m.tests, set())
                path.write_text(text, encoding="utf-8")
                try:
                    outcome, seconds, tail, failed = run_tests(root, m.tests, args.timeout, stop_early=not known)
                finally:
                    path.write_text(original, encoding="utf-8")
                if outcome == "fail" and known and not failed - known:
                    outcome = "pass"  # only the tests that fail unmutated failed
                status = {"fail": "KILLED", "timeout": "KILLED (timeout)", "pass": "SURVIVED", "error": "error"}[outcome]
                if outcome == "error":
                    status += f" ({tail.splitlines()[-1] if tail else 'no output'})"
            results.append((m, status))
            print(f"{m.id:>4} {status:<9} {seconds:6.1f}s  {m.file}: {m.old.strip()[:60]} -> {m.new.strip()[:50]}", flush=True)

    killed = [m.id for m, s in results if s.startswith("KILLED")]
    survived = [(m.id, m.why) for m, s in results if s == "SURVIVED"]
    other = [(m.id, s) for m, s in results if not s.startswith(("KILLED", "SURVIVED"))]
    print(f"\nkilled {len(killed)} of {len(results)}: {' '.join(killed)}")
    print(f"survived {len(survived)}:" + "".join(f"\n  {i}: {why}" for i, why in survived))
    if other:
        print(f"not judged {len(other)}:" + "".join(f"\n  {i}: {s}" for i, s in other))


if __name__ == "__main__":
    main()
