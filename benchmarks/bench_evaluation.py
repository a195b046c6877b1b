"""The evaluation stage's wall time, split into its parts, and what bf16 does to its numbers.

    python benchmarks/bench_evaluation.py                                # the stage on its defaults, fp32 and bf16
    python benchmarks/bench_evaluation.py --variants fp32:16 bf16:16 bf16:32 --rounds 2
    python benchmarks/bench_evaluation.py --parts fidelity               # only fp32 against bf16, in this process

Needs the default run's inputs (stages 1-4: work/packed, work/models/smollm2-dus, work/runs/smollm2-dus).

Parts:

    stage     `python model_evaluation.py --overwrite` as a user runs it, once per variant
              (precision:batch_size), into work/bench/evaluation/<variant>/: the whole process's wall time
              and CPU time, the load average before it, and the stage's own split per model (results.json:
              load, perplexity, multiple choice); "start-up and the rest" is the wall time less the models'
              parts (Python and the imports, the items, the bootstrap, the chart, the files). Rounds are
              interleaved (each variant once per round), each variant's best round counts.
    imports   `python -c "import model_evaluation"`: the start-up alone.
    fidelity  for each model, in this process: every perplexity token's loss and every choice's
              log-likelihood in fp32 and in bf16; how far apart they are, what that does to perplexity,
              bits per byte, accuracy and acc_norm, and how many items change their answer; and the
              process CPU time of the perplexity and the items in each precision (`--threads 1`: the
              work on one core, which a loaded machine inflates far less than wall time).

The figures go into benchmarks/RESULTS.md by hand, with the machine (lscpu) and its load (uptime):
CPU time next to wall time says how much of the machine the stage got (2 cores: at most 2 s of CPU
time a second).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from minipretrain.settings import DEFAULT_MODEL_DIR, DEFAULT_RUN_DIR, PACKED_DIR, UserError, parse_settings, run_main  # noqa: E402


@dataclass
class BenchSettings:
    parts: list[str] = field(default_factory=lambda: ["imports", "stage", "fidelity"], metadata={"help": "imports, stage, fidelity."})
    variants: list[str] = field(default_factory=lambda: ["fp32:16", "bf16:16"],
                                metadata={"help": "precision:batch_size[:threads] of each stage run (threads: OMP_NUM_THREADS; default torch's)."})
    models: list[str] = field(default_factory=lambda: [DEFAULT_MODEL_DIR, DEFAULT_RUN_DIR], metadata={"help": "As model_evaluation.py --models."})
    packed_dir: str = field(default=PACKED_DIR, metadata={"help": "Stage 2's output."})
    items: int = field(default=0, metadata={"help": "--items for the stage (0: its default)."})
    rounds: int = field(default=1, metadata={"help": "Rounds over the variants, interleaved; the best counts."})
    threads: int = field(default=0, metadata={"help": "torch threads for the fidelity part (0: torch's default). With 1 its CPU "
                         "times are the work itself, however loaded the machine (2 threads spin at every op's barrier while "
                         "the other thread waits for a core)."})
    output: str = field(default="work/bench/evaluation/results.json", metadata={"help": "Where the figures go (JSON)."})


def load() -> float:
    return round(os.getloadavg()[0], 2)


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def within_document_correlation(result: dict, counts) -> float:
    """The correlation between two items of one document being answered right that the stage's two
    standard errors imply: their ratio squared, less the clustered estimator's g / (g - 1) and the
    sample sd's n / (n - 1), is the design effect 1 + (sum m_d^2 / n - 1) * rho
    (minipretrain.evaluation.se_at_half)."""
    import numpy as np

    m = np.asarray(counts, np.float64)
    n, g = m.sum(), len(m)
    deff = (result["acc_se_by_document"] / result["acc_se"]) ** 2 * (g - 1) / g * n / (n - 1)
    return round(float((deff - 1) / ((m**2).sum() / n - 1)), 4)


def run_stage(variant: str, s: BenchSettings) -> dict:
    precision, batch_size, *threads = variant.split(":")
    out = Path("work/bench/evaluation") / variant.replace(":", "-")
    env = {**os.environ, **({"OMP_NUM_THREADS": threads[0]} if threads else {})}
    command = [sys.executable, str(PROJECT_DIR / "model_evaluation.py"), "--overwrite", "--models", *s.models, "--packed_dir", s.packed_dir,
               "--output_dir", str(out), "--precision", precision, "--batch_size", batch_size]
    if s.items:
        command += ["--items", str(s.items)]
    before, cpu = load(), children_cpu()
    started = time.perf_counter()
    r = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if r.returncode != 0:
        raise UserError(f"model_evaluation.py failed for {variant}: {r.stderr.strip().splitlines()[-1:]}")
    results = json.loads((out / "results.json").read_text())
    models = [{"label": m["label"], **m["seconds"]} for m in results["models"]]
    items = [json.loads(line) for line in (out / "lm_eval_tasks/minipretrain_mc.jsonl").open()]
    counts = list(Counter(it["doc_id"] for it in items).values())
    return {"variant": variant, "wall_s": round(wall, 1), "cpu_s": round(children_cpu() - cpu, 1), "load_before": before, "load_after": load(),
            "models": models, "rest_s": round(wall - sum(m["total"] for m in models), 1), "items": results["multiple_choice"]["items"],
            "numbers": [{k: m["perplexity"][k] for k in ("perplexity", "bits_per_byte")}
                        | {k: m["multiple_choice"][k] for k in ("acc", "acc_se", "acc_se_by_document", "acc_norm", "acc_norm_se_by_document")}
                        | {"within_document_correlation": within_document_correlation(m["multiple_choice"], counts)}
                        for m in results["models"]],
            "standard_error_at_accuracy_0.5": results["multiple_choice"]["standard_error_at_accuracy_0.5"]}


def fidelity(s: BenchSettings) -> list[dict]:
    """fp32 against bf16 on the same blocks and items, model by model."""
    import numpy as np
    import torch

    import model_evaluation as me
    from minipretrain import evaluation as ev
    from minipretrain.stages import read_manifest
    from minipretrain.tokenization import document_boundaries

    settings = me.Settings()
    manifest = read_manifest(s.packed_dir, "data_packaging", hint="run data_packaging.py first")
    held_out = me.held_out_documents(s.packed_dir, manifest)
    items = ev.build_items([d for split in me.HELD_OUT for d in held_out.get(split, [])], s.items or settings.items, settings.context_chars,
                           settings.ending_chars, settings.seed)
    labels = np.array([it["label"] for it in items])
    chars = np.array([[len(c) for c in it["choices"]] for it in items], np.float64)
    rows = []
    for spec in s.models:
        path, label, _ = ev.resolve_model(spec)
        found = {}
        for precision in ("fp32", "bf16"):
            tokenizer, model = ev.load_model(path)
            ev.use_precision(model, precision)
            bos, eos, _ = document_boundaries(tokenizer)
            blocks, owners = ev.pack_documents(tokenizer, [t for _, t in held_out[settings.perplexity_split]], manifest["block_size"], bos, eos)
            started, cpu = time.perf_counter(), time.process_time()
            losses = ev.token_losses(model, blocks, settings.batch_size, settings.head_chunk, precision)
            cpu_perplexity = time.process_time() - cpu
            scores = ev.score_items(model, ev.encode_items(tokenizer, items), settings.batch_size, settings.head_chunk, precision)
            sums = ev.document_sums(losses, blocks, owners, ev.token_byte_lengths(tokenizer), len(held_out[settings.perplexity_split]))
            times = {"wall_s": round(time.perf_counter() - started, 1), "cpu_perplexity_s": round(cpu_perplexity, 1),
                     "cpu_items_s": round(time.process_time() - cpu - cpu_perplexity, 1), "load_after": load()}
            found[precision] = (losses, scores, sums, times)
            print(f"{label} {precision}: {times}", flush=True)
        (l32, s32, d32, t32), (l16, s16, d16, t16) = found["fp32"], found["bf16"]
        row = {"model": label, "threads": torch.get_num_threads(), "fp32": t32, "bf16": t16,
               "positions": {"perplexity": int(blocks.shape[0] * (blocks.shape[1] - 1)),  # what the model reads (no last tokens)
                             "items": sum(len(c) + sum(len(x) - 1 for x in cs) for c, cs in ev.encode_items(tokenizer, items))},
               "token_loss_abs_diff": {"max": round(float(np.abs(l16 - l32).max()), 4), "mean": round(float(np.abs(l16 - l32).mean()), 5)},
               "choice_loglik_abs_diff": {"max": round(float(np.abs(s16 - s32).max()), 4), "mean": round(float(np.abs(s16 - s32).mean()), 5)}}
        for name, sums in (("fp32", d32), ("bf16", d16)):
            loss = sums["nats"].sum() / sums["tokens"].sum()
            row[f"perplexity_{name}"] = round(float(np.exp(loss)), 3)
            row[f"bits_per_byte_{name}"] = round(float(sums["nats"].sum() / np.log(2) / sums["bytes"].sum()), 5)
        for metric, a, b in (("acc", s32, s16), ("acc_norm", s32 / chars, s16 / chars)):
            right32, right16 = a.argmax(1) == labels, b.argmax(1) == labels
            row[f"{metric}_fp32"], row[f"{metric}_bf16"] = round(float(right32.mean()), 5), round(float(right16.mean()), 5)
            row[f"{metric}_items_changed_answer"] = int((a.argmax(1) != b.argmax(1)).sum())
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv=None):
    s = parse_settings(BenchSettings, argv)
    for part in s.parts:
        if part not in ("imports", "stage", "fidelity"):
            raise UserError(f"setting parts: unknown part {part!r} (imports, stage, fidelity)")
    for variant in s.variants:
        precision, *numbers = variant.split(":")
        if precision not in ("fp32", "bf16") or not 1 <= len(numbers) <= 2 or not all(n.isdigit() for n in numbers):
            raise UserError(f"setting variants: {variant!r} is not precision:batch_size[:threads] (fp32:16, bf16:32, bf16:16:1)")
    report = {"machine": os.uname().nodename, "cpus": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "load_at_start": load()}
    Path(s.output).parent.mkdir(parents=True, exist_ok=True)

    def save():
        Path(s.output).write_text(json.dumps(report, indent=2) + "\n")

    if "imports" in s.parts:
        before, started = load(), time.perf_counter()
        subprocess.run([sys.executable, "-c", "import model_evaluation"], cwd=PROJECT_DIR, check=True)
        report["imports"] = {"wall_s": round(time.perf_counter() - started, 2), "load_before": before}
        print(f"imports: {report['imports']['wall_s']} s (load {before})", flush=True)
        save()
    if "stage" in s.parts:
        runs = []
        for round_ in range(s.rounds):
            for variant in s.variants:
                r = run_stage(variant, s) | {"round": round_}
                runs.append(r)
                parts = ", ".join(f"{m['label']}: load {m['load']} + perplexity {m['perplexity']} + items {m['multiple_choice']}" for m in r["models"])
                print(f"{variant} round {round_}: {r['wall_s']} s wall, {r['cpu_s']} s CPU, load {r['load_before']} -> {r['load_after']}; "
                      f"{parts}; start-up and the rest {r['rest_s']} s", flush=True)
                report["stage"] = runs
                save()
        print("\n| variant | wall s (best) | CPU s | load before | per model: load + perplexity + items (s) | start-up and rest s |")
        print("| --- | ---: | ---: | ---: | --- | ---: |")
        for variant in s.variants:
            best = min((r for r in runs if r["variant"] == variant), key=lambda r: r["wall_s"])
            split = "; ".join(f"{m['load']} + {m['perplexity']} + {m['multiple_choice']}" for m in best["models"])
            print(f"| {variant} | {best['wall_s']} | {best['cpu_s']} | {best['load_before']} | {split} | {best['rest_s']} |")
    if "fidelity" in s.parts:
        if s.threads:
            import torch

            torch.set_num_threads(s.threads)
        report["fidelity"] = fidelity(s)
        save()
    print(f"\nwrote {s.output}")


if __name__ == "__main__":
    run_main(main)
