#!/usr/bin/env bash
# The whole GPU check in one go (a few minutes on one GPU), everything logged to $OUT:
#   benchmarks/gpu_check.py (kernels, steps GPU vs NumPy, timings vs PyTorch CUDA), then
#   minembed train + eval on the built-in corpus with --device gpu and --device cpu.
#
#   OUT=gpu_out bash benchmarks/gpu_run.sh [--quick]
#
# Needs CuPy, PyTorch (for the timings), and minembed's dependencies; minembed itself
# need not be installed (the repository root goes on PYTHONPATH).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export MINEMBED_CACHE=${MINEMBED_CACHE:-/tmp/minembed-gpu-cache}
WORK=$(mktemp -d)
log() { echo; echo "### $*"; }

{
  log "$(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null) $(nproc) CPUs"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  python3 -c "import cupy, numpy, sys; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'python', sys.version.split()[0])"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1
} 2>&1 | tee "$OUT/env.txt"

# the CUDA kernels against their references, and the CPU twins, on this machine's GPU
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_fast.py 2>&1 | tee "$OUT/tests.log"
python3 benchmarks/gpu_check.py --json "$OUT/gpu_check.json" "$@" 2>&1 | tee "$OUT/gpu_check.log"

{
  for model in bag transformer; do
    for dev in gpu cpu; do
      [ "$model" = transformer ] && [ "$dev" = cpu ] && continue   # minutes on a CPU: measured elsewhere
      log "minembed train --model $model --device $dev (built-in corpus)"
      start=$EPOCHREALTIME
      python3 -m minembed train -o "$WORK/$model-$dev" --model $model --device $dev --force 2>&1 \
        | tr '\r' '\n' | grep -v '^training *\[' | tail -n 6
      awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "wall: %.1f s\n", b - a }'
      python3 -c "import json,sys; c=json.load(open(sys.argv[1])); t=c['training']; print('steps', t['steps'], 'training seconds', t['seconds'])" "$WORK/$model-$dev/config.json"
      log "minembed eval $model-$dev --device $dev"
      start=$EPOCHREALTIME
      python3 -m minembed eval "$WORK/$model-$dev" --device $dev 2>&1
      awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "wall: %.1f s\n", b - a }'
    done
  done
  log "bag on the GPU with batches drawn in turn (MINEMBED_PREFETCH=0; the default draws them ahead)"
  MINEMBED_PREFETCH=0 python3 -m minembed train -o "$WORK/bag-gpu-inturn" --device gpu --force \
    2>&1 | tr '\r' '\n' | grep -v '^training *\[' | tail -n 3
  python3 -c "import json,sys; print('training seconds: ahead', *(json.load(open(f'{sys.argv[1]}/{d}/config.json'))['training']['seconds'] for d in ('bag-gpu', 'bag-gpu-inturn')), '(in turn)')" "$WORK"
  log "same weights? bag gpu vs cpu"
  python3 - "$WORK" <<'EOF'
import sys, numpy as np
from minembed.product.files import load_weights
a = load_weights(f"{sys.argv[1]}/bag-gpu/model.safetensors")["tok_emb"]
b = load_weights(f"{sys.argv[1]}/bag-cpu/model.safetensors")["tok_emb"]
print("max |w_gpu - w_cpu| =", float(np.abs(a - b).max()), " max |w| =", float(np.abs(b).max()))
c = load_weights(f"{sys.argv[1]}/bag-gpu-inturn/model.safetensors")["tok_emb"]
print("drawn ahead and in turn, bit for bit the same:", bool(np.array_equal(a, c)))
EOF
  log "lesson 9 (its GPU section)"
  python3 lessons/09_making_it_fast.py 2>&1
} 2>&1 | tee "$OUT/train_eval.log"
rm -rf "$WORK"
