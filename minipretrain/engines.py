"""Where a stage's units of work run (run_units): in this process, in a pool of worker processes,
or in a Ray Data actor pool (ray_session). The output is the same on each: every unit writes its
own result, and the stage reads them back in corpus order.

A worker that cannot start (its language-ID model does not load) or that dies (killed, out of
memory, a crash inside fastText) stops the stage with one line: the pool is a
concurrent.futures.ProcessPoolExecutor, which reports a dead worker (BrokenProcessPool) where
multiprocessing.Pool would start a new one and wait forever for the lost unit, and a worker's
start-up error is kept and raised by its first unit rather than raised in the initializer, which
would print a traceback and leave the pool without workers. Units finished before stay finished.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import shutil
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

from minipretrain.settings import UserError

_worker = {}  # a worker process's context (run_units' setup), or the error its setup met


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


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    if hasattr(pool, "terminate_workers"):  # Python 3.14
        pool.terminate_workers()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()


# ----------------------------------------------------------------------------------------------
# Units of work, on either engine. A resumable stage cuts its input into units (a fixed slice of
# documents), and `run_units` runs `work(unit, context)` for each unit not finished yet: on the
# local engine in this process or in `num_proc` worker processes, on the Ray engine in a Ray Data
# actor pool (this machine's own Ray instance, or a cluster's). Each worker calls `setup(s)` once
# (the fastText model, the tokenizer) and keeps what it returns as the context of its units. The
# work function writes its unit's files itself (stages.write_unit) and returns a small summary.
# `work` and `setup` are module-level functions of this package, so a Ray worker on another machine
# imports them by name (the package travels to the cluster with the job: ray_session). Units and
# results are plain JSON data (strings, numbers, lists, dicts): the same on either engine.

ENGINES = ("local", "ray")


def run_units(units: list, work, setup, s, desc: str = "units") -> dict:
    """{index: work's result} for each (index, unit) in `units`, on s.engine. Stops at the first
    unit that fails (a UserError, one line) after stopping the others; finished units stay done."""
    from tqdm import tqdm

    results = {}
    if not units:
        return results
    with tqdm(total=len(units), desc=desc, unit="unit") as bar:
        if getattr(s, "engine", "local") == "ray":
            for index, result in _ray_units(units, work, setup, s):
                results[index] = result
                bar.update()
            return results
        if s.num_proc <= 1 or len(units) == 1:
            context = setup(s)
            for index, unit in units:
                results[index] = work(unit, context)
                bar.update()
            return results
        pool = ProcessPoolExecutor(min(s.num_proc, len(units)), mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_unit_worker, initargs=(setup, s))
        finished = False
        try:
            futures = {pool.submit(_run_unit, work, unit): index for index, unit in units}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
            finished = True
        except BrokenProcessPool:
            error = UserError(f"a worker process died (killed, out of memory, or crashed in a library); the {len(results)} "
                              "units finished are kept: run the same command again to continue (--num_proc 1 works in this process)")
            error.resumable = True  # not the input's fault: stage_output keeps the finished units
            raise error from None
        finally:
            if not finished:
                _stop_workers(pool)
            pool.shutdown(wait=finished, cancel_futures=not finished)
    return results


def _init_unit_worker(setup, s):
    exit_with_parent()
    try:
        _worker["context"] = setup(s)
    except Exception as e:  # kept for the first unit: raised in the initializer it would leave the pool without workers
        _worker["error"] = e if isinstance(e, UserError) else UserError(f"a worker could not start: {type(e).__name__}: {e}")


def _run_unit(work, unit):
    if "error" in _worker:
        raise _worker["error"]
    return work(unit, _worker["context"])


class _RayUnitWorker:
    """A Ray Data actor: setup once, then one unit a call. Units and results travel as JSON (they
    are plain data), and errors come back as rows ("error"), so the driver can raise the same one
    line the local engine does instead of Ray's wrapped traceback."""

    def __init__(self, work, setup, s):
        self.work, self.error, self.context = work, None, None
        try:
            self.context = setup(s)
        except Exception as e:
            self.error = str(e) if isinstance(e, UserError) else f"a Ray worker could not start: {type(e).__name__}: {e}"

    def __call__(self, batch):
        import json
        import traceback

        out = {"index": [], "result": [], "error": []}
        for index, unit in zip(batch["index"], batch["unit"]):
            result, error = None, self.error
            if error is None:
                try:
                    result = json.dumps(self.work(json.loads(unit), self.context))
                except UserError as e:
                    error = str(e)
                except Exception as e:  # a bug: its traceback, raised by the driver
                    error = "BUG " + "".join(traceback.format_exception(e))
            out["index"].append(int(index))
            out["result"].append(result or "")
            out["error"].append(error or "")
        return out


def _ray_units(units, work, setup, s):
    import json

    import ray.data

    with ray_session(s) as cpus:
        items = [{"index": index, "unit": json.dumps(unit)} for index, unit in units]
        actors = max(1, min(cpus, len(units)))
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _RayUnitWorker, fn_constructor_args=(work, setup, s), batch_size=1, num_cpus=1,
            compute=ray.data.ActorPoolStrategy(size=actors))
        for row in ds.iter_rows():
            if row["error"]:
                if row["error"].startswith("BUG "):
                    raise RuntimeError(f"a Ray worker failed on unit {row['index']}:\n{row['error'][4:]}")
                raise UserError(row["error"])
            yield row["index"], json.loads(row["result"])


def session(s):
    """The engine's session for a whole stage run: one Ray instance for all its steps on Ray
    (each run_units or shuffle inside it joins it), nothing on the local engine."""
    return ray_session(s) if getattr(s, "engine", "local") == "ray" else contextlib.nullcontext()


@contextlib.contextmanager
def ray_session(s):
    """Ray for one stage run: with s.ray_address empty, a Ray instance of this machine started for
    the run (s.num_proc CPUs, its files in a temporary folder) and shut down and removed after it;
    with 'auto' or 'ray://host:port', the running cluster joined and left. Yields the cluster's CPUs.
    The package travels with the job (runtime_env py_modules), so the workers of a cluster import
    the same filters; the libraries must be installed on every node (README: Ray cluster)."""
    import logging

    try:
        import ray
    except ImportError:
        raise UserError("setting engine 'ray': Ray is not installed (pip install 'ray[data]', see requirements.txt)") from None
    if ray.is_initialized():  # inside a stage's own session (session()): the same one
        yield int(ray.cluster_resources().get("CPU", 1))
        return
    import minipretrain
    import ray.data

    address = getattr(s, "ray_address", "")
    temp = None if address else tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit 107 bytes
    options = dict(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level=logging.WARNING,
                   runtime_env={"py_modules": [os.path.dirname(minipretrain.__file__)]})
    try:
        try:
            if address:
                ray.init(address=address, **options)
            else:
                ray.init(num_cpus=s.num_proc, _temp_dir=temp, **options)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"setting ray_address {address!r}: cannot start or join Ray ({' '.join(str(e).split())[:300]})") from None
        logging.getLogger("ray").setLevel(logging.ERROR)  # Ray Data's INFO lines per execution; errors still show
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        yield int(ray.cluster_resources().get("CPU", 1))
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
