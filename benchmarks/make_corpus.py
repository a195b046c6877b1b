"""A deterministic corpus of web-like pages for benchmarking stage 1 (data_preparation.py).

    python benchmarks/make_corpus.py                                 # 60,000 pages -> work/bench/corpus/
    python benchmarks/make_corpus.py --docs 200000 --seed 1 --out /tmp/corpus
    python benchmarks/make_corpus.py --near_duplicates 0.05 --out work/bench/corpus-near  # + 5% near-copies

The same seed gives byte-identical files. Pages are English-like text built from a word list with
Zipf-like weights (fastText recognises it as English with high confidence), in paragraphs separated
by blank lines, with the things web pages have: a title, sometimes a bulleted list, a navigation
line, a footer, numbers, prices, dates. Mixed in, in roughly the shares the course's 60,000
RedPajama pages showed (13% too short, 0.1% repetitive, 17% duplicates, 7% not English), are pages
each filter of data_preparation.py should catch:

| kind          | share | what it is                                          | caught by (reason)                  |
|---------------|-------|-----------------------------------------------------|-------------------------------------|
| one_line      |  6%   | a page that is a single line (or title + one line)  | paragraph_length (too_few_lines)    |
| short_lines   |  4%   | menus, page numbers: every line under 3 characters  | paragraph_length (lines_too_short)  |
| repeated_para |  2%   | a boilerplate paragraph repeated many times         | repetition (dup_paragraph_frac)     |
| repeated_long |  1%   | one long paragraph copied twice                     | repetition (dup_char_frac)          |
| duplicate     | 15%   | an exact copy of an earlier page (English or not)   | deduplication (exact_duplicate)     |
| foreign       |  7%   | fr, de, es, it, pt or nl text                       | language (lang_xx)                  |
| table         |  1%   | product codes and numbers, few words                | language (mostly low score)         |
| near_duplicate|  0%   | `--near_duplicates`: an earlier page with 1-10% of  | near_deduplication (near_duplicate) |
|               |       | its words changed, or 1-4 boilerplate lines added   | when it shares a MinHash band       |
| clean         | rest  | English pages                                       | kept                                |

near_duplicate pages (issue 14's near-duplicate race, benchmarks/bench_neardup.py) take their share
from the clean pages: a page drawn as near_duplicate is first generated as the clean page it would
have been (so the main random stream is unchanged), then replaced by a near-copy of an earlier
clean or foreign page, made with a second random generator. So `--near_duplicates 0` (the default)
writes exactly the files it always did, and with a share every other page is the same as without
it, except exact duplicates that copy a replaced page (they copy the near-copy). Each near-copy's
source and change are listed in <out>/near_duplicates.json.

Output: <out>/pages-00000.jsonl ... (`{"id": ..., "text": ...}` a line; several shards so that
multi-task pipelines such as datatrove's can split them) and <out>/corpus.json: the settings, counts
per kind and the total UTF-8 bytes of the text (the "MB" of the benchmark's MB/s); with
`--near_duplicates`, also <out>/near_duplicates.json ({id: {"of": source id, "how": change}}).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

EN = """the of and to a in is that for it as was with be by on not he this are or his from at which but
have an they you were her she there been one all we their has would when if so who will more no out up
into do any your what some can time only other new also could these two may first then than like well
over such after most made many before must through back years where much way people should because work
each those good very great same under world long still own life between being day know every here both
city public water often small part take home place found while house since state number make found
however without during three system almost family another local again around high school right though
later across old country large early use different important river government usually market small
garden street morning children village north south east west summer winter autumn spring light paper
company history music book books story road bridge station museum church island valley coast harbour
students teacher teachers library window kitchen table doctor hospital weather rain evening night week
month price money shop shops food bread coffee tea milk fruit apples train trains bus car cars walk
walking open opened close closed build built buy bought sell sold grow grew keep kept begin began bring
brought write wrote read leave left feel felt follow followed show showed become became seem seemed
small large little big young older better best early late easy hard simple clear free full sure true
quickly slowly finally nearly really perhaps together already always never sometimes usually certainly
about above against along among behind below beside beyond toward towards within upon until although
whether unless because while rather instead almost enough quite just even ever also still yet soon
plan plans report reports question questions answer answers problem problems result results reason
example examples idea ideas group groups member members service services area areas level levels
local national annual weekly daily recent modern simple careful practical useful popular common""".split()

FOREIGN = {
    "fr": """le la les de des du un une et est en que qui dans pour pas sur au avec ce il elle nous vous
