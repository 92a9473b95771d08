"""Lets XLA:CPU reuse host memory between steps instead of faulting it in.

XLA:CPU allocates each step's scratch memory (the activations kept for the
backward pass: 162 MB for the `:cpu` scratch preset) with malloc on its worker
threads. glibc serves requests that large with a fresh mmap() and returns them
with munmap(), so every step the kernel faults in and zeroes the same amount
of memory again: a quarter of all CPU time on the `:cpu` preset (measured with
`perf`). Serving every thread from the main heap (one arena, no mmap) and not
trimming that heap lets each step reuse the pages of the previous one:
1.1-1.4x the training steps per second on 2 cores (BENCHMARKS.md), with
bit-identical results. The process keeps its peak heap until it exits, which
suits a training run.

Only for runs on the CPU: with one arena, the many threads of a tf.data
pipeline that feeds an accelerator would queue for malloc's lock.
"""

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
from typing import Optional

# mallopt() parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0),
             (_M_TRIM_THRESHOLD, 2**31 - 1))


def accelerator_plugins() -> list[str]:
  """JAX plugins (GPU, TPU, ...) installed here, found without starting JAX."""
  found = [ep.name for ep in importlib.metadata.entry_points(
      group='jax_plugins')]
  for module in ('jax_plugins', 'libtpu'):
    if importlib.util.find_spec(module) is not None:
      found.append(module)
  return found


def will_run_on_cpu(platforms: Optional[str], plugins: list[str]) -> bool:
  """Whether JAX's default backend will be the CPU, known before JAX starts.

  Args:
    platforms: jax.config.jax_platforms (JAX_PLATFORMS), e.g. 'cuda,cpu'.
    plugins: accelerator_plugins().
  """
  if platforms:
    return platforms.split(',')[0] == 'cpu'
  return not plugins


def reuse_freed_memory() -> bool:
  """Tunes glibc's malloc as described above; False where that is not glibc.

  Must run before any thread other than the main one has allocated memory
  (before JAX starts its backend and before tf.data runs): glibc fixes the
  number of arenas the first time a thread asks for one.
  """
  try:
    mallopt = ctypes.CDLL(ctypes.util.find_library('c')).mallopt
  except (OSError, AttributeError, TypeError):
    return False
  return all(mallopt(param, value) == 1 for param, value in _SETTINGS)
