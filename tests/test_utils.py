"""utils: the original's learning-rate schedule and gradient accumulation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import optim
from vit_jax import utils


def test_cosine_schedule_values_at_chosen_steps():
  lr_fn = utils.create_learning_rate_schedule(100, 0.03, 'cosine', 5)
  # Warm-up: base * step / warmup; then base/2 * (1 + cos(pi * progress)).
  expected = {0: 0.0, 1: 0.006, 5: 0.03,
              52.5: 0.015,  # Half-way through the decay.
              100: 0.0, 150: 0.0}
  for step, value in expected.items():
    assert float(lr_fn(step)) == pytest.approx(value, rel=1e-6,
                                               abs=1e-12), step
  progress = (30 - 5) / 95
  assert float(lr_fn(30)) == pytest.approx(
      0.015 * (1 + math.cos(math.pi * progress)), rel=1e-6)
  assert lr_fn(30).dtype == jnp.float32


def test_linear_schedule_ends_at_linear_end():
  lr_fn = utils.create_learning_rate_schedule(10, 1.0, 'linear', 0,
                                              linear_end=0.1)
  values = [float(lr_fn(step)) for step in range(12)]
  np.testing.assert_allclose(values, [1.0 - 0.09 * s for s in range(10)]
                             + [0.1, 0.1], rtol=1e-6)
  default_end = utils.create_learning_rate_schedule(10, 1.0, 'linear', 0)
  assert float(default_end(10)) == np.float32(1e-5)


def test_schedule_works_on_traced_steps():
  lr_fn = utils.create_learning_rate_schedule(100, 0.03, 'cosine', 5)
  steps = jnp.arange(0, 120, 7)
  np.testing.assert_allclose(jax.jit(jax.vmap(lr_fn))(steps),
                             [lr_fn(int(s)) for s in steps], rtol=1e-6)


def test_unknown_decay_type_is_named():
  with pytest.raises(ValueError, match='Unknown lr type exponential'):
    utils.create_learning_rate_schedule(10, 0.1, 'exponential', 1)


@pytest.mark.parametrize('decay_type', ['cosine', 'linear'])
def test_phase_schedule_is_the_original_schedule_ending_at_zero(decay_type):
  ours = optim.phase_schedule(0.1, 3, 20, decay_type)
  original = utils.create_learning_rate_schedule(20, 0.1, decay_type, 3,
                                                 linear_end=0.0)
  for step in range(25):
    assert float(ours(step)) == float(original(step))
  # A phase shorter than its warm-up still ends at zero.
  short = optim.phase_schedule(0.1, 10, 4, decay_type)
  assert [float(short(s)) for s in (0, 3, 4)] == [0.0, pytest.approx(0.1),
                                                   0.0]


def _loss_and_grad_fn():
  def loss_fn(params, images, labels):
    logits = images.reshape(len(images), -1) @ params['w'] + params['b']
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * labels, axis=1))
  return jax.value_and_grad(loss_fn)


def test_accumulated_gradient_equals_full_batch_gradient():
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(16, 4, 4, 3)), jnp.float32)
  labels = jax.nn.one_hot(rng.integers(0, 5, 16), 5)
  params = {'w': jnp.asarray(rng.normal(size=(48, 5)), jnp.float32),
            'b': jnp.zeros(5)}
  loss_and_grad_fn = _loss_and_grad_fn()
  full_loss, full_grads = loss_and_grad_fn(params, images, labels)
  loss, grads = jax.jit(utils.accumulate_gradient, static_argnums=(0, 4))(
      loss_and_grad_fn, params, images, labels, 4)
  np.testing.assert_allclose(loss, full_loss, rtol=1e-6)
  for key in params:
    np.testing.assert_allclose(grads[key], full_grads[key], rtol=1e-5,
                               atol=1e-6)
  # Micro-batch i is rows [4i, 4i+4): the mean of the four partial results.
  parts = [loss_and_grad_fn(params, images[i:i + 4], labels[i:i + 4])
           for i in range(0, 16, 4)]
  np.testing.assert_allclose(loss, np.mean([p[0] for p in parts]), rtol=1e-6)


def test_accumulate_gradient_rejects_uneven_micro_batches():
  images, labels = jnp.zeros((6, 2, 2, 3)), jnp.zeros((6, 5))
  params = {'w': jnp.zeros((12, 5)), 'b': jnp.zeros(5)}
  with pytest.raises(ValueError, match='Bad accum_steps 4 for batch size 6'):
    utils.accumulate_gradient(_loss_and_grad_fn(), params, images, labels, 4)
