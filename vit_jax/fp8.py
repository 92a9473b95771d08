"""FP8 matmuls for the encoder's dense layers: an option, off by default.

With `fp8=True` (config.model.fp8) the q/k/v, out and MLP projections
multiply float8 copies of their operands: the input and the kernel in
float8_e4m3fn (3 mantissa bits, range +-448), the incoming gradient in
float8_e5m2 (2 mantissa bits, range +-57344: gradients span more binades).
The patch embedding, the head and the attention core stay in the compute
dtype.

Scaling is per tensor and "current": each step scales every operand by the
power of two that brings its largest magnitude just under the format's
maximum. No amax history is kept, so the variables are the model's usual
parameters (checkpoints and the published weights are unaffected), and
gradient accumulation, remat and resumption need nothing special. (This is
why `flax.linen.fp8_ops` is not used: its delayed scaling keeps scales and
amax histories in a mutable collection, updated through the gradients.)
Powers of two make the scaling exact: only the rounding to 8 bits loses
anything.

Each matmul is written as dot(convert(a_fp8) * scale_a, convert(b_fp8) *
scale_b), the pattern XLA's GPU compiler turns into one cuBLASLt FP8 GEMM
on GPUs with FP8 tensor cores (compute capability 8.9 and up: Ada, Hopper,
Blackwell; `has_fp8_gemm`). Elsewhere the same program runs as ordinary
matmuls of the rounded values: slower than without FP8, but numerically
FP8's rounding, which is how CPU tests check it. One difference remains:
Hopper's FP8 tensor cores accumulate with less than float32 precision, and
the emulation accumulates in the compute dtype.
"""

import functools
import re
from typing import Any, Optional

import jax
import jax.extend
import jax.numpy as jnp

FORWARD_DTYPE = jnp.float8_e4m3fn  # Inputs and kernels.
GRADIENT_DTYPE = jnp.float8_e5m2  # Gradients flowing back into a matmul.
MIN_COMPUTE_CAPABILITY = (8, 9)  # cuBLASLt FP8 GEMMs: Ada and later.


def has_fp8_gemm(platform: str, compute_capability: Optional[str]) -> bool:
  """Whether XLA runs our FP8 matmuls as FP8 GEMMs on such a device.

  Only NVIDIA GPUs of compute capability >= 8.9 do (AMD's MI300 uses other
  FP8 formats, TPUs and CPUs upcast). `compute_capability` is the device's
  attribute of that name, e.g. '9.0'; None where the device has none.
  """
  if platform not in ('gpu', 'cuda') or not compute_capability:
    return False
  major, _, minor = compute_capability.partition('.')
  if not (major.isdigit() and minor.isdigit()):
    return False  # e.g. ROCm's 'gfx942'.
  return (int(major), int(minor)) >= MIN_COMPUTE_CAPABILITY


def device_has_fp8_gemm(device: jax.Device) -> bool:
  """`has_fp8_gemm` for a JAX device."""
  return has_fp8_gemm(device.platform,
                      getattr(device, 'compute_capability', None))


def emulation_warning(device: jax.Device) -> Optional[str]:
  """A sentence for the log when FP8 is asked for where it only costs time."""
  if device_has_fp8_gemm(device):
    return None
  capability = getattr(device, 'compute_capability', None)
  where = device.device_kind + (
      f' (compute capability {capability})' if capability else '')
  return (f'config.model.fp8 is on, but {where} has no FP8 GEMMs: the FP8 '
          'matmuls are emulated (FP8 rounding, slower than without FP8). '
          'They run as FP8 GEMMs on NVIDIA GPUs of compute capability 8.9 '
          'and up (Ada, Hopper, Blackwell).')


def power_of_two_scale(x: jax.Array, fp8_dtype) -> jax.Array:
  """The smallest power of two s with max|x| / s <= the format's maximum.

  A float32 scalar; 1 for an all-zero tensor. Computed with frexp, so it is
  exact: x / s and q * s only move exponents.
  """
  amax = jnp.max(jnp.abs(x)).astype(jnp.float32)
  mantissa, exponent = jnp.frexp(amax / float(jnp.finfo(fp8_dtype).max))
  # ratio = mantissa * 2**exponent with mantissa in [0.5, 1): the smallest
  # power of two >= ratio is 2**(exponent - 1) when mantissa is exactly 0.5.
  exponent = exponent - (mantissa == 0.5).astype(exponent.dtype)
  scale = jnp.ldexp(jnp.float32(1), exponent)
  return jnp.where(amax > 0, scale, jnp.float32(1))


