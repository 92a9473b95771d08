"""Tests for vit_jax.models: the original's zoo, sizes, shapes, options."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import assert_reordered_float32_close
from vit_jax import models
from vit_jax import models_vit
from vit_jax.configs import models as model_configs

# The original repository's parameter counts (num_classes=1000, 224px):
# every image model it names, hybrids and Mixers included.
PUBLISHED_COUNTS = {
    'Mixer-B_16': 59_880_472,
    'Mixer-B_32': 60_293_428,
    'Mixer-L_16': 208_196_168,
    'R+ViT-Ti_16': 6_337_704,
    'R26+ViT-B_32': 101_383_976,
    'R26+ViT-S_32': 36_431_912,
    'R50+ViT-B_16': 98_659_112,
    'R50+ViT-L_32': 328_994_856,
    'ViT-B_8': 86_576_872,
    'ViT-B_16': 86_567_656,
    'ViT-B_16-gap-norep': 86_566_120,
    'ViT-B_32': 88_224_232,
    'ViT-B_32-gap-norep': 88_222_696,
    'ViT-H_14': 632_045_800,
    'ViT-L_16': 304_326_632,
    'ViT-L_32': 306_535_400,
    'ViT-S_16': 22_050_664,
    'ViT-S_16-gap-norep': 22_049_896,
    'ViT-S_32': 22_878_952,
    'ViT-S_32-gap-norep': 22_878_184,
    'ViT-Ti_16': 5_717_416,
    'testing': 21_390,
    'testing-unpooled': 21_370,
}


def _shapes(model, image_size=224):
  images = jnp.zeros((2, image_size, image_size, 3))
  variables = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), images, train=False))
  logits = jax.eval_shape(
      lambda v: model.apply(v, images, train=False), variables)
  return variables, logits


def test_every_model_of_the_original_is_configured():
  assert set(model_configs.MODEL_CONFIGS) == set(PUBLISHED_COUNTS)


@pytest.mark.parametrize('name', sorted(PUBLISHED_COUNTS))
def test_parameter_count_and_output_match_the_original(name):
  variables, logits = _shapes(models.get_model(name, num_classes=1000))
  assert sum(x.size for x in jax.tree.leaves(variables)) == (
      PUBLISHED_COUNTS[name])
  expected = (2, 196, 1000) if name == 'testing-unpooled' else (2, 1000)
  assert logits.shape == expected


def test_original_constructor_and_call_signature():
  """As code written for the original builds and calls a model."""
  config = model_configs.get_testing_config()
  model = models.VisionTransformer(num_classes=2, **config)
  variables = model.init(jax.random.PRNGKey(0),
                         inputs=jnp.ones([1, 32, 32, 3]), train=False)
  logits = model.apply(variables, jnp.ones([3, 32, 32, 3]), train=False)
  assert logits.shape == (3, 2)
  mixer = models.MlpMixer(num_classes=2,
                          **model_configs.MODEL_CONFIGS['Mixer-B_32'])
  assert isinstance(models.get_model('Mixer-B_32', num_classes=2),
                    models.MlpMixer)
  assert mixer.num_blocks == 12


def test_config_functions_return_fresh_unlocked_copies():
  config = model_configs.get_b16_config()
  config.transformer.num_layers = 2  # Unlocked, and a copy:
  assert model_configs.MODEL_CONFIGS['ViT-B_16'].transformer.num_layers == 12
  assert model_configs.MODEL_CONFIGS['ViT-B_16'].is_locked


def test_augreg_names_follow_the_original_file_prefixes():
  augreg = model_configs.AUGREG_CONFIGS
  assert augreg['R_Ti_16'].model_name == 'R+ViT-Ti_16'
  assert augreg['R26_S_32'].model_name == 'R26+ViT-S_32'
  assert augreg['B_16'].model_name == 'ViT-B_16'
  assert not {'testing', 'L_32', 'R50_B_16', 'H_14'} & set(augreg)
  assert not any('Mixer' in name for name in augreg)


def test_hybrid_and_mixer_parameter_names_are_the_published_ones():
  hybrid, _ = _shapes(models.get_model('R26+ViT-S_32', num_classes=10))
  params = hybrid['params']
  assert {'conv_root', 'gn_root', 'block1', 'block2', 'block3', 'block4',
          'embedding',
          'Transformer', 'cls', 'head'} == set(params)
  unit = params['block2']['unit1']
  assert set(unit) == {'conv1', 'gn1', 'conv2', 'gn2', 'conv3', 'gn3',
                       'conv_proj', 'gn_proj'}
  assert params['block2']['unit1']['conv2']['kernel'].shape == (3, 3, 128,
                                                                128)
  assert params['embedding']['kernel'].shape == (1, 1, 2048, 384)
  mixer, _ = _shapes(models.get_model('Mixer-B_16', num_classes=10))
  params = mixer['params']
  assert {'stem', 'MixerBlock_0', 'MixerBlock_11', 'pre_head_layer_norm',
          'head'} <= set(params)
  block = params['MixerBlock_0']
  assert set(block) == {'LayerNorm_0', 'token_mixing', 'LayerNorm_1',
                        'channel_mixing'}
  assert block['token_mixing']['Dense_0']['kernel'].shape == (196, 384)


def test_published_names_all_parse():
  assert (model_configs.model_config('B/16').to_dict() ==
          model_configs.MODEL_CONFIGS['ViT-B_16'].to_dict())


def test_small_patch_variant_for_cifar():
  config = model_configs.model_config('ViT-Ti_4')
  assert (config.hidden_size, config.patches.size) == (192, (4, 4))
  params = jax.eval_shape(lambda: models.get_model('ViT-Ti_4', 10).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))['params']
  # 8x8 patches + class token.
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (
      1, 65, 192)


@pytest.mark.parametrize('bad', ['ViT-X_16', 'ViT-B', 'resnet50', ''])
def test_unknown_name_is_refused(bad):
  with pytest.raises(ValueError, match='Unknown model name'):
    model_configs.model_config(bad)


def test_unknown_override_is_refused_with_the_nearest_names():
  with pytest.raises(ValueError, match="'hiden_size'.*hidden_size"):
    model_configs.model_config('testing', hiden_size=3)


def test_flat_overrides_land_where_the_original_keeps_them():
  config = model_configs.model_config(
      'ViT-B_16', patch_size=8, num_layers=2, dropout_rate=0.2,
      classifier='gap', dtype=jnp.bfloat16)
  assert config.patches.size == (8, 8)
  assert config.transformer.num_layers == 2
  assert config.transformer.dropout_rate == 0.2
  assert (config.classifier, config.dtype) == ('gap', 'bfloat16')


class _OriginalEncoder(nn.Module):
  """An encoder written for the original: it knows none of our options."""
  num_layers: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1

  @nn.compact
  def __call__(self, x, *, train):
    return nn.Dense(x.shape[-1])(x)


def test_an_encoder_written_for_the_original_still_plugs_in():
  model = models.get_model('testing', 3, encoder=_OriginalEncoder)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  assert set(variables['params']['Transformer']) == {'Dense_0'}


def _init(model, batch=2, size=32):
  images = jax.random.uniform(jax.random.PRNGKey(1), (batch, size, size, 3),
                              minval=-1, maxval=1)
  params = model.init(jax.random.PRNGKey(0), images)['params']
  return params, images


@pytest.mark.parametrize('classifier,shape', [
    ('token', (3, 7)), ('gap', (3, 7)), ('unpooled', (3, 16, 7)),
    ('token_unpooled', (3, 17, 7))])
def test_output_shape_for_every_classifier(classifier, shape):
  model = models.get_model('testing', 7, classifier=classifier, patch_size=8)
  params, images = _init(model, batch=3)
  logits = model.apply({'params': params}, images, train=False)
  assert logits.shape == shape
  assert ('cls' in params) == classifier.startswith('token')


def test_parameter_tree_has_published_names():
  model = models.get_model('testing', 10, representation_size=10)
  params, _ = _init(model)
  block = params['Transformer']['encoderblock_0']
  assert set(block) == {'LayerNorm_0', 'MultiHeadDotProductAttention_0',
                        'LayerNorm_1', 'MlpBlock_0'}
  attn = block['MultiHeadDotProductAttention_0']
  assert attn['query']['kernel'].shape == (10, 2, 5)
  assert attn['query']['bias'].shape == (2, 5)
  assert attn['out']['kernel'].shape == (2, 5, 10)
  assert params['embedding']['kernel'].shape == (16, 16, 3, 10)
  assert params['cls'].shape == (1, 1, 10)
  assert set(params) == {'embedding', 'cls', 'Transformer', 'pre_logits',
                         'head'}
  np.testing.assert_array_equal(params['head']['kernel'], 0)


def test_no_pre_logits_without_representation_size():
  params, _ = _init(models.get_model('testing', 10))
  assert 'pre_logits' not in params


def test_jit_and_eager_agree():
  model = models.get_model('testing', 10, num_layers=2, patch_size=8)
  params, images = _init(model)
  params = jax.tree.map(  # Non-zero head so logits are informative.
      lambda x: x + 0.01 * jax.random.normal(jax.random.PRNGKey(2), x.shape),
      params)
  eager = model.apply({'params': params}, images)
  jitted = jax.jit(lambda p, x: model.apply({'params': p}, x))(params, images)
  # jit fuses and orders the sums otherwise: 2 blocks over 17 tokens.
  assert_reordered_float32_close(jitted, eager, 17, depth=2)


def test_xla_and_explicit_attention_agree_with_gradients():
  # Two different code paths on every backend: jax.nn.dot_product_attention
  # on B x L x H x K against our own softmax on B x H x L x K.
  # With pre_logits (tanh) between the encoder and the head, as before the
  # 'testing' model lost them: without, the encoder's gradients are a
  # cancellation ~1e-6 of the head's and float32 rounding dominates them.
  kwargs = dict(patch_size=8, num_layers=2, dropout_rate=0.0,
                representation_size=10)
  xla = models.get_model('testing', 10, attention_impl='xla', **kwargs)
  explicit = models.get_model('testing', 10, attention_impl='explicit',
                              **kwargs)
  kernels = {models.attention_plan(m, 32, True).kernel
             for m in (xla, explicit)}
  assert kernels == {'xla', 'explicit'}
  params, images = _init(xla)
  params['head']['kernel'] = jnp.ones_like(params['head']['kernel'])

  def logits_and_grads(model):
    apply = lambda p: model.apply({'params': p}, images, train=True)
    return apply(params), jax.grad(
        lambda p: (apply(p) * jnp.arange(10.)).sum())(params)

  # Sums in another order; the longest are the weight gradients' over
  # batch x tokens (2 x 17), through 2 blocks forward and backward.
  assert_reordered_float32_close(logits_and_grads(xla),
                                 logits_and_grads(explicit), 2 * 17, depth=4)


def test_auto_attention_is_the_explicit_form_on_cpu():
  model = models.get_model('testing', 10, patch_size=8)
  assert models.attention_plan(model, 32, True, backend='cpu').kernel == (
      'explicit')


def test_attention_weights_are_sown_and_rows_sum_to_one():
  model = models.get_model('testing', 10, num_layers=2, patch_size=8)
  params, images = _init(model)
  _, state = model.apply({'params': params}, images, mutable=['intermediates'])
  weights = state['intermediates']['Transformer']
  for i in range(2):
    (w,) = weights[f'encoderblock_{i}']['MultiHeadDotProductAttention_0'][
        'attention_weights']
    assert w.shape == (2, 2, 17, 17)  # B, heads, tokens, tokens.
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params():
  model = models.get_model('testing', 10, dtype=jnp.bfloat16, patch_size=8)
  params, images = _init(model)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  logits = model.apply({'params': params}, images)
  assert logits.dtype == jnp.float32
  f32 = models.get_model('testing', 10, patch_size=8).apply(
      {'params': params}, images)
  np.testing.assert_allclose(logits, f32, atol=0.05)


def test_dropout_needs_rng_and_changes_output_in_training():
  model = models.get_model('testing', 10, patch_size=8, dropout_rate=0.5,
                           attention_dropout_rate=0.5, stochastic_depth=0.5)
  params, images = _init(model)
  params['head']['kernel'] = jnp.ones_like(params['head']['kernel'])
  with pytest.raises(Exception, match='dropout'):
    model.apply({'params': params}, images, train=True)
  run = lambda seed: model.apply({'params': params}, images, train=True,
                                 rngs={'dropout': jax.random.PRNGKey(seed)})
  assert not np.allclose(run(0), run(1))
  np.testing.assert_array_equal(run(0), run(0))
  eval1 = model.apply({'params': params}, images, train=False)
  eval2 = model.apply({'params': params}, images, train=False)
  np.testing.assert_array_equal(eval1, eval2)


@pytest.mark.parametrize('fp8', [False, True])
def test_remat_gives_same_gradients(fp8):
  kwargs = dict(num_layers=2, patch_size=8, fp8=fp8, representation_size=10)
  plain = models.get_model('testing', 10, **kwargs)
  remat = models.get_model('testing', 10, remat=True, **kwargs)
  params, images = _init(plain)
  params['head']['kernel'] = jnp.ones_like(params['head']['kernel'])
  grad = lambda m: jax.jit(jax.grad(
      lambda p: m.apply({'params': p}, images).sum()))(params)
  # Recomputed activations may be fused otherwise: sums over batch x
  # tokens (2 x 17), 2 blocks forward and backward.
  assert_reordered_float32_close(grad(remat), grad(plain), 2 * 17, depth=4)


def test_name_for_recovers_table_names():
  assert model_configs.name_for(768, 12, 16) == 'ViT-B_16'
  assert model_configs.name_for(192, 12, 4) == 'ViT-Ti_4'
  assert 'unnamed' in model_configs.name_for(100, 3, 4)


@pytest.mark.parametrize('num_prefix', [0, 1])
def test_keep_random_patches_keeps_a_per_image_subset(num_prefix):
  batch, length, width = 4, 1 + 16, 3
  # Row values identify tokens: token t of image b is b * 100 + t.
  ids = (np.arange(batch)[:, None] * 100 + np.arange(length)[None, :])
  x = jnp.asarray(np.repeat(ids[:, :, None], width, axis=2), jnp.float32)
  out = models_vit.keep_random_patches(jax.random.PRNGKey(0), x, 0.75,
                                   num_prefix=num_prefix)
  assert out.shape == (batch, num_prefix + round((length - num_prefix) / 4),
                       width)
  kept = np.asarray(out[:, :, 0]).astype(int)
  np.testing.assert_array_equal(kept[:, :num_prefix], ids[:, :num_prefix])
  for b in range(batch):  # Distinct tokens of this image, none of the prefix.
    patches = kept[b, num_prefix:]
    assert len(set(patches)) == len(patches)
    assert set(patches) <= set(ids[b, num_prefix:])
  assert len({tuple(k % 100) for k in kept}) > 1  # Images differ.


def test_patch_dropout_trains_on_fewer_tokens_and_evaluates_on_all():
  kwargs = dict(patch_size=8, classifier='gap', dropout_rate=0.0)
  plain = models.get_model('testing', 10, **kwargs)
  dropped = models.get_model('testing', 10, patch_dropout=0.5, **kwargs)
  params, images = _init(plain)
  params['head']['kernel'] = jnp.ones_like(params['head']['kernel'])
  np.testing.assert_array_equal(
      plain.apply({'params': params}, images, train=False),
      dropped.apply({'params': params}, images, train=False))
  train = lambda m, seed: m.apply({'params': params}, images, train=True,
                                  rngs={'dropout': jax.random.PRNGKey(seed)})
  np.testing.assert_array_equal(train(plain, 0), train(plain, 1))
  assert not np.allclose(train(dropped, 0), train(dropped, 1))
  with pytest.raises(ValueError, match='patch_dropout'):
    model_configs.model_config('testing', patch_dropout=1.0)
