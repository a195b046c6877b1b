"""Stage 1: filters at their thresholds, every source kind, report arithmetic, bad input, atomic output."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import data_preparation as dp
from minipretrain import filters
from minipretrain.settings import PROJECT_DIR, UserError

ENGLISH = (
    "The old harbour town keeps its fishing boats in a narrow basin behind the sea wall.\n\n"
    "Every morning the market opens at six, and by eight most of the catch has been sold to restaurants.\n\n"
    "Visitors who arrive later can still buy smoked fish from the small shop beside the lighthouse."
)
FRENCH = (
    "Le vieux port abrite ses bateaux de pêche dans un bassin étroit derrière la digue.\n\n"
    "Chaque matin le marché ouvre à six heures, et vers huit heures presque tout est vendu.\n\n"
    "Les visiteurs qui arrivent plus tard peuvent encore acheter du poisson fumé près du phare."
)
GERMAN = (
    "Der alte Hafen liegt hinter der Mauer, und die Fischerboote fahren jeden Morgen früh hinaus.\n\n"
    "Auf dem Markt kaufen die Gastwirte den frischen Fang, bevor die Touristen kommen.\n\n"
    "Wer später kommt, findet im kleinen Laden neben dem Leuchtturm noch geräucherten Fisch."
)


def english_page(i: int) -> str:
    return ENGLISH.replace("six", f"six (page {i})")


def write_jsonl(path: Path, records, gz=False) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def run_stage(tmp_path, *args, name="out"):
    # The pages here differ by a word or two (english_page): near-duplicates, which tests/test_neardup.py
    # covers; the tests here run without that filter unless they ask for it.
    out = tmp_path / name
    dp.main(["--near_dedup", "false", *args, "--output_dir", str(out), "--num_proc", "1"])
    return out, json.loads((out / "report.json").read_text())


def cleaned_rows(out: Path) -> list[dict]:
    return pq.read_table(sorted(out.glob("cleaned-*.parquet"))).to_pylist()


# ---- filters at and around their thresholds -------------------------------------------------


def test_paragraph_length_guard_thresholds():
    f = filters.paragraph_length_filter
    assert f("title\nbody line") == (False, "too_few_lines")
    assert f("abc\ndef\nghi") is True
    assert f("ab\ncd\nef") == (False, "lines_too_short")  # the 3 longest lines are 2 chars
    assert f("a long line\nanother line\nab\n") == (False, "lines_too_short")  # 3rd longest is 2
    assert f("a long line\nanother line\nabc\nx\n") is True  # 3rd longest is exactly 3
    assert f("abc\ndef\nghi", min_lines=4) == (False, "too_few_lines")
    assert f("abcd\nefgh\nijkl", min_longest_line_chars=5) == (False, "lines_too_short")


def test_repetition_paragraph_fraction_threshold():
    unique = [f"paragraph number {i} with its own words" for i in range(6)]
    three = unique + ["x"] * 4  # 10 paragraphs, 3 of them repeats: 30% is not more than 30%
    assert filters.repetition_filter("\n\n".join(three), max_dup_char_frac=1.0) is True
    four = unique[:5] + ["x"] * 5  # 10 paragraphs, 4 repeats
    assert filters.repetition_filter("\n\n".join(four), max_dup_char_frac=1.0) == (False, "dup_paragraph_frac")
    assert filters.repetition_filter("\n\n".join(four), max_dup_paragraph_frac=0.4, max_dup_char_frac=1.0) is True


def test_repetition_character_fraction_threshold():
    x = "a" * 20
    # X, X, P1, P2 joined by blank lines: 1 repeat in 4 paragraphs (25%), 20 repeated characters.
    at = "\n\n".join([x, x, "b" * 27, "c" * 27])
    assert len(at) == 100
    assert filters.repetition_filter(at) is True  # 20 / 100 = 0.20 is not more than 0.20
    over = "\n\n".join([x, x, "b" * 27, "c" * 26])
    assert filters.repetition_filter(over) == (False, "dup_char_frac")  # 20 / 99 > 0.20
    assert filters.repetition_filter(over, max_dup_char_frac=0.25) is True
    # the share is of all the page's characters, surrounding blank lines included
    assert filters.repetition_filter(over + "\n\n") is True  # 20 / 101


def test_repetition_paragraphs_split_on_any_blank_lines():
    # a longer break (3+ newlines) separates paragraphs too: X and X repeat (1 in 2 > 30%)
    assert filters.repetition_filter("x\n\n\nx") == (False, "dup_paragraph_frac")
    # ... and is one break, not several with empty paragraphs between them (which would repeat)
    assert filters.repetition_filter("\n\n\n\n".join(["alpha", "beta", "gamma", "delta", "epsilon"])) is True
    # blank lines around the page make no (repeated, empty) paragraphs
    assert filters.repetition_filter("\n\n" + ENGLISH.replace("\n\n", " ") + "\n\n") is True


@pytest.fixture(scope="module")
def lid_model():
    import fasttext

    return fasttext.load_model(str(dp.language_model_path("lid.176.ftz")))


def test_language_filter_keeps_english_drops_others(lid_model):
    assert filters.language_filter(lid_model, ENGLISH) is True
    assert filters.language_filter(lid_model, FRENCH) == (False, "lang_fr")
    assert filters.language_filter(lid_model, GERMAN) == (False, "lang_de")
    assert filters.language_filter(lid_model, "El mercado abre a las seis y los restaurantes compran casi todo el pescado.") == (False, "lang_es")
    assert filters.language_filter(lid_model, FRENCH, language="fr") is True
    # the probability threshold is strict: a page scored exactly at it goes, just above it stays
    (_,), (p,) = lid_model.predict(ENGLISH.replace("\n", " "))
    assert filters.language_filter(lid_model, ENGLISH, min_score=float(p)) == (False, "low_language_score")
    assert filters.language_filter(lid_model, ENGLISH, min_score=float(p) - 1e-4) is True


def test_language_filter_reads_one_line(lid_model):
    # fastText predicts a single line; newlines are replaced by spaces, not glued together
    text = "The harbour\nopens early\nevery day."
    assert filters.language_filter(lid_model, text) is True


# ---- the whole stage on small corpora ------------------------------------------------------


def test_dedup_keeps_first_and_drops_exact_repeats_only(tmp_path):
    a, b = english_page(1), english_page(2)
    records = [{"id": "first", "text": a}, {"id": "other", "text": b}, {"id": "again", "text": a},
               {"id": "near", "text": a + "!"}, {"id": "third", "text": a}]
    out, report = run_stage(tmp_path, "--web_sources", str(write_jsonl(tmp_path / "w.jsonl", records)), "--code_sources", "none")
    ids = [r["doc_id"] for r in cleaned_rows(out)]
    assert ids == ["first", "other", "near"]
    dedup = next(f for f in report["filters"] if f["name"] == "deduplication")
    assert dedup["removed"] == 2 and dedup["reasons"] == {"exact_duplicate": 2}
    assert {e["doc_id"] for e in dedup["examples"]} == {"again", "third"}


def test_a_copy_of_a_page_an_earlier_filter_removed_is_counted_by_that_filter(tmp_path):
    # copies are not judged again, but keep the filter order: a copy of a short page is a short page
    records = [{"id": "short1", "text": "too short"}, {"id": "ok", "text": english_page(1)},
               {"id": "short2", "text": "too short"}, {"id": "fr1", "text": FRENCH}, {"id": "fr2", "text": FRENCH}]
    out, report = run_stage(tmp_path, "--web_sources", str(write_jsonl(tmp_path / "w.jsonl", records)), "--code_sources", "none")
    removed = {f["name"]: f["removed"] for f in report["filters"]}
    assert removed == {"paragraph_length": 2, "repetition": 0, "deduplication": 1, "near_deduplication": 0, "language": 1}
    assert [r["doc_id"] for r in cleaned_rows(out)] == ["ok"]


def test_code_goes_through_paragraph_length_and_deduplication(tmp_path):
    code = tmp_path / "code"
    (code / "pkg").mkdir(parents=True)
    module = "def f(x):\n    return x\n\n\ndef g(y):\n    return y\n"
    (code / "a.py").write_text(module)
    (code / "pkg" / "b.py").write_text(module)  # an exact copy of a.py
    (code / "c.py").write_text("import math\n\n\ndef area(r):\n    return math.pi * r * r\n")
    (code / "d.py").write_text("x = 1\n")  # 2 lines
    out, report = run_stage(tmp_path, "--web_sources", "none", "--code_sources", str(code))
    assert [r["doc_id"] for r in cleaned_rows(out)] == ["code:a.py", "code:c.py"]
    by_name = {f["name"]: f for f in report["filters"]}
    assert by_name["paragraph_length"]["reasons"] == {"too_few_lines": 1}
    assert by_name["deduplication"]["reasons"] == {"exact_duplicate": 1}
    assert [e["doc_id"] for e in by_name["deduplication"]["examples"]] == ["code:b.py"]


def test_every_document_filtered_out_is_a_valid_empty_output(tmp_path):
    records = [{"id": "short", "text": "one line"}, {"id": "fr", "text": FRENCH}]
    out, report = run_stage(tmp_path, "--web_sources", str(write_jsonl(tmp_path / "w.jsonl", records)), "--code_sources", "none")
    assert report["input"]["documents"] == 2 and report["output"]["documents"] == 0
    files = sorted(p.name for p in out.glob("cleaned-*.parquet"))
    assert files == ["cleaned-00000.parquet"]
    table = pq.read_table(out / files[0])
    assert table.num_rows == 0 and {"text", "source", "doc_id"} <= set(table.schema.names)
    assert table.schema.field("text").type == pa.string()
    assert json.loads((out / "manifest.json").read_text())["counts"]["documents_out_documents"] == 0
    # the next stage reads it and says that it is empty
    import data_packaging

    with pytest.raises(UserError, match="the cleaned data holds no documents"):
        data_packaging.main(["--input_dir", str(out), "--output_dir", str(tmp_path / "packed")])
    assert not (tmp_path / "packed").exists()


def test_report_counts_add_up_and_code_skips_prose_filters(tmp_path):
    records = (
        [{"id": f"en{i}", "text": english_page(i)} for i in range(6)]
        + [{"id": "dup", "text": english_page(0)}, {"id": "short", "text": "one line only"},
           {"id": "fr", "text": FRENCH}, {"id": "de", "text": GERMAN},
           {"id": "rep", "text": "\n\n".join(["Buy now. Free shipping."] * 5 + ["About us"])},
           {"id": "null", "text": None}]
    )
    src = write_jsonl(tmp_path / "w.jsonl", records)
    code = tmp_path / "code"
    code.mkdir()
    (code / "mod.py").write_text("def f(x):\n    return x\n\n\ndef g(y):\n    return y\n")
    out, report = run_stage(tmp_path, "--web_sources", str(src), "--code_sources", str(code))

    assert report["input"]["documents"] == 12 and report["input"]["skipped_null_or_empty_text"] == 1
    remaining = report["input"]["documents"]
    for f in report["filters"]:
        assert f["documents_in"] == remaining
        assert f["documents_in"] == f["documents_out"] + f["removed"]
        assert f["removed"] == sum(f["reasons"].values())
        remaining = f["documents_out"]
    assert remaining == report["output"]["documents"] == 7
    by_name = {f["name"]: f for f in report["filters"]}
    assert by_name["paragraph_length"]["reasons"] == {"too_few_lines": 1}
    assert by_name["repetition"]["reasons"] == {"dup_paragraph_frac": 1}
    assert by_name["deduplication"]["removed"] == 1
    assert by_name["language"]["reasons"] == {"lang_fr": 1, "lang_de": 1}
    assert by_name["language"]["applies_to"] == ["web"]
    rows = cleaned_rows(out)
    assert [r["source"] for r in rows] == ["web"] * 6 + ["code"]  # the Python file passed: no language filter
    assert rows[-1]["doc_id"] == "code:mod.py"
    chars = sum(len(r["text"]) for r in rows)
    assert report["output"]["characters"] == chars
    assert report["input"]["characters"] == chars + sum(f["characters_removed"] for f in report["filters"])
    assert (out / "funnel.png").stat().st_size > 1000
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "data_preparation" and manifest["counts"]["documents_out_documents"] == 7
    assert set(manifest["files"]) == {"cleaned-00000.parquet", "report.json", "funnel.png"}


def test_parallel_run_gives_the_same_output(tmp_path):
    records = [{"id": f"d{i}", "text": english_page(i % 40) if i % 7 else FRENCH} for i in range(200)]
    src = str(write_jsonl(tmp_path / "w.jsonl", records))
    one, _ = run_stage(tmp_path, "--web_sources", src, "--code_sources", "none", "--batch_size", "16", name="one")
    two = tmp_path / "two"
    dp.main(["--web_sources", src, "--code_sources", "none", "--batch_size", "16", "--num_proc", "2", "--output_dir", str(two),
             "--near_dedup", "false"])
    assert cleaned_rows(one) == cleaned_rows(two)
    assert (one / "cleaned-00000.parquet").read_bytes() == (two / "cleaned-00000.parquet").read_bytes()


def test_every_source_kind(tmp_path):
    pages = [english_page(i) for i in range(8)]
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    write_jsonl(folder / "a.jsonl", [{"text": pages[0]}])
    write_jsonl(folder / "sub" / "b.jsonl.gz", [{"text": pages[1]}], gz=True)
    pq.write_table(pa.table({"text": [pages[2], None], "id": ["p0", "p1"]}), folder / "c.parquet")
    (folder / "d.txt").write_text(pages[3])
    globbed = tmp_path / "g"
    globbed.mkdir()
    write_jsonl(globbed / "x1.jsonl", [{"text": pages[4]}])
    write_jsonl(globbed / "x2.jsonl", [{"text": pages[5]}])
    out, report = run_stage(tmp_path, "--web_sources", str(folder), str(globbed / "x*.jsonl"), "--code_sources", "stdlib")
    rows = cleaned_rows(out)
    web = [r for r in rows if r["source"] == "web"]
    # a folder is read recursively in sorted path order, then the glob's files
    assert [r["text"] for r in web] == [pages[0], pages[2], pages[3], pages[1], pages[4], pages[5]]
    assert [r["doc_id"] for r in web] == ["a.jsonl:1", "p0", "d.txt", "b.jsonl.gz:1", "x1.jsonl:1", "x2.jsonl:1"]
    code = [r["doc_id"] for r in rows if r["source"] == "code"]
    assert len(code) == 9 and "code:argparse.py" in code and "code:collections/__init__.py" in code
    assert report["input"]["skipped_null_or_empty_text"] == 1  # the parquet's null row, counted


def test_hf_dataset_source_on_a_local_copy(tmp_path):
    # The hub code path (datasets.load_dataset) run on a local dataset folder, as a user with a copy would.
    data = tmp_path / "hub_copy"
    data.mkdir()
    pq.write_table(pa.table({"text": [english_page(i) for i in range(5)] + [FRENCH]}), data / "train-00000.parquet")
    out, report = run_stage(tmp_path, "--web_sources", f"hf:{data}", "--hf_limit", "4", "--code_sources", "none")
    assert report["input"]["documents"] == 4
    assert [r["text"] for r in cleaned_rows(out)] == [english_page(i) for i in range(4)]


def test_unreachable_hub_dataset_names_the_offline_default(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"hf:upstage/Pretraining_Dataset: cannot load .*--web_sources sample"):
        run_stage(tmp_path, "--web_sources", "hf:upstage/Pretraining_Dataset", "--code_sources", "none")


# ---- bad input: one clear line naming the file ----------------------------------------------


BAD_INPUTS = {
    "missing": (lambda d: d / "nope.jsonl", r"nope.jsonl: no such file or folder"),
    "empty_file": (lambda d: _w(d / "e.jsonl", b""), r"e.jsonl: empty file"),
    "not_json": (lambda d: _w(d / "j.jsonl", b'{"text": "ok"}\n{"text": oops}\n'), r"j.jsonl:2: not valid JSON"),
    "bad_utf8": (lambda d: _w(d / "u.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n'), r"u.jsonl:2: invalid UTF-8"),
    "no_column": (lambda d: _w(d / "c.jsonl", b'{"body": "x", "url": "y"}\n'), r"c.jsonl:1: no 'text' field \(fields: body, url\)"),
    "numeric": (lambda d: _w(d / "n.jsonl", b'{"text": 42}\n'), r"n.jsonl:1: 'text' is int, expected a string"),
    "truncated_gz": (lambda d: _w(d / "t.jsonl.gz", gzip.compress(b'{"text": "abc"}\n' * 500)[:-40]), r"t.jsonl.gz: truncated or corrupt gzip"),
    "binary": (lambda d: _w(d / "b.jsonl", bytes(range(256)) * 4), r"b.jsonl:1: (invalid UTF-8|not valid JSON)"),
    "parquet_no_column": (lambda d: _pq(d / "p.parquet", {"body": ["x"]}), r"p.parquet: no column 'text' \(columns: body\)"),
    "parquet_numeric": (lambda d: _pq(d / "q.parquet", {"text": [1, 2]}), r"q.parquet: column 'text' holds int64, expected strings"),
    "not_parquet": (lambda d: _w(d / "x.parquet", b"not parquet at all"), r"x.parquet: not a readable Parquet file"),
    "empty_folder": (lambda d: _mkdir(d / "empty"), r"empty: folder has no .jsonl"),
    "no_glob_match": (lambda d: d / "none*.jsonl", r"none\*.jsonl: matches no files"),
    "txt_bad_utf8": (lambda d: _w(d / "t.txt", b"line one\nline two\n\xff\xfe\n"), r"t.txt:3: invalid UTF-8"),
    "wrong_type": (lambda d: _w(d / "w.csv", b"a,b\n"), r"w.csv: unsupported file type"),
}


def _w(path, data):
    path.write_bytes(data)
    return path


def _pq(path, columns):
    pq.write_table(pa.table(columns), path)
    return path


def _mkdir(path):
    path.mkdir()
    return path


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, case):
    make, message = BAD_INPUTS[case]
    src = make(tmp_path)
    with pytest.raises(UserError, match=message):
        run_stage(tmp_path, "--web_sources", str(src), "--code_sources", "none")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))  # no temporary folder left behind


def test_null_text_only_is_an_error_not_an_empty_output(tmp_path):
    src = write_jsonl(tmp_path / "n.jsonl", [{"text": None}, {"text": ""}])
    with pytest.raises(UserError, match="hold no documents with text"):
        run_stage(tmp_path, "--web_sources", str(src), "--code_sources", "none")


def test_error_reaches_the_user_as_one_line_and_exit_1(tmp_path):
    bad = _w(tmp_path / "j.jsonl", b'{"text": oops}\n')
    r = subprocess.run([sys.executable, str(PROJECT_DIR / "data_preparation.py"), "--web_sources", str(bad),
                        "--output_dir", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {bad}:1: not valid JSON (Expecting value: line 1 column 10 (char 9))"]
    assert r.stderr.rstrip().endswith(errors[0])


def test_settings_bad_values_and_unknown_keys(tmp_path):
    with pytest.raises(UserError, match="--max_dup_char_frac: must be between 0 and 1, got 1.5"):
        dp.main(["--max_dup_char_frac", "1.5", "--output_dir", str(tmp_path / "o")])
    with pytest.raises(UserError, match=r"unknown setting\(s\): --min_line 4 \(see --help"):
        dp.main(["--min_line", "4", "--output_dir", str(tmp_path / "o")])
    cfg = tmp_path / "s.yaml"
    cfg.write_text("min_lines: 4\nmin_line: 3\n")
    with pytest.raises(UserError, match=r"s.yaml: unknown setting\(s\) min_line"):
        dp.main([str(cfg)])


def test_default_thresholds_are_the_readmes():
    s = dp.Settings()
    assert (s.min_lines, s.min_longest_line_chars) == (3, 3)
    assert (s.max_dup_paragraph_frac, s.max_dup_char_frac) == (0.30, 0.20)
    assert (s.language, s.min_language_score, s.language_model) == ("en", 0.4, "lid.176.ftz")
    assert (s.web_sources, s.code_sources) == (["sample"], ["stdlib"])


def test_settings_file_then_flags(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("min_lines: 7\nlanguage: fr\ncode_sources: [none]\n")
    s = dp.parse_settings(dp.Settings, [str(cfg), "--language", "de"])
    assert (s.min_lines, s.language, s.code_sources) == (7, "de", ["none"])


# ---- atomic output ------------------------------------------------------------------------


def test_rerun_skips_when_up_to_date_and_rebuilds_what_changed(tmp_path, capsys):
    src = str(write_jsonl(tmp_path / "w.jsonl", [{"text": english_page(i)} for i in range(5)]))
    out, _ = run_stage(tmp_path, "--web_sources", src, "--code_sources", "none")
    before = (out / "manifest.json").read_text()
    run_stage(tmp_path, "--web_sources", src, "--code_sources", "none")
    assert "up to date" in capsys.readouterr().out
    assert (out / "manifest.json").read_text() == before
    # another setting: rebuilt without --overwrite, saying what changed
    out, report = run_stage(tmp_path, "--web_sources", src, "--code_sources", "none", "--min_lines", "4")
    assert f"min_lines 3 -> 4: rebuilding {out}" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["settings"]["min_lines"] == 4
    # --overwrite redoes an up-to-date output
    run_stage(tmp_path, "--web_sources", src, "--code_sources", "none", "--min_lines", "4", "--overwrite")
    assert f"--overwrite: rebuilding {out}" in capsys.readouterr().out
    # a changed input file makes the output stale too
    Path(src).write_text(Path(src).read_text() + json.dumps({"text": english_page(99)}) + "\n")
    out, report = run_stage(tmp_path, "--web_sources", src, "--code_sources", "none", "--min_lines", "4")
    assert f"input sources changed: rebuilding {out}" in capsys.readouterr().out
    assert report["input"]["documents"] == 6


def test_bundled_sample_corpus_exercises_every_filter(tmp_path):
    out, report = run_stage(tmp_path, "--near_dedup", "true")  # all defaults: the sample corpus + 9 stdlib modules
    by_name = {f["name"]: f["removed"] for f in report["filters"]}
    assert by_name == {"paragraph_length": 10, "repetition": 12, "deduplication": 9, "near_deduplication": 0, "language": 24}
    assert report["filters"][1]["reasons"] == {"dup_paragraph_frac": 10, "dup_char_frac": 2}
    kept = [r["doc_id"] for r in cleaned_rows(out)]
    web = [i for i in kept if not i.startswith("code:")]
    assert all(i.startswith(("clean-", "noisy-borderline-")) for i in web)
    assert len(web) == 126 + 3 and len(kept) - len(web) == 9
    words = [len(r["text"].split()) for r in cleaned_rows(out) if r["doc_id"].startswith("clean-")]
    assert sum(words) / len(words) > 250