def quantize(x: jax.Array, fp8_dtype) -> tuple[jax.Array, jax.Array]:
  """x as (q, scale) with x ~= q * scale, q in `fp8_dtype` (round to
  nearest even; no overflow: |x| / scale <= the format's maximum)."""
  scale = jax.lax.stop_gradient(power_of_two_scale(x, fp8_dtype))
  # The clip only matters if the division rounded up past the maximum.
  largest = float(jnp.finfo(fp8_dtype).max)
  scaled = jnp.clip(x.astype(jnp.float32) / scale, -largest, largest)
  return scaled.astype(fp8_dtype), scale


def dequantize(q: jax.Array, scale: jax.Array, dtype) -> jax.Array:
  """q * scale in `dtype`: the convert-then-multiply-by-a-scalar that XLA's
  GPU compiler folds into an FP8 GEMM reading q."""
  return q.astype(dtype) * scale.astype(dtype)


def dot_general(lhs, rhs, dimension_numbers, precision=None,
                preferred_element_type=None):
  """`jax.lax.dot_general` with FP8 operands (see the module docstring).

  A drop-in `dot_general` for `flax.linen.Dense`: `precision` is ignored
  (the operands are FP8), the result has `preferred_element_type` or the
  operands' common dtype.
  """
  del precision
  out_dtype = jnp.dtype(preferred_element_type or jnp.result_type(lhs, rhs))
  return _fp8_dot(lhs, rhs, _freeze(dimension_numbers),
                  (jnp.dtype(lhs.dtype), jnp.dtype(rhs.dtype), out_dtype))


def _freeze(dimension_numbers):
  """Dimension numbers as nested tuples (hashable, for custom_vjp)."""
  (lc, rc), (lb, rb) = dimension_numbers
  return (tuple(lc), tuple(rc)), (tuple(lb), tuple(rb))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _fp8_dot(lhs, rhs, dimension_numbers, dtypes):
  return _fp8_dot_forward(lhs, rhs, dimension_numbers, dtypes)[0]


def _fp8_dot_forward(lhs, rhs, dimension_numbers, dtypes):
  lhs_dtype, rhs_dtype, out_dtype = dtypes
  dot_dtype = jnp.result_type(lhs_dtype, rhs_dtype)
  lhs_q, lhs_scale = quantize(lhs, FORWARD_DTYPE)
  rhs_q, rhs_scale = quantize(rhs, FORWARD_DTYPE)
  out = jax.lax.dot_general(
      dequantize(lhs_q, lhs_scale, dot_dtype),
      dequantize(rhs_q, rhs_scale, dot_dtype), dimension_numbers,
      preferred_element_type=out_dtype)
  # The backward pass reads the FP8 copies: a quarter of float32's bytes.
  return out, (lhs_q, lhs_scale, rhs_q, rhs_scale)


def _fp8_dot_backward(dimension_numbers, dtypes, residuals, d_out):
  lhs_dtype, rhs_dtype, _ = dtypes
  lhs_q, lhs_scale, rhs_q, rhs_scale = residuals
  # Dequantized straight into the dot's dtype: a convert in between would
  # hide the pattern from XLA.
  dot_dtype = jnp.result_type(lhs_dtype, rhs_dtype)
  d_out = dequantize(*quantize(d_out, GRADIENT_DTYPE), dot_dtype)
  # The gradients of a dot are dots of the cotangent with the other operand:
  # jax's transpose rule writes them, here on the dequantized operands.
  lhs = dequantize(lhs_q, lhs_scale, dot_dtype)
  rhs = dequantize(rhs_q, rhs_scale, dot_dtype)
  dot = functools.partial(jax.lax.dot_general,
                          dimension_numbers=dimension_numbers)
  d_lhs, = jax.linear_transpose(lambda a: dot(a, rhs), lhs)(d_out)
  d_rhs, = jax.linear_transpose(lambda b: dot(lhs, b), rhs)(d_out)
  return d_lhs.astype(lhs_dtype), d_rhs.astype(rhs_dtype)


