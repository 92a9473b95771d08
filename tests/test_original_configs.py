"""The original repository's configs, run by our trainer and command line."""

import csv
import json
import os
import signal
import time

import jax
import numpy as np
import pytest

from tests.conftest import make_image_folder
from tests.conftest import run_cli
from vit_jax import checkpoint
from vit_jax import hub
from vit_jax import inference
from vit_jax import preemption
from vit_jax import test_utils
from vit_jax import train
from vit_jax.configs import augreg
from vit_jax.configs import common
from vit_jax.configs import mixer_base16_cifar10
from vit_jax.configs import models as model_configs
from vit_jax.configs import vit

CIFAR10_DIR = os.environ.get('VIT_JAX_CIFAR10_DIR')


def test_vit_config_is_the_originals():
  config = vit.get_config('b16,cifar10')
  assert config.model.model_name == 'ViT-B_16'
  assert config.base_lr == 0.01  # The original's special case.
  assert (config.total_steps, config.pp.crop) == (10_000, 384)
  assert (config.pp.train, config.pp.test) == ('train[:98%]', 'test')
  assert (config.accum_steps, config.batch, config.optim_dtype) == (
      8, 512, 'bfloat16')
  assert dict(common.flatten(config))['config.pretrained_dir'] == '.'


def test_a_partial_pp_gets_the_rest_of_its_keys():
  """The original's train_test assigns pp = {'crop': 224} for a folder."""
  config = common.get_config()
  config.dataset, config.total_steps = '/data', 1
  config.model = model_configs.get_testing_config()
  config.pp = {'crop': 224}
  resolved = common.resolve(config)
  assert (resolved.pp.train, resolved.pp.test, resolved.pp.crop) == (
      'train', 'test', 224)
  assert resolved.pp.resize is None and resolved.is_locked
  config.pp = {'crop': 224, 'crpo': 1}
  with pytest.raises(Exception, match='crpo'):
    common.resolve(config)


def test_augreg_picks_the_best_i21k_file_from_the_index(tmp_path):
  rows = [('R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0',
           'i21k', '0.41'),
          ('R_Ti_16-i21k-300ep-lr_0.001-aug_light0-wd_0.1-do_0.0-sd_0.0',
           'i21k', '0.45'),
          ('R_Ti_16-i1k-300ep-lr_0.001-aug_light0-wd_0.1-do_0.0-sd_0.0',
           'i1k', '0.9'),
          ('S_16-i21k-300ep-lr_0.001-aug_light0-wd_0.1-do_0.0-sd_0.0',
           'i21k', '0.99')]
  with open(tmp_path / 'index.csv', 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['filename', 'ds', 'final_val'])
    writer.writerows(rows)
  config = augreg.get_config('R_Ti_16')
  assert config.model.model_name == 'R+ViT-Ti_16'
  assert config.model.transformer.dropout_rate == 0
  config.pretrained_dir = str(tmp_path)
  assert train.pretrained_name(config) == rows[1][0]
  named = augreg.get_config(rows[0][0])
  assert train.pretrained_name(named) == rows[0][0]
  with pytest.raises(hub.FetchError, match='index.csv'):
    hub.best_augreg_file('R_Ti_16', str(tmp_path / 'nowhere'))


def test_the_mixer_config_trains_and_its_run_loads_back(tmp_path):
  """mixer_base16_cifar10's config (a tiny Mixer, an image folder): the
  trainer builds the Mixer, fine-tunes from its file, and the finished run
  loads for prediction."""
  data = make_image_folder(tmp_path / 'data', size=32)
  tiny = dict(hidden_dim=16, num_blocks=1, tokens_mlp_dim=8,
              channels_mlp_dim=16, patch_size=8)
  pretrained = tmp_path / 'pretrained'
  source = model_configs.model_config('Mixer-B_16', **tiny)
  params = inference.model_class('Mixer')(num_classes=7, **source).init(
      jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))['params']
  checkpoint.save(params, str(pretrained / 'Mixer-B_16.npz'))
  config = mixer_base16_cifar10.get_config()
  config.model = source
  config.dataset, config.pretrained_dir = data, str(pretrained)
  config.pp = common.pp_config('train', 'test', 32)
  config.batch, config.batch_eval, config.accum_steps = 6, 3, 2
  config.total_steps, config.warmup_steps = 3, 1
  config.eval_every = config.progress_every = 3
  workdir = str(tmp_path / 'run')
  summary = train.train_and_evaluate(config, workdir)
  assert summary['steps'] == 3
  with open(os.path.join(workdir, 'run.json')) as f:
    assert json.load(f)['model_type'] == 'Mixer'
  trained = inference.load_model(workdir)
  assert trained.model.num_classes == 3
  loaded = checkpoint.flatten(trained.params)
  assert loaded['stem/kernel'].tobytes() != (
      checkpoint.flatten(params)['stem/kernel'].tobytes())  # Fine-tuned.


def _vit_args(workdir, pretrained_dir):
  return ['--workdir', workdir,
          '--config=vit_jax/configs/vit.py:testing,cifar10',
          f'--config.pretrained_dir={pretrained_dir}',
          f'--config.tfds_data_dir={CIFAR10_DIR}',
          '--config.pp.crop=32', '--config.pp.test=test[:64]',
          '--config.batch=16', '--config.accum_steps=2',
          '--config.batch_eval=32', '--config.total_steps=6',
          '--config.warmup_steps=2', '--config.eval_every=3',
          '--config.progress_every=1']


def _trained_steps(workdir):
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      return max((json.loads(line)['step'] for line in f
                  if '"train_loss"' in line), default=0)
  except (FileNotFoundError, ValueError):
    return 0


@pytest.mark.skipif(not CIFAR10_DIR, reason='needs VIT_JAX_CIFAR10_DIR')
def test_the_original_command_trains_on_cifar10_and_resumes_exactly(
    tmp_path):
  """`python -m vit_jax.main --config=vit_jax/configs/vit.py:testing,cifar10`
  fine-tunes from the file the original's tests make; stopped after step 2
  and run again, it ends bit-identical to an uninterrupted run."""
  pretrained = tmp_path / 'pretrained'
  test_utils.create_checkpoint(model_configs.get_testing_config(),
                               str(pretrained / 'testing.npz'))
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  output, _ = run_cli(_vit_args(straight, pretrained)).communicate(
      timeout=400)
  assert 'Training testing from step 0 to 6' in output, output
  process = run_cli(_vit_args(resumed, pretrained))
  deadline = time.monotonic() + 300
  while _trained_steps(resumed) < 2:
    assert process.poll() is None and time.monotonic() < deadline, (
        process.communicate()[0])
    time.sleep(0.01)
  process.send_signal(signal.SIGTERM)
  output, _ = process.communicate(timeout=300)
  assert process.returncode == preemption.EXIT_STATUS, output
  output, _ = run_cli(_vit_args(resumed, pretrained)).communicate(
      timeout=400)
  assert 'Resuming from the checkpoint of step' in output, output
  with np.load(os.path.join(straight, 'model.npz')) as a, np.load(
      os.path.join(resumed, 'model.npz')) as b:
    assert a.files == b.files
    for key in a.files:
      assert a[key].tobytes() == b[key].tobytes(), key
