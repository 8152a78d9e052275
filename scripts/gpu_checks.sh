#!/usr/bin/env bash
# The GPU checks as one prepared run, for a lent GPU machine (the `device` tool), after
# scripts/prepare_gpu_checks.sh here:
#   run(command="bash scripts/gpu_checks.sh", carry=[".whl", ".gpudata"], timeout_s=540)
# It writes under $OUT (what comes back): gpu.txt (the GPU, driver, torch and triton versions), cuda_tests.log
# (every test marked `cuda`: the C, compiled, eager and Triton Graves backends on the GPU against the float64
# reference), mixture_rsample_cuda.md (scripts/bench_rsample.py --device cuda, Pyro beside it) and
# train_throughput_cuda.md (scripts/bench_train.py --device cuda: a MNIST epoch at batch 100, graves K = 5, and
# IWAE-5000 of the test set). Each step has its own time limit, so that one slow step leaves the rest their
# time; the whole script stays under about 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/benchmarks/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
[ -d .gpudata ] && export MIXVAE_DATA_DIR="$PWD/.gpudata"  # packed by prepare_gpu_checks.sh
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .whl/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:$PWD/.whl/site"
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
  git log -1 --format='git revision %h' 2>/dev/null; } 2>&1 | tee "$OUT/gpu.txt"
timeout 180 python3 -m pytest -q -p no:cacheprovider -m cuda tests 2>&1 | tail -40 > "$OUT/cuda_tests.log"
tail -3 "$OUT/cuda_tests.log"
timeout 150 python3 scripts/bench_rsample.py --device cuda --out "$OUT/mixture_rsample_cuda.md" 2>&1 | tail -3
timeout 150 python3 scripts/bench_train.py --device cuda --out "$OUT/train_cuda" 2>&1 | tail -3
[ -f "$OUT/train_cuda/train_throughput.md" ] && mv "$OUT/train_cuda/train_throughput.md" "$OUT/train_throughput_cuda.md"
rmdir "$OUT/train_cuda" 2>/dev/null
ls -la "$OUT"
