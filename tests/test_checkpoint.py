"""Tests for vit_jax.checkpoint: published layouts, save/load, bad files."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import checkpoint
from vit_jax import models
from vit_jax.configs import models as model_configs

TINY = dict(hidden_size=16, mlp_dim=24, num_heads=2, num_layers=2,
            patch_size=8)


def _random_params(model, image_size=32, seed=0):
  """Params with random values everywhere (zero-init head included)."""
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3))))
  leaves, treedef = jax.tree.flatten(shapes['params'])
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(treedef, [
      rng.normal(0, 0.2, x.shape).astype(np.float32) for x in leaves])


def _images(n=2, size=32):
  return np.random.default_rng(1).uniform(-1, 1, (n, size, size, 3)).astype(
      np.float32)


def _logits(model, params, images=None):
  images = _images() if images is None else images
  return np.asarray(model.apply({'params': params}, images))


def _published_vit_jax_keys(flat):
  """Keys as the original repo's .npz files spell them (pre-linen names)."""
  rename = {'LayerNorm_1': 'LayerNorm_2', 'MlpBlock_0': 'MlpBlock_3',
            'MultiHeadDotProductAttention_0': 'MultiHeadDotProductAttention_1'}
  out = {}
  for key, value in flat.items():
    parts = key.split('/')
    if len(parts) > 2 and parts[1].startswith('encoderblock_'):
      parts[2] = rename.get(parts[2], parts[2])
    out['/'.join(parts)] = value
  return out


def _big_vision_keys(flat, scanned):
  out = {}
  for key, value in flat.items():
    if key == 'Transformer/posembed_input/pos_embedding':
      out['params/pos_embedding'] = value
    elif not (scanned and key.startswith('Transformer/encoderblock_')):
      out['params/' + key] = value
  if scanned:
    blocks = sorted({k.split('/')[1] for k in flat if 'encoderblock_' in k},
                    key=lambda b: int(b.split('_')[1]))
    for rest in {k.split('/', 2)[2] for k in flat if 'encoderblock_0/' in k}:
      out['params/Transformer/encoderblock/' + rest] = np.stack(
          [flat[f'Transformer/{b}/{rest}'] for b in blocks])
  return out


@pytest.fixture(name='model_and_params')
def fixture_model_and_params():
  model = models.get_model('ViT-Ti_16', 10, representation_size=12, **TINY)
  return model, _random_params(model)


def test_save_then_load_is_bit_identical(tmp_path, model_and_params):
  _, params = model_and_params
  path = str(tmp_path / 'model.npz')
  checkpoint.save(params, path)
  restored = checkpoint.load(path)
  assert jax.tree.structure(restored) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restored)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)


def test_save_writes_the_published_vit_jax_key_names(tmp_path,
                                                     model_and_params):
  _, params = model_and_params
  path = str(tmp_path / 'model.npz')
  checkpoint.save(params, path)
  expected = _published_vit_jax_keys(checkpoint.flatten(params))
  assert sorted(np.load(path).files) == sorted(expected)
  assert 'Transformer/encoderblock_1/MlpBlock_3/Dense_1/kernel' in expected


@pytest.mark.parametrize('layout', ['vit_jax', 'big_vision',
                                    'big_vision_scanned'])
def test_synthetic_published_layouts_give_identical_logits(
    tmp_path, model_and_params, layout):
  model, params = model_and_params
  flat = {k: np.asarray(v) for k, v in checkpoint.flatten(params).items()}
  if layout == 'vit_jax':
    file_flat = _published_vit_jax_keys(flat)
  else:
    file_flat = _big_vision_keys(flat, scanned=layout.endswith('scanned'))
  path = str(tmp_path / f'{layout}.npz')
  np.savez(path, **file_flat)
  assert checkpoint.detect_layout(file_flat) == layout.replace('_scanned', '')
  restored = checkpoint.load(path)
  np.testing.assert_array_equal(_logits(model, restored),
                                _logits(model, params))


def test_load_pretrained_replaces_head_and_drops_pre_logits(
    tmp_path, model_and_params):
  _, params = model_and_params
  path = str(tmp_path / 'pre.npz')
  checkpoint.save(params, path)
  new_model = models.get_model('ViT-Ti_16', 3, **TINY)  # No pre_logits.
  init = new_model.init(jax.random.PRNGKey(5), _images())['params']
  loaded = checkpoint.load_pretrained(
      pretrained_path=path, init_params=init,
      model_config=model_configs.model_config('ViT-Ti_16', **TINY))
  assert 'pre_logits' not in loaded
  assert loaded['head']['kernel'].shape == (16, 3)
  np.testing.assert_array_equal(loaded['head']['kernel'],
                                init['head']['kernel'])
  np.testing.assert_array_equal(loaded['embedding']['kernel'],
                                params['embedding']['kernel'])


