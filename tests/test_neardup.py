"""Near-duplicate removal (MinHash LSH, stage 1's near_deduplication filter): what it finds on pairs
made here from the bundled sample's real-looking pages, and the stage's use of it."""

import json
import random

import pyarrow.parquet as pq

import data_preparation as dp
from minipretrain.dedup import MinHashBands, find_duplicates, shingles, word_list
from minipretrain.settings import PROJECT_DIR

PAGES = [json.loads(line)["text"] for f in ("clean-a", "clean-b", "clean-c")
         for line in (PROJECT_DIR / "sample_data" / "web" / f"{f}.jsonl").read_text(encoding="utf-8").splitlines()]
BOILERPLATE = ["Share this article on Facebook, Twitter or by email.", "Subscribe to our newsletter for weekly updates.",
               "This site uses cookies to improve your experience. Accept all cookies.", "Related posts: more from this section",
               "Posted in Home and Garden | Leave a comment", "Copyright 2026 Example Media Ltd. All rights reserved."]


def jaccard(a: str, b: str) -> float:
    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y)


def words_changed(rnd, page: str, frac: float, vocab) -> str:
    words = page.split(" ")
    for i in rnd.sample(range(len(words)), max(1, round(frac * len(words)))):
        words[i] = rnd.choice(vocab)
    return " ".join(words)


