"""Stage 1 on its two engines (issue 15): `--engine ray` against `--engine local`, resuming after a
kill, and the cost of small units, each stage run its own process, side by side in one run.

    python benchmarks/bench_engines.py compare --docs 60000 240000 --repeats 2   # Ray vs local, 60k and 4x
    python benchmarks/bench_engines.py compare --only ray ray-base --base work/base   # a change vs a copy of the old tree
    python benchmarks/bench_engines.py resume --engine local --repeats 2          # SIGKILL at 50% of the units, rerun
    python benchmarks/bench_engines.py units --unit_documents 250 1000 4000       # small vs large units, local engine

Corpus: benchmarks/make_corpus.py, seed 0 (made if missing): work/bench/corpus for 60,000 pages,
work/bench/corpus-240k for 240,000 (`--docs`), and so on. Every run is
`data_preparation.py --web_sources CORPUS --code_sources none --num_proc 2 --output_dir ...` with
`--engine local` or `--engine ray` (a Ray instance of num_proc CPUs started for the run and shut
down after it, as a user gets without --ray_address), run through this script's `--run-stage`,
which calls the stage's main() unchanged but wraps a few of its functions to time them:

- the driver's phases: planning (counting the records, cutting units), the units, de-duplication
  (duplicates_local / duplicates_ray), the write pass (write_kept: reading the units back in
  corpus order, writing cleaned-*.parquet), and on Ray the session's start (ray.init until the
  cluster answers) and end (ray.shutdown);
- each unit (clean_unit) in whichever worker or Ray actor runs it: start, end, CPU seconds (the
  worker's process_time), process id, documents read, and the time its .jsonl reader spent
  skipping the lines before its slice (from the call to its first document); each worker's setup
  (the fastText model, MinHash permutations) and its nice value (Ray starts workers at nice 15).

Start-up cost on Ray = the first unit's start minus ray.init's start (Ray's processes, the actor
pool, each actor's setup). Per-worker throughput = documents / busy seconds of each worker
process (its units' summed durations); "per CPU s" = documents / the units' CPU seconds, which a
loaded machine's scheduling moves less than wall time.

Memory: the largest sum of RSS over every process the run started (psutil, every 0.2 s): the
stage's process tree and Ray's own processes (GCS, raylet, its agents, workers, actors), found by
an environment variable each of them inherits from the stage's process (Ray's processes are
started with the driver's environment), so a process that left the tree still counts and other
jobs' processes never do. RSS counts shared pages (libraries, Ray's object store) once per
process, so multi-process figures overstate a little. CPU s: user + system summed over the same
processes (each one's last sample). The run's TMPDIR is a folder of its own (Ray's temporary files
go there), removed afterwards.

Output: the table printed, results.json in --work. The sha256 of the cleaned Parquet files is
compared between every run of a corpus (engines, repeats, resumed runs): the stage promises the
same bytes on either engine and after any interruption. Rounds are interleaved, each contender's
fastest run counts; the machine's 1-minute load average is printed beside each run.

- compare: contenders `local`, `ray`, and with --base PATH (a copy of another version of the
  project, e.g. `git archive COMMIT | tar -x -C work/base`) `local-base`, `ray-base`: the same
  stage run from that tree (its cwd and sys.path), for A/B figures of a change.
- resume: per round, an uninterrupted run, then a run SIGKILLed when --kill_at of its units have
  finished (counted in `.NAME.partial-*/units/*.json`), then the same command again, which
  continues from the finished units. Time lost = killed + resumed - uninterrupted. The outputs are
  compared byte for byte. Processes of the killed run still alive 30 s after the kill (Ray's, when
  the driver dies) are listed, then ended by id.
- units: the local engine with each --unit_documents; phases as above, plus the planning pass and
  the summed skip time (each unit of a .jsonl file reads, unparsed, the lines before its slice).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
MARK = "MINIPRETRAIN_BENCH_RUN"  # environment variable every process of a measured run inherits
TIMINGS = "MINIPRETRAIN_BENCH_TIMINGS"  # where the instrumented stage appends its timings (JSON lines)


# ----------------------------------------------------------------------------------------------
# Inside a measured run (--run-stage): the stage's main(), with its functions wrapped to time them


def _log(event: dict) -> None:
    path = os.environ.get(TIMINGS)
    if path:
        with open(path, "a") as f:  # one short line per write, appended: safe from several processes
            f.write(json.dumps({**event, "pid": os.getpid()}) + "\n")


_skip = {"s": 0.0}  # this worker's seconds spent in .jsonl readers before their first document


def _timed_read_jsonl(path, text_column, start=0, stop=None):
    from minipretrain import sources

    t = time.perf_counter()
    first = True
    for d in sources._bench_read_jsonl(path, text_column, start, stop):
        if first:
            _skip["s"] += time.perf_counter() - t
            first = False
        yield d


def timed_setup(s):
    """The stage's setup in a worker (or Ray actor), timed; also times .jsonl skipping there."""
    from minipretrain import cleaning, sources

    if not hasattr(sources, "_bench_read_jsonl"):
        sources._bench_read_jsonl = sources.read_jsonl
        sources.read_jsonl = _timed_read_jsonl
    t = time.time()
    context = cleaning.setup(s)
    _log({"event": "setup", "start": t, "end": time.time(), "nice": os.nice(0), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")})
    return context


def timed_clean_unit(unit, context):
    from minipretrain import cleaning

    skipped = _skip["s"]
    t, cpu = time.time(), time.process_time()
    result = cleaning.clean_unit(unit, context)
    _log({"event": "unit", "index": unit["index"], "start": t, "end": time.time(), "cpu_s": time.process_time() - cpu,
          "threads": len(os.listdir("/proc/self/task")), "documents": result["read"]["documents"], "skip_s": _skip["s"] - skipped})
    return result


def _timed(name, fn):
    def wrapper(*args, **kwargs):
        t = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            _log({"event": name, "start": t, "end": time.time()})

    return wrapper


def run_stage(tree: Path, argv: list[str]) -> None:
    sys.path.insert(0, str(tree))
    os.chdir(tree)
    _log({"event": "process", "start": time.time()})
    import data_preparation as dp
    from minipretrain import engines

    dp.clean_unit, dp.setup = timed_clean_unit, timed_setup
    for name in ("plan_units", "duplicates_local", "duplicates_ray", "write_kept"):
        setattr(dp, name, _timed(name, getattr(dp, name)))
    session = engines.session

    @contextlib.contextmanager
    def timed_session(s):
        t = time.time()
        with session(s) as cpus:
            _log({"event": "session_start", "start": t, "end": time.time()})
            try:
                yield cpus
            finally:
                t = time.time()
        _log({"event": "session_end", "start": t, "end": time.time()})

    dp.session = timed_session
    try:
        import ray

        ray.init = _timed("ray_init", ray.init)
    except ImportError:
        pass
    from minipretrain.settings import run_main

    run_main(dp.main, argv, interrupted="the finished units are kept beside the output folder")


# ----------------------------------------------------------------------------------------------
# Measuring a run from outside: wall time, peak RSS and CPU of every process it started


class Sampler:
    """Total RSS of the processes carrying `mark` in their environment, every `every` seconds."""

    def __init__(self, mark: str, every: float = 0.2):
        self.mark, self.every = mark, every
        self.peak, self.cpu, self.names, self.mine = 0, {}, {}, {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def is_mine(self, p) -> bool:
        key = (p.pid, p.info["create_time"])
        if key not in self.mine:
            try:
                self.mine[key] = p.environ().get(MARK) == self.mark
            except Exception:  # gone, or not ours to read
                self.mine[key] = False
        return self.mine[key]

    def sample(self) -> None:
        import psutil

        total = 0
        for p in psutil.process_iter(["create_time"]):
            if p.info["create_time"] is None or p.info["create_time"] < self.started - 1 or not self.is_mine(p):
                continue
            try:
                with p.oneshot():
                    total += p.memory_info().rss
                    t = p.cpu_times()
                    self.cpu[p.pid] = t.user + t.system
                    self.names.setdefault(p.pid, p.name())
            except Exception:
                pass
        self.peak = max(self.peak, total)

    def run(self) -> None:
        while not self.done.is_set():
            self.sample()
            time.sleep(self.every)

    def __enter__(self):
        self.started = time.time()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


def stage_command(tree: Path, corpus: Path, out: Path, engine: str, extra: list[str]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--run-stage", "--tree", str(tree), "--",
            "--web_sources", str(corpus), "--code_sources", "none", "--num_proc", "2",
            "--engine", engine, "--output_dir", str(out), *extra]


def run_measured(cmd: list[str], log: Path, kill_when=None) -> dict:
    """Run `cmd`, sampling its processes; with `kill_when` (a function returning True when it is
    time), SIGKILL the stage's process then and the processes it left behind."""
    import psutil

    mark = f"{os.getpid()}-{time.time_ns()}"
    tmp = Path(tempfile.mkdtemp(prefix="b15-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    timings = tmp / "timings.jsonl"
    env = {**os.environ, MARK: mark, TIMINGS: str(timings), "TMPDIR": str(tmp), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    load = os.getloadavg()[0]
    killed = False
    try:
        with open(log, "w") as f, Sampler(mark) as sampler:
            start = time.time()
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
            while proc.poll() is None:
                if kill_when is not None and not killed and kill_when():
                    proc.send_signal(signal.SIGKILL)
                    killed = time.time()
                time.sleep(0.1)
            wall = time.time() - start
            if killed:  # what the kill left running (Ray's processes, a worker), given 30 s to go, then ended by id
                def leftovers():
                    return [p for p in psutil.process_iter(["create_time", "name", "cmdline"])
                            if p.info["create_time"] and p.info["create_time"] >= start - 1 and sampler.is_mine(p)]

                deadline = time.time() + 30
                while leftovers() and time.time() < deadline:
                    time.sleep(1)
                left = []
                for p in leftovers():
                    left.append(f"{p.pid} {(p.info['cmdline'] or [p.info['name']])[0].rsplit('/', 1)[-1][:40]}")
                    with contextlib.suppress(psutil.Error):
                        p.kill()
        rc = proc.returncode
        if rc != 0 and not killed:
            sys.exit(f"error: {' '.join(cmd)} failed (exit {rc}); see {log}:\n" + log.read_text()[-3000:])
        events = [json.loads(line) for line in timings.read_text().splitlines()] if timings.is_file() else []
        log.with_suffix(".timings.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"wall_s": wall, "cpu_s": sum(sampler.cpu.values()), "peak_rss_mb": sampler.peak / 2**20, "load": load,
              "processes": len({pid for pid in sampler.names}), **phases(events, start)}
    if killed:
        result.update(killed_after_s=killed - start, left_running=left)
    return result


def phases(events: list[dict], start: float) -> dict:
    """The run's phases from the stage's timings, in seconds since the process started."""
    first = {}
    for e in events:
        first.setdefault(e["event"], e)
    units = [e for e in events if e["event"] == "unit"]
    out = {}
    for name in ("plan_units", "duplicates_local", "duplicates_ray", "write_kept", "ray_init", "session_start", "session_end"):
        if name in first:
            out[f"{name}_s"] = first[name]["end"] - first[name]["start"]
    if "duplicates_local_s" in out or "duplicates_ray_s" in out:
        out["dedup_s"] = out.pop("duplicates_local_s", None) or out.pop("duplicates_ray_s")
    if units:
        unit_start, unit_end = min(e["start"] for e in units), max(e["end"] for e in units)
        out["units_s"] = unit_end - unit_start  # first unit's start to last unit's end
        out["units_done"] = len(units)
        out["documents"] = sum(e["documents"] for e in units)
        out["skip_s"] = sum(e["skip_s"] for e in units)
        out["first_unit_at_s"] = unit_start - start
        if "ray_init" in first:
            out["startup_s"] = unit_start - first["ray_init"]["start"]  # ray.init to the first unit running
        workers = {}
        for e in units:
            w = workers.setdefault(e["pid"], {"units": 0, "documents": 0, "busy_s": 0.0, "cpu_s": 0.0, "threads": 0})
            w["units"] += 1
            w["documents"] += e["documents"]
            w["busy_s"] += e["end"] - e["start"]
            w["cpu_s"] += e["cpu_s"]
            w["threads"] = max(w["threads"], e["threads"])
        out["workers"] = list(workers.values())
        out["docs_per_s_per_worker"] = sum(w["documents"] for w in workers.values()) / sum(w["busy_s"] for w in workers.values())
        out["unit_s_mean"] = sum(e["end"] - e["start"] for e in units) / len(units)
        out["docs_per_cpu_s"] = out["documents"] / sum(e["cpu_s"] for e in units)  # per second of CPU the units got
    setups = [e for e in events if e["event"] == "setup"]
    if setups:
        out["setup_s_mean"] = sum(e["end"] - e["start"] for e in setups) / len(setups)
    if "process" in first:
        out["import_s"] = (first.get("plan_units", first["process"])["start"] - first["process"]["start"])
    return out


def cleaned_sha256(out: Path) -> str:
    """One sha256 over the cleaned-*.parquet files (names and bytes), in order."""
    h = hashlib.sha256()
    files = sorted(out.glob("cleaned-*.parquet"))
    if not files:
        return "no output"
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def corpus_for(docs: int) -> Path:
    name = "corpus" if docs == 60_000 else f"corpus-{docs // 1000}k"
    corpus = PROJECT_DIR / "work" / "bench" / name
    info_path = corpus / "corpus.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if info.get("docs") != docs or info.get("seed") != 0:
        sys.path.insert(0, str(BENCH_DIR))
        from make_corpus import write_corpus

        print(f"making the corpus: {docs} pages -> {corpus}", flush=True)
        write_corpus(corpus, docs, 0)
    return corpus


def show(name: str, r: int, m: dict) -> None:
    parts = [f"{m['wall_s']:.1f} s wall", f"{m['cpu_s']:.0f} s CPU", f"peak {m['peak_rss_mb']:.0f} MB"]
    for key, label in (("startup_s", "start-up"), ("plan_units_s", "plan"), ("units_s", "units"), ("dedup_s", "dedup"),
                       ("write_kept_s", "write"), ("session_end_s", "shutdown"), ("skip_s", "skipping")):
        if key in m:
            parts.append(f"{label} {m[key]:.1f}")
    if "docs_per_s_per_worker" in m:
        parts.append(f"{m['docs_per_s_per_worker']:.0f} docs/s/worker ({m['docs_per_cpu_s']:.0f} per CPU s)")
    print(f"  {name} run {r + 1}: " + ", ".join(parts) + f"; load {m['load']:.2f}", flush=True)


def measure_rounds(a, commands: dict) -> tuple[dict, dict, bool]:
    """Each contender (key -> (label, output folder, command)) run in turn, a.repeats rounds, from an
    empty output folder, its log beside it; (every run by key, the fastest by key, whether every
    run's cleaned Parquet had the same sha256)."""
    runs = {key: [] for key in commands}
    for r in range(a.repeats):
        for key, (label, out, command) in commands.items():
            shutil.rmtree(out, ignore_errors=True)
            m = run_measured(command, out.parent / f"{out.name}.log")
            m["sha256"] = cleaned_sha256(out)
            show(label, r, m)
            runs[key].append(m)
    best = {key: min(rs, key=lambda m: m["wall_s"]) for key, rs in runs.items()}
    return runs, best, len({m["sha256"] for rs in runs.values() for m in rs}) == 1


# ----------------------------------------------------------------------------------------------
# The three experiments


def compare(a, work: Path) -> dict:
    trees = {"": PROJECT_DIR, "-base": Path(a.base).resolve() if a.base else None}
    results = {}
    for docs in a.docs:
        corpus = corpus_for(docs)
        commands = {}
        for name in a.only:
            engine, suffix = name.split("-", 1)[0], name[len(name.split("-", 1)[0]):]
            if trees[suffix] is None:
                sys.exit(f"error: {name} needs --base")
            out = work / f"{name}-{docs // 1000}k"
            commands[name] = (f"{name} {docs // 1000}k", out, stage_command(trees[suffix], corpus, out, engine, ["--overwrite"]))
        runs, best, identical = measure_rounds(a, commands)
        print(f"\n{docs:,} pages: best of {a.repeats}; cleaned Parquet {'identical in every run' if identical else 'DIFFERS'}")
        print(f"{'contender':<12} {'wall s':>7} {'CPU s':>6} {'peak MB':>8} {'start-up':>8} {'plan':>5} {'units':>6} {'dedup':>6} "
              f"{'write':>6} {'docs/s/worker':>13} {'load':>5}")
        for name, m in best.items():
            print(f"{name:<12} {m['wall_s']:7.1f} {m['cpu_s']:6.0f} {m['peak_rss_mb']:8.0f} {m.get('startup_s', 0):8.1f} "
                  f"{m.get('plan_units_s', 0):5.1f} {m.get('units_s', 0):6.1f} {m.get('dedup_s', 0):6.1f} {m.get('write_kept_s', 0):6.1f} "
                  f"{m.get('docs_per_s_per_worker', 0):13.0f} {m['load']:5.2f}")
        for slow, fast in (("ray", "local"), ("ray-base", "local"), ("ray-base", "ray"), ("local-base", "local"), ("ray-base", "local-base")):
            if slow in best and fast in best:
                per_round = ", ".join(f"{x['wall_s'] / y['wall_s']:.2f}x" for x, y in zip(runs[slow], runs[fast]))
                print(f"  {slow} / {fast}: {best[slow]['wall_s'] / best[fast]['wall_s']:.2f}x wall "
                      f"(per round: {per_round})")
        results[docs] = {"runs": runs, "best": best, "identical": identical}
    return results


def resume(a, work: Path) -> dict:
    corpus = corpus_for(a.docs[0])
    rounds = []
    for r in range(a.repeats):
        out_full, out_kill = work / f"full-{a.engine}", work / f"killed-{a.engine}"
        for out in (out_full, out_kill):
            shutil.rmtree(out, ignore_errors=True)
            for p in out.parent.glob(f".{out.name}.partial-*"):
                shutil.rmtree(p)
        full = run_measured(stage_command(PROJECT_DIR, corpus, out_full, a.engine, []), work / "full.log")
        full["sha256"] = cleaned_sha256(out_full)
        show(f"uninterrupted ({a.engine})", r, full)
        total = full["units_done"]

        def half_done():
            return sum(1 for _ in out_kill.parent.glob(f".{out_kill.name}.partial-*/units/*.json")) >= a.kill_at * total

        killed = run_measured(stage_command(PROJECT_DIR, corpus, out_kill, a.engine, []), work / "killed.log", kill_when=half_done)
        done = sum(1 for _ in out_kill.parent.glob(f".{out_kill.name}.partial-*/units/*.json"))
        print(f"  killed run {r + 1}: SIGKILL after {killed['killed_after_s']:.1f} s, {done} of {total} units finished, "
              f"{killed['wall_s']:.1f} s wall; still running 30 s after the kill (then ended): {killed['left_running'] or 'none'}; "
              f"load {killed['load']:.2f}", flush=True)
        resumed = run_measured(stage_command(PROJECT_DIR, corpus, out_kill, a.engine, []), work / "resumed.log")
        resumed["sha256"] = cleaned_sha256(out_kill)
        resumed["units_before"] = done
        show("resumed", r, resumed)
        lost = killed["wall_s"] + resumed["wall_s"] - full["wall_s"]
        same = resumed["sha256"] == full["sha256"]
        print(f"  round {r + 1}: time lost {lost:.1f} s ({lost / full['wall_s']:.0%} of the uninterrupted run); "
              f"output {'byte-identical' if same else 'DIFFERENT'} (sha256 {resumed['sha256'][:16]})", flush=True)
        rounds.append({"uninterrupted": full, "killed": killed, "resumed": resumed, "units_finished_at_kill": done,
                       "lost_s": lost, "identical": same})
    return {"engine": a.engine, "docs": a.docs[0], "kill_at": a.kill_at, "rounds": rounds}


def units(a, work: Path) -> dict:
    corpus = corpus_for(a.docs[0])
    commands = {n: (f"unit_documents {n}", work / f"units-{n}",
                    stage_command(PROJECT_DIR, corpus, work / f"units-{n}", "local", ["--overwrite", "--unit_documents", str(n)]))
                for n in a.unit_documents}
    runs, best, identical = measure_rounds(a, commands)
    print(f"\nbest of {a.repeats}; cleaned Parquet {'identical in every run' if identical else 'DIFFERS'}")
    print(f"{'unit_documents':>14} {'units':>6} {'wall s':>7} {'CPU s':>6} {'plan s':>6} {'units s':>7} {'skipping s':>10} "
          f"{'unit s':>6} {'dedup s':>7} {'write s':>7} {'load':>5}")
    for n, m in best.items():
        print(f"{n:>14} {m['units_done']:>6} {m['wall_s']:7.1f} {m['cpu_s']:6.0f} {m['plan_units_s']:6.2f} {m['units_s']:7.1f} "
              f"{m['skip_s']:10.2f} {m['unit_s_mean']:6.2f} {m['dedup_s']:7.2f} {m['write_kept_s']:7.2f} {m['load']:5.2f}")
    return {"runs": runs, "best": best, "identical": identical}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--run-stage"]:  # one measured stage run, in this process
        split = argv.index("--")
        tree = Path(argv[argv.index("--tree") + 1])
        return run_stage(tree, argv[split + 1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", choices=["compare", "resume", "units"])
    ap.add_argument("--docs", type=int, nargs="+", default=[60_000], help="corpus sizes in pages (compare: each; others: the first)")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved rounds; each contender's fastest run counts")
    ap.add_argument("--only", nargs="+", default=["local", "ray"], choices=["local", "ray", "local-base", "ray-base"],
                    help="compare: the contenders")
    ap.add_argument("--base", help="compare: another version's project folder, run as local-base / ray-base")
    ap.add_argument("--engine", default="local", choices=["local", "ray"], help="resume: the engine")
    ap.add_argument("--kill_at", type=float, default=0.5, help="resume: SIGKILL when this share of the units has finished")
    ap.add_argument("--unit_documents", type=int, nargs="+", default=[250, 1000, 4000], help="units: the sizes")
    ap.add_argument("--work", default="work/bench/engines", help="outputs, logs and results.json")
    a = ap.parse_args(argv)
    work = (PROJECT_DIR / a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"{a.experiment}: {' '.join(argv)}; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}", flush=True)
    result = {"compare": compare, "resume": resume, "units": units}[a.experiment](a, work)
    path = work / f"results-{a.experiment}.json"
    path.write_text(json.dumps({"argv": argv, "result": result}, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
