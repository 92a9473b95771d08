"""Tests for vit_jax.attention: the kernel choice under a GPU's rules, on CPU.

CI has no GPU, so the choice a GPU would make is computed here from its
static facts and checked against JAX's own cuDNN shape rule, and the padded,
masked call that the cuDNN plan makes runs through XLA's kernel.
"""

import jax
from jax._src.cudnn import fused_attention_stablehlo as jax_cudnn
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import assert_reordered_float32_close
from vit_jax import attention
from vit_jax import models

BF16 = jnp.bfloat16


def _config(name, **overrides):
  """The model whose attention plan is asked for (10 classes)."""
  return models.get_model(name, 10, **overrides)


# (id, config, image size, training, backend) -> (kernel, length, padded).
SCRATCH = dict(num_layers=9, classifier='gap', dtype=BF16)
DECISIONS = [
    ('B16_224_train', _config('ViT-B_16', dtype=BF16), 224, True, 'gpu',
     ('cudnn', 197, 200)),
    ('B16_224_infer', _config('ViT-B_16', dtype=BF16), 224, False, 'gpu',
     ('cudnn', 197, 200)),
    ('B16_384_train', _config('ViT-B_16', dtype=BF16), 384, True, 'gpu',
     ('cudnn', 577, 584)),
    ('B16_384_infer', _config('ViT-B_16', dtype=BF16), 384, False, 'gpu',
     ('cudnn', 577, 584)),
    ('H14_head_dim_80', _config('ViT-H_14', dtype=BF16), 224, True, 'gpu',
     ('cudnn', 257, 264)),
    ('scratch_gap_64', _config('ViT-S_4', **SCRATCH), 32, True, 'gpu',
     ('cudnn', 64, 64)),
    ('scratch_token_65',
     _config('ViT-S_4', **{**SCRATCH, 'classifier': 'token'}), 32, True,
     'gpu', ('cudnn', 65, 72)),
    ('scratch_patch_dropout',
     _config('ViT-S_4', **SCRATCH, patch_dropout=0.5), 32, True, 'gpu',
     ('cudnn', 32, 32)),
    ('B16_float32', _config('ViT-B_16'), 224, True, 'gpu',
     ('xla', 197, 197)),
    ('head_dim_5', _config('testing', dtype=BF16), 224, True, 'gpu',
     ('xla', 197, 197)),
    ('head_dim_256', _config('ViT-B_16', dtype=BF16, num_heads=3), 224, True,
     'gpu', ('xla', 197, 197)),
    ('attention_dropout_train',
     _config('ViT-B_16', dtype=BF16, attention_dropout_rate=0.1), 224, True,
     'gpu', ('explicit', 197, 197)),
    ('attention_dropout_infer',
     _config('ViT-B_16', dtype=BF16, attention_dropout_rate=0.1), 224, False,
     'gpu', ('cudnn', 197, 200)),
    ('B16_cpu', _config('ViT-B_16', dtype=BF16), 224, True, 'cpu',
     ('explicit', 197, 197)),
    ('B16_tpu', _config('ViT-B_16', dtype=BF16), 224, True, 'tpu',
     ('xla', 197, 197)),
]


@pytest.mark.parametrize('config,size,train,backend,expected',
                         [d[1:] for d in DECISIONS],
                         ids=[d[0] for d in DECISIONS])
def test_auto_decision_table(config, size, train, backend, expected):
  plan = models.attention_plan(config, size, train, backend=backend)
  assert (plan.kernel, plan.length, plan.padded_length) == expected
  assert plan.masked == (plan.kernel == 'cudnn')  # GPU: lengths always.


def _jax_accepts(length, head_dim, training):
  """JAX's own cuDNN check, on abstract shapes (it needs no GPU for these
  rules; off a GPU it applies the pre-Hopper head-dim bound of 128)."""
  shape = jax.ShapeDtypeStruct((2, length, 4, head_dim), BF16)
  try:
    jax_cudnn.check_is_flash_attention(
        shape, shape, shape, jax_cudnn.AttentionLayout.BTNH.value,
        cudnn_version=91000, has_bias=True, is_training=training)
  except NotImplementedError:
    return False
  return True


