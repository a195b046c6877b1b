"""Stage 2 in units of work (issue 15): a run killed with SIGKILL part-way and started again with the
same command continues from its finished units and ends with the bytes of an uninterrupted run;
the Ray engine, on a local Ray instance and on a two-node cluster simulated on this machine, gives
the local engine's bytes.

A killed run is the real script as a subprocess (num_proc 1: its units are tokenized in that
process), with a hook (HOOK) that stops it at an exact point; the test watches the units folder
(.out.partial-KEY/units) fill to that point's count of finished units, then kills the process
group. Inputs built in code: 150 documents in three cleaned files, units of 8 documents (19 units,
two of them across files), the tiny word-level tokenizer of test_bad_input."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_bad_input import WORDS, tiny_tokenizer
from test_crash_safety import HOOK_START
from test_data_packaging import write_cleaned

import data_packaging as dp
from minipretrain import engines, stages
from minipretrain.settings import PROJECT_DIR

DOCUMENTS, UNIT, PER_FILE = 150, 8, 60
UNITS = -(-DOCUMENTS // UNIT)  # 19


def documents():
    """Word-level documents of 3 to 40 words, no two alike."""
    return [{"text": " ".join(WORDS[(7 * i + 3 * k + k * k) % len(WORDS)] for k in range(3 + (5 * i) % 38)),
             "source": "web", "doc_id": f"doc-{i:04d}"} for i in range(DOCUMENTS)]  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    texts = [d["text"] for d in documents()]
    assert len(set(texts)) == DOCUMENTS
    cleaned = write_cleaned(folder / "cleaned", documents(), per_file=PER_FILE)  # 60 + 60 + 30: units 7 and 14 cross files
    tiny_tokenizer().save_pretrained(folder / "tok")
    return cleaned, folder / "tok"


def args(inputs, out: Path, *extra: str) -> list[str]:
    cleaned, tok = inputs
    return ["--input_dir", str(cleaned), "--output_dir", str(out), "--tokenizer", str(tok), "--block_size", "16",
            "--validation_fraction", "0.1", "--min_validation_documents", "4", "--eval_documents", "10",
            "--batch_size", "7", "--rows_per_shard", "30", "--row_group_rows", "9", "--unit_documents", str(UNIT), *extra]  # fmt: skip


def output_of(out: Path) -> dict:
    """The sha256 of every file of an output (from its manifest, checked against the files) and its fingerprint."""
    manifest = json.loads((out / stages.MANIFEST).read_text())
    files = {p.relative_to(out).as_posix(): stages.file_sha256(p) for p in out.rglob("*") if p.is_file() and p.name != stages.MANIFEST}
    assert files == {name: f["sha256"] for name, f in manifest["files"].items()}
    return {"files": files, "fingerprint": manifest["fingerprint"]}


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    """An uninterrupted run in this process, on the local engine."""
    out = tmp_path_factory.mktemp("reference") / "out"
    dp.main(args(inputs, out, "--num_proc", "1"))
    result = output_of(out)
    assert {"train/packed-00001.parquet", "eval/packed-00000.parquet", "documents/eval.parquet"} <= set(result["files"])
    # The held-out documents are written in the batches of batch_size documents of each file, one
    # row group each (empty ones too), as the stage wrote them before it had units: the same bytes.
    batches = [-(-n // 7) for n in (PER_FILE, PER_FILE, DOCUMENTS - 2 * PER_FILE)]
    for split in ("validation", "eval"):
        assert pq.ParquetFile(out / "documents" / f"{split}.parquet").metadata.num_row_groups == sum(batches)
    return result


def test_units_do_not_change_the_output(inputs, reference, tmp_path):
    """One unit of every document, or units of 3 (units start inside batches and files): the same
    bytes, and the same fingerprint (unit_documents changes how, not what)."""
    for unit in ("1000", "3"):
        dp.main([*args(inputs, tmp_path / unit, "--num_proc", "1"), "--unit_documents", unit])
        assert output_of(tmp_path / unit) == reference, unit


# ----------------------------------------------------------------------------------------------
# Killed and continued

HOOK = HOOK_START + r"""
from minipretrain import packing


def done(units):
    return len(list(units.glob("*.json")))


kind, _, count = point.partition(":")
if kind in ("units", "mid_unit"):  # count finished units, then: stop / stop while writing the next one's summary
    write_unit = packing.write_unit
    def hooked(units, index, table, summary):
        if kind == "units" and done(units) == int(count):
            pause()
        if kind == "mid_unit" and done(units) == int(count):
            text = Path.write_text
            def stop_after_part(self, *args, **kwargs):
                text(self, *args, **kwargs)
                if self.name.endswith(".json.part"):
                    pause()  # its Parquet file written, its summary not yet renamed into place
            Path.write_text = stop_after_part
        write_unit(units, index, table, summary)
        if kind == "units" and done(units) == int(count):
            pause()
    packing.write_unit = hooked
elif kind == "packing":  # every unit finished, the first row group of blocks written
    write = packing.BlockWriter._write
    def hooked(self, n):
        write(self, n)
        pause()
    packing.BlockWriter._write = hooked
