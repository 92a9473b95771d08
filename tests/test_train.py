"""End-to-end tests of vit_jax.train: both configs, freezing, eval, errors."""

import json
import os

import jax
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from tests.conftest import experiment_config
from vit_jax import checkpoint
from vit_jax import inference
from vit_jax import optim
from vit_jax import sharding
from vit_jax import train
from vit_jax.configs import models as model_configs


def scratch(arg=None):
  return experiment_config('cifar10_scratch', arg)


def finetune(arg=None):
  return experiment_config('cifar10_finetune', arg)


def _tiny(config, **changes):
  """A config shrunk to the `testing` model and a few steps."""
  with config.unlocked():
    # The preset's model options, on the 'testing' architecture.
    options = {k: config.model[k] for k in ('classifier', 'patch_dropout',
                                             'stochastic_depth')}
    config.model = model_configs.model_config(
        'testing', patch_size=8, dropout_rate=0.0, **options)
    config.batch = 8
    config.batch_eval = 8
    config.accum_steps = 1
    config.total_steps = 4
    config.warmup_steps = 1
    config.eval_every = 2
    config.progress_every = 1
    config.checkpoint_every = 2
    config.pp.source_size = None
    config.train_minutes = 0.0  # A fixed step count (the :cpu preset's is timed).
    config.eval_count = 0
    config.update_from_flattened_dict(changes)
  return config


def _read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_scratch_config_runs_end_to_end_on_mock_cifar10(tmp_path):
  config = _tiny(scratch('cpu'),
                 **{'aug.randaugment_ops': 2, 'aug.mixup_alpha': 0.8,
                    'aug.cutmix_alpha': 1.0, 'model.stochastic_depth': 0.1,
                    'ema_decay': 0.9})
  workdir = str(tmp_path / 'run')
  with tfds.testing.mock_data(num_examples=20):
    result = train.train_and_evaluate(config, workdir)
  lines = _read_metrics(workdir)
  train_lines = [l for l in lines if 'train_loss' in l]
  eval_lines = [l for l in lines if 'accuracy_test' in l]
  assert [l['step'] for l in train_lines] == [1, 2, 3, 4]
  assert [l['step'] for l in eval_lines] == [2, 4]
  for line in train_lines:
    assert {'learning_rate', 'img_sec_core_train'} <= set(line)
  assert 0 <= result['accuracy_test'] <= 1
  assert result['accuracy_test'] == eval_lines[-1]['accuracy_test']
  params = checkpoint.load(os.path.join(workdir, 'model.npz'))
  assert params['head']['kernel'].shape[-1] == 10
  run = json.load(open(os.path.join(workdir, 'run.json')))
  assert run['num_classes'] == 10 and len(run['class_names']) == 10
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir))


def _pretrained_file(tmp_path, config):
  """A synthetic pretrained file in the published layout, random values."""
  model = inference.make_model(config, num_classes=21843)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0),
      np.zeros((1, config.pp.crop, config.pp.crop, 3), np.float32)))['params']
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32), shapes)
  folder = tmp_path / 'pretrained'
  checkpoint.save(params, str(folder / f'{config.model.model_name}.npz'))
  return str(folder), params


