"""Tests for convert.py: timm / transformers state dicts <-> the linen tree.

Synthetic state dicts carry the published key names and shapes. The logits
check runs an independent numpy forward pass written in PyTorch's conventions
(weights (out, in), NCHW images, q/k/v split as timm and transformers do), so
a wrong transpose or head order shows up without torch installed. With torch
and timm / transformers importable, extra tests compare against them.
"""

import importlib.util
import os

import jax
import numpy as np
import pytest

from vit_jax import checkpoint
from vit_jax import convert
from vit_jax import models

TINY = dict(hidden_size=16, mlp_dim=32, num_heads=2, num_layers=2)


def _params(num_classes=10, image_size=32, name='ViT-Ti_16', seed=0,
            **overrides):
  """Random (not zero-head) params of a small model, as a flat numpy dict."""
  model = models.get_model(name, num_classes, **overrides)
  images = np.zeros((1, image_size, image_size, 3), np.float32)
  params = model.init(jax.random.PRNGKey(seed), images)['params']
  rng = np.random.default_rng(seed)
  flat = {k: np.asarray(v) + rng.normal(0, 0.1, v.shape).astype(v.dtype)
          for k, v in checkpoint.flatten(params).items()}
  return model, flat


def _images(size=32, batch=2, seed=1):
  return np.random.default_rng(seed).uniform(
      -1, 1, (batch, size, size, 3)).astype(np.float32)


def _logits(model, flat, images):
  return np.asarray(model.apply({'params': checkpoint.unflatten(flat)},
                                images))


def _assert_identical(a, b):
  assert sorted(a) == sorted(b)
  for key in a:
    assert a[key].dtype == b[key].dtype, key
    assert a[key].shape == b[key].shape, key
    assert np.array_equal(a[key], b[key]), key


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize('layout', convert.LAYOUTS)
@pytest.mark.parametrize('overrides', [
    dict(representation_size=8),  # pre_logits present.
    dict(classifier='gap'),  # No class token.
])
def test_linen_round_trip_is_bit_identical(layout, overrides):
  _, flat = _params(**TINY, **overrides)
  state = convert.to_torch_layout(flat, layout)
  _assert_identical(convert.from_torch_layout(state, layout, num_heads=2),
                    flat)


@pytest.mark.parametrize('layout', convert.LAYOUTS)
def test_torch_round_trip_is_bit_identical(layout):
  _, flat = _params(**TINY)
  state = convert.to_torch_layout(flat, layout)
  back = convert.to_torch_layout(
      convert.from_torch_layout(state, layout, num_heads=2), layout)
  assert list(back) == list(state)  # Same keys in the same order.
  _assert_identical(back, state)


def test_round_trip_keeps_float16_bits():
  _, flat = _params(**TINY)
  flat = {k: v.astype(np.float16) for k, v in flat.items()}
  state = convert.to_torch_layout(flat, 'timm')
  _assert_identical(convert.from_torch_layout(state, 'timm', num_heads=2),
                    flat)


# ------------------------------------------------- published names and shapes

# timm `vit_base_patch16_224` (num_classes=1000), first block shown.
TIMM_B16 = {
    'cls_token': (1, 1, 768), 'pos_embed': (1, 197, 768),
    'patch_embed.proj.weight': (768, 3, 16, 16),
    'patch_embed.proj.bias': (768,),
    'blocks.0.norm1.weight': (768,), 'blocks.0.norm1.bias': (768,),
    'blocks.0.attn.qkv.weight': (2304, 768), 'blocks.0.attn.qkv.bias': (2304,),
    'blocks.0.attn.proj.weight': (768, 768), 'blocks.0.attn.proj.bias': (768,),
    'blocks.0.norm2.weight': (768,), 'blocks.0.norm2.bias': (768,),
    'blocks.0.mlp.fc1.weight': (3072, 768), 'blocks.0.mlp.fc1.bias': (3072,),
    'blocks.0.mlp.fc2.weight': (768, 3072), 'blocks.0.mlp.fc2.bias': (768,),
    'norm.weight': (768,), 'norm.bias': (768,),
    'head.weight': (1000, 768), 'head.bias': (1000,),
}

