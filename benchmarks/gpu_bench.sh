#!/usr/bin/env bash
# ViT-B/16 at 224px, bfloat16, on one GPU: vit_jax against timm (torch.compile
# + AMP) side by side, training (AdamW) and inference. About 4 minutes on an
# H100, most of it compiling (XLA, then Inductor).
#
#   OUT=/some/dir bash benchmarks/gpu_bench.sh       # from anywhere
#
# Writes one JSON line per run to $OUT/bench.jsonl (fields: see
# `python -m vit_jax.benchmark --help`), each run's console output to
# $OUT/<name>.log, and the software versions to $OUT/env.txt.
# Needs jax[cuda], flax, optax, orbax-checkpoint, ml_collections (a wheel in
# .whl/ is installed if the module is missing), torch and timm; no tensorflow.
#
# GPU_BENCH_TINY=1 shrinks the model, images, batches and steps to check the
# script on a CPU in a minute (PYTHON=/path/to/python-with-torch-and-timm).
# TRAIN_BATCH and INFER_BATCH override the batch sizes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_bench}
PY=${PYTHON:-python}
mkdir -p "$OUT"

if ! "$PY" -c 'import ml_collections' 2>/dev/null; then
  "$PY" -m pip install -q --no-deps --no-index --target /tmp/site \
      .whl/ml_collections*.whl ||
    { echo 'ml_collections is missing and no wheel in .whl/' >&2; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

# Only flags every recent XLA knows: an unknown one aborts the process. The
# latency-hiding scheduler overlaps work streams; 90% of memory for XLA.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-.90}

MODEL=ViT-B_16 SIZE=224 STEPS=10 WARMUP=3 ROUNDS=3
TRAIN_BATCH=${TRAIN_BATCH:-256} INFER_BATCH=${INFER_BATCH:-1024}
LIMIT=200  # Seconds per run before it is stopped.
if [[ -n "${GPU_BENCH_TINY:-}" ]]; then
  MODEL=testing SIZE=32 STEPS=2 WARMUP=1 ROUNDS=2 LIMIT=120
  TRAIN_BATCH=8 INFER_BATCH=16
fi

{
  date -u; nvidia-smi -L 2>/dev/null
  "$PY" -c 'import jax, flax, optax; print("jax", jax.__version__, jax.devices(), "flax", flax.__version__, "optax", optax.__version__)'
  "$PY" -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__, "cuda", torch.cuda.is_available())'
  echo "XLA_FLAGS=$XLA_FLAGS"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# bench NAME ARGS...: one benchmark run, logged; its JSON line is appended.
bench() {
  local name=$1; shift
  echo "== $name ($SECONDS s in)"
  timeout "$LIMIT" "$PY" -m vit_jax.benchmark --model "$MODEL" \
      --image_size "$SIZE" --dtype bfloat16 --steps "$STEPS" \
      --warmup "$WARMUP" --rounds "$ROUNDS" --json_out "$OUT/bench.jsonl" \
      "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  grep -v '^{' "$OUT/$name.log" | tail -n 14
  return $rc
}

# 'auto' attention is cuDNN flash attention on GPU in bfloat16. Should a run
# fail, its log says why; the fallbacks are XLA's attention, then ours alone.
for mode in train infer; do
  batch=$TRAIN_BATCH; [[ $mode == infer ]] && batch=$INFER_BATCH
  bench "$mode" --mode "$mode" --batch "$batch" --compare timm ||
    bench "${mode}_xla_attention" --mode "$mode" --batch "$batch" \
        --compare timm --attention_impl xla ||
    bench "${mode}_ours_only" --mode "$mode" --batch "$batch"
done

# With time to spare (each extra run is ours alone, ~40 s, started only while
# the whole script stays near 4 minutes): XLA's attention instead of cuDNN's,
# cuBLAS for every matmul instead of XLA's Triton GEMMs, a larger batch.
extra() { if (( SECONDS < 190 )); then bench "$@"; fi; }
extra train_xla_attention_ours --mode train --batch "$TRAIN_BATCH" \
    --attention_impl xla
XLA_FLAGS="$XLA_FLAGS --xla_gpu_enable_triton_gemm=false" \
  extra train_no_triton_gemm --mode train --batch "$TRAIN_BATCH"
extra train_batch_x2 --mode train --batch $((TRAIN_BATCH * 2))
echo "== done in $SECONDS s; results in $OUT/bench.jsonl"
