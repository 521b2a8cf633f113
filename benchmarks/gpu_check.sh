#!/usr/bin/env bash
# GPU checks (issues 21, 15), as ONE prepared command for a session that is lent a device
# machine. Prepare on the development machine, once:
#
#   echo /.gpu-data/ >> .git/info/exclude
#   mkdir -p .gpu-data/mnist && cp ../shared/data/MANIFEST.md .gpu-data/ \
#       && cp ../shared/data/mnist/t10k-* .gpu-data/mnist/
#
# then call the device tool: run(command="bash benchmarks/gpu_check.sh", carry=[".gpu-data"],
# timeout_s=560). It uses the machine's own python3 / PyTorch (nothing is installed), writes at
# most 8 files to $OUT and stays under ~8 minutes:
#   1. the CUDA tests (CPU vs CUDA bounds, attack and certification on CUDA, IEEE float32);
#   2. engine throughput at t = 1 (ε = 0.25) on 100 images and on the 10k MNIST test set
#      (target: 10k in <= 20 s on one H200, ratio to the raw forward limit >= 0.8);
#   3. the host-overhead proxy on CUDA (one linear layer, 10k images);
#   4. certified t = 1 on CPU (3 images) and CUDA (20 images): equal certificates, speed-up;
#   5. a cProfile of 2,000 images at t = 1 (what to optimise next).
#
# `bash benchmarks/gpu_check.sh saliency` runs the saliency checks (issue 18) instead, ~11 minutes;
# carry also the CIFAR-10 sample and the ImageNet photos:
#
#   mkdir -p .gpu-data/cifar10 .gpu-data/imagenet && cp ../shared/data/cifar10/*.npz .gpu-data/cifar10/ \
#       && cp -r ../shared/data/imagenet/samples .gpu-data/imagenet/
#   python3 -m pip download --no-deps --only-binary=:all: -d .gpu-data/whl captum==0.9.0
#
# (the device image has captum's needs — matplotlib, numpy, packaging, tqdm — but not captum: the
# pure-Python wheel is installed from .gpu-data/whl into /tmp/site when it is there).
#
#   S1. tests/saliency on CUDA (device invariance, bf16 screen and its sabotaged fallback);
#   S2. l0tre vs captum FeatureAblation on paper-mnist and cifar10-resnet20, 100 images each;
#   S3. a ResNet-50-shaped network (random weights: timings only), 224x224: every pixel
#       (target <= 60 s/image, bf16 screen through the copy's graph chain) and top:1000
#       (target <= 2 s/image), as saliency maps and as evaluate --t-max 1 bounds.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
if [ "${1:-}" = "saliency" ]; then
  mkdir -p "$OUT"
  export PYTHONPATH=$PWD/src:$PWD L0TRE_DATA=${L0TRE_DATA:-$PWD/.gpu-data} PYTHONUNBUFFERED=1 L0TRE_TUNING_CACHE=off
  LOG="$OUT/saliency.log"
  if ls .gpu-data/whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        .gpu-data/whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
  fi
  python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" > "$LOG" 2>&1
  python3 -c "import captum" 2>/dev/null || echo "captum missing: S2 compares nothing" >> "$LOG"
  echo "== S1. saliency tests" >> "$LOG"
  timeout 120 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/saliency >> "$LOG" 2>&1
  echo "pytest exit $?" >> "$LOG"
  echo "== S2. captum" >> "$LOG"
  for m in paper-mnist cifar10-resnet20; do
    timeout 120 python3 benchmarks/saliency_vs_captum.py captum --model $m --images 100 --device cuda \
        --json-out "$OUT/saliency_captum_$m.json" >> "$LOG" 2>&1
  done
  echo "== S3. ResNet-50-shaped, 224x224" >> "$LOG"
  timeout 100 python3 benchmarks/saliency_vs_captum.py large --arch resnet50 --pixels top:1000 --images 3 \
      --device cuda --quiet --json-out "$OUT/saliency_r50_top1000.json" >> "$LOG" 2>&1
  timeout 150 python3 benchmarks/saliency_vs_captum.py large --arch resnet50 --pixels all --images 1 \
      --device cuda --quiet --json-out "$OUT/saliency_r50_all.json" >> "$LOG" 2>&1
  echo "large exit $?" >> "$LOG"
  # exhaustive t = 1 bounds (the grid lower bound) and the top:1000 upper bound through evaluate
  timeout 150 python3 benchmarks/saliency_vs_captum.py large --run evaluate --arch resnet50 --pixels all \
      --images 1 --device cuda --quiet --json-out "$OUT/evaluate_r50_all.json" >> "$LOG" 2>&1
  timeout 60 python3 benchmarks/saliency_vs_captum.py large --run evaluate --arch resnet50 --pixels top:1000 \
      --images 3 --device cuda --quiet --json-out "$OUT/evaluate_r50_top1000.json" >> "$LOG" 2>&1
  echo "evaluate exit $?" >> "$LOG"
  cat "$LOG"
  exit 0
fi
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD L0TRE_DATA=${L0TRE_DATA:-$PWD/.gpu-data} PYTHONUNBUFFERED=1 L0TRE_TUNING_CACHE=off
MEM=$((16 << 30))
LOG="$OUT/checks.log"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"; } > "$LOG" 2>&1
echo "== 1. CUDA tests" >> "$LOG"
timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/engine/test_cuda.py \
    tests/test_classifier.py tests/certify/test_graph.py >> "$LOG" 2>&1
echo "pytest exit $?" >> "$LOG"
echo "== 2. throughput" >> "$LOG"
timeout 90 python3 benchmarks/throughput.py --model paper-mnist --images 100 --t-max 1 --epsilon 0.25 \
    --device cuda --max-memory $MEM --json-out "$OUT/throughput_cuda_100.json" 2>&1 | tail -n 4 >> "$LOG"
timeout 200 python3 benchmarks/throughput.py --model paper-mnist --images 10000 --t-max 1 --epsilon 0.25 \
    --device cuda --max-memory $MEM --json-out "$OUT/throughput_cuda_10k.json" 2>&1 | tail -n 4 >> "$LOG"
echo "== 3. overhead proxy" >> "$LOG"
timeout 60 python3 benchmarks/overhead.py --device cuda --images 10000 \
    --json-out "$OUT/overhead_cuda.json" >> "$LOG" 2>&1
echo "== 4. certification CPU vs CUDA" >> "$LOG"
timeout 120 python3 benchmarks/certify_devices.py --images-cpu 3 --images-cuda 20 \
    --json-out "$OUT/certify_devices.json" >> "$LOG" 2>&1
echo "certify exit $?" >> "$LOG"
echo "== 5. profile" >> "$LOG"
timeout 90 python3 -c "
import cProfile, pstats, torch, l0tre
clf = l0tre.load_model('paper-mnist', device='cuda')
x = l0tre.load_data('mnist:test', limit=2000).x
cProfile.run('l0tre.evaluate(clf, x, epsilon=0.25, t_max=1, device=\"cuda\", max_memory=$MEM)', '/tmp/prof')
pstats.Stats('/tmp/prof').sort_stats('tottime').print_stats(30)
" > "$OUT/profile.txt" 2>&1
cat "$LOG"
