"""Tests for vit_jax.layout: the architecture read off the arrays."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import layout
from vit_jax import models


def _shapes(name, num_classes, image_size, **overrides):
  model = models.get_model(name, num_classes, **overrides)
  return model, jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0),
      jnp.zeros((1, image_size, image_size, 3))))['params']


@pytest.mark.parametrize('overrides,image_size', [
    (dict(num_layers=2), 32),
    (dict(num_layers=1, classifier='gap', representation_size=7), 48),
    (dict(hidden_size=16, mlp_dim=24, num_heads=4, num_layers=3,
          patch_size=8), 40),
])
def test_architecture_of_gives_back_the_config(overrides, image_size):
  model, params = _shapes('ViT-Ti_16', 5, image_size, **overrides)
  found = layout.architecture_of(params, 'f.npz')
  assert found.pop('num_classes') == 5
  assert found.pop('image_size') == image_size
  assert found == {
      'hidden_size': model.hidden_size,
      'patch_size': model.patches['size'][0],
      'num_layers': model.transformer['num_layers'],
      'mlp_dim': model.transformer['mlp_dim'],
      'num_heads': model.transformer['num_heads'],
      'classifier': model.classifier,
      'representation_size': model.representation_size}


def test_incomplete_classifier_names_what_is_missing():
  _, params = _shapes('ViT-Ti_16', 5, 32, num_layers=1)
  del params['head']
  with pytest.raises(layout.CheckpointError,
                     match=r'f\.npz is not a complete ViT classifier .*'
                     r'num_classes'):
    layout.architecture_of(params, 'f.npz')


def test_describe_names_the_size_from_the_table():
  _, params = _shapes('ViT-B_16', 5, 32)
  assert layout.describe(layout.flatten(params)) == 'ViT-B_16'
  assert layout.describe({'head/kernel': np.zeros((2, 2))}) == (
      'no known ViT (no embedding/kernel)')


def test_heads_for_width_comes_from_the_size_table():
  assert [layout.heads_for_width(w) for w in (192, 384, 768, 1024)] == [
      3, 6, 12, 16]
  with pytest.raises(layout.CheckpointError, match='num_heads='):
    layout.heads_for_width(100)


def test_key_maps_are_inverse_and_torch_layouts_are_refused():
  key = 'Transformer/encoderblock_3/MlpBlock_0/Dense_1/kernel'
  assert layout.pre_linen_key(key) == (
      'Transformer/encoderblock_3/MlpBlock_3/Dense_1/kernel')
  assert layout.linen_key(layout.pre_linen_key(key)) == key
  with pytest.raises(layout.CheckpointError, match='from_torch_layout'):
    layout.to_linen_flat({'blocks.0.norm1.weight': np.zeros(2)})