# transformers `google/vit-base-patch16-224` (ViTForImageClassification).
_LAYER = 'vit.encoder.layer.0.'
TRANSFORMERS_B16 = {
    'vit.embeddings.cls_token': (1, 1, 768),
    'vit.embeddings.position_embeddings': (1, 197, 768),
    'vit.embeddings.patch_embeddings.projection.weight': (768, 3, 16, 16),
    'vit.embeddings.patch_embeddings.projection.bias': (768,),
    **{f'{_LAYER}attention.attention.{p}.{w}': s
       for p in ('query', 'key', 'value')
       for w, s in (('weight', (768, 768)), ('bias', (768,)))},
    _LAYER + 'attention.output.dense.weight': (768, 768),
    _LAYER + 'attention.output.dense.bias': (768,),
    _LAYER + 'intermediate.dense.weight': (3072, 768),
    _LAYER + 'intermediate.dense.bias': (3072,),
    _LAYER + 'output.dense.weight': (768, 3072),
    _LAYER + 'output.dense.bias': (768,),
    _LAYER + 'layernorm_before.weight': (768,),
    _LAYER + 'layernorm_before.bias': (768,),
    _LAYER + 'layernorm_after.weight': (768,),
    _LAYER + 'layernorm_after.bias': (768,),
    'vit.layernorm.weight': (768,), 'vit.layernorm.bias': (768,),
    'classifier.weight': (1000, 768), 'classifier.bias': (1000,),
}


def _b16_one_block_zeros():
  """ViT-B_16 shapes (one block, to stay small) as zero arrays."""
  model = models.get_model('ViT-B_16', 1000, num_layers=1)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          np.zeros((1, 224, 224, 3), np.float32))['params']
  return {k: np.zeros(v.shape, v.dtype)
          for k, v in checkpoint.flatten(shapes).items()}


@pytest.mark.parametrize('layout,published', [('timm', TIMM_B16),
                                              ('transformers',
                                               TRANSFORMERS_B16)])
def test_export_has_the_published_names_and_shapes(layout, published):
  state = convert.to_torch_layout(_b16_one_block_zeros(), layout)
  assert {k: v.shape for k, v in state.items()} == published


@pytest.mark.parametrize('layout,published', [('timm', TIMM_B16),
                                              ('transformers',
                                               TRANSFORMERS_B16)])
def test_published_state_dict_reads_without_num_heads(layout, published):
  state = {k: np.zeros(s, np.float32) for k, s in published.items()}
  linen = convert.from_torch_layout(state, layout)  # 768 wide -> 12 heads.
  expected = {k: v.shape for k, v in _b16_one_block_zeros().items()}
  assert {k: v.shape for k, v in linen.items()} == expected
  attn = 'Transformer/encoderblock_0/MultiHeadDotProductAttention_0/'
  assert linen[attn + 'query/kernel'].shape == (768, 12, 64)
  assert linen[attn + 'out/kernel'].shape == (12, 64, 768)


def test_bare_vitmodel_reads_pooler_as_pre_logits():
  """google/vit-*-in21k hold a ViTModel: no 'vit.' prefix, a pooler."""
  _, flat = _params(**TINY, representation_size=16)
  flat = {k: v for k, v in flat.items() if not k.startswith('head/')}
  state = convert.to_torch_layout(flat, 'transformers')
  bare = {k.removeprefix('vit.'): v for k, v in state.items()}
  assert 'pooler.dense.weight' in bare and 'embeddings.cls_token' in bare
  bare['embeddings.mask_token'] = np.zeros((1, 1, 16), np.float32)
  _assert_identical(
      convert.from_torch_layout(bare, 'transformers', num_heads=2), flat)


# transformers 5 renames the modules in memory (its files keep the old names).
TRANSFORMERS_5_BLOCK_0 = {
    'layers.0.attention.q_proj': 'encoder.layer.0.attention.attention.query',
    'layers.0.attention.k_proj': 'encoder.layer.0.attention.attention.key',
    'layers.0.attention.v_proj': 'encoder.layer.0.attention.attention.value',
    'layers.0.attention.o_proj': 'encoder.layer.0.attention.output.dense',
    'layers.0.mlp.fc1': 'encoder.layer.0.intermediate.dense',
    'layers.0.mlp.fc2': 'encoder.layer.0.output.dense',
    'layers.0.layernorm_before': 'encoder.layer.0.layernorm_before',
    'layers.0.layernorm_after': 'encoder.layer.0.layernorm_after',
}


@pytest.mark.parametrize('prefix', ['vit.', ''])  # For...Classification, bare.
def test_transformers_5_state_dict_names_read_too(prefix):
  _, flat = _params(**{**TINY, 'num_layers': 1})
  if not prefix:
    flat = {k: v for k, v in flat.items() if not k.startswith('head/')}
  state = convert.to_torch_layout(flat, 'transformers')
  renamed = {}
  for key, value in state.items():
    for new, old in TRANSFORMERS_5_BLOCK_0.items():
      key = key.replace(f'vit.{old}.', f'vit.{new}.')
    renamed[key.replace('vit.', prefix, 1)] = value
  assert f'{prefix}layers.0.attention.q_proj.weight' in renamed
  _assert_identical(
      convert.from_torch_layout(renamed, 'transformers', num_heads=2), flat)