def test_load_pretrained_keeps_pre_logits_with_representation(
    tmp_path, model_and_params):
  model, params = model_and_params
  path = str(tmp_path / 'pre.npz')
  checkpoint.save(params, path)
  init = model.init(jax.random.PRNGKey(5), _images())['params']
  loaded = checkpoint.load_pretrained(
      pretrained_path=path, init_params=init,
      model_config=model_configs.model_config(
          'ViT-Ti_16', representation_size=12, **TINY))
  np.testing.assert_array_equal(loaded['pre_logits']['kernel'],
                                params['pre_logits']['kernel'])


def test_load_pretrained_resizes_position_embeddings(tmp_path,
                                                     model_and_params):
  _, params = model_and_params
  path = str(tmp_path / 'pre.npz')
  checkpoint.save(params, path)  # 32px / patch 8: 4x4 grid + class token.
  new_model = models.get_model('ViT-Ti_16', 10, **TINY)
  init = new_model.init(jax.random.PRNGKey(5), _images(size=48))['params']
  loaded = checkpoint.load_pretrained(
      pretrained_path=path, init_params=init,
      model_config=model_configs.model_config('ViT-Ti_16', **TINY))
  old = params['Transformer']['posembed_input']['pos_embedding']
  new = loaded['Transformer']['posembed_input']['pos_embedding']
  assert new.shape == (1, 37, 16)  # 6x6 grid + class token.
  np.testing.assert_array_equal(new[:, 0], old[:, 0])
  # Bilinear resizing keeps the grid's mean roughly and its dtype.
  assert new.dtype == np.float32
  np.testing.assert_allclose(new[0, 1:].mean(0), old[0, 1:].mean(0),
                             atol=0.1)
  assert _logits(new_model, loaded, _images(size=48)).shape == (2, 10)


def test_interpolate_posembed_is_identity_at_equal_size():
  posemb = np.random.default_rng(0).normal(size=(1, 17, 8)).astype(np.float32)
  np.testing.assert_array_equal(
      checkpoint.interpolate_posembed(posemb, 17, True), posemb)


@pytest.mark.parametrize('old_side,new_side', [(14, 24), (4, 8), (24, 14)])
def test_interpolate_posembed_maps_grid_corners_to_corners(old_side,
                                                           new_side):
  """The original's resizing (scipy zoom, order 1) puts the old grid's
  corners on the new grid's corners and is linear in between: a grid that
  is linear in (row, column) stays that linear function, sampled at
  new position i * (old_side - 1) / (new_side - 1). Half-pixel-centred
  resizing (jax.image.resize) samples elsewhere and fails this."""
  rows, cols = np.meshgrid(np.arange(old_side), np.arange(old_side),
                           indexing='ij')
  grid = np.stack([rows, 2.0 * cols + rows], -1).astype(np.float32)
  cls = np.full((1, 1, 2), 7.0, np.float32)
  posemb = np.concatenate([cls, grid.reshape(1, -1, 2)], axis=1)
  resized = checkpoint.interpolate_posembed(posemb, 1 + new_side**2, True)
  np.testing.assert_array_equal(resized[:, :1], cls)
  at = np.arange(new_side) * (old_side - 1) / (new_side - 1)
  new_rows, new_cols = np.meshgrid(at, at, indexing='ij')
  expected = np.stack([new_rows, 2.0 * new_cols + new_rows], -1)
  # float32 arithmetic on values up to 3 * old_side.
  np.testing.assert_allclose(resized[0, 1:].reshape(new_side, new_side, 2),
                             expected, atol=3 * old_side * 1e-6)


def test_interpolate_posembed_without_class_token_resizes_the_whole_grid():
  grid = np.arange(16, dtype=np.float32).reshape(1, 16, 1)
  resized = checkpoint.interpolate_posembed(grid, 64, has_class_token=False)
  assert resized.shape == (1, 64, 1)
  rows = resized.reshape(8, 8)
  np.testing.assert_allclose(rows[0], np.linspace(0, 3, 8), atol=1e-6)


