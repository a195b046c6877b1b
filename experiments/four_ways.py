"""The seed's question, measured: which way to prepare the model? (python3 run.py experiment)

    python3 run.py experiment                    # the four ways, 30 steps each, on the default data
    python3 run.py experiment --max_steps 300    # longer, for people with time

The seed prepared its base four ways (random init, load, down-scale, up-scale) and "selected the
4th" without measuring. This runs the stages as a user would, once per strategy, all on the default
packed data (stages 1 and 2 run first on their defaults; they skip when up to date):

1. model_preparation.py --strategy S: the default base (SmolLM2-135M) prepared the four ways;
2. model_training.py: each trained for the same steps on the same blocks with the same seed,
   validating on the same 32 blocks every max_steps/3 steps;
3. model_evaluation.py: the eight models (each prepared and trained) on the same held-out data:
   perplexity and bits per byte with 95% intervals, multiple-choice accuracy with standard errors,
   and each model's difference from the base as it is ("load", before training), paired.

Output (work/experiments/four-ways/): models/S/, runs/S/, evaluation/ (the stages' own outputs),
results.md (the table), losses.png (the four training and validation loss curves), results.json.
Every stage skips an up-to-date output, so running it again after a stop continues where it was.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STRATEGIES = ("random", "load", "downscale", "upscale")


def run(script: str, *args) -> float:
    """Run a stage as a user would; its wall time in seconds. A failure stops the experiment."""
    print(f"\n=== {script} {' '.join(map(str, args))}", flush=True)
    started = time.perf_counter()
    code = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=os.getcwd()).returncode
    if code != 0:
        sys.exit(f"error: {script} failed (exit {code}); the experiment stops (run it again to continue)")
    return round(time.perf_counter() - started, 1)


def loss_curves(run_dir: Path) -> tuple[list, list]:
    """(training [(step, loss)], validation [(step, loss)]) of a run folder."""
    with open(run_dir / "loss.csv", newline="") as f:
        train = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]
    history = json.loads((run_dir / "eval.json").read_text())["validation"]["history"]
    return train, [(v["step"], v["loss"]) for v in history]


def plot(curves: dict, path: Path, steps: int, base: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = dict(zip(STRATEGIES, ("tab:grey", "tab:blue", "tab:orange", "tab:green")))
    for ax, shown in zip(axes, (list(curves), [s for s in curves if s != "random"])):
        for s in shown:
            train, valid = curves[s]
            ax.plot(*zip(*train), "-", color=colors[s], label=f"{s}: training")
            ax.plot(*zip(*valid), "o--", color=colors[s], label=f"{s}: validation", alpha=0.8)
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
    axes[0].set_title("all four (random weights start near ln(vocabulary size))")
    axes[1].set_title("without random")
    axes[1].legend(fontsize=8, ncol=2)
    fig.suptitle(f"{base} prepared four ways, {steps} steps of 2 x 32 tokens each (training: mean of 3 steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(rows: list[dict]) -> str:
    lines = ["| strategy | layers | parameters | model | perplexity [95% CI] | bits/byte [95% CI] | accuracy ± SE | acc_norm ± SE "
             "| minus the base, paired: bits/byte [95% CI]; accuracy ± SE | wall time |",
             "| --- | ---: | ---: | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        p, c = r["perplexity"], r["multiple_choice"]
        if "versus_first" in r:
            b, m = r["versus_first"]["bits_per_byte"], r["versus_first"]["multiple_choice"]
            versus = (f"{b['bits_per_byte']:+.3f} [{b['ci95'][0]:+.3f}, {b['ci95'][1]:+.3f}]; "
                      f"{m['acc_minus_reference']:+.3f} ± {m['acc_minus_reference_se_by_document']:.3f}")
        else:
            versus = "(the base: the first model evaluated)"
        lines.append(
            f"| {r['strategy']} | {r['layers']} | {r['parameters'] / 1e6:.1f}M | {r['stage']} | {p['perplexity']:,.1f} "
            f"[{p['perplexity_ci95'][0]:,.1f}, {p['perplexity_ci95'][1]:,.1f}] | {p['bits_per_byte']:.3f} [{p['bits_per_byte_ci95'][0]:.3f}, "
            f"{p['bits_per_byte_ci95'][1]:.3f}] | {c['acc']:.3f} ± {c['acc_se_by_document']:.3f} | {c['acc_norm']:.3f} ± "
            f"{c['acc_norm_se_by_document']:.3f} | {versus} | {r['wall']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python3 run.py experiment", description=__doc__.split("\n\n")[0])
    parser.add_argument("--max_steps", type=int, default=30, help="Training steps of each strategy (30, the default run's).")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--output_dir", default="work/experiments/four-ways")
    parser.add_argument("--packed_dir", default="work/packed", help="Stage 2's output (made on the defaults when it is the default).")
    parser.add_argument("--base", default="", help="Stage 3's --base (default: its own, SmolLM2-135M); its tokenizer must be the packed data's.")
    options = parser.parse_args()
    if options.max_steps < 1:
        parser.error("--max_steps must be at least 1")
    out = Path(options.output_dir)
    started = time.perf_counter()
    walls = {}
    if options.packed_dir == "work/packed":
        walls["data"] = run("data_preparation.py") + run("data_packaging.py")
    for s in options.strategies:
        base = ["--base", options.base] if options.base else []
        walls[s] = {"prepare": run("model_preparation.py", "--strategy", s, "--output_dir", out / "models" / s,
                                   "--packed_dir", options.packed_dir, "--eval_blocks", 0, *base)}
        walls[s]["train"] = run("model_training.py", "--model_dir", out / "models" / s, "--output_dir", out / "runs" / s,
                                "--packed_dir", options.packed_dir, "--max_steps", options.max_steps,
                                "--eval_steps", max(1, options.max_steps // 3))
    # The base as it is ("load", before training) goes first: stage 5 compares every model with its first
    # one, paired on the same documents and items, so each row gets its difference from the base.
    order = [(s, kind) for s in options.strategies for kind in ("models", "runs")]
    order.sort(key=lambda p: p != ("load", "models"))
    models = [out / kind / s for s, kind in order]
    labels = [f"{s} {'prepared' if kind == 'models' else 'trained'}" for s, kind in order]
    evaluate_wall = run("model_evaluation.py", "--models", *models, "--labels", *labels, "--packed_dir", options.packed_dir,
                        "--output_dir", out / "evaluation")

    results = json.loads((out / "evaluation/results.json").read_text())
    rows = []
    for (s, kind), r in sorted(zip(order, results["models"]), key=lambda p: (options.strategies.index(p[0][0]), p[0][1])):
        trained = kind == "runs"
        wall = f"train {walls[s]['train']:.0f} s" if trained else f"prepare {walls[s]['prepare']:.0f} s"
        rows.append(r | {"strategy": s, "stage": f"after {options.max_steps} steps" if trained else "before training",
                         "wall": f"{wall}, evaluate {r['seconds']['total']:.0f} s"})
    curves = {s: loss_curves(out / "runs" / s) for s in options.strategies}
    plot(curves, out / "losses.png", options.max_steps, Path(options.base).name if options.base else "SmolLM2-135M")
    text = table(rows)
    (out / "results.md").write_text(text + "\n", encoding="utf-8")
    total = round(time.perf_counter() - started, 1)
    summary = {"max_steps": options.max_steps, "strategies": options.strategies, "rows": rows, "wall_s": walls | {"evaluate": evaluate_wall, "total": total},
               "loss_curves": curves, "evaluation": {k: v for k, v in results.items() if k != "models"}}
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"\n{text}\n\nperplexity: {results['perplexity']['interval']}; accuracy: {results['multiple_choice']['items']} items, "
          f"SE clustered by document\nwall time: {total:.0f} s in all ({walls.get('data', 0):.0f} s for stages 1-2, "
          f"{evaluate_wall:.0f} s for the evaluation)\nwrote {out}/results.md, losses.png, results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