def test_finetune_config_freezes_backbone_then_trains_everything(tmp_path):
  config = _tiny(finetune(), freeze_steps=3,
                 total_steps=5, **{'pp.crop': 32, 'pp.resize': 40})
  folder, pretrained = _pretrained_file(tmp_path, config)
  with config.unlocked():
    config.pretrained_dir = folder
  with tfds.testing.mock_data(num_examples=20):
    trainer = train.Trainer(config, str(tmp_path / 'run'))
  start = jax.tree.map(np.asarray, sharding.to_host(trainer.state.params))
  flat_pretrained = checkpoint.flatten(pretrained)
  for key, value in checkpoint.flatten(start).items():
    if not key.startswith('head/'):
      np.testing.assert_array_equal(value, flat_pretrained[key])

  def run_steps(steps):
    for step in steps:
      images, labels = trainer.train_batch(step)
      trainer.state, _ = trainer.steps[step < config.freeze_steps](
          trainer.state, images, labels)
    return checkpoint.flatten(sharding.to_host(trainer.state.params))

  after_frozen = run_steps(range(3))  # Step 0 has lr 0 (warm-up).
  for key, value in checkpoint.flatten(start).items():
    top = key.split('/')[0]
    if top in optim.HEAD_KEYS:
      assert not np.array_equal(after_frozen[key], value), key
    else:
      assert after_frozen[key].tobytes() == value.tobytes(), key
  after_full = run_steps(range(3, 5))
  moved = [k for k in after_full
           if not np.array_equal(after_full[k], after_frozen[k])]
  assert 'embedding/kernel' in moved
  assert 'Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel' in moved


@pytest.mark.parametrize('accum_steps', [1, 2])
def test_frozen_step_computes_no_backbone_gradients(accum_steps):
  """Phase 1 spares the backbone's backward pass: its gradients are exact
  zeros (so XLA never computes them), while the head's are not."""
  config = _tiny(finetune())
  model = inference.make_model(config, num_classes=10)
  params = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3)))['params']
  params['head'] = jax.tree.map(np.ones_like, params['head'])  # Not zero-init.
  images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  targets = jax.nn.one_hot(np.arange(4) % 10, 10)
  for frozen in (True, False):
    gradients = jax.jit(lambda p, x, y, r, frozen=frozen: train._gradients(
        p, model, x, y, r, accum_steps, frozen))
    _, grads = gradients(params, images, targets, jax.random.key(2))
    for key, tree in grads.items():
      norm = float(optax.tree.norm(tree))
      assert (norm == 0) == (frozen and key not in optim.HEAD_KEYS), (
          frozen, key, norm)


def test_missing_pretrained_file_says_where_and_how(tmp_path):
  config = _tiny(finetune(),
                 pretrained_dir=str(tmp_path / 'nowhere'))
  with tfds.testing.mock_data(num_examples=20):
    with pytest.raises(FileNotFoundError) as err:
      train.Trainer(config, str(tmp_path / 'run'))
  assert str(tmp_path / 'nowhere' / 'testing.npz') in str(err.value)
  assert 'vit_jax.hub fetch' in str(err.value)


def test_eval_sees_every_example_exactly_once(tmp_path, image_folder):
  # 3 classes x 3 test images = 9 examples in batches of 4: 4 + 4 + 1(+3 pad).
  config = _tiny(scratch('cpu'), dataset=image_folder,
                 batch_eval=4, **{'pp.train': 'train', 'pp.test': 'test'})
  trainer = train.Trainer(config, str(tmp_path / 'run'))
  result = inference.evaluate(trainer.eval_step, trainer.eval_params(),
                              trainer.test_source, 9, 4)
  assert sorted(result['indices'].tolist()) == list(range(9))
  assert result['predictions'].shape == (9,)


def test_batch_not_divisible_is_refused(tmp_path):
  config = _tiny(scratch('cpu'), batch=6, accum_steps=4)
  with pytest.raises(ValueError, match=r'config.batch=6 must be divisible'):
    sharding.check_batch_sizes(config, sharding.make_mesh())


