#!/usr/bin/env bash
# The CUDA checks, on a GPU machine without network access (the `device` machine): install the wheels carried
# in .whl/ (pip download of requirements/lock.txt's pins for that machine's Python, without torch, numpy and
# what its image already has), run the gpu-marked tests, then the CUDA benchmark. Results go to $OUT.
#   OUT=/tmp/cuda benchmarks/cuda_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/cuda-check}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD" TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-deps --no-index .whl/*.whl > "$OUT/pip.txt" 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" >> "$OUT/gpu.txt" 2>&1
timeout 300 python3 -m pytest -q -m gpu -o addopts="-ra" -p no:cacheprovider tests/worker/test_cuda.py > "$OUT/pytest.txt" 2>&1
echo "pytest exit $?" >> "$OUT/pytest.txt"
(cd benchmarks && timeout 300 python3 cuda_bench.py --out "$OUT/cuda_bench.json" > "$OUT/cuda_bench.log" 2>&1; echo "bench exit $?" >> "$OUT/cuda_bench.log")
tail -5 "$OUT/pytest.txt"; tail -3 "$OUT/cuda_bench.log"
