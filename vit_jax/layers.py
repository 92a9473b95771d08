"""LayerNorm, tanh-GELU and softmax attention with hand-written backward passes.

Their forward passes are the usual ones, op for op (bit-identical to
`flax.linen.LayerNorm`, `jax.nn.gelu(approximate=True)` and
softmax(QK^T/sqrt(K))V; tests/test_layers.py checks it). What differs is
what autodiff would keep for the backward pass and how much it re-reads:

  * LayerNorm keeps its input and two numbers per token, and computes the
    input gradient in one pass (dx = rstd * (g - mean(g) - xhat * mean(g *
    xhat)), g = dy * scale) instead of differentiating mean, variance and
    rsqrt one by one. Optimization barriers after the per-token numbers
    keep XLA:CPU from spreading them (or the scale) into full-size tensors
    that are written only to be read again.
  * GELU keeps its input alone and recomputes tanh in the backward pass.
  * Attention keeps the softmax weights and the output, and uses
    rowsum(dP * P) = rowsum(dO * O) (FlashAttention's identity) for the
    softmax backward: a reduction over the K head dims rather than the L
    keys.

On CPU these cut the ViT-Ti/16 training step's time (BENCHMARKS.md); the
gradients agree with autodiff's to float32 rounding.
"""

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

_SQRT_2_OVER_PI = 0.7978845608028654  # sqrt(2 / pi), as in jax.nn.gelu.
_GELU_CUBIC = 0.044715


# ---------------------------------------------------------------- LayerNorm


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm(x, scale, bias, epsilon: float, dtype):
  """flax's LayerNorm over the last axis: float32 statistics (fast
  variance, E[x^2] - E[x]^2, clipped at 0), result in `dtype`."""
  return _layer_norm_forward(x, scale, bias, epsilon, dtype)[0]


def _layer_norm_forward(x, scale, bias, epsilon, dtype):
  x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = jnp.mean(x32, -1, keepdims=True)
  mean_sq = jnp.mean(jax.lax.square(x32), -1, keepdims=True)
  var = jnp.maximum(0.0, mean_sq - jax.lax.square(mean))
  rstd = jax.lax.rsqrt(var + epsilon)
  # The barrier ends the statistics' fusion at the two per-token numbers.
  # Without it XLA:CPU ends its reduction fusion with rstd broadcast to the
  # input's full shape, a tensor written and read again for nothing.
  mean, rstd = jax.lax.optimization_barrier((mean, rstd))
  y = (x32 - mean) * (rstd * scale) + bias
  return y.astype(dtype), (x, mean, rstd, scale)


def _layer_norm_backward(epsilon, dtype, residuals, dy):
  del epsilon, dtype
  x, mean, rstd, scale = residuals
  xhat = (x.astype(mean.dtype) - mean) * rstd
  dy = dy.astype(mean.dtype)
  # mean(g) and mean(g * xhat), g = dy * scale, as matrix-vector products
  # with the scale: no full-size broadcast of the scale is built for them,
  # and the barrier keeps XLA from fusing them into the full-size result.
  # HIGHEST: full float32 products on GPUs and TPUs too.
  matvec = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
  width = x.shape[-1]
  mean_g = matvec(dy, scale)[..., None] / width
  mean_g_xhat = matvec(dy * xhat, scale)[..., None] / width
  mean_g, mean_g_xhat = jax.lax.optimization_barrier((mean_g, mean_g_xhat))
  dx = rstd * (dy * scale - mean_g - xhat * mean_g_xhat)
  token_axes = tuple(range(x.ndim - 1))
  return (dx.astype(x.dtype), jnp.sum(dy * xhat, token_axes).astype(
      scale.dtype), jnp.sum(dy, token_axes).astype(scale.dtype))


layer_norm.defvjp(_layer_norm_forward, _layer_norm_backward)


class LayerNorm(nn.Module):
  """`flax.linen.LayerNorm`'s parameters ('scale', 'bias'), initialisation
  and forward pass, with the one-pass backward above."""
  dtype: Optional[Any] = None  # Result dtype; default: x's, at least float32.
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (width,))
    bias = self.param('bias', nn.initializers.zeros, (width,))
    dtype = self.dtype or jnp.promote_types(x.dtype, jnp.float32)
    return layer_norm(x, scale, bias, self.epsilon, jnp.dtype(dtype))


