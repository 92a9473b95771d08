"""vit_jax.visualize: attention rollout and last-layer CLS attention maps."""

import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from vit_jax import checkpoint
from vit_jax import explain
from vit_jax import inference
from vit_jax import models
from vit_jax import visualize

SIZE, PATCH = 32, 8  # A 4x4 patch grid.


def _trained(model, params):
  return inference.TrainedModel(model, params, SIZE, ('a', 'b', 'c'), 'mem',
                                None)


def _random_model(classifier='token', num_layers=3):
  model = models.get_model('testing', 3, patch_size=PATCH,
                           num_layers=num_layers, classifier=classifier)
  params = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
  rng = np.random.default_rng(0)
  return model, jax.tree.map(
      lambda x: x + rng.normal(0, 0.5, x.shape).astype(np.float32),
      params['params'])


def _focused_model(patch: int, classifier='token'):
  """Every query attends to `patch`, whatever the image.

  Patch embeddings are zeroed, so each token is its position embedding:
  `patch` gets +v, the other patches -v, the class token 0. LayerNorm maps
  these to +-u and 0; the key kernel reads u's first feature and the query
  bias is constant, so the logit is large for `patch` only. Zero value and
  MLP outputs keep the residual stream, hence the attention, the same in
  every layer.
  """
  model = models.get_model('testing', 3, patch_size=PATCH, num_layers=2,
                           classifier=classifier)
  params = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
  params = jax.tree.map(np.array, params['params'])
  params['embedding']['kernel'][:] = 0
  params['embedding']['bias'][:] = 0
  extra = 1 if classifier == 'token' else 0
  if extra:
    params['cls'][:] = 0
  posemb = params['Transformer']['posembed_input']['pos_embedding']
  posemb[:] = 0
  vector = np.zeros(posemb.shape[-1], np.float32)
  vector[:2] = (1, -1)
  posemb[0, extra:] = -vector
  posemb[0, extra + patch] = vector
  for i in range(2):
    block = params['Transformer'][f'encoderblock_{i}']
    attention = block['MultiHeadDotProductAttention_0']
    attention['query']['kernel'][:] = 0
    attention['query']['bias'][:] = 4
    attention['key']['kernel'][:] = 0
    attention['key']['kernel'][0] = 1
    attention['value']['kernel'][:] = 0
    attention['value']['bias'][:] = 0
    block['MlpBlock_0']['Dense_1']['kernel'][:] = 0
    block['MlpBlock_0']['Dense_1']['bias'][:] = 0
  return model, params


def _images(count=2, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (count, SIZE, SIZE, 3), np.uint8)


def test_rollout_rows_sum_to_one():
  model, params = _random_model()
  images = jnp.asarray(_images(), jnp.float32) / 127.5 - 1
  weights = explain.attention_weights(model, params, images)
  assert weights.shape == (3, 2, 2, 17, 17)
  np.testing.assert_allclose(weights.sum(-1), 1, atol=1e-5)
  joint = explain.rollout(weights)
  assert joint.shape == (2, 17, 17)
  np.testing.assert_allclose(joint.sum(-1), 1, atol=1e-5)
  assert (np.asarray(joint) >= 0).all()


def test_rollout_multiplies_residual_adjusted_layers_in_order():
  rng = np.random.default_rng(1)
  raw = rng.random((2, 1, 3, 4, 4))
  weights = raw / raw.sum(-1, keepdims=True)
  mixed = [(w.mean(1)[0] + np.eye(4)) / 2 for w in weights]  # Rows sum to 2.
  np.testing.assert_allclose(explain.rollout(jnp.asarray(weights))[0],
                             mixed[1] @ mixed[0], atol=1e-6)


@pytest.mark.parametrize('classifier', ['token', 'gap'])
def test_a_model_attending_to_one_patch_highlights_that_patch(classifier):
  patch = 6  # Row 1, column 2 of the 4x4 grid.
  model, params = _focused_model(patch, classifier)
  maps = explain.attention_maps(_trained(model, params), _images())
  for key in ('rollout', 'last_layer'):
    assert maps[key].shape == (2, 4, 4)
    for grid in maps[key]:
      assert np.unravel_index(grid.argmax(), grid.shape) == (1, 2), key
      assert grid[1, 2] == 1.0
      others = np.delete(grid.ravel(), patch)
      assert others.max() < 0.01, key


def test_the_synthetic_model_really_attends_to_that_patch():
  model, params = _focused_model(patch=6)
  images = jnp.asarray(_images(1), jnp.float32) / 127.5 - 1
  weights = explain.attention_weights(model, params, images)
  cls_row = np.asarray(weights[:, 0, :, 0])  # Layers x heads x tokens.
  assert (cls_row[..., 1 + 6] > 0.99).all()


def test_cli_writes_an_overlay_png_for_a_published_file(tmp_path, capsys):
  model, params = _random_model()
  file = str(tmp_path / 'ViT-testing.npz')
  checkpoint.save(params, file)
  image = str(tmp_path / 'photo.jpg')
  Image.fromarray(_images(1)[0]).resize((90, 60)).save(image)
  out = str(tmp_path / 'maps' / 'attention.png')
  assert visualize.main(['--checkpoint', file, image, '--out', out]) == 0
  assert f'Wrote {out}' in capsys.readouterr().out
  with Image.open(out) as png:
    assert png.format == 'PNG' and png.size[0] > png.size[1] > 100


def test_cli_names_an_unreadable_image(tmp_path, capsys):
  model, params = _random_model()
  file = str(tmp_path / 'm.npz')
  checkpoint.save(params, file)
  bad = tmp_path / 'bad.jpg'
  bad.write_text('text')
  assert visualize.main(['--checkpoint', file, str(bad), '--out',
                         str(tmp_path / 'o.png')]) == 1
  assert f'Error: {bad}: cannot read it as an image' in capsys.readouterr().err
  assert not os.path.exists(tmp_path / 'o.png')
