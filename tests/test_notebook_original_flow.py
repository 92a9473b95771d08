"""The original notebook's (vit_jax.ipynb) calls, in its order, at CPU size.

Data from input_pipeline.get_data_from_tfds, a pretrained file fitted by
checkpoint.load_pretrained, pmapped evaluation, the original learning-rate
schedule and optimizer chain, train.make_update_fn, and checkpoint.load for
prediction: what a notebook written for the original runs.
"""

import math
import os

import flax
import jax
import ml_collections
import numpy as np
import optax
import pytest

from vit_jax import checkpoint
from vit_jax import input_pipeline
from vit_jax import models
from vit_jax import train
from vit_jax import utils
from vit_jax.configs import models as models_config

pytestmark = pytest.mark.skipif(
    not os.environ.get('VIT_JAX_CIFAR10_DIR'),
    reason='VIT_JAX_CIFAR10_DIR (a TFDS data dir holding a prepared '
    'cifar10/) is not set.')

BATCH = 16
CROP = 32


def _config():
  """The fields of the original's common config that the data calls read."""
  return ml_collections.ConfigDict(dict(
      dataset='cifar10', batch=BATCH, batch_eval=BATCH, shuffle_buffer=1000,
      pp=dict(train='train[:98%]', test='test', crop=CROP),
      tfds_data_dir=os.environ['VIT_JAX_CIFAR10_DIR'], tfds_manual_dir=None))


def _write_pretrained(path, model_config):
  """A 'pretrained' file: another head and a 64px position grid (4x4)."""
  model = models.VisionTransformer(num_classes=7, **model_config)
  variables = model.init(jax.random.PRNGKey(1),
                         np.zeros((1, 64, 64, 3), np.float32), train=False)
  checkpoint.save(variables['params'], path)


def test_notebook_flow(tmp_path, monkeypatch):
  monkeypatch.setenv('TFDS_DATA_DIR', os.environ['VIT_JAX_CIFAR10_DIR'])
  devices = jax.local_device_count()
  config = _config()
  ds_train = input_pipeline.get_data_from_tfds(config=config, mode='train')
  ds_test = input_pipeline.get_data_from_tfds(config=config, mode='test')
  num_classes = input_pipeline.get_dataset_info('cifar10',
                                                'train')['num_classes']
  assert num_classes == 10
  batch = next(iter(ds_test.as_numpy_iterator()))
  assert batch['image'].shape == (devices, BATCH // devices, CROP, CROP, 3)
  assert batch['label'].shape == (devices, BATCH // devices, num_classes)

  model_config = models_config.MODEL_CONFIGS['testing']
  model = models.VisionTransformer(num_classes=num_classes, **model_config)
  variables = jax.jit(lambda: model.init(
      jax.random.PRNGKey(0), batch['image'][0, :1], train=False),
                      backend='cpu')()
  pretrained_path = str(tmp_path / 'testing.npz')
  _write_pretrained(pretrained_path, model_config)
  params = checkpoint.load_pretrained(
      pretrained_path=pretrained_path, init_params=variables['params'],
      model_config=model_config)
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (
      1, 1 + (CROP // 16) ** 2, 10)
  params_repl = flax.jax_utils.replicate(params)
  vit_apply_repl = jax.pmap(lambda params, inputs: model.apply(
      dict(params=params), inputs, train=False))

  def get_accuracy(params_repl, steps=2):
    good = total = 0
    for _, batch in zip(range(steps), ds_test.as_numpy_iterator()):
      predicted = vit_apply_repl(params_repl, batch['image'])
      is_same = predicted.argmax(axis=-1) == batch['label'].argmax(axis=-1)
      good += is_same.sum()
      total += len(is_same.flatten())
    return good / total

  # The head starts at zero: every class equally likely, the first in argmax.
  first_class_share = sum(
      b['label'][..., 0].sum() for _, b in zip(range(2),
                                               ds_test.as_numpy_iterator()))
  assert get_accuracy(params_repl) == first_class_share / (2 * BATCH)

  total_steps, warmup_steps, base_lr = 8, 2, 0.1
  lr_fn = utils.create_learning_rate_schedule(total_steps, base_lr, 'cosine',
                                              warmup_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(1),
      optax.sgd(learning_rate=lr_fn, momentum=0.9,
                accumulator_dtype='bfloat16'))
  update_fn_repl = train.make_update_fn(apply_fn=model.apply, accum_steps=2,
                                        tx=tx)
  opt_state_repl = flax.jax_utils.replicate(tx.init(params))
  update_rng_repl = flax.jax_utils.replicate(jax.random.PRNGKey(0))
  # One training batch, seen repeatedly: its loss must go down.
  train_batch = next(ds_train.as_numpy_iterator())
  losses, lrs = [], []
  for step in range(1, total_steps + 1):
    params_repl, opt_state_repl, loss_repl, update_rng_repl = update_fn_repl(
        params_repl, opt_state_repl, train_batch, update_rng_repl)
    losses.append(float(loss_repl[0]))
    lrs.append(float(lr_fn(step)))
  assert losses[0] == pytest.approx(math.log(num_classes), rel=1e-5)
  assert losses[-1] < losses[0] - 0.05, losses
  assert lrs[1] == pytest.approx(base_lr) and lrs[-1] == 0.0
  assert update_rng_repl.shape == (devices, 2)

  # Fine-tuned params, written and read back as the notebook's second half
  # reads the ImageNet-fine-tuned file; predictions are unchanged.
  trained = flax.jax_utils.unreplicate(params_repl)
  trained_path = str(tmp_path / 'testing_cifar10.npz')
  checkpoint.save(trained, trained_path)
  params = checkpoint.load(trained_path)
  params['pre_logits'] = {}  # As the notebook does, for Flax.
  image = batch['image'][0, :1]
  logits, = model.apply(dict(params=params), image, train=False)
  expected, = model.apply(dict(params=trained), image, train=False)
  np.testing.assert_allclose(logits, expected, rtol=1e-6, atol=1e-6)
