#!/usr/bin/env bash
# Every GPU path of the project in one run (about 8 minutes on an H100/H200).
# Exits non-zero if any step fails.
#
#   OUT=DIR bash benchmarks/gpu_check.sh                  # on a GPU machine
#   GPU_CHECK_TINY=1 OUT=DIR bash benchmarks/gpu_check.sh # toy sizes, on CPU
#
# Steps:
#   a. gpu_tests:   the pytest tests marked `gpu`.
#   b. attention:   each attention kernel (cudnn, xla, explicit) in bfloat16
#                   against float32 explicit, logits and gradients, for
#                   ViT-B/16 at 224 and 384px and the from-scratch model at 64
#                   and 65 tokens (benchmarks/check_attention.py).
#   b2. fp8:        the FP8 option (config.model.fp8) on the bfloat16 ViT-B/16
#                   training step: as many FP8 GEMMs in the compiled program
#                   as the rule of tests/test_fp8.py predicts (none off
#                   Ada/Hopper), logits and gradients near bfloat16's
#                   (benchmarks/check_fp8.py).
#   c. finetune_224, finetune_384: configs/cifar10_finetune.py[:384] through
#                   `python -m vit_jax.main` on a synthetic ViT-B_16.npz in the
#                   published layout, both phases (30 phase-2 steps): finite
#                   losses, backbone bit-identical after phase 1 and moving in
#                   phase 2 (benchmarks/finetune_smoke.py).
#   d. scratch:     configs/cifar10_scratch.py (the GPU preset) for 2,000 steps
#                   on real CIFAR-10; a non-finite loss stops it and fails.
#   e. speed_*:     ViT-B/16 224px training and inference img/s with each
#                   attention kernel on this GPU (python -m vit_jax.benchmark).
#
# A GPU machine without a package index needs, carried in the checkout:
#   .whl/  the ml_collections wheel (benchmarks/gpu_env.sh installs it), and
#   .gpu_data/cifar10.tar.gz, made here by
#     python benchmarks/make_gpu_cifar10.py ../shared/data/tensorflow_datasets .gpu_data/cifar10
#     tar czf .gpu_data/cifar10.tar.gz -C .gpu_data cifar10 && rm -r .gpu_data/cifar10
# Writes to $OUT: report.txt (one line per step), log.txt (every step's
# output), attention.json, fp8.json, bench.jsonl, scratch_metrics.jsonl.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
rm -f "$OUT"/{report.txt,log.txt,attention.json,fp8.json,bench.jsonl,scratch_metrics.jsonl}
source benchmarks/gpu_env.sh
WORK=$(mktemp -d)
TINY=${GPU_CHECK_TINY:-}

FAILED=()
# step NAME LIMIT_SECONDS COMMAND...: runs one step, logs it, records failure.
step() {
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "== $name" | tee -a "$OUT/log.txt"
  timeout "$limit" "$@" >> "$OUT/log.txt" 2>&1
  local rc=$?
  local line="$name: $([ $rc -eq 0 ] && echo ok || echo "FAILED (exit $rc)") in $((SECONDS - start)) s"
  echo "$line" | tee -a "$OUT/report.txt"
  [ $rc -eq 0 ] || FAILED+=("$name")
}

{
  date -u; nvidia-smi -L 2>/dev/null
  python3 -c 'import jax; print("jax", jax.__version__, jax.devices())'
} | tee -a "$OUT/report.txt"

# Sizes: the real ones, or toy ones that keep every code path.
FT_ARGS=(--dataset synthetic --batch 32 --accum 1 --freeze_steps 10
         --total_steps 40 --test_split 'test[:64]')
SCRATCH_ARGS=(--config.total_steps=2000 --config.eval_every=1000
              --config.checkpoint_every=2000 --config.progress_every=250)
BENCH_ARGS=(--model_name ViT-B_16 --image_size 224 --dtype bfloat16 --steps 10
            --warmup 2 --rounds 2)
TRAIN_BATCH=256 INFER_BATCH=1024
ATTENTION_ARGS=()
if [ -n "$TINY" ]; then
  FT_ARGS=(--dataset synthetic --tiny --batch 8 --accum 1 --freeze_steps 2
           --total_steps 6 --test_split 'test[:16]')
  SCRATCH_ARGS=(--config.total_steps=20 --config.eval_every=10
                --config.checkpoint_every=20 --config.progress_every=10
                --config.batch=32 --config.batch_eval=500
                --config.model.hidden_size=32
                --config.model.transformer.mlp_dim=32
                --config.model.transformer.num_heads=2
                --config.model.transformer.num_layers=1
                --config.pp.test=test)
  BENCH_ARGS=(--model_name testing --image_size 32 --dtype bfloat16 --steps 2
              --warmup 1 --rounds 1)
  TRAIN_BATCH=8 INFER_BATCH=16
  ATTENTION_ARGS=(--tiny)
