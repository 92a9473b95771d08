"""Tests for vit_jax.layers: forward passes op-for-op equal to the library
versions they replace, backward passes equal to autodiff's."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import hlo_computations
from vit_jax import layers
from vit_jax import xla_options


def _normal(seed, shape, dtype=jnp.float32, scale=1.0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.standard_normal(shape) * scale, dtype)


def _assert_close(actual, expected, rtol):
  """Relative to the largest entry, so that near-zero entries don't count."""
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    a, e = np.asarray(a, np.float32), np.asarray(e, np.float32)
    assert a.shape == e.shape
    np.testing.assert_allclose(a, e, atol=rtol * np.abs(e).max(), rtol=0)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_layer_norm_forward_is_flax_bit_for_bit(dtype):
  x = _normal(0, (4, 7, 48), dtype, scale=3.0) + 1.5
  ours, theirs = layers.LayerNorm(dtype=dtype), nn.LayerNorm(dtype=dtype)
  params = theirs.init(jax.random.PRNGKey(0), x)
  params = jax.tree.map(lambda p: p + _normal(1, p.shape), params)
  assert (jax.tree.structure(ours.init(jax.random.PRNGKey(0), x))
          == jax.tree.structure(params))
  got = jax.jit(ours.apply)(params, x)
  want = jax.jit(theirs.apply)(params, x)
  assert got.dtype == want.dtype == dtype
  np.testing.assert_array_equal(np.asarray(got, np.float32),
                                np.asarray(want, np.float32))


def test_layer_norm_gradients_match_autodiff_of_flax():
  x = _normal(0, (4, 7, 48), scale=2.0) - 0.5
  ours, theirs = layers.LayerNorm(), nn.LayerNorm()
  params = jax.tree.map(lambda p: p + _normal(1, p.shape),
                        theirs.init(jax.random.PRNGKey(0), x))
  upstream = _normal(2, x.shape)

  def grads(module):
    loss = lambda p, x: jnp.sum(module.apply(p, x) * upstream)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)

  _assert_close(grads(ours), grads(theirs), rtol=2e-6)


def test_gelu_forward_is_jax_bit_for_bit_and_gradient_matches():
  x = _normal(0, (1000,), scale=4.0)
  np.testing.assert_array_equal(
      jax.jit(layers.gelu_tanh)(x),
      jax.jit(lambda x: jax.nn.gelu(x, approximate=True))(x))
  grad = lambda f: jax.jit(jax.grad(lambda x: jnp.sum(f(x) * x)))(x)
  _assert_close(grad(layers.gelu_tanh),
                grad(lambda x: jax.nn.gelu(x, approximate=True)), rtol=1e-6)


def _plain_attention(q, k, v):
  """softmax(QK^T/sqrt(K))V, the textbook form autodiff differentiates."""
  logits = jnp.einsum('bhqk,bhtk->bhqt', q * q.shape[-1] ** -0.5, k)
  weights = jax.nn.softmax(logits.astype(jnp.float32)).astype(q.dtype)
  return jnp.einsum('bhqt,bhtk->bhqk', weights, v)


@pytest.mark.parametrize('dtype,rtol', [(jnp.float32, 2e-6),
                                        (jnp.bfloat16, 2e-2)])
def test_attention_matches_autodiff_of_the_plain_form(dtype, rtol):
  q, k, v, upstream = (_normal(i, (2, 3, 13, 8), dtype, scale=2.0)
                       for i in range(4))
  np.testing.assert_array_equal(
      np.asarray(jax.jit(layers.softmax_attention)(q, k, v), np.float32),
      np.asarray(jax.jit(_plain_attention)(q, k, v), np.float32))

  def grads(f):
    loss = lambda *qkv: jnp.sum((f(*qkv) * upstream).astype(jnp.float32))
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)

  ours = grads(layers.softmax_attention)
  assert all(g.dtype == dtype for g in ours)
  _assert_close(ours, grads(_plain_attention), rtol=rtol)


def _spread_out_tensors(hlo: str, size: int) -> list[str]:
  """Top-level fusions with `size` elements that only spread smaller values
  out: their root is a broadcast, or none of their operands has `size`
  elements. Such a tensor is written only to be read again."""
  roots, sizes = {}, {}
  for name, body in hlo_computations(hlo).items():
    root = re.search(r'ROOT %?[\w.\-]+ = \w+\[[\d,]*\]\S* (\w+)\(', body)
    if root:
      roots[name] = root.group(1)
  entry = hlo[hlo.index('ENTRY'):]
  for line in entry.splitlines():
    defined = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = \w+\[([\d,]*)\]', line)
    if defined:
      dims = [int(d) for d in defined.group(2).split(',') if d]
      sizes[defined.group(1)] = int(np.prod(dims))
  found = []
  for line in entry.splitlines():
    fusion = re.match(
        r'\s*%?([\w.\-]+) = \S+ fusion\(([^)]*)\).*calls=%?([\w.\-]+)', line)
    if not fusion or sizes[fusion.group(1)] != size:
      continue
    operands = re.findall(r'%([\w.\-]+)', fusion.group(2))
    if (roots.get(fusion.group(3)) == 'broadcast'
        or all(sizes.get(name, 0) < size for name in operands)):
      found.append(line.strip()[:120])
  return found


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='XLA:CPU fusions')
def test_layer_norm_gradient_builds_no_full_size_broadcast_on_cpu():
  # XLA:CPU used to end the statistics' fusion with rstd broadcast to the
  # input's shape, and to broadcast the scale for the backward pass's
  # reductions: tensors written only to be read again (BENCHMARKS.md).
  x = _normal(0, (32, 197, 192))  # ViT-Ti/16's: fusion choices vary by size.
  module = layers.LayerNorm()
  params = module.init(jax.random.PRNGKey(0), x)
  loss = lambda p, x, upstream: jnp.sum(module.apply(p, x) * upstream)
  grad = xla_options.jit(jax.grad(loss, argnums=(0, 1)))
  hlo = grad.lower(params, x, x).compile().as_text()
  assert _spread_out_tensors(hlo, x.size) == []