def boilerplate_added(rnd, page: str, n: int) -> str:
    lines = rnd.sample(BOILERPLATE, n)
    return "\n".join(lines[: n // 2] + [page] + lines[n // 2 :])


BANDS = MinHashBands()  # FineWeb's: 5-grams, 14 bands of 8 rows


def found(a: str, b: str) -> bool:
    exact, near = find_duplicates([a, b], BANDS)
    return near == {1: 0}


def test_quality_on_pairs_made_from_real_looking_pages():
    rnd = random.Random(0)
    vocab = sorted({w for p in PAGES for w in p.split()})
    pairs = []
    for i, page in enumerate(PAGES):
        for frac in (0.01, 0.02, 0.03, 0.05, 0.1):  # 1-10% of the words changed
            pairs.append((page, words_changed(rnd, page, frac, vocab)))
        pairs.append((page, boilerplate_added(rnd, page, rnd.randint(1, 6))))  # boilerplate lines added
        other = PAGES[(i + 1) % len(PAGES)]
        pairs.append((page, other))
        mine, theirs = page.split("\n\n"), other.split("\n\n")
        for share in (1 / 2, 2 / 3):  # a page made of part of this one and part of another
            cut_a, cut_b = round(share * len(mine)), round(share * len(theirs))
            pairs.append((page, "\n\n".join(mine[:cut_a] + theirs[cut_b:])))
    results = [(jaccard(a, b), found(a, b)) for a, b in pairs]
    close = [f for j, f in results if j >= 0.85]
    far = [f for j, f in results if j < 0.5]
    assert len(close) > 200 and len(far) > 400
    assert sum(close) / len(close) >= 0.95, f"found {sum(close)} of {len(close)} pairs at Jaccard >= 0.85"
    assert sum(far) / len(far) <= 0.01, f"removed {sum(far)} of {len(far)} pairs at Jaccard < 0.5"


def test_shingles_are_word_5grams_lowercased_without_punctuation():
    assert shingles("The cat sat, on the MAT today!") == {b"the cat sat on the", b"cat sat on the mat", b"sat on the mat today"}
    assert shingles("Too short.") == {b"too short"}


def test_signatures_are_band_digests_and_near_copies_of_near_copies_are_found():
    bands = MinHashBands(bands=14, rows=8)
    assert bands.signature(PAGES[0]).shape == (112,)
    p0 = bands.band_digests(PAGES[0])
    assert len(p0) == 14 and all(isinstance(d, int) and 0 <= d < 2**64 for d in p0)
    rnd = random.Random(3)
    copy = words_changed(rnd, PAGES[0], 0.02, PAGES[0].split())
    assert 0 < sum(a == b for a, b in zip(p0, bands.band_digests(copy))) < 14  # shares some bands with p0, not all
    # a chain: the second copy shares no band with p0 but some with the first copy, which is removed itself
    for _ in range(200):
        second = words_changed(rnd, copy, 0.03, PAGES[0].split())
        with_p0 = sum(a == b for a, b in zip(p0, bands.band_digests(second)))
        with_copy = sum(a == b for a, b in zip(bands.band_digests(copy), bands.band_digests(second)))
        if with_p0 == 0 and with_copy > 0:
            break
    else:
        raise AssertionError("no chain found")
    exact, near = find_duplicates([PAGES[0], PAGES[1], copy, PAGES[1], second], bands)
    assert exact == {3} and near == {2: 0, 4: 2}  # the removed copy's bands still count
    # the earliest of several band-mates, whatever band it shares
    exact, near = find_duplicates([PAGES[1], copy, PAGES[0], second], bands)
    assert near[2] == 1 and near[3] == 1


def test_signatures_equal_datasketch_update_batch():
    """MinHashBands computes datasketch's MinHash by its own route (words found in the UTF-8 bytes,
    5-grams as slices, the affine32 arithmetic in numpy): the values must be datasketch's, for ASCII
    and non-ASCII text, short texts and a page long enough to be done in chunks."""
    import xxhash
    from datasketch import MinHash

    texts = PAGES[:20] + [FRENCH, "", "a", "Too short.", "one two three four five", "Über-Größe_x1 café £3.50 naïve",
                          "İstanbul ǅ ﬁne ß ΣΑΣ ½ ² ٣ a\u00a0b\u3000c x̃ 東京 テスト a£b£c", "MiXeD CaSe x_y 1,5 \t\r\x0b\x0c end",
                          "word " * 25_000 + "Straße"]
    for ngram, seed in ((5, 1), (3, 7)):
        bands = MinHashBands(ngram=ngram, bands=14, rows=8, seed=seed)
        for text in texts:
            words = [w.encode("utf-8") for w in word_list(text)]
            grams = [b" ".join(words[i : i + ngram]) for i in range(len(words) - ngram + 1)] or [b" ".join(words)]
            m = MinHash(num_perm=112, seed=seed, hashfunc=xxhash.xxh32_intdigest)
            m.update_batch(grams)
            assert (bands.signature(text, chunk=10_000) == m.hashvalues).all(), text[:40]


def test_groups_count_chains_once_in_any_order():
    assert dp.near_groups({3: 1, 5: 3, 7: 6, 9: 6}) == 2  # 1 <- 3 <- 5, and 6 <- 7, 9
    assert dp.near_groups({9: 6, 5: 3, 7: 6, 3: 1}) == 2
    assert dp.near_groups({2: 1, 4: 3, 3: 2}) == 1
    assert dp.near_groups({5: 4, 4: 3, 3: 2, 2: 1}) == 1  # a chain 4 deep: the walk to its root must not cut it
    assert dp.near_groups({}) == 0


FRENCH = ("Le marché du samedi\n\nChaque samedi matin, les producteurs de la vallée installent leurs étals sur la place "
          "de la mairie. On y trouve des fromages, du pain de campagne et des légumes cueillis la veille.\n\n"
          "Les habitants viennent tôt pour choisir les meilleurs produits, puis restent boire un café en terrasse "
          "et discuter des nouvelles du village avec leurs voisins.")


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_stage_keeps_the_first_of_each_group_and_reports_it(tmp_path):
    rnd = random.Random(1)
    vocab = sorted({w for p in PAGES for w in p.split()})
    records = [{"id": f"p{i}", "text": PAGES[i]} for i in range(6)]
    records.insert(0, {"id": "early-copy-of-p3", "text": words_changed(rnd, PAGES[3], 0.01, vocab)})  # before p3
    records += [{"id": "copy-of-p1", "text": words_changed(rnd, PAGES[1], 0.02, vocab)},
                {"id": "boilerplate-p1", "text": boilerplate_added(rnd, PAGES[1], 3)},
                {"id": "exact-p2", "text": PAGES[2]},
                {"id": "fr", "text": FRENCH}, {"id": "fr-copy", "text": FRENCH + "\nPartagez cet article."}]
    src = write_jsonl(tmp_path / "w.jsonl", records)
    outs = []
    for n in (1, 2):
        out = tmp_path / f"out{n}"
        dp.main(["--web_sources", str(src), "--code_sources", "none", "--num_proc", str(n), "--batch_size", "3",
                 "--output_dir", str(out)])
        outs.append(out)
    assert (outs[0] / "cleaned-00000.parquet").read_bytes() == (outs[1] / "cleaned-00000.parquet").read_bytes()
    report = json.loads((outs[0] / "report.json").read_text())
    assert report == json.loads((outs[1] / "report.json").read_text())
    kept = pq.read_table(outs[0] / "cleaned-00000.parquet").column("doc_id").to_pylist()
    assert kept == ["early-copy-of-p3", "p0", "p1", "p2", "p4", "p5"]
    by_name = {f["name"]: f for f in report["filters"]}
    assert [f["name"] for f in report["filters"]] == ["paragraph_length", "repetition", "deduplication", "near_deduplication", "language"]
    near = by_name["near_deduplication"]
    assert near["removed"] == 4 and near["groups"] == 3 and near["reasons"] == {"near_duplicate": 4}
    assert [(e["doc_id"], e["duplicate_of"]) for e in near["examples"]] == [
        ("p3", "early-copy-of-p3"), ("copy-of-p1", "p1"), ("boilerplate-p1", "p1")]
    assert by_name["language"]["removed"] == 1  # the French copy went at step 4, before language ID
    assert by_name["deduplication"]["removed"] == 1  # the exact copy: counted by exact de-duplication, before
    off = tmp_path / "off"
    dp.main(["--web_sources", str(src), "--code_sources", "none", "--num_proc", "1", "--near_dedup", "false", "--output_dir", str(off)])
    assert pq.read_table(off / "cleaned-00000.parquet").num_rows == 9
