"""Where stage 1's filters run: in this process, or in a pool of worker processes. The output is the
same for any number of processes: batches come back in input order.
"""

from __future__ import annotations

import multiprocessing
from collections import deque

from minipretrain.dedup import text_digest
from minipretrain.filters import (
    language_filter,
    language_model_path,
    paragraph_length_filter,
    repetition_filter,
)

# Worker side: judge a batch of documents with filters 1, 2 and 4. De-duplication needs the whole
# corpus's history, so the main process hashes every text before sending it: a text seen before is
# not judged again (it shares the first copy's fate: removed by filter 1 or 2 like it, or else a
# duplicate), which saves a fastText call per copy.

_worker = {}


def _init_worker(s):
    import fasttext

    _worker["settings"] = s
    _worker["model"] = fasttext.load_model(str(language_model_path(s.language_model)))


def judge_batch(batch: list[tuple[str | None, str]]) -> list[tuple]:
    """[(text, source)] -> [(step that removed it or None, reason)] for filters 1, 2, 4.
    A text of None is a copy of one judged before: not judged again ("copy")."""
    s, model = _worker["settings"], _worker["model"]
    verdicts = []
    for text, source in batch:
        if text is None:
            verdicts.append(("copy", None))
            continue
        ok = paragraph_length_filter(text, s.min_lines, s.min_longest_line_chars)
        if ok is not True:
            verdicts.append(("paragraph_length", ok[1]))
            continue
        if source == "web":
            ok = repetition_filter(text, s.max_dup_paragraph_frac, s.max_dup_char_frac)
            if ok is not True:
                verdicts.append(("repetition", ok[1]))
                continue
            ok = language_filter(model, text, s.language, s.min_language_score)
        verdicts.append((None, None) if ok is True else ("language", ok[1]))
    return verdicts


def judged(batches, s):
    """Yield (batch, verdicts) in input order, with at most 2 batches per worker in flight.
    Each document gets its text's digest; a text seen before is not sent to be judged again."""
    sent: set[bytes] = set()

    def to_judge(batch):
        items = []
        for d in batch:
            d["digest"] = digest = text_digest(d["text"])
            items.append((None if digest in sent else d["text"], d["source"]))
            sent.add(digest)
        return items

    if s.num_proc <= 1:
        _init_worker(s)
        for batch in batches:
            yield batch, judge_batch(to_judge(batch))
        return
    with multiprocessing.get_context("spawn").Pool(s.num_proc, _init_worker, (s,)) as pool:
        pending = deque()
        for batch in batches:
            pending.append((batch, pool.apply_async(judge_batch, (to_judge(batch),))))
            if len(pending) >= 2 * s.num_proc:
                batch, result = pending.popleft()
                yield batch, result.get()
        while pending:
            batch, result = pending.popleft()
            yield batch, result.get()
