"""Stage 1 in units (issue 15): a run killed part-way continues to the same bytes as a run never
stopped, and the Ray engine (one node, and two nodes simulated on this machine) gives the local
engine's output. The corpus spreads its exact and near duplicates over many units, so a unit's
documents must be compared with those of finished units."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import data_preparation as dp
from minipretrain.settings import PROJECT_DIR

WORDS = ("harbour market morning boats lighthouse visitors smoked fish narrow basin wall catch sold restaurants shop "
         "river bridge village farmers bread cheese orchard apples winter summer station train ticket platform clock "
         "library books reading quiet garden roses bench evening lamps street children school teacher lesson").split()
FRENCH = ("le vieux port abrite ses bateaux de pêche dans un bassin étroit derrière la digue chaque matin marché ouvre "
          "à six heures et vers huit presque tout est vendu les visiteurs qui arrivent plus tard peuvent encore acheter "
          "du poisson fumé près phare").split()


def page(rng: random.Random, words=WORDS) -> str:
    return "\n".join(" ".join(rng.choice(words) for _ in range(25)).capitalize() + "." for _ in range(4))


def corpus(folder: Path, n: int = 1200) -> list[str]:
    """Three JSON-lines files (n pages in all) and one .txt: unique pages, exact copies and near
    copies (two words changed) of pages far earlier, French pages, pages too short to keep, pages
    whose paragraphs repeat."""
    rng, pages = random.Random(7), []
    for i in range(n):
        kind = rng.random()
        if kind < 0.1 and pages:
            text = rng.choice(pages)  # an exact copy of an earlier page
        elif kind < 0.2 and pages:
            words = rng.choice(pages).split(" ")
            for _ in range(2):
                words[rng.randrange(len(words))] = rng.choice(WORDS)
            text = " ".join(words)  # a near copy
        elif kind < 0.25:
            text = page(rng, FRENCH)
        elif kind < 0.28:
            text = f"too short {i}"
        elif kind < 0.31:
            repeated = page(rng)
            text = "\n\n".join([repeated, repeated, repeated, page(rng)])  # 2 of 4 paragraphs repeat
        else:
            text = page(rng)
        pages.append(text)
    folder.mkdir(parents=True, exist_ok=True)
    for part in range(3):
        chunk = pages[part * n // 3 : (part + 1) * n // 3]
        (folder / f"part-{part}.jsonl").write_text("".join(json.dumps({"text": t, "id": f"p{part}-{j}"}) + "\n" for j, t in enumerate(chunk)))
    (folder / "extra.txt").write_text(page(rng))
    return [str(folder)]


def command(sources: list[str], out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(PROJECT_DIR / "data_preparation.py"), "--web_sources", *sources, "--code_sources", "none",
            "--unit_documents", "100", "--rows_per_shard", "150", "--output_dir", str(out), *extra]


def digest(out: Path) -> dict:
    """What an output is: its files' bytes, the report, the manifest's fingerprint."""
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("cleaned-*.parquet"))}
    manifest = json.loads((out / "manifest.json").read_text())
    return {"files": files, "report": json.loads((out / "report.json").read_text()), "fingerprint": manifest["fingerprint"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The corpus and the output of a run never stopped (local engine, 2 processes)."""
    folder = tmp_path_factory.mktemp("resume")
    sources = corpus(folder / "corpus")
    out = folder / "reference"
    subprocess.run(command(sources, out, "--num_proc", "2"), check=True, capture_output=True)
    result = digest(out)
    filters = {f["name"]: f["removed"] for f in result["report"]["filters"]}
    assert len(result["files"]) > 2 and all(filters.values()), filters  # every filter removes something: the comparison means something
    return sources, result


def units_done(tmp_path: Path) -> int:
    return len(list(tmp_path.glob(".out.partial-*/units/*.json")))