# --------------------------------------------------------------------- GELU


@jax.custom_vjp
def gelu_tanh(x):
  """`jax.nn.gelu(x, approximate=True)`, keeping only x for the backward."""
  return jax.nn.gelu(x, approximate=True)


def _gelu_forward(x):
  return gelu_tanh(x), x


def _gelu_backward(x, dy):
  x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  x_sq = x32 * x32
  t = jnp.tanh(_SQRT_2_OVER_PI * (x32 + _GELU_CUBIC * x_sq * x32))
  slope = 0.5 * (1.0 + t) + 0.5 * x32 * (1.0 - t * t) * _SQRT_2_OVER_PI * (
      1.0 + 3.0 * _GELU_CUBIC * x_sq)
  return ((dy.astype(x32.dtype) * slope).astype(x.dtype),)


gelu_tanh.defvjp(_gelu_forward, _gelu_backward)


# ---------------------------------------------------------------- attention


@jax.custom_vjp
def softmax_attention(q_BxHxLxK, k_BxHxLxK, v_BxHxLxK):
  """softmax(QK^T/sqrt(K))V on B x H x L x K arrays; softmax in float32."""
  return _attention_forward(q_BxHxLxK, k_BxHxLxK, v_BxHxLxK)[0]


def attention_weights(q_BxHxLxK, k_BxHxLxK):
  """softmax(QK^T/sqrt(K)), B x H x L x L, computed in float32."""
  q_scaled = q_BxHxLxK * q_BxHxLxK.shape[-1] ** -0.5
  logits_BxHxLxL = jnp.einsum('bhqk,bhtk->bhqt', q_scaled, k_BxHxLxK)
  return jax.nn.softmax(
      logits_BxHxLxL.astype(jnp.float32)).astype(q_BxHxLxK.dtype)


def _attention_forward(q_BxHxLxK, k_BxHxLxK, v_BxHxLxK):
  weights_BxHxLxL = attention_weights(q_BxHxLxK, k_BxHxLxK)
  out_BxHxLxK = jnp.einsum('bhqt,bhtk->bhqk', weights_BxHxLxL, v_BxHxLxK)
  q_scaled = q_BxHxLxK * q_BxHxLxK.shape[-1] ** -0.5
  return out_BxHxLxK, (q_scaled, k_BxHxLxK, v_BxHxLxK, weights_BxHxLxL,
                       out_BxHxLxK)


def _attention_backward(residuals, d_out_BxHxLxK):
  q_scaled, k, v, weights_BxHxLxL, out_BxHxLxK = residuals
  scale = q_scaled.shape[-1] ** -0.5
  # d_v and d_k contract the L x L matrices over their first (query) axis.
  # XLA:CPU does that in place; transposed copies first were slower
  # (BENCHMARKS.md, "CPU: eighth round").
  d_v = jnp.einsum('bhqt,bhqk->bhtk', weights_BxHxLxL, d_out_BxHxLxK)
  d_weights = jnp.einsum('bhqk,bhtk->bhqt', d_out_BxHxLxK, v)
  f32 = jnp.float32
  # Softmax backward, dL = P * (dP - rowsum(dP * P)), with rowsum(dP * P)
  # = rowsum(dO * O) because O = P V.
  row_BxHxLx1 = jnp.sum(d_out_BxHxLxK.astype(f32) * out_BxHxLxK.astype(f32),
                        -1, keepdims=True)
  d_logits = (weights_BxHxLxL.astype(f32)
              * (d_weights.astype(f32) - row_BxHxLx1)).astype(q_scaled.dtype)
  d_q = jnp.einsum('bhqt,bhtk->bhqk', d_logits, k) * scale
  d_k = jnp.einsum('bhqt,bhqk->bhtk', d_logits, q_scaled)
  return d_q, d_k, d_v


softmax_attention.defvjp(_attention_forward, _attention_backward)
