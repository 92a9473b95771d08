#!/usr/bin/env bash
# Training speed of the :cpu scratch preset with and without
# `reuse_host_memory` (vit_jax/host_memory.py), runs alternated so that both
# sides see the same machine load. The setting is process-wide and must be
# made before JAX starts, so each side is its own process.
#
#   bash benchmarks/host_memory_bench.sh [pairs] [steps]   # default 2 x 400
#
# Prints, per run, the median training img/s (from metrics.jsonl) and the
# user / system CPU seconds of the whole process.
set -eu
cd "$(dirname "$0")/.."
PAIRS=${1:-2}
STEPS=${2:-400}
DATA=${TFDS_DATA_DIR:-../shared/data/tensorflow_datasets}
OUT=$(mktemp -d)
for pair in $(seq "$PAIRS"); do
  for reuse in false true; do
    dir="$OUT/$pair-$reuse"
    /usr/bin/time -f '%U %S' -o "$dir.time" python -m vit_jax.main \
      --config configs/cifar10_scratch.py:cpu --workdir "$dir" \
      --config.tfds_data_dir="$DATA" --config.total_steps="$STEPS" \
      --config.progress_every=50 --config.eval_every=100000 \
      --config.checkpoint_every=100000 \
      --config.reuse_host_memory="$reuse" > "$dir.log" 2>&1
    python3 - "$dir" "$reuse" <<'PY'
import json, statistics, sys
run, reuse = sys.argv[1], sys.argv[2]
rates = [json.loads(l).get('img_sec_core_train') for l in open(run + '/metrics.jsonl')]
rates = [r for r in rates if r][1:]  # The first interval includes compiling.
user, system = open(run + '.time').read().split()[-2:]
print(f'reuse_host_memory={reuse:5s}  img/s {statistics.median(rates):7.1f}  '
      f'user {float(user):6.1f} s  sys {float(system):6.1f} s')
PY
  done
done
rm -rf "$OUT"