def test_jax_rule_rejects_what_unpadded_vit_b16_training_would_send():
  # The check below has teeth: today's JAX refuses 197 tokens in training
  # (JAX always passes a bias), and accepts them in inference.
  assert not _jax_accepts(197, 64, training=True)
  assert _jax_accepts(197, 64, training=False)
  assert _jax_accepts(200, 64, training=True)


@pytest.mark.parametrize('training', [True, False])
def test_auto_never_picks_cudnn_for_a_shape_jax_rejects(training):
  for head_dim in (5, 8, 16, 40, 64, 80, 96, 128, 136, 256):
    for length in range(1, 600):
      plan = attention.plan_attention(
          'auto', backend='gpu', dtype=BF16, head_dim=head_dim,
          length=length, training=training)
      if plan.kernel == 'cudnn':
        assert _jax_accepts(plan.padded_length, head_dim, training), (
            head_dim, length, plan)
      else:
        assert not _jax_accepts(attention.round_up(length, 8), head_dim,
                                training), (head_dim, length, plan)


@pytest.mark.parametrize('length,padded', [(197, 200), (577, 584), (65, 72)])
def test_padded_masked_attention_equals_unpadded(length, padded):
  q, k, v = (jax.random.normal(jax.random.key(i), (1, length, 2, 64))
             for i in range(3))
  weights = jax.random.normal(jax.random.key(9), (1, length, 2, 64))
  plain = attention.AttentionPlan('xla', length, length, 'test')
  masked = attention.AttentionPlan('xla', length, padded, 'test')
  assert masked.masked

  def loss_and_grads(plan):
    loss = lambda q, k, v: (attention.attend(q, k, v, plan) * weights).sum()
    return (attention.attend(q, k, v, plan),
            jax.grad(loss, argnums=(0, 1, 2))(q, k, v))

  (out, grads), (out_masked, grads_masked) = map(loss_and_grads,
                                                 (plain, masked))
  assert out_masked.shape == out.shape
  # The softmax and value sums run over `padded` tokens instead of
  # `length`: two sums in a row (scores, then values), and their gradients.
  # Unmasked padding is off by thousands of times this bound.
  assert_reordered_float32_close(out_masked, out, padded, depth=2)
  assert_reordered_float32_close(grads_masked, grads, padded, depth=2)


def _pad_xla_plans(monkeypatch, multiple=8):
  """Makes every XLA plan pad and mask like a cuDNN one: the cuDNN plan's
  code path, run through XLA's kernel on CPU."""
  real = attention.plan_attention
  used = []

  def padded_plan(*args, **kwargs):
    plan = real(*args, **kwargs)
    if plan.kernel == 'xla':
      plan = attention.AttentionPlan(
          'xla', plan.length, attention.round_up(plan.length + 1, multiple),
          'test: padded')
    used.append(plan)
    return plan
  monkeypatch.setattr(attention, 'plan_attention', padded_plan)
  return used


@pytest.mark.parametrize('classifier', ['token', 'gap'])
def test_padded_model_gives_the_unpadded_logits_and_gradients(
    monkeypatch, classifier):
  model = models.get_model('testing', 10, patch_size=8, num_layers=2,
                           classifier=classifier, attention_impl='xla',
                           dropout_rate=0.0, representation_size=10)
  images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1)
  params = model.init(jax.random.key(0), images)['params']
  params['head']['kernel'] = jax.random.normal(
      jax.random.key(2), params['head']['kernel'].shape)

  def logits_and_grads():
    apply = lambda p: model.apply({'params': p}, images, train=True)
    loss = lambda p: (apply(p) * jnp.arange(10.)).sum()
    return apply(params), jax.grad(loss)(params)

  logits, grads = logits_and_grads()
  used = _pad_xla_plans(monkeypatch)
  logits_padded, grads_padded = logits_and_grads()
  assert {(p.kernel, p.length, p.padded_length, p.masked) for p in used} == {
      ('xla', 17 if classifier == 'token' else 16, 24, True)}
  # The longest sums are the weight gradients' over batch x tokens (2 x 24
  # padded), through 2 blocks forward and backward (depth 4); how much the
  # padding moves them depends on the CPU's vector width. Padding left
  # unmasked is off by ~10^5 times this bound.
  assert_reordered_float32_close(logits_padded, logits, 2 * 24, depth=4)
  assert_reordered_float32_close(grads_padded, grads, 2 * 24, depth=4)