def test_load_pretrained_casts_to_the_model_dtype(tmp_path, model_and_params):
  model, params = model_and_params
  path = str(tmp_path / 'pre.npz')
  checkpoint.save(jax.tree.map(lambda x: x.astype(np.float16), params), path)
  init = model.init(jax.random.PRNGKey(5), _images())['params']
  loaded = checkpoint.load_pretrained(
      pretrained_path=path, init_params=init,
      model_config=model_configs.model_config(
          'ViT-Ti_16', representation_size=12, **TINY))
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(loaded))


# Bad input: every error names the problem and what to do.


def test_missing_file_says_where_and_how_to_get_it(tmp_path):
  with pytest.raises(FileNotFoundError) as err:
    checkpoint.load(str(tmp_path / 'ViT-B_16.npz'))
  message = str(err.value)
  assert str(tmp_path / 'ViT-B_16.npz') in message
  assert 'python -m vit_jax.hub fetch ViT-B_16' in message


def test_truncated_file_is_named(tmp_path, model_and_params):
  _, params = model_and_params
  path = str(tmp_path / 'model.npz')
  checkpoint.save(params, path)
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'model\.npz.*truncated or corrupt'):
    checkpoint.load(path)


def test_garbage_file_is_named(tmp_path):
  path = str(tmp_path / 'garbage.npz')
  with open(path, 'wb') as f:
    f.write(os.urandom(1000))
  with pytest.raises(checkpoint.CheckpointError, match='garbage.npz'):
    checkpoint.load(path)


def test_pickled_npz_is_refused(tmp_path):
  path = str(tmp_path / 'pickled.npz')
  np.savez(path, **{'embedding/kernel': np.array([{'a': 1}], dtype=object)})
  with pytest.raises(checkpoint.CheckpointError, match='pickled'):
    checkpoint.load(path)


def test_unrecognised_layout_is_refused(tmp_path):
  path = str(tmp_path / 'other.npz')
  np.savez(path, conv1=np.zeros(3))
  with pytest.raises(checkpoint.CheckpointError, match='Unrecognised'):
    checkpoint.load(path)


def test_architecture_mismatch_lists_keys_and_names_the_fitting_model(
    tmp_path, model_and_params):
  _, params = model_and_params
  path = str(tmp_path / 'pre.npz')
  checkpoint.save(params, path)
  other = models.get_model('ViT-Ti_16', 10, hidden_size=16, mlp_dim=32,
                           num_heads=2, num_layers=3, patch_size=8)
  init = other.init(jax.random.PRNGKey(0), _images())['params']
  with pytest.raises(checkpoint.CheckpointError) as err:
    checkpoint.load_pretrained(
        pretrained_path=path, init_params=init,
        model_config=model_configs.model_config(
            'ViT-Ti_16', hidden_size=16, mlp_dim=32, num_heads=2,
            num_layers=3, patch_size=8))
  message = str(err.value)
  assert 'pre.npz does not fit this model' in message
  assert 'missing (16)' in message  # All of encoderblock_2's arrays.
  assert 'Transformer/encoderblock_2/LayerNorm_0/bias' in message
  assert 'mismatched shapes (6)' in message
  assert 'MlpBlock_0/Dense_0/kernel: file (16, 24) vs model (16, 32)' in message
  assert 'unnamed ViT (hidden_size=16, num_layers=2, patch_size=8)' in message


def test_mismatch_message_names_a_published_model(tmp_path):
  model = models.get_model('ViT-Ti_16', 10, num_layers=12)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))['params']
  flat = {k: np.zeros(v.shape, np.float32)
          for k, v in checkpoint.flatten(shapes).items()}
  flat['Transformer/encoderblock_0/LayerNorm_0/scale'] = np.zeros(5)
  with pytest.raises(checkpoint.CheckpointError, match='fits ViT-Ti_16'):
    checkpoint.check_compatible(flat, checkpoint.flatten(shapes), 'f.npz')


def test_save_leaves_nothing_behind_on_failure(tmp_path, model_and_params):
  path = str(tmp_path / 'model.npz')

  def failing_writer(_):
    raise RuntimeError('disk full')

  with pytest.raises(RuntimeError):
    checkpoint._atomic_write(path, failing_writer)  # pylint: disable=protected-access
  assert os.listdir(tmp_path) == []


# ------------------------------------------ hybrid and Mixer published files

_PRE_LINEN_BLOCK = {
    'MultiHeadDotProductAttention_0': 'MultiHeadDotProductAttention_1',
    'LayerNorm_1': 'LayerNorm_2', 'MlpBlock_0': 'MlpBlock_3'}


