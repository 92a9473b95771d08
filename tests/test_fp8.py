"""FP8 matmuls (vit_jax/fp8.py): exact numerics against an independent numpy
reference, the GEMM-rewrite rule a GPU compiler applies, and the model and
training run with the option on."""

import functools
import logging
import math
import types

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from tests.conftest import experiment_config
from vit_jax import fp8
from vit_jax import inference
from vit_jax import models
from vit_jax import train

E4M3, E5M2 = ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2
MAX = {E4M3: 448.0, E5M2: 57344.0}
BLD_DHK_TO_BLHK = (((2,), (0,)), ((), ()))


def reference_qdq(x, fp8_type):
  """x rounded to FP8 under a per-tensor power-of-two scale, in float64:
  numpy and ml_dtypes, no JAX."""
  x = np.asarray(x, np.float64)
  amax = np.abs(x).max()
  if amax == 0:
    return x
  scale = 2.0 ** math.ceil(math.log2(amax / MAX[fp8_type]))
  if amax / scale > MAX[fp8_type]:  # log2 rounded down across a power of 2.
    scale *= 2
  return (x / scale).astype(np.float32).astype(fp8_type).astype(
      np.float64) * scale


@pytest.mark.parametrize('platform,capability,expected', [
    ('gpu', '9.0', True),    # Hopper
    ('gpu', '8.9', True),    # Ada
    ('gpu', '10.0', True),   # Blackwell
    ('cuda', '12.0', True),
    ('gpu', '8.6', False),   # Ampere: no FP8 tensor cores
    ('gpu', '8.0', False),
    ('gpu', 'gfx942', False),  # MI300: other FP8 formats
    ('gpu', None, False),
    ('cpu', None, False),
    ('tpu', None, False),
])
def test_fp8_gemm_devices(platform, capability, expected):
  assert fp8.has_fp8_gemm(platform, capability) is expected


def test_emulation_is_said_on_cpu_and_not_on_hopper():
  message = fp8.emulation_warning(jax.devices()[0])
  assert 'emulated' in message and 'compute capability 8.9' in message
  hopper = types.SimpleNamespace(platform='gpu', compute_capability='9.0',
                                 device_kind='NVIDIA H100')
  assert fp8.emulation_warning(hopper) is None
  ampere = types.SimpleNamespace(platform='gpu', compute_capability='8.0',
                                 device_kind='NVIDIA A100')
  assert 'NVIDIA A100 (compute capability 8.0)' in fp8.emulation_warning(
      ampere)


@pytest.mark.parametrize('fp8_type', [E4M3, E5M2])
def test_scale_is_the_tightest_power_of_two(fp8_type):
  rng = np.random.default_rng(0)
  largest = MAX[fp8_type]
  amaxes = [largest, largest * 2.0**-20, largest * 8, largest * 1.0001,
            largest * 0.9999, 1e-30, 3e30] + list(10.0**rng.uniform(-8, 8, 20))
  for amax in amaxes:
    x = np.array([0.5 * amax, -amax, 0.0], np.float32)
    scale = float(fp8.power_of_two_scale(jnp.asarray(x), fp8_type))
    mantissa, _ = math.frexp(scale)
    assert mantissa == 0.5, (amax, scale)  # A power of two.
    assert np.abs(x).max() / scale <= largest, (amax, scale)
    assert np.abs(x).max() / scale > largest / 2, (amax, scale)
  assert float(fp8.power_of_two_scale(jnp.zeros(4), fp8_type)) == 1.0


@pytest.mark.parametrize('fp8_type', [E4M3, E5M2])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_quantize_dequantize_matches_numpy(fp8_type, dtype):
  x = jax.random.normal(jax.random.key(1), (64, 40)) * 7.0
  x = x.at[3, 4].set(0.0).at[5, 6].set(-1e-6).astype(dtype)
  q, scale = fp8.quantize(x, fp8_type)
  assert q.dtype == jnp.dtype(fp8_type)
  got = np.asarray(fp8.dequantize(q, scale, jnp.float32), np.float64)
  np.testing.assert_array_equal(got, reference_qdq(np.asarray(x, np.float32),
                                                   fp8_type))
  # The rounding is FP8's: far coarser than the input's, so this test sees it.
  assert not np.array_equal(got, np.asarray(x, np.float64))


