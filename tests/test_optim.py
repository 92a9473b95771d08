"""Tests for vit_jax.optim: what AdamW decays and what Muon orthogonalizes."""

import jax
import numpy as np
import optax

from vit_jax.configs import common
from vit_jax import models
from vit_jax import optim


def test_weight_decay_applies_to_kernels_only():
  model = models.get_model('testing', num_classes=3, classifier='token',
                           representation_size=10)
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


def _testing_params(num_heads=2):
  model = models.get_model('testing', num_classes=3, classifier='token',
                           hidden_size=8, num_heads=num_heads, mlp_dim=12)
  return model.init(jax.random.key(0),
                    np.zeros((1, 32, 32, 3), np.float32))['params']


def _flat(tree):
  return {'/'.join(k.key for k in path): v for path, v in
          jax.tree_util.tree_leaves_with_path(
              tree, is_leaf=lambda x: x is None or isinstance(
                  x, optax.contrib.MuonDimensionNumbers))}


def test_muon_takes_encoder_kernels_as_matrices():
  dims = _flat(optim.muon_dimensions(_testing_params()))
  muon = {k: v for k, v in dims.items() if v is not None}
  block = 'Transformer/encoderblock_0/'
  attention = block + 'MultiHeadDotProductAttention_0/'
  assert muon == {
      **{attention + f'{n}/kernel': optax.contrib.MuonDimensionNumbers(
          0, (1, 2)) for n in ('query', 'key', 'value')},
      attention + 'out/kernel': optax.contrib.MuonDimensionNumbers((0, 1), 2),
      block + 'MlpBlock_0/Dense_0/kernel': optax.contrib.MuonDimensionNumbers(
          0, 1),
      block + 'MlpBlock_0/Dense_1/kernel': optax.contrib.MuonDimensionNumbers(
          0, 1),
  }
  # Embedding, head, pre_logits, biases, norms, cls, pos_embedding: AdamW.
  assert len(dims) - len(muon) == len(jax.tree.leaves(_testing_params())) - 6


def test_muon_update_is_orthogonal_over_all_heads():
  """The first Muon step on the query kernel, seen as a (hidden, heads *
  head_dim) matrix, has singular values near one (Newton-Schulz leaves them in
  about [0.7, 1.2]); a random gradient's spread far wider."""
  config = common.get_config()
  config.optimizer, config.base_lr, config.warmup_steps = 'muon', 1.0, 0
  config.total_steps, config.optim_dtype = 10, 'float32'
  config.weight_decay, config.grad_norm_clip = 0.0, 0.0
  params = _testing_params(num_heads=4)  # (8, 4, 2) query kernels.
  grads = jax.tree.map(
      lambda p: jax.random.normal(jax.random.key(p.size), p.shape), params)
  tx = optim.make_optimizer(config)
  updates, _ = tx.update(grads, tx.init(params), params)
  path = ('Transformer', 'encoderblock_0', 'MultiHeadDotProductAttention_0',
          'query', 'kernel')
  update, grad = updates, grads
  for key in path:
    update, grad = update[key], grad[key]
  spread = lambda x: np.ptp(np.log(np.linalg.svd(
      np.asarray(x).reshape(8, 8), compute_uv=False)))
  assert spread(update) < np.log(2.0)
  assert spread(grad) > np.log(5.0)
