"""benchmarks/bench_gpu.py on the CPU with a tiny shape, so that the GPU benchmark cannot rot: every
part must run and report plausible figures, and a failing or overlong part must be reported, not
end the run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_gpu  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "bench_gpu.py"
PARTS = ("device", "stage1", "stage2", "stage3", "stage4", "stage5", "greedy", "train", "compile")
TINY = ["--device", "cpu", "--base", "tiny", "--train_steps", "2", "--new_tokens", "4", "--prompts", "1", "--greedy_tokens", "8",
        "--layers", "2", "--hidden", "64", "--seq_len", "32", "--batch", "2", "--steps", "1", "--warmup", "1",
        "--compile_backend", "aot_eager"]  # fmt: skip  (inductor's C++ code generation takes a minute on 2 cores)


def bench(tmp_path, *args, timeout=300):
    out = tmp_path / "results.json"
    env = os.environ | {"OMP_NUM_THREADS": "1"}  # a tiny model gains nothing from threads, and they wait on a busy machine
    done = subprocess.run([sys.executable, str(BENCH), "--work_dir", str(tmp_path / "work"), "--output", str(out), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())["parts"], done.stdout


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return bench(tmp_path_factory.mktemp("bench_gpu"), *TINY)


def test_every_part_runs_and_is_in_the_table(tiny_run):
    parts, printed = tiny_run
    assert list(parts) and set(parts) == set(PARTS)
    for name, r in parts.items():
        assert r["status"] == "ok", (name, r["status"])
        assert r["peak_mb"] > 0 and r["peak_kind"] == "rss", name
    table = printed[printed.index("MFU meas.") :]
    for label in ("stage 3 model_preparation", "stage 4 model_training", "stage 5 inference_demo", "greedy: device vs CPU",
                  "train TinySolar, eager", "train TinySolar, compiled", "device: matmul peaks"):  # fmt: skip
        row = next(line for line in table.splitlines() if label in line)
        assert " ok " in row, row


def test_figures_are_plausible(tiny_run):
    parts, _ = tiny_run
    device = parts["device"]
    assert device["device"] == "cpu" and device["peak_gflops"]["fp32"] > 0 and device["peak_gflops"]["bf16"] > 0
    assert device["datasheet_bf16_tflops"] is None  # a CPU has no entry
    for stage in ("stage1", "stage2", "stage3", "stage4", "stage5"):
        assert parts[stage]["wall_s"] > 0, stage
    s4 = parts["stage4"]
    assert s4["device_used"] == "cpu" and s4["steps"] == 2 and s4["tokens_s"] > 0 and 0 < s4["mfu_measured"] < 1.5
    assert parts["stage5"]["generations"] == 4 and parts["stage5"]["tokens_s"] > 0  # 1 prompt x greedy/sampled x 2 models
    greedy = parts["greedy"]
    assert greedy["generated"] == [8, 8] and greedy["agree"] == 8  # the CPU against itself: all agree
    for name in ("train", "compile"):
        r = parts[name]
        assert r["compiled"] == (name == "compile") and r["steps_timed"] == 1 and r["layers"] == 2 and r["hidden"] == 64
        assert r["tokens_per_step"] == 64 and r["tokens_s"] > 0 and r["achieved_gflops"] > 0
        assert 0 < r["mfu_measured"] < 1.5, r
        assert r["mfu_datasheet"] is None  # no datasheet peak for a CPU
        assert r["attention"] == "sdpa" and r["gflops_per_token"] > 0


def test_a_failing_part_is_a_row_of_the_table_and_the_others_still_run(tmp_path):
    # stage 4 without stage 3's model: the stage's one-line error; compile with a backend that does not exist
    parts, printed = bench(tmp_path, *TINY, "--parts", "stage4,compile", "--compile_backend", "no_such_backend", timeout=120)
    assert parts["stage4"]["status"].startswith("FAILED: RuntimeError: model_training.py exited with status 1: error:")
    assert parts["compile"]["status"].startswith("FAILED:") and "no_such_backend" in parts["compile"]["status"]
    assert "stage4: FAILED" in printed and "compile: FAILED" in printed


def test_a_part_past_its_time_is_stopped_and_reported(tmp_path):
    parts, _ = bench(tmp_path, *TINY, "--parts", "stage1", "--part_timeout_s", "0.2", timeout=120)
    assert parts["stage1"]["status"] == "timed out after 0.2 s"


def test_datasheet_peaks_by_device_name():
    assert bench_gpu.datasheet_peak("NVIDIA H200") == 989
    assert bench_gpu.datasheet_peak("NVIDIA H100 80GB HBM3") == 989 and bench_gpu.datasheet_peak("NVIDIA H100 PCIe") == 756
    assert bench_gpu.datasheet_peak("NVIDIA A100-SXM4-80GB") == 312 and bench_gpu.datasheet_peak("NVIDIA L4") == 121
    assert bench_gpu.datasheet_peak("NVIDIA GH200 480GB") == 989 and bench_gpu.datasheet_peak("NVIDIA L40S") == 362
    assert bench_gpu.datasheet_peak("NVIDIA A10G") is None and bench_gpu.datasheet_peak("Tesla V100-SXM2-16GB") is None
