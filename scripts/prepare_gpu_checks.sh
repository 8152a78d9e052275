#!/usr/bin/env bash
# Prepares, on this machine, what scripts/gpu_checks.sh needs on a lent GPU machine (the `device` tool's
# nvidia-h200: python3 3.12 with torch and triton, but no hydra, no pyro and no data):
#   .whl/      wheels for Python 3.12: hydra-core, omegaconf, antlr4 (built here: it ships no wheel), pyro
#   .gpudata/  the MNIST files the benchmarks read (the .gz idx files and the binarized MNIST .amat.gz)
# Both are ignored through .git/info/exclude, so they travel only when named in `carry`:
#   run(command="bash scripts/gpu_checks.sh", carry=[".whl", ".gpudata"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
for folder in /.whl/ /.gpudata/; do
    grep -qxF "$folder" .git/info/exclude 2>/dev/null || echo "$folder" >> .git/info/exclude
done
PY=${PY:-python3}
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl hydra-core==1.3.2 omegaconf==2.3.0 pyro-ppl==1.9.1 pyro-api==0.1.2
"$PY" -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
DATA=${MIXVAE_DATA_DIR:-../shared/data}
rm -rf .gpudata && mkdir -p .gpudata/MNIST/raw .gpudata/binarized_mnist
cp "$DATA"/MNIST/raw/*.gz .gpudata/MNIST/raw/
cp "$DATA"/binarized_mnist/*.amat.gz .gpudata/binarized_mnist/
du -sh .whl .gpudata
