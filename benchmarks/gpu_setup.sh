#!/usr/bin/env bash
# One command on a GPU machine: a virtual environment with the CUDA build of torch 2.13.0 and the
# project's requirements, then the GPU benchmark (benchmarks/bench_gpu.py) with any arguments given.
#
#   bash benchmarks/gpu_setup.sh                                   # .venv, then bench_gpu.py on its defaults
#   bash benchmarks/gpu_setup.sh --parts device,train,compile      # arguments go to bench_gpu.py
#
# Environment variables:
#   PYTHON        the Python that makes the venv (default python3; >= 3.10)
#   VENV          the venv's folder (default .venv, the one the README's commands use)
#   TORCH_INDEX   where the CUDA build comes from (default the PyTorch index for CUDA 13.0,
#                 https://download.pytorch.org/whl/cu130; PyPI's Linux wheel of torch 2.13.0 is that
#                 build too; an older driver may need another, e.g. .../whl/cu126)
#   SYSTEM_TORCH  1: keep the CUDA torch that PYTHON already has (a machine image's) instead of
#                 installing one: the venv sees PYTHON's packages and gets the other requirements
#   WHEELS        a folder of wheels, for a machine without internet: pip installs from it alone
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cu130}
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check --quiet)
if [ -n "${WHEELS:-}" ]; then pip+=(--no-index --find-links "$WHEELS"); fi

if [ "${SYSTEM_TORCH:-0}" = 1 ]; then
    "$PYTHON" -m venv --system-site-packages "$VENV"
    grep -v '^torch==' requirements.txt > "$VENV/requirements-without-torch.txt"
    "${pip[@]}" -r "$VENV/requirements-without-torch.txt"
else
    "$PYTHON" -m venv "$VENV"
    if ! "$VENV/bin/python" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null; then
        "$VENV/bin/python" -m pip uninstall --yes --quiet torch 2>/dev/null || true   # a CPU build (2.13.0+cpu) would count as installed
        if [ -n "${WHEELS:-}" ]; then "${pip[@]}" torch==2.13.0; else "${pip[@]}" --index-url "$TORCH_INDEX" torch==2.13.0; fi
    fi
    "${pip[@]}" -r requirements.txt   # torch==2.13.0 is met by 2.13.0+cu130: it stays
fi
"${pip[@]}" --no-deps -r requirements-data.txt
"$VENV/bin/python" -c 'import torch; assert torch.cuda.is_available(), f"torch {torch.__version__} sees no GPU"; print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {torch.cuda.get_device_name(0)}", flush=True)'
exec "$VENV/bin/python" benchmarks/bench_gpu.py "$@"
