"""Tests for vit_jax.optim: which parameters AdamW decays."""

import jax
import numpy as np

from vit_jax import models
from vit_jax import optim


def test_weight_decay_applies_to_kernels_only():
  model = models.get_model('testing', num_classes=3, classifier='token')
  params = jax.eval_shape(lambda: model.init(
      jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))['params'])
  mask = optim.decay_mask(params)
  flat = {'/'.join(k.key for k in path): v for path, v in
          jax.tree_util.tree_leaves_with_path(mask)}
  decayed = sorted(k for k, v in flat.items() if v)
  assert all(k.endswith('/kernel') for k in decayed)
  # Every kernel: embedding, q/k/v/out, two MLP layers, pre_logits, head.
  assert len(decayed) == 1 + 4 + 2 + 1 + 1
  block = 'Transformer/encoderblock_0/MultiHeadDotProductAttention_0'
  assert not flat[f'{block}/query/bias']  # A (heads, head_dim) matrix.
  assert not flat['cls']
  assert not flat['Transformer/posembed_input/pos_embedding']
  assert not flat['Transformer/encoder_norm/scale']