fi

# a. Tests that need a GPU (skipped, and so passing, elsewhere).
GPU_TESTS=$(grep -l 'pytest.mark.gpu' tests/*.py | tr '\n' ' ')
step gpu_tests 120 python3 -m pytest -q -m gpu -p no:cacheprovider $GPU_TESTS

# b. Attention kernels against float32.
step attention 150 python3 benchmarks/check_attention.py \
    --out "$OUT/attention.json" "${ATTENTION_ARGS[@]}"

# b2. FP8 matmuls: compiled as FP8 GEMMs where the GPU has them, accurate.
step fp8 120 python3 benchmarks/check_fp8.py --out "$OUT/fp8.json" \
    "${ATTENTION_ARGS[@]}"
python3 -c "import json; r = json.load(open('$OUT/fp8.json')); print('fp8:', {k: r[k] for k in ('fp8_gemm_device', 'expected_fp8_gemms', 'cublaslt_fp8', 'triton_fp8', 'logits_error', 'grads_error')})" 2>/dev/null | tee -a "$OUT/report.txt"

# c. Fine-tuning through the command line, both phases, both resolutions.
for resolution in 224 384; do
  step "finetune_$resolution" 120 python3 benchmarks/finetune_smoke.py \
      --resolution $resolution --workdir "$WORK/ft$resolution" "${FT_ARGS[@]}"
done

# d. The from-scratch GPU preset on real CIFAR-10 (toy data in a rehearsal).
if [ -n "$TINY" ]; then
  DATA="$WORK/data"
  python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import finetune_smoke; finetune_smoke.synthetic_images('$DATA')"
elif [ -f .gpu_data/cifar10.tar.gz ]; then
  tar xzf .gpu_data/cifar10.tar.gz -C "$WORK" && DATA="$WORK/cifar10"
else
  DATA=""
  echo "scratch: FAILED (no .gpu_data/cifar10.tar.gz; see this script's header)" | tee -a "$OUT/report.txt"
  FAILED+=(scratch)
fi
if [ -n "$DATA" ]; then
  step scratch 200 python3 -m vit_jax.main \
      --config configs/cifar10_scratch.py --workdir "$WORK/scratch" \
      --config.dataset="$DATA" "${SCRATCH_ARGS[@]}"
  cp "$WORK/scratch/metrics.jsonl" "$OUT/scratch_metrics.jsonl" 2>/dev/null
  grep -h accuracy_test "$WORK/scratch/metrics.jsonl" 2>/dev/null | tail -n 2 | tee -a "$OUT/report.txt"
fi

# e. Speed of each attention kernel (cuDNN only on a GPU).
KERNELS="cudnn xla explicit"
python3 -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' || KERNELS="xla explicit"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-.90}
for kernel in $KERNELS; do
  step "speed_train_$kernel" 60 python3 -m vit_jax.benchmark "${BENCH_ARGS[@]}" \
      --mode train --batch $TRAIN_BATCH --attention_impl $kernel \
      --json_out "$OUT/bench.jsonl"
  step "speed_infer_$kernel" 50 python3 -m vit_jax.benchmark "${BENCH_ARGS[@]}" \
      --mode infer --batch $INFER_BATCH --attention_impl $kernel \
      --json_out "$OUT/bench.jsonl"
done
python3 - "$OUT/bench.jsonl" <<'EOF' | tee -a "$OUT/report.txt"
import json, sys
for line in open(sys.argv[1]):
  r = json.loads(line)
  print(f"{r['mode']:5s} {r['attention_impl']:8s} {r['img_per_s']:10.1f} img/s"
        f"  batch {r['batch']}  ({r['attention_used']})")
EOF

rm -rf "$WORK"
echo "total: ${SECONDS} s" | tee -a "$OUT/report.txt"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "FAILED: ${FAILED[*]}" | tee -a "$OUT/report.txt"
  exit 1
fi
echo "all steps passed" | tee -a "$OUT/report.txt"