def test_dot_general_forward_and_gradients_match_numpy():
  keys = jax.random.split(jax.random.key(2), 3)
  x = jax.random.normal(keys[0], (2, 7, 48)) * 3.0  # B x L x D
  kernel = jax.random.normal(keys[1], (48, 3, 16)) * 0.05  # D x H x K
  d_out = jax.random.normal(keys[2], (2, 7, 3, 16)) * 1e-3
  @jax.jit
  def forward_and_gradients(x, kernel, d_out):
    out, pullback = jax.vjp(
        lambda a, b: fp8.dot_general(a, b, BLD_DHK_TO_BLHK), x, kernel)
    return out, *pullback(d_out)

  out, d_x, d_kernel = forward_and_gradients(x, kernel, d_out)

  x8, k8 = reference_qdq(x, E4M3), reference_qdq(kernel, E4M3)
  g8 = reference_qdq(d_out, E5M2)
  np.testing.assert_allclose(out, np.einsum('bld,dhk->blhk', x8, k8),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(d_x, np.einsum('blhk,dhk->bld', g8, k8),
                             rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(d_kernel, np.einsum('bld,blhk->dhk', x8, g8),
                             rtol=1e-5, atol=1e-9)
  exact = np.einsum('bld,dhk->blhk', np.asarray(x, np.float64),
                    np.asarray(kernel, np.float64))
  assert np.abs(out - exact).max() > 1e-3  # FP8's error, not float32's.


def test_dot_general_keeps_dtypes_and_takes_flax_arguments():
  x = jnp.ones((4, 8), jnp.bfloat16)
  kernel = jnp.ones((8, 2), jnp.float32)
  out = fp8.dot_general(x, kernel, (((1,), (0,)), ((), ())),
                        precision=jax.lax.Precision.HIGHEST)
  assert out.dtype == jnp.float32
  grads = jax.grad(lambda a, b: fp8.dot_general(
      a, b, (((1,), (0,)), ((), ()))).sum(), (0, 1))(x, kernel)
  assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.float32]
  np.testing.assert_array_equal(grads[0], np.full((4, 8), 2.0))
  np.testing.assert_array_equal(grads[1], np.full((8, 2), 4.0))


# ------------------------------------------------- the GEMM-rewrite rule


def _counts(model, params, images, train_step):
  if train_step:
    fn = jax.value_and_grad(
        lambda p: model.apply(p, images, train=True).sum())
  else:
    fn = lambda p: model.apply(p, images)
  return fp8.count_fp8_matmuls(jax.make_jaxpr(jax.jit(fn))(params))


# Projection matmuls per block: q, k, v, out and 2 MLP ('xla'/'cudnn'), or
# one fused q/k/v matmul ('explicit'); training adds 2 gradient matmuls each.
@pytest.mark.parametrize('impl,per_block', [('xla', 6), ('explicit', 4)])
@pytest.mark.parametrize('train_step', [True, False])
def test_every_projection_and_nothing_else_becomes_an_fp8_gemm(
    impl, per_block, train_step):
  images = jnp.ones((2, 32, 32, 3))
  layers = 2
  counts = {}
  for use_fp8 in (False, True):
    model = models.get_model('ViT-Ti_16', 10, num_layers=layers,
                             attention_impl=impl, dtype=jnp.bfloat16,
                             fp8=use_fp8)
    params = jax.eval_shape(model.init, jax.random.key(0), images)
    counts[use_fp8] = _counts(model, params, images, train_step)
  expected = layers * per_block * (3 if train_step else 1)
  assert counts[True] == (expected, counts[False][1])
  assert counts[False][0] == 0


def test_rule_rejects_what_cublaslt_cannot_run():
  x = jnp.ones((32, 16))
  dims = (((1,), (0,)), ((), ()))

  def count(fn):
    return fp8.count_fp8_matmuls(jax.make_jaxpr(fn)(x))[0]

  qdq = lambda a, t: fp8.dequantize(*fp8.quantize(a, t), jnp.bfloat16)
  e4, e5 = fp8.FORWARD_DTYPE, fp8.GRADIENT_DTYPE
  assert count(lambda a: jax.lax.dot_general(qdq(a, e4), qdq(a.T, e5),
                                             dims)) == 1
  # Layout ops between the scaling and the dot are allowed ...
  assert count(lambda a: jax.lax.dot_general(
      qdq(a.T, e4).T.reshape(32, 16), qdq(a.T, e4), dims)) == 1
  # ... e5m2 x e5m2 is not, nor a convert after the scaling, nor one side.
  assert count(lambda a: jax.lax.dot_general(qdq(a, e5), qdq(a.T, e5),
                                             dims)) == 0
  assert count(lambda a: jax.lax.dot_general(
      qdq(a, e4).astype(jnp.float32), qdq(a.T, e4).astype(jnp.float32),
      dims)) == 0
  assert count(lambda a: jax.lax.dot_general(
      qdq(a, e4), a.T.astype(jnp.bfloat16), dims)) == 0


# --------------------------------------------------- model and training


def test_fp8_model_has_the_same_parameters_and_close_outputs():
  images = jax.random.uniform(jax.random.key(3), (4, 32, 32, 3), minval=-1)
  kwargs = dict(hidden_size=64, mlp_dim=128, num_heads=2, num_layers=2,
                attention_impl='xla')
  plain = models.get_model('ViT-Ti_16', 10, **kwargs)
  with_fp8 = models.get_model('ViT-Ti_16', 10, fp8=True, **kwargs)
  params = jax.jit(plain.init)(jax.random.key(0), images)
  assert jax.eval_shape(with_fp8.init, jax.random.key(0), images) == (
      jax.eval_shape(lambda: params))  # Same names, shapes and dtypes.
  # A random head (it starts at zero), so that the loss sees the encoder.
  head = params['params']['head']
  head['kernel'] = 0.1 * jax.random.normal(jax.random.key(4),
                                           head['kernel'].shape)

  def loss(model, p):
    logits = model.apply(p, images)
    return jnp.mean(jax.nn.log_softmax(logits)[:, 0]), logits

  (_, logits_plain), grads_plain = jax.jit(jax.value_and_grad(
      functools.partial(loss, plain), has_aux=True))(params)
  (_, logits_fp8), grads_fp8 = jax.jit(jax.value_and_grad(
      functools.partial(loss, with_fp8), has_aux=True))(params)
  # 9% on this random model: FP8's 3 mantissa bits (bfloat16 gives 1%).
  error = np.linalg.norm(logits_fp8 - logits_plain) / np.linalg.norm(
      logits_plain)
  assert 0.02 < error < 0.2
  flat = lambda g: np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)])
  a, b = flat(grads_plain), flat(grads_fp8)
  assert np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) > 0.98


