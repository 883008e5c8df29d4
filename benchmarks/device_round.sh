#!/usr/bin/env bash
# Issue 32 §5 in one call on a lent GPU (each step bounded: at most 555 s of the 600 a call may take):
#   run(command="bash benchmarks/device_round.sh", carry=[".whl"], timeout_s=600)
# Everything it prints goes to $OUT/device_round.log too. The device image lacks pydantic: its
# wheels travel in .whl (ignored by git, listed in .git/info/exclude), downloaded here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl \
#     pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
# QUICK=1 runs the same steps on the CPU with ResNet-8 and without GPT-2 (to try it here).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/device_round}
mkdir -p "$out"
if ! python3 -c "import pydantic" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# gpt2_small.py measure runs `landscape`; the package is not installed there
mkdir -p /tmp/device_round_bin
printf '#!/bin/sh\nexec python3 -m landscape_cli "$@"\n' > /tmp/device_round_bin/landscape
chmod +x /tmp/device_round_bin/landscape
export PATH="/tmp/device_round_bin:$PATH"
if [ "${QUICK:-0}" = 1 ]; then device=cpu model=resnet8; else device=cuda model=resnet18; fi
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  python3 -c "import torch; print('torch', torch.__version__)"
  timeout 240 python3 benchmarks/device_round.py resnet --model "$model" --device "$device"
  timeout 45 python3 benchmarks/device_round.py trace --device "$device"
  if [ "${QUICK:-0}" != 1 ]; then
    timeout 90 python3 benchmarks/gpt2_small.py build
    timeout 180 python3 benchmarks/gpt2_small.py measure --runs gradient spectrum_exact spectrum_fd
  fi
  date -u
} 2>&1 | tee "$out/device_round.log"