def _published_by_hand(flat):
  """The published layout written out directly (not via checkpoint.save):
  pre-linen names inside encoder blocks, GroupNorm params (1, 1, 1, C)."""
  out = {}
  for key, value in flat.items():
    parts = key.split('/')
    if parts[0] == 'Transformer' and parts[1].startswith('encoderblock_'):
      parts[2] = _PRE_LINEN_BLOCK.get(parts[2], parts[2])
    if (len(parts) > 1 and parts[-2].startswith('gn')
        and parts[-1] in ('scale', 'bias')):
      value = value.reshape(1, 1, 1, -1)
    out['/'.join(parts)] = value
  return out


@pytest.mark.parametrize('name,overrides,size', [
    ('R50+ViT-B_16', dict(hidden_size=16, mlp_dim=32, num_heads=2,
                          num_layers=2,
                          resnet=dict(num_layers=(1, 1), width_factor=1)), 64),
    ('Mixer-B_16', dict(hidden_dim=16, num_blocks=2, tokens_mlp_dim=8,
                        channels_mlp_dim=24), 32),
])
def test_published_hybrid_and_mixer_files_load_and_save_back(
    tmp_path, name, overrides, size):
  model = models.get_model(name, 5, **overrides)
  params = model.init(jax.random.PRNGKey(0), _images(size=size))['params']
  rng = np.random.default_rng(0)
  flat = {k: np.asarray(v) + rng.normal(0, 0.1, v.shape).astype(np.float32)
          for k, v in checkpoint.flatten(params).items()}
  published = _published_by_hand(flat)
  if name.startswith('R50'):
    assert published['gn_root/scale'].shape == (1, 1, 1, 64)
    assert 'Transformer/encoderblock_1/MlpBlock_3/Dense_1/kernel' in published
  path = str(tmp_path / 'published.npz')
  np.savez(path, **published)
  loaded = checkpoint.load(path)
  assert {k: (v.shape, v.tobytes()) for k, v in
          checkpoint.flatten(loaded).items()} == {
              k: (v.shape, v.tobytes()) for k, v in flat.items()}
  images = _images(size=size)
  np.testing.assert_array_equal(
      model.apply({'params': loaded}, images),
      model.apply({'params': checkpoint.unflatten(flat)}, images))
  again = str(tmp_path / 'again.npz')
  checkpoint.save(loaded, again)
  written = checkpoint.read_flat(again)
  assert {k: (v.shape, v.tobytes()) for k, v in written.items()} == {
      k: (v.shape, v.tobytes()) for k, v in published.items()}
  assert checkpoint.tree_layout.describe(flat).startswith(
      'an unnamed ResNet+ViT hybrid' if name.startswith('R50')
      else 'an unnamed Mixer')


def test_describe_names_published_hybrids_and_mixers():
  for name in ('R50+ViT-B_16', 'R+ViT-Ti_16', 'Mixer-B_16'):
    model = models.get_model(name, 5)
    shapes = jax.eval_shape(lambda m=model: m.init(
        jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))['params']
    assert checkpoint.tree_layout.describe(
        checkpoint.flatten(shapes)) == name


def test_inspect_params_as_the_original():
  expected = {'a': {'w': np.zeros(2)}, 'pre_logits': {}, 'b': np.zeros(1)}
  params = {'a': {'w': np.ones(2)}, 'c': np.ones(3)}
  with pytest.raises(ValueError, match='Missing params.*b'):
    checkpoint.inspect_params(params=dict(params), expected=expected)
  out = checkpoint.inspect_params(params=dict(params), expected=expected,
                                  fail_if_extra=False, fail_if_missing=False)
  assert out['pre_logits'] == {}  # Weightless module put back.
  assert set(out) == {'a', 'c', 'pre_logits'}  # Extra kept, missing absent.


def test_create_checkpoint_writes_what_load_pretrained_reads(tmp_path):
  from vit_jax import test_utils  # pylint: disable=g-import-not-at-top
  config = model_configs.MODEL_CONFIGS['testing']
  path = str(tmp_path / 'sub' / 'testing.npz')
  test_utils.create_checkpoint(config, path)
  keys = list(np.load(path).keys())
  assert keys == sorted(keys) and 'head/kernel' in keys
  model = models.VisionTransformer(num_classes=3, **config)
  init = model.init(jax.random.PRNGKey(1), jnp.ones((1, 16, 16, 3)),
                    train=False)['params']
  restored = checkpoint.load_pretrained(
      pretrained_path=path, init_params=init, model_config=config)
  assert restored['head']['kernel'].shape == init['head']['kernel'].shape
  assert np.array_equal(restored['embedding']['kernel'],
                        np.load(path)['embedding/kernel'])
