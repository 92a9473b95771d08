"""Shared test helpers: tiny configs, image-folder datasets, CLI runs."""

import contextlib
import http.server
import importlib.util
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading

import numpy as np
from PIL import Image
import pytest

# The peer tests (timm, transformers) reach torch's compiler stack, which
# imports triton; triton loaded into a process that already holds TensorFlow
# crashes it (segmentation fault; both carry LLVM), while the other order
# works. Tests of either kind share the pytest worker processes, so triton,
# where installed (the `peers` extra), is loaded first, here.
if importlib.util.find_spec('triton') is not None:
  import triton  # pylint: disable=g-import-not-at-top,unused-import

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_benchmark_script(name: str):
  """benchmarks/<name>.py as a module: the scripts are not a package."""
  path = os.path.join(REPO, 'benchmarks', f'{name}.py')
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def experiment_config(name: str, arg=None):
  """configs/<name>.py's get_config(arg), read as --config reads the file."""
  from vit_jax import cli  # pylint: disable=g-import-not-at-top
  spec = os.path.join(REPO, 'configs', f'{name}.py')
  return cli.load_config_file(f'{spec}:{arg}' if arg else spec)


def hlo_computations(hlo: str) -> dict[str, str]:
  """A compiled module's text (`.as_text()`), by computation name
  (ENTRY's under its own name): each computation's lines."""
  bodies = {}
  for body in re.split(r'\n(?=\S)', hlo):  # A computation starts at column 0.
    name = re.match(r'(?:ENTRY )?%?([\w.\-]+)', body)
    if name:
      bodies[name.group(1)] = body
  return bodies


FLOAT32_EPS = float(np.finfo(np.float32).eps)


def reordered_float32_atol(reference, reduction_length: int,
                           depth: int = 1) -> float:
  """The absolute tolerance for a float32 result computed twice with its
  sums in another order or length (padding, jit fusion, the CPU's vector
  width: AVX-512 splits a sum otherwise than AVX2).

  Rounding moves a sum of n terms by about eps * sqrt(n) times the size of
  its terms (the roundings add up like a random walk), and each of the
  `depth` sums in a row that the result passes through (a layer, its
  backward pass) adds as much again. The scale is the array's largest
  entry: an entry near zero keeps the absolute error of the large terms it
  was summed from, which an elementwise rtol does not allow for. The factor
  8 is the margin over that estimate.
  """
  scale = float(np.abs(np.asarray(reference, np.float32)).max())
  return 8 * depth * FLOAT32_EPS * np.sqrt(reduction_length) * scale


def assert_reordered_float32_close(actual, expected, reduction_length: int,
                                   depth: int = 1):
  """Every array of `actual` (a pytree) within `reordered_float32_atol` of
  `expected`'s, each against its own scale."""
  import jax  # pylint: disable=g-import-not-at-top
  actual, expected = (jax.tree.leaves(t) for t in (actual, expected))
  assert len(actual) == len(expected)
  for a, e in zip(actual, expected):
    a, e = np.asarray(a, np.float32), np.asarray(e, np.float32)
    assert a.shape == e.shape
    np.testing.assert_allclose(
        a, e, rtol=0, atol=reordered_float32_atol(e, reduction_length, depth))


def make_image_folder(root, num_classes=3, train_per_class=6,
                      test_per_class=3, size=32, seed=0):
  """A {train,test}/<class>/*.png dataset with class-dependent colours."""
  rng = np.random.default_rng(seed)
  for split, count in (('train', train_per_class), ('test', test_per_class)):
    for c in range(num_classes):
      folder = os.path.join(root, split, f'class_{c}')
      os.makedirs(folder, exist_ok=True)
      for i in range(count):
        base = np.full((size, size, 3), 40 + 80 * c, np.uint8)
        noise = rng.integers(0, 30, (size, size, 3), dtype=np.uint8)
        Image.fromarray(base + noise).save(os.path.join(folder, f'{i}.png'))
  return str(root)


# JAX's persistent compilation cache for the command lines tests start: the
# same small training step then compiles once, not once per process (a run
# of the tests' 8-step command: 40 s -> 15 s, the same model.npz bytes).
_JAX_CACHE_ENV = {
    'JAX_COMPILATION_CACHE_DIR': os.path.join(
        tempfile.gettempdir(), f'vit_jax_tests_jax_cache_{os.getuid()}'),
    'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
    'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0',
}


def free_port() -> int:
  """A TCP port on 127.0.0.1 that is free now (a coordinator's, say)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def wait_all(processes, expected_status=0, timeout=400) -> list[str]:
  """The outputs of `processes`, each of which must end with
  `expected_status`; the rest are killed if one fails or hangs."""
  outputs = []
  try:
    for process in processes:
      output, _ = process.communicate(timeout=timeout)
      assert process.returncode == expected_status, output
      outputs.append(output)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
  return outputs


def run_cli(args, env_extra=None, **kwargs):
  """Runs `python -m vit_jax.main ARGS` from the repo root."""
  env = dict(os.environ, **(env_extra or {}))
  env.setdefault('JAX_PLATFORMS', 'cpu')
  for name, value in _JAX_CACHE_ENV.items():
    env.setdefault(name, value)
  return subprocess.Popen([sys.executable, '-m', 'vit_jax.main', *args],
                          cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **kwargs)


@contextlib.contextmanager
def local_http_server(handler):
  """A threaded HTTP server for `handler` on 127.0.0.1 (a free port),
  serving in the background until the block ends."""
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  server.url = f'http://127.0.0.1:{server.server_port}'
  thread = threading.Thread(target=server.serve_forever, args=(0.05,),
                            daemon=True)
  thread.start()
  try:
    yield server
  finally:
    server.shutdown()
    server.server_close()


@pytest.fixture(name='image_folder')
def fixture_image_folder(tmp_path):
  return make_image_folder(tmp_path / 'data')


def pytest_configure(config):
  config.addinivalue_line('markers', 'gpu: needs a GPU; skipped elsewhere.')


def pytest_collection_modifyitems(config, items):
  """Skips `gpu` tests unless JAX's default backend is a GPU."""
  gpu_items = [item for item in items if 'gpu' in item.keywords]
  if not gpu_items:
    return
  import jax  # pylint: disable=g-import-not-at-top
  if jax.default_backend() == 'gpu':
    return
  skip = pytest.mark.skip(reason=f'needs a GPU (backend: '
                                 f'{jax.default_backend()})')
  for item in gpu_items:
    item.add_marker(skip)
