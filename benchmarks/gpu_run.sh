#!/usr/bin/env bash
# For a lent GPU machine without network: install wheels carried in .whl/ (faiss-cpu, webdataset,
# braceexpand),
# then the GPU tests and benchmarks; logs and JSON under $OUT. Usage: bash benchmarks/gpu_run.sh STEP...
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, faiss, webdataset; print('torch', torch.__version__, torch.cuda.get_device_name())"
for step in "$@"; do
  echo "=== $step"
  case $step in
    gputests) python3 -m pytest -q -m gpu tests 2>&1 | tail -15 ;;
    embed) python3 benchmarks/embed.py --device cuda --workload cifar --workload r50 --n 10000 --decode cpu --decode device --no-write 2>&1 | tee $OUT/embed.log | tail -8 ;;
    match1m) python3 benchmarks/match.py --device cuda --n 1000000 --no-docs --json $OUT/match1m.json 2>&1 | tee $OUT/match1m.log | tail -25 ;;
    match2048) python3 benchmarks/match.py --device cuda --n 200000 --dim 2048 --no-docs --json $OUT/match2048.json 2>&1 | tee $OUT/match2048.log | tail -25 ;;
    *) echo "unknown step $step" ;;
  esac
done
