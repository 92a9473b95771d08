# Sourced by the GPU scripts, from the repo root: unbuffered, quiet logs;
# ml_collections from the wheel in .whl/ when the machine lacks it (GPU
# machines reach no package index); this checkout importable.
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
if ! python3 -c 'import ml_collections' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
