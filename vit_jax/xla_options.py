"""XLA compile options for the training and evaluation steps, per backend.

XLA:CPU (jax 0.10) hands matmuls and the elementwise ops around them to
YNNPACK by default ("YNN fusions"). For ViT training on CPU, XLA's own
emitters with Eigen matmuls are faster, while YNNPACK's reductions beat
XLA's (which XLA:CPU splits into trees of 32-element windows): so on CPU
only reductions go to YNNPACK (BENCHMARKS.md, "CPU: fourth round").
GPUs and TPUs get XLA's defaults.

The choice is plain code, `for_backend`, which tests run with every
backend's name; `accepted` drops an option this XLA does not know (older
or newer jaxlib), so a renamed option costs speed, never a crash.
"""

import functools

import jax

# XLA:CPU: YNNPACK takes reductions only; dots and elementwise ops stay XLA's.
CPU_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type':
               'LIBRARY_FUSION_TYPE_REDUCE'}


def for_backend(backend: str) -> dict[str, str]:
  """The compile options for jitted steps on `backend` ('cpu', 'gpu', ...)."""
  if backend != 'cpu':
    return {}
  return {name: value for name, value in CPU_OPTIONS.items()
          if accepted(name, value)}


@functools.lru_cache(maxsize=None)
def accepted(name: str, value: str) -> bool:
  """Whether this process's XLA compiles with option `name`=`value`."""
  try:
    jax.jit(lambda x: x + 1).lower(1.0).compile({name: value})
  except Exception:  # pylint: disable=broad-except
    return False  # XLA reports an unknown option or value as a compile error.
  return True


def jit(fn, **kwargs):
  """`jax.jit(fn, **kwargs)` with this process's backend's options."""
  return jax.jit(fn, compiler_options=for_backend(jax.default_backend()) or
                 None, **kwargs)