ils sont ont plus par mais comme tout fait été aussi leur bien peut cette ses son sa entre deux
même notre très sans encore où après avant chez faire dire temps jour année ville maison école rue
enfants travail marché petit grand nouveau vieux toujours souvent jamais depuis pendant alors donc
beaucoup chaque autre premier dernier pays monde eau pain fromage gare musée église village matin
soir semaine mois prix argent boutique livre histoire musique jardin cuisine fenêtre""".split(),
    "de": """der die das und ist in den von zu mit sich des auf für nicht ein eine als auch es an er
hat aus bei sind wird dem nach wie im einer um am sie noch wir kann über vor zum nur war werden oder
aber so dann durch wenn sehr schon immer wieder zwischen unter Jahr Jahre Stadt Haus Schule Straße
Kinder Arbeit Markt klein groß neu alt oft nie seit während also doch jeden jede andere erste letzte
Land Welt Wasser Brot Käse Bahnhof Museum Kirche Dorf Morgen Abend Woche Monat Preis Geld Laden
Buch Geschichte Musik Garten Küche Fenster""".split(),
    "es": """el la los las de del y en que a un una es por con para no se su al lo como más pero sus
le ya o este sí porque esta entre cuando muy sin sobre también me hasta hay donde quien desde todo
nos durante todos uno les ni contra otros ese eso ante ellos años ciudad casa escuela calle niños
trabajo mercado pequeño grande nuevo viejo siempre nunca después antes cada otro primero último
país mundo agua pan queso estación museo iglesia pueblo mañana tarde semana mes precio dinero
tienda libro historia música jardín cocina ventana""".split(),
    "it": """il la di che e a un una per in è non sono con si da come più ma anche del della dei delle
al alla nel nella questo questa ci lo gli le ha hanno era essere molto tutto tutti quando dove
sempre mai dopo prima ogni altro primo ultimo anni città casa scuola strada bambini lavoro mercato
piccolo grande nuovo vecchio paese mondo acqua pane formaggio stazione museo chiesa villaggio
mattina sera settimana mese prezzo soldi negozio libro storia musica giardino cucina finestra""".split(),
    "pt": """o a os as de do da dos das e em no na que um uma é para com não por mais se como mas foi
ao ele ela seu sua ou ser quando muito há nos já também só pelo pela até isso entre depois sem
mesmo aos ter seus quem nas me esse eles estão você tinha foram essa num nem suas meu anos cidade
casa escola rua crianças trabalho mercado pequeno grande novo velho sempre nunca antes cada outro
primeiro último país mundo água pão queijo estação museu igreja aldeia manhã tarde semana mês preço
dinheiro loja livro história música jardim cozinha janela""".split(),
    "nl": """de het een en van in is dat op te zijn met voor niet aan er om ook als bij of uit door
