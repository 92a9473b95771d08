#!/usr/bin/env bash
# The original repository's own tests, unchanged, run against this package.
#
#   bash benchmarks/run_original_tests.sh /path/to/vision_transformer
#
# Takes models_test.py, checkpoint_test.py, preprocess_test.py and
# train_test.py from a clone (or bare git dir) of
# google-research/vision_transformer into a scratch folder that holds no
# package of theirs, so `from vit_jax import ...` there imports this one.
# Deselected: the LiT models and the tokenizers (LiT is out of scope). The
# LiT models are models_test's first five parameter cases (test_can_instantiate0
# to 4: LiT-B16B, LiT-B16B_2, LiT-L16L, LiT-L16S, LiT-L16Ti in its table).
# train_test's tfds case reads cifar10 from $TFDS_DATA_DIR.
set -euo pipefail
SRC=${1:?usage: $0 /path/to/vision_transformer}
PY=${PYTHON:-python3}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
mkdir "$OUT/original_tests"
git -C "$SRC" archive HEAD vit_jax/models_test.py vit_jax/checkpoint_test.py \
    vit_jax/preprocess_test.py vit_jax/train_test.py \
  | tar -x -C "$OUT/original_tests" --strip-components=1
# Exact names: pytest's --deselect and -k match prefixes and substrings
# (test_can_instantiate1 would take test_can_instantiate10-19 with it).
cat > "$OUT/original_tests/conftest.py" <<'PY'
LIT = {f'test_can_instantiate{i}' for i in range(5)}


def pytest_collection_modifyitems(config, items):
  lit = [item for item in items if item.name in LIT]
  config.hook.pytest_deselected(items=lit)
  items[:] = [item for item in items if item.name not in LIT]
PY
cd "$OUT/original_tests"
"$PY" -c 'import vit_jax, sys; print("vit_jax from", vit_jax.__file__, file=sys.stderr)'
"$PY" -m pytest -q -p no:cacheprovider models_test.py checkpoint_test.py \
    preprocess_test.py train_test.py \
    -k 'not tokenizer and not test_pp_' "${@:2}"
