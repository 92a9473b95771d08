#!/usr/bin/env bash
# ViT-B/16 at 224px, bfloat16, on one GPU: vit_jax against timm (torch.compile
# + AMP) side by side, training (AdamW) and inference, then a per-op profile
# of our training step and timm's, then each speed lever alone. About 9
# minutes on an H100/H200, most of it compiling (XLA, then Inductor).
#
#   OUT=/some/dir bash benchmarks/gpu_bench.sh       # from anywhere
#
# Writes one JSON line per run to $OUT/bench.jsonl (fields: see
# `python -m vit_jax.benchmark --help`), each run's console output to
# $OUT/<name>.log, one table of every run to $OUT/levers.txt, the per-op
# profile of the training step to $OUT/profile_train.txt, timm's to
# $OUT/profile_train_timm.txt and the two class by class to
# $OUT/profile_train_vs_timm.txt (benchmarks/profile_step.py; our raw trace
# stays under $OUT/trace_train/) and the software versions to $OUT/env.txt.
# Needs jax[cuda], flax, optax, orbax-checkpoint, ml_collections (a wheel in
# .whl/ is installed if the module is missing), torch and timm; no tensorflow.
#
# Levers, each alone against the default (cuDNN flash attention, XLA's
# default flags, batch 256 / 1024), ours only:
#   train_xla_attention      XLA's attention instead of cuDNN's
#   train_cudnn_layer_norm   --xla_gpu_enable_cudnn_layer_norm=true
#   train_no_triton_gemm     --xla_gpu_enable_triton_gemm=false (cuBLAS only)
#   train_autotune_4         --xla_gpu_autotune_level=4
#   train_batch_x2           twice the batch
#   train_remat              blocks recomputed in the backward pass
#   train_fp8, infer_fp8     FP8 q/k/v, out and MLP matmuls (--fp8)
#   infer_cudnn_layer_norm   the layer-norm flag for inference
# A flag this XLA does not know is reported and skipped (an unknown flag
# aborts the process). Lever runs start only while the script is inside
# BUDGET seconds (default 450).
#
# GPU_BENCH_TINY=1 shrinks the model, images, batches and steps to check the
# script on a CPU in a few minutes (PYTHON=/path/to/python-with-torch-and-timm).
# TRAIN_BATCH and INFER_BATCH override the batch sizes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_bench}
PY=${PYTHON:-python}
mkdir -p "$OUT"
rm -f "$OUT/levers.txt"

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
  timeout "$LIMIT" "$PY" -m vit_jax.benchmark --model_name "$MODEL" \
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

# Where the default training step's time goes, op by op, ours and then
# timm's (ours' table is written before timm's step starts). Before the
# levers, so that the time budget cannot crowd it out.
echo "== profile ($SECONDS s in)"
timeout $((LIMIT + 100)) "$PY" benchmarks/profile_step.py --out "$OUT" \
    --model_name "$MODEL" --image_size "$SIZE" --dtype bfloat16 --mode train \
    --batch "$TRAIN_BATCH" --warmup "$WARMUP" --compare timm \
    > "$OUT/profile.log" 2>&1 || echo "profile failed: see $OUT/profile.log"
head -n 30 "$OUT/profile_train.txt" 2>/dev/null
cat "$OUT/profile_train_vs_timm.txt" 2>/dev/null

# Each lever alone, ours only (~40 s each on a GPU), while time is left.
BUDGET=${BUDGET:-450}
extra() {
  if (( SECONDS < BUDGET )); then bench "$@"; else echo "== $1 skipped (time)"; fi
}
# with_flag FLAG NAME ARGS...: a lever run with one more XLA flag.
with_flag() {
  local flag=$1; shift
  if ! XLA_FLAGS="$XLA_FLAGS $flag" "$PY" -c \
      'import jax; jax.numpy.ones(1).block_until_ready()' >/dev/null 2>&1; then
    echo "== $1 skipped: this XLA does not accept $flag" | tee -a "$OUT/levers.txt"
    return 0
  fi
  XLA_FLAGS="$XLA_FLAGS $flag" extra "$@"
}
extra train_ours --mode train --batch "$TRAIN_BATCH"
extra train_fp8 --mode train --batch "$TRAIN_BATCH" --fp8
extra infer_fp8 --mode infer --batch "$INFER_BATCH" --fp8
extra train_xla_attention --mode train --batch "$TRAIN_BATCH" \
    --attention_impl xla
with_flag --xla_gpu_enable_cudnn_layer_norm=true train_cudnn_layer_norm \
    --mode train --batch "$TRAIN_BATCH"
with_flag --xla_gpu_enable_triton_gemm=false train_no_triton_gemm \
    --mode train --batch "$TRAIN_BATCH"
with_flag --xla_gpu_autotune_level=4 train_autotune_4 \
    --mode train --batch "$TRAIN_BATCH"
extra train_batch_x2 --mode train --batch $((TRAIN_BATCH * 2))
extra train_remat --mode train --batch "$TRAIN_BATCH" --remat
with_flag --xla_gpu_enable_cudnn_layer_norm=true infer_cudnn_layer_norm \
    --mode infer --batch "$INFER_BATCH"

# Every run in one table (the run's name is its log's).
"$PY" - "$OUT" <<'EOF' | tee -a "$OUT/levers.txt"
import glob, json, os, sys
out = sys.argv[1]
fmt = lambda v, f: '-' if v is None else format(v, f)
print(f"{'run':26s} {'img/s':>9s} {'timm img/s':>10s} {'ratio':>6s}  attention")
for log in sorted(glob.glob(os.path.join(out, '*.log')), key=os.path.getmtime):
  lines = [l for l in open(log) if l.startswith('{')]
  if lines:
    r = json.loads(lines[-1])
    print(f"{os.path.basename(log)[:-4]:26s} {r['img_per_s']:9.1f} "
          f"{fmt(r.get('timm_img_per_s'), '.1f'):>10s} "
          f"{fmt(r.get('ratio_vs_timm'), '.3f'):>6s}  "
          f"{r['attention_used'][:70]}")
EOF
echo "== done in $SECONDS s; results in $OUT"