maar naar dan nog wel worden kan zo al deze was heeft hebben werd waar tot over na wat zij hij wij
jaar jaren stad huis school straat kinderen werk markt klein groot nieuw oud altijd nooit vaak
sinds tijdens elke andere eerste laatste land wereld water brood kaas station museum kerk dorp
ochtend avond week maand prijs geld winkel boek geschiedenis muziek tuin keuken raam""".split(),
}

NAV = ["Home | About | Contact | Blog", "Menu", "Skip to content", "Home > News > Local",
       "Share this article: Facebook Twitter Email", "Sign in | Register"]
FOOTER = ["© {year} {name} Ltd. All rights reserved.", "Privacy policy · Terms of use · Cookie settings",
          "Posted by {name} on {day} {mon} {year}", "Tags: {w1}, {w2}, {w3}", "Related: {title}"]
BOILERPLATE = ["We use cookies to improve your experience. By continuing to browse you accept our cookie policy.",
               "Subscribe to our newsletter for weekly updates, offers and news from the team.",
               "This item is currently out of stock. Please check back later or contact customer service."]
MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
NAMES = "Harbour Northfield Greenway Riverside Oakwood Lakeside Millbrook Westgate Ashford Brightwater".split()

SHARES = [("one_line", 0.06), ("short_lines", 0.04), ("repeated_para", 0.02), ("repeated_long", 0.01),
          ("duplicate", 0.15), ("foreign", 0.07), ("table", 0.01)]  # the rest: clean


class Writer:
    """English-like (or foreign) text from a weighted word list, with a seeded random generator."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.vocab = {"en": EN, **FOREIGN}
        # Zipf-like weights by position in the list (common words first), shuffled tail for variety
        self.cum = {}
        for lang, words in self.vocab.items():
            total, cum = 0.0, []
            for rank in range(len(words)):
                total += 1.0 / (rank + 8)
                cum.append(total)
            self.cum[lang] = cum

    def sentence(self, lang: str = "en") -> str:
        rng = self.rng
        words = rng.choices(self.vocab[lang], cum_weights=self.cum[lang], k=rng.randint(6, 24))
        r = rng.random()
        if r < 0.08:
            words.insert(rng.randrange(len(words)), str(rng.randint(2, 2025)))
        elif r < 0.11:
            words.insert(rng.randrange(len(words)), f"£{rng.randint(1, 500)}.{rng.randint(0, 99):02d}")
        if len(words) > 10 and rng.random() < 0.3:
            words[rng.randrange(3, len(words) - 2)] += ","
        text = " ".join(words)
        return text[0].upper() + text[1:] + rng.choice("....?!")

    def paragraph(self, lang: str = "en") -> str:
        return " ".join(self.sentence(lang) for _ in range(self.rng.randint(1, 7)))

    def title(self, lang: str = "en") -> str:
        words = self.rng.choices(self.vocab[lang], cum_weights=self.cum[lang], k=self.rng.randint(3, 9))
        return " ".join(w.capitalize() if i == 0 or self.rng.random() < 0.5 else w for i, w in enumerate(words))

    def n_paragraphs(self) -> int:
        # page length: log-normal, median ~6 paragraphs (~2.5 KB), a long tail up to 60
        return max(2, min(60, round(self.rng.lognormvariate(1.8, 0.7))))

    def fill(self, template: str) -> str:
        rng = self.rng
        return template.format(year=rng.randint(2005, 2025), name=rng.choice(NAMES), day=rng.randint(1, 28),
                               mon=rng.choice(MONTHS), w1=rng.choice(EN), w2=rng.choice(EN), w3=rng.choice(EN),
                               title=self.title())

    def page(self, lang: str = "en") -> str:
        rng = self.rng
        parts = []
        if rng.random() < 0.3:
            parts.append(rng.choice(NAV))
        parts.append(self.title(lang))
        for _ in range(self.n_paragraphs()):
            if rng.random() < 0.08:  # a bulleted list: one item a line
                parts.append("\n".join(f"- {self.title(lang)}" for _ in range(rng.randint(3, 8))))
            else:
                parts.append(self.paragraph(lang))
        if rng.random() < 0.5:
            parts.append(self.fill(rng.choice(FOOTER)))
        return "\n\n".join(parts)

    # pages each filter should catch -------------------------------------------------------------

    def one_line(self) -> str:
        if self.rng.random() < 0.5:
            return self.paragraph()  # a page flattened to one line
        return f"{self.title()}\n{self.sentence()}"

    def short_lines(self) -> str:
        items = [str(i) for i in range(1, self.rng.randint(4, 30))]  # pagination: 1 2 3 ... (1-2 chars each)
        return "\n".join(items if self.rng.random() < 0.5 else [self.rng.choice(["<", ">", "|", "»", "·", "›"]) for _ in items])

    def repeated_para(self) -> str:
        boiler = self.rng.choice(BOILERPLATE)
        parts = [self.title()]
        for _ in range(self.rng.randint(2, 4)):
            parts += [self.paragraph(), boiler, boiler]
        return "\n\n".join(parts)

    def repeated_long(self) -> str:
        long = " ".join(self.paragraph() for _ in range(3))
        return "\n\n".join([self.title(), self.paragraph(), long, self.paragraph(), long])

    def table(self) -> str:
        rng = self.rng
        rows = [f"SKU-{rng.randint(10000, 99999)} | {rng.randint(1, 99)}x{rng.randint(1, 99)} | "
                f"{rng.randint(1, 999)}.{rng.randint(0, 99):02d} | {rng.choice('ABCDEFGH')}{rng.randint(1, 9)}"
                for _ in range(rng.randint(8, 40))]
        return "\n".join(rows)


def near_copy(text: str, w: Writer) -> tuple[str, str]:
    """A near-duplicate of `text` made with w's generator: 1-10% of its words replaced by other words
    (paragraph breaks kept), or 1-4 boilerplate lines (navigation, cookie notice, footer) added at its
    top and/or bottom. Returns (new text, what changed)."""
    rng = w.rng
    if rng.random() < 0.5:
        tokens = text.split(" ")
        words = [i for i, t in enumerate(tokens) if t and "\n" not in t]  # a token holding "\n" joins two lines
        share = rng.uniform(0.01, 0.10)
        changed = max(1, round(share * len(words)))
        for i in rng.sample(words, min(changed, len(words))):
            tokens[i] = rng.choice(EN)
        return " ".join(tokens), f"words {changed}/{len(words)}"
    lines = rng.sample(NAV + BOILERPLATE + FOOTER, rng.randint(1, 4))
    top = [w.fill(x) for x in lines if x in NAV]
    bottom = [w.fill(x) for x in lines if x not in NAV]
    return "\n\n".join(top + [text] + bottom), f"boilerplate +{len(top)} top +{len(bottom)} bottom"