def test_num_tokens_is_what_the_attention_sees(monkeypatch):
  seen = []
  real = attention.plan_attention

  def recording_plan(*args, **kwargs):
    seen.append((kwargs['length'], kwargs['training']))
    return real(*args, **kwargs)
  monkeypatch.setattr(attention, 'plan_attention', recording_plan)
  for overrides in (dict(classifier='token'), dict(classifier='gap'),
                    dict(classifier='token', patch_dropout=0.5)):
    model = _config('testing', patch_size=4, **overrides)
    images = jnp.zeros((2, 32, 32, 3))
    params = model.init(jax.random.key(0), images)['params']
    for train in (False, True):
      seen.clear()
      model.apply({'params': params}, images, train=train,
                  rngs={'dropout': jax.random.key(1)})
      assert seen == [(models.num_tokens(model, 32, train), train)]


def test_cudnn_asked_for_off_gpu_names_the_way_out():
  with pytest.raises(ValueError, match="needs a GPU.*'auto'"):
    attention.plan_attention('cudnn', backend='cpu', dtype=BF16, head_dim=64,
                             length=197, training=True)


@pytest.mark.parametrize('dtype,head_dim,rule', [
    (jnp.float32, 64, 'float16 or bfloat16'),
    (BF16, 20, 'multiple of 8'),
    (BF16, 256, 'at most 128'),
])
def test_cudnn_asked_for_on_a_shape_it_refuses_names_the_rule(
    dtype, head_dim, rule):
  with pytest.raises(ValueError, match=f"{rule}.*Use attention_impl='auto'"):
    attention.plan_attention('cudnn', backend='gpu', dtype=dtype,
                             head_dim=head_dim, length=197, training=True)


def test_cudnn_asked_for_pads_odd_lengths():
  plan = attention.plan_attention('cudnn', backend='gpu', dtype=BF16,
                                  head_dim=64, length=197, training=True)
  assert (plan.kernel, plan.padded_length, plan.masked) == ('cudnn', 200,
                                                            True)


def test_a_failed_compile_probe_falls_back_to_xla():
  calls = []

  def probe(**facts):
    calls.append(facts)
    return False
  plan = attention.plan_attention('auto', backend='gpu', dtype=BF16,
                                  head_dim=64, length=197, training=True,
                                  probe=probe)
  assert plan.kernel == 'xla' and 'failed to compile' in plan.reason
  assert calls == [dict(dtype='bfloat16', head_dim=64, length=200,
                        training=True)]


def test_describe_says_kernel_padding_and_why():
  plan = models.attention_plan(_config('ViT-B_16', dtype=BF16), 224, True,
                               backend='gpu')
  assert plan.describe() == (
      "attention kernel 'cudnn', padded 197 -> 200 tokens and masked: cuDNN "
      'flash attention on GPU with 16-bit compute')


@pytest.mark.gpu
@pytest.mark.parametrize('size', [224, 384])
def test_cudnn_trains_vit_b16_like_xla(size):
  """On a GPU: cuDNN's padded attention, gradients included, agrees with
  XLA's in bfloat16 (two blocks of ViT-B/16 at the real token counts)."""
  images = jax.random.uniform(jax.random.key(1), (4, size, size, 3),
                              minval=-1)
  results = {}
  for impl in ('cudnn', 'xla'):
    model = models.get_model('ViT-B_16', 10, num_layers=2, dtype=BF16,
                             attention_impl=impl)
    params = model.init(jax.random.key(0), images[:1])['params']
    params['head']['kernel'] = 0.02 * jax.random.normal(
        jax.random.key(2), params['head']['kernel'].shape)
    loss = lambda p, m=model: m.apply({'params': p}, images,
                                      train=True).mean()
    results[impl] = jax.jit(jax.value_and_grad(loss))(params)
  (loss_c, grads_c), (loss_x, grads_x) = results['cudnn'], results['xla']
  assert np.isfinite(loss_c)
  np.testing.assert_allclose(loss_c, loss_x, rtol=2e-2, atol=2e-2)
  for g_c, g_x in zip(jax.tree.leaves(grads_c), jax.tree.leaves(grads_x)):
    assert np.isfinite(g_c).all()
    scale = float(np.abs(g_x).max()) + 1e-6
    assert float(np.abs(g_c - g_x).max()) <= 0.05 * scale
