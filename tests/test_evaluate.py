"""vit_jax.evaluate: whole-split metrics, confusion matrix, JSON and PNG."""

import json
import os

import numpy as np
from PIL import Image
import pytest

from tests.conftest import experiment_config
from tests.conftest import make_image_folder
from vit_jax import evaluate
from vit_jax import predict
from vit_jax import reports
from vit_jax import train
from vit_jax import visualize


@pytest.fixture(name='trained_run', scope='module')
def fixture_trained_run(tmp_path_factory):
  """A workdir trained by train.train_and_evaluate, as `vit_jax.main` does."""
  root = tmp_path_factory.mktemp('evaluate')
  # 7 test images per class: 21 examples, an awkward size for batches of 4.
  data = make_image_folder(root / 'data', train_per_class=4,
                           test_per_class=7)
  config = experiment_config('cifar10_scratch', 'cpu,model=testing')
  with config.unlocked():
    config.dataset = data
    config.model.patches.size = (8, 8)
    config.pp.train, config.pp.test = 'train', 'test'
    config.batch, config.batch_eval = 4, 4
    config.total_steps, config.warmup_steps = 3, 1
    config.eval_every = config.checkpoint_every = config.progress_every = 3
    config.train_minutes, config.eval_count = 0.0, 0  # Exactly 3 steps.
  workdir = str(root / 'run')
  metrics = train.train_and_evaluate(config, workdir)
  return workdir, data, metrics


def test_workdir_evaluation_reproduces_the_training_metrics(trained_run,
                                                             tmp_path):
  workdir, data, metrics = trained_run
  out = str(tmp_path / 'out')
  summary = reports.evaluate_checkpoint(workdir, dataset=data, batch=4,
                                       out=out)
  assert summary['num_examples'] == 21  # Each example once, none dropped.
  assert np.sum(summary['confusion_matrix']) == 21
  assert summary['accuracy'] == pytest.approx(metrics['accuracy_test'])
  assert summary['loss'] == pytest.approx(metrics['loss_test'], rel=1e-5)
  assert summary['class_names'] == ['class_0', 'class_1', 'class_2']
  confusion = np.asarray(summary['confusion_matrix'])
  for i, name in enumerate(summary['class_names']):
    assert summary['per_class_accuracy'][name] == pytest.approx(
        confusion[i, i] / 7)
  with open(os.path.join(out, 'eval_test.json')) as f:
    assert json.load(f)['accuracy'] == summary['accuracy']
  with Image.open(os.path.join(out, 'confusion_test.png')) as png:
    assert png.format == 'PNG'


def test_predict_and_visualize_run_on_a_trained_workdir(trained_run,
                                                        tmp_path):
  workdir, data, _ = trained_run
  image = os.path.join(data, 'test', 'class_1', '0.png')
  assert predict.main(['--checkpoint', workdir, image]) == 0
  out = str(tmp_path / 'attention.png')
  assert visualize.main(['--checkpoint', workdir, image, '--out', out]) == 0
  assert os.path.getsize(out) > 0


def test_a_bare_file_needs_a_dataset_and_takes_names_from_it(trained_run,
                                                             tmp_path,
                                                             capsys):
  workdir, data, metrics = trained_run
  file = os.path.join(workdir, 'model.npz')
  out = str(tmp_path / 'bare')
  assert evaluate.main(['--checkpoint', file, '--dataset', data,
                        '--split', 'test[:10]', '--batch', '3',
                        '--out', out]) == 0
  printed = capsys.readouterr().out
  assert 'test[:10]: 10 examples' in printed and 'class_0' in printed
  assert os.path.exists(os.path.join(out, 'eval_test_10.json'))
  assert os.path.exists(os.path.join(out, 'confusion_test_10.png'))
  assert evaluate.main(['--checkpoint', file]) == 1
  assert 'pass --dataset' in capsys.readouterr().err


def test_a_dataset_with_other_classes_is_refused(trained_run, tmp_path,
                                                 capsys):
  workdir, _, _ = trained_run
  other = make_image_folder(tmp_path / 'two', num_classes=2,
                            train_per_class=1, test_per_class=1)
  assert evaluate.main(['--workdir', workdir, '--dataset', other]) == 1
  assert 'has 3 classes but dataset' in capsys.readouterr().err


def test_summary_counts_each_class_and_skips_absent_ones():
  result = {'predictions': np.array([1, 1, 0, 0]),
            'losses': np.array([0.5, 1.0, 1.5, 2.0]),
            'indices': np.array([3, 0, 1, 2])}
  labels = np.array([1, 1, 0, 0])  # Class 'c' has no examples.
  summary = reports.summarize(result, labels, ['a', 'b', 'c'])
  assert summary['confusion_matrix'] == [[1, 1, 0], [1, 1, 0], [0, 0, 0]]
  assert summary['accuracy'] == 0.5 and summary['loss'] == 1.25
  assert summary['per_class_accuracy'] == {'a': 0.5, 'b': 0.5, 'c': None}


def test_split_names_become_safe_file_names():
  assert reports.split_tag('test') == 'test'
  assert reports.split_tag('test[:500]') == 'test_500'
  assert reports.split_tag('train[90%:]') == 'train_90%'