def generate(docs: int, seed: int, near_duplicates: float = 0.0, log: dict | None = None):
    """Yield (id, kind, text) for `docs` pages, the same for the same seed. near_duplicates: the share
    of pages that are near-copies of earlier ones (taken from the clean pages; `log` gets
    {id: {"of": source id, "how": change}} for each)."""
    rng = random.Random(seed)
    w = Writer(rng)
    near = Writer(random.Random(f"near-duplicates-{seed}"))  # its own stream: the other pages stay as they were
    kinds, cum, total = [], [], 0.0
    for kind, share in SHARES + [("near_duplicate", near_duplicates)]:
        total += share
        kinds.append(kind)
        cum.append(total)
    earlier: list[str] = []  # pages a later duplicate copies (a bounded reservoir)
    earlier_ids: list[str] = []  # and their ids (for near_duplicates.json)
    for i in range(docs):
        r = rng.random()
        kind = next((k for k, c in zip(kinds, cum) if r < c), "clean")
        if kind in ("duplicate", "near_duplicate") and not earlier:
            kind = "clean"
        if kind == "duplicate":
            text = rng.choice(earlier)
        elif kind == "foreign":
            text = w.page(rng.choice(sorted(FOREIGN)))
        elif kind == "clean":
            text = w.page()
        elif kind == "near_duplicate":
            w.page()  # the clean page this one replaces, drawn from the main stream and dropped
            k = near.rng.randrange(len(earlier))
            text, how = near_copy(earlier[k], near)
            if log is not None:
                log[f"page-{i:07d}"] = {"of": earlier_ids[k], "how": how}
        else:
            text = getattr(w, kind)()
        if kind in ("clean", "foreign", "near_duplicate"):
            if len(earlier) < 20_000:
                earlier.append(text)
                earlier_ids.append(f"page-{i:07d}")
            else:
                k = rng.randrange(len(earlier))
                earlier[k], earlier_ids[k] = text, f"page-{i:07d}"
        yield f"page-{i:07d}", kind, text


def write_corpus(out: Path, docs: int = 60_000, seed: int = 0, shards: int = 8, near_duplicates: float = 0.0) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("pages-*.jsonl"), out / "near_duplicates.json"]:
        old.unlink(missing_ok=True)
    log: dict = {}
    per_shard = -(-docs // shards)
    files = [open(out / f"pages-{k:05d}.jsonl", "w", encoding="utf-8") for k in range(shards)]
    counts: dict[str, int] = {}
    text_bytes = 0
    try:
        for i, (doc_id, kind, text) in enumerate(generate(docs, seed, near_duplicates, log)):
            files[i // per_shard].write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
            counts[kind] = counts.get(kind, 0) + 1
            text_bytes += len(text.encode("utf-8"))
    finally:
        for f in files:
            f.close()
    info = {"docs": docs, "seed": seed, "shards": shards, **({"near_duplicates": near_duplicates} if near_duplicates else {}),
            "text_bytes": text_bytes,
            "file_bytes": sum(p.stat().st_size for p in out.glob("pages-*.jsonl")), "kinds": dict(sorted(counts.items()))}
    (out / "corpus.json").write_text(json.dumps(info, indent=2) + "\n")
    if near_duplicates:
        (out / "near_duplicates.json").write_text(json.dumps(log, indent=0) + "\n")
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=60_000, help="pages to generate (the seed took 60,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shards", type=int, default=8, help="number of .jsonl files")
    ap.add_argument("--out", default="work/bench/corpus", help="output folder (work/ is git-ignored)")
    ap.add_argument("--near_duplicates", type=float, default=0.0,
                    help="share of pages that are near-copies of earlier pages, taken from the clean pages (0: none, "
                    "the corpus as before; the near-duplicate benchmark uses 0.05)")
    a = ap.parse_args(argv)
    if not 0 <= a.near_duplicates <= 1 - sum(share for _, share in SHARES):
        ap.error(f"--near_duplicates must be between 0 and {1 - sum(share for _, share in SHARES):.2f}")
    info = write_corpus(Path(a.out), a.docs, a.seed, a.shards, a.near_duplicates)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