runpy.run_path(script, run_name="__main__")
"""

# point -> finished units when killed
POINTS = {"units:0": 0, "units:3": 3, "mid_unit:5": 5, f"units:{UNITS}": UNITS, "packing": UNITS}


def units_folder(out: Path) -> Path | None:
    found = list(out.parent.glob(f".{out.name}.partial-*/units"))
    return found[0] if found else None


def finished_units(out: Path) -> int:
    folder = units_folder(out)
    return len(list(folder.glob("*.json"))) if folder else -1


def test_killed_runs_continue_to_the_same_bytes(inputs, reference, tmp_path, capsys):
    procs = {}
    for i, point in enumerate(POINTS):
        out = tmp_path / f"p{i}" / "out"
        out.parent.mkdir()
        procs[point] = (out, subprocess.Popen(
            [sys.executable, "-c", HOOK, point, str(out.parent / "paused"), "data_packaging.py", *args(inputs, out, "--num_proc", "1")],
            cwd=PROJECT_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True))  # fmt: skip
    try:
        for point, (out, proc) in procs.items():
            # The kill: when the units folder holds the point's count of finished units and the run stands at the point.
            deadline = time.monotonic() + 120
            while not (finished_units(out) == POINTS[point] and (out.parent / "paused").exists()):
                assert proc.poll() is None, f"{point}: ended (exit {proc.returncode}) before it was killed:\n{proc.stderr.read()}"
                assert time.monotonic() < deadline, f"{point}: never got there ({finished_units(out)} units finished)"
                time.sleep(0.02)
            os.killpg(proc.pid, signal.SIGKILL)
            assert proc.wait() == -signal.SIGKILL
    finally:
        for _, proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    for point, (out, _) in procs.items():
        finished = POINTS[point]
        assert not out.exists() and finished_units(out) == finished, point
        if point.startswith("mid_unit"):  # the unit being written when killed: its Parquet file, no summary
            assert (units_folder(out) / f"{finished:06d}.parquet").is_file() and not (units_folder(out) / f"{finished:06d}.json").exists()
        capsys.readouterr()
        dp.main(args(inputs, out, "--num_proc", "1"))  # the same command again
        printed = capsys.readouterr().out
        left = "none left to tokenize" if finished == UNITS else "tokenized locally (in this process)"
        assert f"{UNITS} units of {UNIT} documents ({finished} finished before), {left}" in printed, f"{point}:\n{printed}"
        if finished:
            assert f"resuming a run that stopped: {finished} finished units kept" in printed, point
        assert output_of(out) == reference, point
        assert list(out.parent.glob(".out.*")) == [], point  # the partial folder became the output


def test_a_finished_unit_is_not_tokenized_again(inputs, reference, tmp_path, monkeypatch):
    """Continued with other num_proc (a setting of how, not what): the same partial folder, only
    the units not finished are tokenized, in worker processes, and the output is the same."""
    out = tmp_path / "out"
    calls, tokenize_unit = [], dp.tokenize_unit

    def fail_after_4(unit, tokenizer):
        if len(calls) == 4:
            raise KeyboardInterrupt  # Ctrl-C after 4 units
        calls.append(unit["index"])
        return tokenize_unit(unit, tokenizer)

    monkeypatch.setattr(dp, "tokenize_unit", fail_after_4)
    with pytest.raises(KeyboardInterrupt):
        dp.main(args(inputs, out, "--num_proc", "1"))
    monkeypatch.undo()
    assert calls == [0, 1, 2, 3] and finished_units(out) == 4
    kept = {p.name: p.stat().st_mtime_ns for p in units_folder(out).iterdir()}
    seen = []
    real_run_units = dp.run_units

    def spy(units, *rest, **kwargs):
        seen.extend(i for i, _ in units)
        results = real_run_units(units, *rest, **kwargs)
        assert {p.name: p.stat().st_mtime_ns for p in units_folder(out).iterdir() if p.name in kept} == kept  # not rewritten
        return results

    monkeypatch.setattr(dp, "run_units", spy)
    dp.main(args(inputs, out, "--num_proc", "2"))
    assert seen == list(range(4, UNITS))
    assert output_of(out) == reference


# ----------------------------------------------------------------------------------------------
# The Ray engine

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed (pip install 'ray[data]', requirements.txt): the Ray engine is not tested")


@pytest.fixture
def ray_workers(monkeypatch):
    """The worker ("host:pid") of each unit that went through the Ray engine (engines._ray_units)."""
    workers, ray_units = [], engines._ray_units

    def spy(*args, **kwargs):
        for index, result in ray_units(*args, **kwargs):
            workers.append(result["worker"])
            yield index, result

    monkeypatch.setattr(engines, "_ray_units", spy)
    return workers


@needs_ray
def test_ray_engine_on_a_local_instance_gives_the_local_output(inputs, reference, tmp_path, capsys, ray_workers):
    import ray

    out = tmp_path / "out"
    dp.main(args(inputs, out, "--engine", "ray", "--num_proc", "2"))
    assert "tokenized on Ray (a Ray instance of this machine, 2 CPUs)" in capsys.readouterr().out
    assert len(ray_workers) == UNITS and str(os.getpid()) not in {w.split(":")[1] for w in ray_workers}
    assert output_of(out) == reference
    assert not ray.is_initialized()


@needs_ray
def test_ray_engine_on_a_two_node_cluster_gives_the_local_output(inputs, reference, tmp_path, capsys, ray_workers):
    """A head and a worker node of one CPU each on this machine (ray.cluster_utils.Cluster), joined
    with --ray_address: one actor on each node."""
    import tempfile

    import ray
    from ray._common.utils import reset_ray_address
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit 107 bytes
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "temp_dir": temp, "include_dashboard": False})
        cluster.add_node(num_cpus=1, temp_dir=temp)
        cluster.wait_for_nodes()
        out = tmp_path / "out"
        dp.main(args(inputs, out, "--engine", "ray", "--ray_address", cluster.address))
        assert f"tokenized on Ray (the cluster at {cluster.address})" in capsys.readouterr().out
        assert output_of(out) == reference
        assert len(ray_workers) == UNITS and len(set(ray_workers)) == 2, "one actor on each node (a CPU each)"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
            reset_ray_address()  # the head node wrote its address to /tmp/ray/ray_current_cluster
        shutil.rmtree(temp, ignore_errors=True)