def test_config_key_reaches_the_trained_model_and_warns_off_gpu(caplog):
  config = experiment_config('cifar10_scratch', 'cpu')
  with config.unlocked():
    config.model.fp8 = True
  model = inference.make_model(config, num_classes=10)
  images = jnp.zeros((2, 32, 32, 3))
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  params = jax.eval_shape(model.init, rngs, images)
  step = jax.value_and_grad(lambda p: model.apply(
      p, images, train=True, rngs={'dropout': jax.random.key(2)}).sum())
  # 4 blocks, fused q/k/v on CPU: 4 matmuls each, times 3 in training.
  assert fp8.count_fp8_matmuls(jax.make_jaxpr(step)(params))[0] == 48
  with caplog.at_level(logging.WARNING):
    train.warn_if_fp8_emulated(model)
  assert any('FP8 matmuls are emulated' in r.getMessage()
             for r in caplog.records)


def test_compiled_fp8_gemms_are_counted_from_hlo_text():
  # Lines as XLA's GPU compiler prints them (shapes shortened).
  hlo = '\n'.join([
      '  %cublas-lt-matmul.2.0 = (bf16[6304,768]{1,0}, s8[4194304]{0}) '
      'custom-call(f8e4m3fn[6304,768]{1,0} %a, f8e4m3fn[768,768]{0,1} %b, '
      'f32[] %sa, f32[] %sb, f32[] %one), '
      'custom_call_target="__cublas$lt$matmul$f8", backend_config={}',
      '  %cublas-lt-matmul.3.0 = (bf16[6304,768]{1,0}, s8[4194304]{0}) '
      'custom-call(f8e5m2[6304,768]{1,0} %g, f8e4m3fn[768,768]{1,0} %b, '
      'f32[] %sg, f32[] %sb, f32[] %one), '
      'custom_call_target="__cublas$lt$matmul$f8", backend_config={}',
      '  %cublas-gemm.1.0 = (bf16[6304,197]{1,0}, s8[0]{0}) custom-call('
      'bf16[6304,64]{1,0} %q, bf16[197,64]{1,0} %k), '
      'custom_call_target="__cublas$gemm", backend_config={}',
      '  %gemm_fusion_dot.7 = bf16[6304,3072]{1,0} fusion(f8e4m3fn[6304,768]'
      '{1,0} %x, f8e4m3fn[768,3072]{1,0} %w, f32[] %s), kind=kCustom, '
      'calls=%gemm_fusion_dot.7_computation, backend_config={"fusion_backend'
      '_config":{"kind":"__triton_gemm"}}',
      '  %gemm_fusion_dot.8 = bf16[6304,3072]{1,0} fusion(bf16[6304,768]{1,0}'
      ' %x, bf16[768,3072]{1,0} %w), kind=kCustom, calls=%c, backend_config='
      '{"fusion_backend_config":{"kind":"__triton_gemm"}}',
  ])
  assert fp8.count_compiled_fp8_gemms(hlo) == {'cublaslt_fp8': 2,
                                               'triton_fp8': 1}
  compiled = jax.jit(lambda a: fp8.dot_general(
      a, a.T, (((1,), (0,)), ((), ())))).lower(jnp.ones((16, 16))).compile()
  assert fp8.count_compiled_fp8_gemms(compiled.as_text()) == {
      'cublaslt_fp8': 0, 'triton_fp8': 0}  # This CPU emulates.