# -------------------------------------------------------------------- errors


def test_unknown_width_without_num_heads_says_how_to_fix():
  _, flat = _params(**TINY)
  state = convert.to_torch_layout(flat, 'timm')
  with pytest.raises(checkpoint.CheckpointError, match='num_heads='):
    convert.from_torch_layout(state, 'timm')


def test_keys_of_other_vit_variants_are_an_error_not_dropped():
  _, flat = _params(**TINY)
  state = convert.to_torch_layout(flat, 'timm')
  state['fc_norm.weight'] = np.ones(16, np.float32)
  with pytest.raises(checkpoint.CheckpointError, match='fc_norm'):
    convert.from_torch_layout(state, 'timm', num_heads=2)


def test_missing_block_weight_names_the_key():
  _, flat = _params(**TINY)
  state = convert.to_torch_layout(flat, 'transformers')
  del state['vit.encoder.layer.1.output.dense.bias']
  with pytest.raises(checkpoint.CheckpointError, match='output.dense.bias'):
    convert.from_torch_layout(state, 'transformers', num_heads=2)


def test_unknown_layout_is_rejected():
  with pytest.raises(ValueError, match='timm'):
    convert.to_torch_layout({}, 'keras')


# --------------------------------------------------------------------- logits


def _torch_reference_logits(state, layout, images_BxHxWxC, heads, patch):
  """A forward pass written as timm / transformers compute it, in numpy.

  Uses tanh-GELU and LayerNorm eps 1e-6 like vit_jax, so that differences
  come from the weights' layout only.
  """
  pre = 'vit.' if layout == 'transformers' else ''
  name = {
      'timm': dict(patch='patch_embed.proj', cls='cls_token', pos='pos_embed',
                   norm='norm', head='head', block='blocks.{}.', ln1='norm1',
                   ln2='norm2', proj='attn.proj', fc1='mlp.fc1',
                   fc2='mlp.fc2', pooler='pre_logits.fc'),
      'transformers': dict(
          patch=pre + 'embeddings.patch_embeddings.projection',
          cls=pre + 'embeddings.cls_token',
          pos=pre + 'embeddings.position_embeddings', norm=pre + 'layernorm',
          head='classifier', block=pre + 'encoder.layer.{}.',
          ln1='layernorm_before', ln2='layernorm_after',
          proj='attention.output.dense', fc1='intermediate.dense',
          fc2='output.dense', pooler=pre + 'pooler.dense'),
  }[layout]
  sd = {k: v.astype(np.float64) for k, v in state.items()}
  linear = lambda x, n: x @ sd[n + '.weight'].T + sd[n + '.bias']

  def layer_norm(x, n):
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True)
                                                 + 1e-6)
    return x * sd[n + '.weight'] + sd[n + '.bias']

  gelu = lambda x: 0.5 * x * (1 + np.tanh(
      np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
  x = images_BxHxWxC.astype(np.float64).transpose(0, 3, 1, 2)  # NCHW.
  b, c, h, w = x.shape
  weight = sd[name['patch'] + '.weight']  # (D, C, p, p).
  width = weight.shape[0]
  patches = x.reshape(b, c, h // patch, patch, w // patch, patch).transpose(
      0, 2, 4, 1, 3, 5).reshape(b, -1, c * patch * patch)
  x = patches @ weight.reshape(width, -1).T + sd[name['patch'] + '.bias']
  cls = np.broadcast_to(sd[name['cls']], (b, 1, width))
  x = np.concatenate([cls, x], 1) + sd[name['pos']]
  blocks = len({k.split('.')[1 if layout == 'timm' else 3]
                for k in sd if '.norm1.' in k or '.layernorm_before.' in k})
  for i in range(blocks):
    blk = name['block'].format(i)
    y = layer_norm(x, blk + name['ln1'])
    if layout == 'timm':
      qkv = linear(y, blk + 'attn.qkv')
    else:
      qkv = np.concatenate([linear(y, f'{blk}attention.attention.{p}')
                            for p in ('query', 'key', 'value')], -1)
    q, k, v = qkv.reshape(b, -1, 3, heads, width // heads).transpose(
        2, 0, 3, 1, 4)
    att = q @ k.swapaxes(-1, -2) * (width // heads) ** -0.5
    att = np.exp(att - att.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    o = (att @ v).transpose(0, 2, 1, 3).reshape(b, -1, width)
    x = x + linear(o, blk + name['proj'])
    y = gelu(linear(layer_norm(x, blk + name['ln2']), blk + name['fc1']))
    x = x + linear(y, blk + name['fc2'])
  x = layer_norm(x, name['norm'])[:, 0]
  if name['pooler'] + '.weight' in sd:
    x = np.tanh(linear(x, name['pooler']))
  return linear(x, name['head'])


@pytest.mark.parametrize('layout', convert.LAYOUTS)
@pytest.mark.parametrize('representation_size', [None, 8])
def test_converted_weights_give_the_reference_logits(layout,
                                                     representation_size):
  model, flat = _params(**TINY, representation_size=representation_size)
  state = convert.to_torch_layout(flat, layout)
  images = _images()
  reference = _torch_reference_logits(state, layout, images, heads=2,
                                      patch=16)
  ours = _logits(model, convert.from_torch_layout(state, layout, num_heads=2),
                 images)
  np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('layout', convert.LAYOUTS)
def test_safetensors_file_loads_with_same_logits_as_native(layout, tmp_path):
  """checkpoint.save(layout=...) then checkpoint.load: detect + convert."""
  model, flat = _params(hidden_size=192, mlp_dim=32, num_heads=3,
                        num_layers=1)  # 192 wide: heads come from the table.
  path = str(tmp_path / f'model.{layout}.safetensors')
  checkpoint.save(checkpoint.unflatten(flat), path, layout=layout)
  assert checkpoint.detect_layout(checkpoint.read_flat(path)) == layout
  loaded = checkpoint.flatten(checkpoint.load(path))
  images = _images()
  np.testing.assert_array_equal(_logits(model, loaded, images),
                                _logits(model, flat, images))


# ------------------------------------------- against the libraries themselves

# CI installs the `peers` extra and sets VIT_JAX_REQUIRE_PEERS=1: there a
# missing library fails these tests instead of silently skipping them.
_REQUIRE_PEERS = os.environ.get('VIT_JAX_REQUIRE_PEERS') == '1'
_HAS_TIMM = _REQUIRE_PEERS or all(importlib.util.find_spec(m)
                                  for m in ('torch', 'timm'))
_HAS_TRANSFORMERS = _REQUIRE_PEERS or all(
    importlib.util.find_spec(m) for m in ('torch', 'transformers'))


@pytest.mark.skipif(not _HAS_TIMM, reason='torch + timm not installed')
def test_timm_model_gives_same_logits():
  import timm  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  torch_model = timm.create_model(
      'vit_tiny_patch16_224', pretrained=False, num_classes=10, img_size=32,
      embed_dim=16, depth=2, num_heads=2, mlp_ratio=2).eval()
  state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  model = models.get_model('ViT-Ti_16', 10, **TINY)
  images = _images()
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(images.transpose(0, 3, 1, 2)))
  ours = _logits(model, convert.from_torch_layout(state, 'timm', num_heads=2),
                 images)
  scale = np.abs(expected.numpy()).max()
  np.testing.assert_allclose(ours, expected.numpy(), atol=2e-3 * scale)


@pytest.mark.skipif(not _HAS_TRANSFORMERS,
                    reason='torch + transformers not installed')
def test_transformers_model_gives_same_logits():
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  config = transformers.ViTConfig(
      hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
      intermediate_size=32, image_size=32, patch_size=16, num_labels=10,
      layer_norm_eps=1e-6)
  torch_model = transformers.ViTForImageClassification(config).eval()
  state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  model = models.get_model('ViT-Ti_16', 10, **TINY)
  images = _images()
  with torch.no_grad():
    expected = torch_model(
        torch.from_numpy(images.transpose(0, 3, 1, 2))).logits.numpy()
  ours = _logits(
      model, convert.from_torch_layout(state, 'transformers', num_heads=2),
      images)
  np.testing.assert_allclose(ours, expected,
                             atol=2e-3 * np.abs(expected).max())


# ------------------------------------------------ hybrids and Mixers (timm)

TINY_HYBRID = dict(hidden_size=16, mlp_dim=32, num_heads=2, num_layers=1,
                   resnet=dict(num_layers=(1, 1), width_factor=1))
TINY_MIXER = dict(hidden_dim=16, num_blocks=2, tokens_mlp_dim=8,
                  channels_mlp_dim=24)


@pytest.mark.parametrize('name,overrides,size', [
    ('R50+ViT-B_16', TINY_HYBRID, 64),
    ('R+ViT-Ti_16', dict(TINY, num_layers=1), 32),  # Stem only, no stages.
    ('Mixer-B_16', TINY_MIXER, 32),
])
def test_hybrid_and_mixer_timm_round_trip_is_bit_identical(name, overrides,
                                                           size):
  _, flat = _params(5, size, name, **overrides)
  state = convert.to_torch_layout(flat, 'timm')
  _assert_identical(convert.from_torch_layout(state, 'timm', num_heads=2),
                    flat)


def test_hybrid_timm_names_are_timms():
  _, flat = _params(5, 64, 'R50+ViT-B_16', **TINY_HYBRID)
  state = convert.to_torch_layout(flat, 'timm')
  stage = 'patch_embed.backbone.stages.1.blocks.0.'
  assert state['patch_embed.backbone.stem.conv.weight'].shape == (64, 3, 7, 7)
  assert state[stage + 'downsample.conv.weight'].shape == (512, 256, 1, 1)
  assert state[stage + 'norm3.weight'].shape == (512,)
  assert state['patch_embed.proj.weight'].shape == (16, 512, 1, 1)
  # Stem: conv + norm (2); per stage one unit: 3 convs, 3 norms (2 each),
  # projection conv and norm; ViT: patch (2), cls, pos, norm (2), head (2),
  # one block of 12 (q/k/v fused).
  assert len(state) == 3 + 2 * (3 + 6 + 1 + 2) + 8 + 12


def test_hybrid_and_mixer_have_no_transformers_layout():
  _, flat = _params(5, 32, 'Mixer-B_16', **TINY_MIXER)
  with pytest.raises(ValueError, match='use timm'):
    convert.to_torch_layout(flat, 'transformers')


def _timm_hybrid(layers, size, patch):
  """timm's hybrid ViT (as `vit_base_r50_s16_224`), tiny."""
  from timm.models import vision_transformer_hybrid as hybrid  # pylint: disable=g-import-not-at-top
  from timm import layers as timm_layers  # pylint: disable=g-import-not-at-top
  return hybrid._create_vision_transformer_hybrid(  # pylint: disable=protected-access
      'vit_base_r50_s16_224', backbone=hybrid._resnetv2(layers),  # pylint: disable=protected-access
      img_size=size, patch_size=patch, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2,
      num_classes=5, act_layer=timm_layers.get_act_layer('gelu_tanh')).eval()


def _assert_same_logits_as_torch(torch_model, name, overrides, size):
  """timm's model, random weights, vs ours on its converted state dict."""
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():  # Norms start at 1/0 in timm: randomise them too.
    for value in torch_model.state_dict().values():
      value.add_(0.1 * torch.randn_like(value))
  state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  images = _images(size)
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(images.transpose(0, 3, 1, 2)))
  expected = expected.numpy()
  ours = _logits(models.get_model(name, 5, **overrides),
                 convert.from_torch_layout(state, 'timm', num_heads=2),
                 images)
  np.testing.assert_allclose(ours, expected, atol=1e-4 * np.abs(expected).max())


# timm runs exact GELU by default; the original's (and our) models use flax's
# default tanh approximation, so timm gets gelu_tanh. timm's GroupNorm
# (eps 1e-5) and weight standardisation (eps 1e-8 inside the sqrt) differ
# from flax's (1e-6, 1e-5 added to the std) by far less than the tolerance.
@pytest.mark.skipif(not _HAS_TIMM, reason='torch + timm not installed')
@pytest.mark.parametrize('layers,patch,name,overrides', [
    ((1, 1), 1, 'R50+ViT-B_16', TINY_HYBRID),
    ((), 8, 'R+ViT-Ti_16', dict(TINY, num_layers=1)),  # Stem only.
])
def test_timm_hybrid_gives_same_logits(layers, patch, name, overrides):
  _assert_same_logits_as_torch(_timm_hybrid(layers, 64, patch), name,
                               overrides, 64)


@pytest.mark.skipif(not _HAS_TIMM, reason='torch + timm not installed')
def test_timm_mixer_gives_same_logits():
  from timm import layers as timm_layers  # pylint: disable=g-import-not-at-top
  from timm.models import mlp_mixer  # pylint: disable=g-import-not-at-top
  torch_model = mlp_mixer.MlpMixer(
      num_classes=5, img_size=32, patch_size=16, num_blocks=2, embed_dim=16,
      mlp_ratio=(0.5, 1.5),
      act_layer=timm_layers.get_act_layer('gelu_tanh')).eval()
  _assert_same_logits_as_torch(torch_model, 'Mixer-B_16', TINY_MIXER, 32)