_fp8_dot.defvjp(_fp8_dot_forward, _fp8_dot_backward)


def dot_general_for(fp8: bool) -> Any:
  """The `dot_general` a dense layer uses: FP8's or XLA's own."""
  return dot_general if fp8 else jax.lax.dot_general


# ------------------------------------------------- which matmuls become FP8

# Ops XLA's GEMM rewriter lets stand between a dequantization and the dot
# (it moves them before the dequantization, onto the FP8 tensor).
_LAYOUT_OPS = frozenset({'reshape', 'transpose', 'broadcast_in_dim', 'copy',
                         'squeeze', 'expand_dims', 'slice', 'dynamic_slice',
                         'pad'})


def count_fp8_matmuls(closed_jaxpr) -> tuple[int, int]:
  """(matmuls XLA can run as FP8 GEMMs, all matmuls) in a jaxpr.

  The rule is that of XLA's GPU GEMM rewriter: each operand of the dot is,
  up to layout ops, convert(x_fp8) * scalar, and at least one of the two
  is float8_e4m3fn (cuBLASLt has no e5m2 x e5m2 GEMM). Sub-jaxprs (jit,
  remat, custom_vjp) are searched too. On a GPU, benchmarks/check_fp8.py
  compares the first number with the FP8 GEMMs in the compiled program.
  """
  fp8_dots = all_dots = 0
  for jaxpr in _jaxprs_within(closed_jaxpr.jaxpr):
    producers = {out: eqn for eqn in jaxpr.eqns for out in eqn.outvars}
    for eqn in jaxpr.eqns:
      if eqn.primitive.name != 'dot_general':
        continue
      all_dots += 1
      types = {_dequantized_fp8_type(v, producers) for v in eqn.invars}
      fp8_dots += None not in types and jnp.dtype(FORWARD_DTYPE) in types
  return fp8_dots, all_dots


def _jaxprs_within(jaxpr):
  """The jaxpr and every jaxpr nested in its equations' parameters."""
  yield jaxpr
  for eqn in jaxpr.eqns:
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, 'jaxpr', sub)  # ClosedJaxpr -> Jaxpr.
        if hasattr(sub, 'eqns'):
          yield from _jaxprs_within(sub)


def _dequantized_fp8_type(var, producers):
  """The FP8 dtype `var` is dequantized from (convert * scalar, up to
  layout ops), or None."""
  eqn = _producer(var, producers)
  while eqn is not None and eqn.primitive.name in _LAYOUT_OPS:
    eqn = _producer(eqn.invars[0], producers)
  if eqn is None or eqn.primitive.name != 'mul':
    return None
  for value, scale in (eqn.invars, eqn.invars[::-1]):
    convert = _producer(value, producers)
    if (convert is not None and
        convert.primitive.name == 'convert_element_type' and
        _is_scalar(scale, producers)):
      source = convert.invars[0].aval.dtype
      if source in (jnp.dtype(FORWARD_DTYPE), jnp.dtype(GRADIENT_DTYPE)):
        return source
  return None


def _is_scalar(var, producers):
  """A scalar, or a broadcast of one (what XLA sees as the scale)."""
  if var.aval.shape == ():
    return True
  eqn = _producer(var, producers)
  return (eqn is not None and eqn.primitive.name == 'broadcast_in_dim' and
          eqn.invars[0].aval.shape == ())


def _producer(var, producers):
  """The equation that computes `var`; None for inputs and literals."""
  return None if isinstance(var, jax.extend.core.Literal) else producers.get(
      var)


_FP8_FUSION_OPERAND = re.compile(r'fusion\([^)]*f8e(4m3fn|5m2)\[')


def count_compiled_fp8_gemms(hlo_text: str) -> dict[str, int]:
  """FP8 GEMMs in a compiled program's HLO text (`compiled.as_text()`):
  cuBLASLt FP8 calls, and Triton GEMM fusions that read FP8 operands."""
  lines = hlo_text.splitlines()
  cublas = sum('custom-call(' in line and '__cublas$lt$matmul$f8' in line
               for line in lines)
  triton = sum('__triton_gemm' in line and
               _FP8_FUSION_OPERAND.search(line) is not None for line in lines)
  return {'cublaslt_fp8': cublas, 'triton_fp8': triton}
