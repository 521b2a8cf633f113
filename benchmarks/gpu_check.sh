#!/usr/bin/env bash
# GPU checks of the performance issue, as ONE prepared command for a session that is lent a
# device machine (none of the sessions so far was). Prepare on the development machine, once:
#
#   echo /.gpu-data/ >> .git/info/exclude
#   mkdir -p .gpu-data && cp -r ../shared/data/MANIFEST.md ../shared/data/mnist ../shared/data/models .gpu-data/
#
# then call the device tool: run(command="bash benchmarks/gpu_check.sh", carry=[".gpu-data"],
# timeout_s=540). It uses the machine's own python3 / PyTorch (nothing is installed), writes at
# most 8 files to $OUT and stays under ~8 minutes: the CUDA tests (CPU vs CUDA bounds, attack
# and certification on CUDA, IEEE float32 settings), the throughput benchmark on 100 images and
# the full 10k MNIST test set at t = 1 (target: <= 60 s on one H100).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src L0TRE_DATA=${L0TRE_DATA:-$PWD/.gpu-data} PYTHONUNBUFFERED=1 L0TRE_TUNING_CACHE=off
MEM=$((16 << 30))
{ nvidia-smi; python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"; } \
    > "$OUT/env.txt" 2>&1
timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/engine/test_cuda.py tests/test_classifier.py \
    > "$OUT/pytest_cuda.log" 2>&1
echo "pytest exit $?" >> "$OUT/pytest_cuda.log"
timeout 120 python3 benchmarks/throughput.py --model paper-mnist --images 100 --t-max 1 --epsilon 0.25 \
    --device cuda --max-memory $MEM --json-out "$OUT/throughput_cuda_100.json" > "$OUT/throughput_100.log" 2>&1
timeout 200 python3 benchmarks/throughput.py --model paper-mnist --images 10000 --t-max 1 --epsilon 0.25 \
    --device cuda --max-memory $MEM --json-out "$OUT/throughput_cuda_10k.json" > "$OUT/throughput_10k.log" 2>&1
tail -n 3 "$OUT"/*.log
