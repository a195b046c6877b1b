"""Where stage 1's filters run: in this process, or in a pool of worker processes. The output is the
same for any number of processes: batches come back in input order.

A worker that cannot start (its language-ID model does not load) or that dies (killed, out of
memory, a crash inside fastText) stops the stage with one line: the pool is a
concurrent.futures.ProcessPoolExecutor, which reports a dead worker (BrokenProcessPool) where
multiprocessing.Pool would start a new one and wait forever for the lost batch, and a worker's
start-up error is kept and raised by its first batch rather than raised in the initializer, which
would print a traceback and leave the pool without workers.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import threading
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from minipretrain.dedup import text_digest
from minipretrain.filters import (
    language_filter,
    language_model_path,
    paragraph_length_filter,
    repetition_filter,
)
from minipretrain.modelfiles import check_fasttext_model
from minipretrain.settings import UserError

# Worker side: judge a batch of documents with filters 1, 2 and 4. De-duplication needs the whole
# corpus's history, so the main process hashes every text before sending it: a text seen before is
# not judged again (it shares the first copy's fate: removed by filter 1 or 2 like it, or else a
# duplicate), which saves a fastText call per copy.

_worker = {}


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


def _init_worker(s):
    exit_with_parent()
    _worker["settings"] = s
    try:
        _worker["model"] = load_language_model(s)
    except Exception as e:  # kept for the first batch: see the module's docstring
        _worker["error"] = e if isinstance(e, UserError) else UserError(f"a filter worker could not start: {type(e).__name__}: {e}")


def exit_with_parent() -> None:
    """End this worker when the main process is gone (SIGKILL, a crash): a ProcessPoolExecutor
    worker waiting for its next batch would otherwise wait forever, an orphan."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch():
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def judge_batch(batch: list[tuple[str | None, str]]) -> list[tuple]:
    """[(text, source)] -> [(step that removed it or None, reason)] for filters 1, 2, 4.
    A text of None is a copy of one judged before: not judged again ("copy")."""
    if "error" in _worker:
        raise _worker["error"]
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
        _worker.pop("error", None)
        _worker["settings"], _worker["model"] = s, load_language_model(s)
        for batch in batches:
            yield batch, judge_batch(to_judge(batch))
        return
    check_fasttext_model(language_model_path(s.language_model), "classifier")  # before any worker starts
    pool = ProcessPoolExecutor(s.num_proc, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(s,))
    finished = False
    try:
        pending = deque()
        for batch in batches:
            pending.append((batch, pool.submit(judge_batch, to_judge(batch))))
            if len(pending) >= 2 * s.num_proc:
                batch, result = pending.popleft()
                yield batch, result.result()
        while pending:
            batch, result = pending.popleft()
            yield batch, result.result()
        finished = True
    except BrokenProcessPool:
        raise UserError(
            f"a filter worker process died (killed, out of memory, or crashed in fastText reading {s.language_model}); "
            "nothing was written (--num_proc 1 runs the filters in this process)"
        ) from None
    finally:
        if not finished:  # an error, or the reader stopped early: no waiting for the batches in flight
            _stop_workers(pool)
        pool.shutdown(wait=finished, cancel_futures=not finished)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    if hasattr(pool, "terminate_workers"):  # Python 3.14
        pool.terminate_workers()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()