@pytest.mark.parametrize("kill_after", [1, 6])
def test_a_killed_run_continues_to_the_same_bytes(tmp_path, reference, kill_after):
    sources, expected = reference
    out = tmp_path / "out"
    cmd = command(sources, out, "--num_proc", "1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while units_done(tmp_path) < kill_after and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = units_done(tmp_path)
    assert proc.returncode == -signal.SIGKILL and kill_after <= done < 13, "killed too late: the run had finished"
    assert not out.exists()
    r = subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert f"{done} finished before" in r.stdout  # it went on from the units it found, not from zero
    assert digest(out) == expected
    assert not list(tmp_path.glob(".out.*"))  # the partial folder went with the finished output


def test_a_crash_while_writing_keeps_the_units_and_the_next_run_clears_the_half_written_output(tmp_path, reference, monkeypatch):
    sources, expected = reference
    out = tmp_path / "out"
    argv = command(sources, out, "--num_proc", "1")[2:]

    def crash(*_):
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(dp, "funnel_chart", crash)  # after the shards are written
    with pytest.raises(RuntimeError):
        dp.main(argv)
    partial = list(tmp_path.glob(".out.partial-*"))
    assert not out.exists() and len(partial) == 1 and list(partial[0].glob("cleaned-*.parquet"))
    monkeypatch.undo()
    dp.main(argv)
    assert digest(out) == expected


def test_a_partial_run_with_other_settings_is_not_reused(tmp_path, reference):
    sources, expected = reference
    out = tmp_path / "out"
    cmd = command(sources, out, "--num_proc", "1")
    proc = subprocess.Popen(cmd[:-2] + ["--min_lines", "5", *cmd[-2:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while units_done(tmp_path) < 2 and proc.poll() is None:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    r = subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert "finished before" not in r.stdout
    assert digest(out) == expected and not list(tmp_path.glob(".out.*"))


def test_a_second_run_of_the_same_command_at_the_same_time_stops(tmp_path, reference):
    """The lock on the partial folder: held here as a running first run would hold it."""
    import fcntl

    sources, expected = reference
    out = tmp_path / "out"
    cmd = command(sources, out, "--num_proc", "1")
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while units_done(tmp_path) < 1 and first.poll() is None:
        time.sleep(0.005)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    (partial,) = tmp_path.glob(".out.partial-*")
    done = units_done(tmp_path)
    with open(partial / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        second = subprocess.run(cmd, capture_output=True, text=True)
    assert second.returncode == 1 and "another run of this stage with the same settings is writing it now" in second.stderr
    assert units_done(tmp_path) == done >= 1  # the second run left the first one's units alone
    subprocess.run(cmd, check=True, capture_output=True)  # the lock released: it goes on
    assert digest(out) == expected


def test_the_output_bytes_do_not_depend_on_the_unit_size(tmp_path, reference, monkeypatch):
    """Row groups of ROW_GROUP_ROWS documents whatever the units: a short group waits for the next
    unit's rows (small groups here, so units of 30 and of 1,000 cut the stream differently)."""
    sources, _ = reference
    monkeypatch.setattr(dp, "ROW_GROUP_ROWS", 40)
    outputs = []
    for size in ("30", "1000"):
        out = tmp_path / f"out{size}"
        argv = command(sources, out, "--num_proc", "1")[2:]
        argv[argv.index("--unit_documents") + 1] = size
        argv[argv.index("--rows_per_shard") + 1] = "10000"
        dp.main(argv)
        outputs.append(digest(out)["files"])
    assert outputs[0] == outputs[1]


# ---- the Ray engine -------------------------------------------------------------------------------

ray = pytest.importorskip("ray", reason="the Ray engine needs ray[data] (requirements.txt)")


def test_ray_engine_gives_the_local_engines_output(tmp_path, reference):
    sources, expected = reference
    out = tmp_path / "out"
    before = set(Path("/tmp").glob("ray-*"))
    subprocess.run(command(sources, out, "--engine", "ray", "--num_proc", "2"), check=True, capture_output=True, timeout=600)
    assert digest(out) == expected
    assert set(Path("/tmp").glob("ray-*")) <= before  # the run's Ray instance and its files are gone


def test_ray_engine_on_a_two_node_cluster(tmp_path, reference):
    """A head and a worker node on this machine (ray.cluster_utils.Cluster), one CPU each: the
    units and the shuffles spread over both nodes."""
    from ray.cluster_utils import Cluster

    sources, expected = reference
    out = tmp_path / "out"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        r = subprocess.run(command(sources, out, "--engine", "ray", "--ray_address", cluster.address),
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    finally:
        cluster.shutdown()
    assert digest(out) == expected
