#!/usr/bin/env bash
# One run on a GPU machine without a package index: from-scratch CIFAR-10, then
# ViT-B/16 speed vs timm. Carries: .whl (ml_collections wheel) and
# .gpu_data/cifar10.tar.gz (benchmarks/make_gpu_cifar10.py). Writes under $OUT:
# gpu.txt, scratch.log, scratch_metrics.jsonl, scratch_summary.json,
# bench.jsonl, bench.log.
#
# Tiny CPU rehearsal: SMOKE=1 OUT=/tmp/out bash benchmarks/gpu_run.sh
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh
mkdir -p /tmp/data && tar xzf .gpu_data/cifar10.tar.gz -C /tmp/data
(nvidia-smi || true; python3 -c 'import jax; print(jax.__version__, jax.devices())') > "$OUT/gpu.txt" 2>&1

SCRATCH_SECONDS=${SCRATCH_SECONDS:-210}
BENCH_MODEL=${BENCH_MODEL:-ViT-B_16}
EXTRA=()
BENCH_EXTRA=()
if [ -n "${SMOKE:-}" ]; then
  EXTRA=(--set batch=64 --set batch_eval=500 --set model.hidden_size=32
         --set model.mlp_dim=64 --set model.num_heads=2 --set model.num_layers=1
         --set pp.test=test)
  BENCH_EXTRA=(--image_size 32 --steps 2 --rounds 1 --warmup 1)
  BENCH_MODEL=testing
fi

# 1. From scratch: the full recipe, sized to end inside SCRATCH_SECONDS.
timeout $((SCRATCH_SECONDS + 140)) python3 benchmarks/gpu_scratch.py \
  --data /tmp/data/cifar10 --workdir /tmp/scratch \
  --train_seconds "$SCRATCH_SECONDS" "${EXTRA[@]}" > "$OUT/scratch.log" 2>&1
echo "scratch exit $?"
cp /tmp/scratch/metrics.jsonl "$OUT/scratch_metrics.jsonl" 2>/dev/null
cp /tmp/scratch/summary.json "$OUT/scratch_summary.json" 2>/dev/null
grep -E "Probe|accuracy_test|SUMMARY|Error" "$OUT/scratch.log" | tail -25

# 2. Speed: ours vs timm (torch.compile + AMP), alternating in one process.
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # Leave memory for PyTorch.
for spec in "train 256" "infer 1024"; do
  set -- $spec
  batch=$2
  [ -n "${SMOKE:-}" ] && batch=8
  timeout 100 python3 -m vit_jax.benchmark --model_name "$BENCH_MODEL" --mode "$1" \
    --batch "$batch" --dtype bfloat16 --compare timm \
    --json_out "$OUT/bench.jsonl" --rounds 3 --steps 10 --warmup 2 "${BENCH_EXTRA[@]}" >> "$OUT/bench.log" 2>&1
  echo "bench $1 exit $?"
done
tail -40 "$OUT/bench.log"