def test_gradient_accumulation_matches_one_big_batch(tmp_path, image_folder):
  summaries, params = {}, {}
  for accum in (1, 2):
    config = _tiny(scratch('cpu'), dataset=image_folder,
                   accum_steps=accum, total_steps=2,
                   **{'pp.train': 'train', 'pp.test': 'test',
                      'aug.label_smoothing': 0.0,
                      # Micro-batches draw their own token subsets.
                      'model.patch_dropout': 0.0})
    summaries[accum] = train.train_and_evaluate(config,
                                                str(tmp_path / f'a{accum}'))
    params[accum] = checkpoint.load(str(tmp_path / f'a{accum}/model.npz'))
  # The mean loss over the micro-batches is the big batch's mean loss.
  np.testing.assert_allclose(summaries[2]['train_loss'],
                             summaries[1]['train_loss'], rtol=1e-6)
  assert summaries[2]['loss_test'] == pytest.approx(summaries[1]['loss_test'],
                                                    rel=1e-5)
  for a, b in zip(jax.tree.leaves(params[1]), jax.tree.leaves(params[2])):
    np.testing.assert_allclose(a, b, atol=2e-6)


def test_a_one_step_run_leaves_checkpoint_1_in_the_workdir(tmp_path):
  """The original's train_test contract: after a 1-step run,
  workdir/checkpoint_1 exists (there its flax checkpoint, here orbax's)."""
  config = _tiny(scratch('cpu'), total_steps=1)
  workdir = str(tmp_path / 'run')
  with tfds.testing.mock_data(num_examples=20):
    train.train_and_evaluate(config, workdir)
  assert os.path.isdir(f'{workdir}/checkpoint_1')
  assert os.path.isdir(f'{workdir}/checkpoint_1/default')  # orbax's item.
  assert not os.path.exists(f'{workdir}/checkpoints')


def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(
    tmp_path, image_folder):
  config = _tiny(scratch('cpu'), dataset=image_folder,
                 base_lr=1e30, warmup_steps=3, grad_norm_clip=0.0,
                 checkpoint_every=1, total_steps=50,
                 **{'pp.train': 'train', 'pp.test': 'test'})
  workdir = str(tmp_path / 'run')
  with pytest.raises(train.NonFiniteLossError, match='diverged at step') as e:
    train.train_and_evaluate(config, workdir)
  folders = [n for n in os.listdir(workdir) if n.startswith('checkpoint')]
  assert folders == ['checkpoint_1']  # Step 0: lr 0 (warm-up); 1 diverges.
  assert 'diverged at step 2' in str(e.value)
  assert (f'last good checkpoint (step 1) in '
          f'{os.path.join(workdir, "checkpoint_1")} is intact') in str(e.value)
  assert not os.path.exists(os.path.join(workdir, 'model.npz'))


def test_configs_are_locked():
  for config in (finetune(), finetune(
      '384'), scratch(), scratch('cpu')):
    with pytest.raises(AttributeError):
      config.batchsize = 8
    with pytest.raises(AttributeError):
      config.aug.mixup = 0.1


def test_unknown_preset_is_refused():
  with pytest.raises(ValueError, match="Unknown config argument 'tpu'"):
    scratch('tpu')
  with pytest.raises(ValueError, match='224 or 384'):
    finetune('512')


def test_a_long_run_on_a_cpu_is_told_its_time_and_the_cpu_preset():
  gpu, cpu = scratch(), scratch('cpu')
  hours = 3 * 3600.0
  warning = train.long_on_cpu_warning(gpu, 'runs/s/', 'cpu', hours, 9000)
  assert warning == (
      'This recipe is sized for an accelerator: on this CPU its 9000 steps '
      'left take about 3h00m (1.2 s a step). For a CPU, train the preset '
      'meant for it: python -m vit_jax.main --config '
      'configs/cifar10_scratch.py:cpu --workdir runs/s_cpu.')
  assert train.long_on_cpu_warning(gpu, 'w', 'gpu', hours, 9000) is None
  assert train.long_on_cpu_warning(gpu, 'w', 'cpu', 3000.0, 9000) is None
  # A time budget keeps the CPU preset within its minutes.
  assert train.long_on_cpu_warning(cpu, 'w', 'cpu', hours, 9000) is None
  no_preset = train.long_on_cpu_warning(finetune(), 'w',
                                        'cpu', hours, 9000)
  assert 'has no preset for CPUs' in no_preset
