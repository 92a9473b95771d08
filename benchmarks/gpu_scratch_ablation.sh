#!/usr/bin/env bash
# Why did the full from-scratch recipe stall at 47% on an H100 (BENCHMARKS.md)?
# One device-tool call (under 10 minutes): short runs of the recipe, each
# changing one suspect, all on the same wall-clock budget.
#
#   OUT=/some/dir bash benchmarks/gpu_scratch_ablation.sh
#
# Needs, carried in the checkout (.whl and .gpu_data):
# .whl/ with the ml_collections wheel, and .gpu_data/cifar10.tar.gz, made by
#   python benchmarks/make_gpu_cifar10.py ../shared/data/tensorflow_datasets .gpu_data/cifar10
#   tar czf .gpu_data/cifar10.tar.gz -C .gpu_data cifar10 && rm -r .gpu_data/cifar10
# Writes $OUT/<variant>/{log,metrics.jsonl,summary.json} and $OUT/summary.txt.
# SMOKE=1 shrinks the model to check the script on a CPU in a few minutes.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_ablation}
SECONDS_EACH=${SECONDS_EACH:-75}
mkdir -p "$OUT"
source benchmarks/gpu_env.sh
DATA=${DATA:-}
if [ -z "$DATA" ]; then
  mkdir -p /tmp/data && tar xzf .gpu_data/cifar10.tar.gz -C /tmp/data
  DATA=/tmp/data/cifar10
fi
EXTRA=()
if [ -n "${SMOKE:-}" ]; then
  EXTRA=(--set batch=64 --set batch_eval=500 --set model.hidden_size=32
         --set model.mlp_dim=64 --set model.num_heads=2 --set model.num_layers=1)
fi

# name|overrides (space-separated key=value), most telling first; at 75 s
# each, about four fit in BUDGET_SECONDS.
# On 2 CPU cores the recipe's regularisers together cost 18 points at a short
# budget, with the train loss stuck near 2.15 as on the H100, and bfloat16
# cost nothing; Muon gained 10 points over AdamW at an equal image budget;
# the H100 run also made only 3,363 updates (batch 1024).
VARIANTS=(
  "recipe|"
  "no_mixup_cutmix|aug.mixup_alpha=0 aug.cutmix_alpha=0"
  "muon|optimizer=muon base_lr=0.008"
  "batch_256|batch=256 base_lr=0.001 warmup_steps=1000"
  "lr_1e-3|base_lr=0.001"
  "patch_dropout_0.5|model.patch_dropout=0.5"
)
for spec in "${VARIANTS[@]}"; do
  name=${spec%%|*}
  sets=()
  for kv in ${spec#*|}; do sets+=(--set "$kv"); done
  # Each run needs SECONDS_EACH plus ~60 s of loading, compiling, evaluating.
  if (( SECONDS + SECONDS_EACH + 60 > ${BUDGET_SECONDS:-540} )); then
    echo "skipping $name: out of time" >> "$OUT/summary.txt"
    continue
  fi
  mkdir -p "$OUT/$name"
  timeout $((SECONDS_EACH + 120)) python3 benchmarks/gpu_scratch.py \
    --data "$DATA" --workdir "/tmp/ablation/$name" --evals 5 \
    --train_seconds "$SECONDS_EACH" "${EXTRA[@]}" "${sets[@]}" \
    > "$OUT/$name/log" 2>&1
  echo "$name exit $?" >> "$OUT/summary.txt"
  cp /tmp/ablation/$name/{metrics.jsonl,summary.json} "$OUT/$name/" 2>/dev/null
  grep -h SUMMARY "$OUT/$name/log" | sed "s/^/$name /" >> "$OUT/summary.txt"
done
cat "$OUT/summary.txt"
