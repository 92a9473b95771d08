"""vit_jax.predict: top-k names for image files, from a workdir or a file."""

import glob
import json
import os

import jax
import ml_collections
import numpy as np
from PIL import Image
import pytest

from tests.conftest import make_image_folder
from vit_jax import image_io
from vit_jax import inference
from vit_jax import input_pipeline
from vit_jax import models
from vit_jax import predict

CLASSES = ['red', 'green', 'blue']


def _random_params(model, size, seed=0):
  """Initialised params with noise added, so that the head is not zero."""
  params = model.init(jax.random.key(seed), np.zeros((1, size, size, 3)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: np.asarray(x) + rng.normal(0, 0.3, x.shape).astype(np.float32),
      params['params'])


def make_workdir(path, overrides=None, class_names=CLASSES):
  """What train.export() leaves: model.npz (published layout) + run.json."""
  overrides = {'patch_size': 8, 'dtype': 'bfloat16', **(overrides or {})}
  model = models.get_model('testing', len(class_names), **overrides)
  inference.save_model(str(path), _random_params(model, 32),
                       inference.RunRecord(
                           model_name='testing', model=overrides,
                           num_classes=len(class_names),
                           class_names=tuple(class_names), image_size=32,
                           dataset='cifar10'))
  return str(path)


@pytest.fixture(name='workdir')
def fixture_workdir(tmp_path):
  return make_workdir(tmp_path / 'run')


def _image(path, size=(70, 50), mode='RGB', seed=0):
  rng = np.random.default_rng(seed)
  channels = {'RGB': 3, 'RGBA': 4, 'L': 1}[mode]
  pixels = rng.integers(0, 256, (size[1], size[0], channels), np.uint8)
  Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels,
                  mode).save(path)
  return str(path)


def test_top_k_names_come_from_the_run_sorted_by_probability(workdir,
                                                             tmp_path):
  trained = inference.load_model(workdir)
  [result] = inference.predict_files(trained, [_image(tmp_path / 'a.jpg')], k=3)
  assert sorted(name for name, _ in result) == sorted(CLASSES)
  probs = [p for _, p in result]
  assert probs == sorted(probs, reverse=True)
  assert sum(probs) == pytest.approx(1.0, abs=1e-5)


def test_images_of_any_size_and_mode_are_resized_to_the_model(workdir,
                                                              tmp_path):
  trained = inference.load_model(workdir)
  paths = [_image(tmp_path / 'wide.jpg', (300, 90)),
           _image(tmp_path / 'gray.png', (20, 20), 'L'),
           _image(tmp_path / 'alpha.png', (32, 32), 'RGBA')]
  results = inference.predict_files(trained, paths, k=2)
  assert [len(r) for r in results] == [2, 2, 2]
  assert image_io.read_image(paths[0], 32).shape == (32, 32, 3)


def test_probabilities_match_the_model_applied_directly(workdir, tmp_path):
  trained = inference.load_model(workdir)
  path = _image(tmp_path / 'exact.png', (32, 32))
  pixels = np.asarray(Image.open(path), np.float32)[None] / 127.5 - 1
  logits = trained.model.apply({'params': trained.params}, pixels)
  [result] = inference.predict_files(trained, [path], k=3)
  expected = np.asarray(jax.nn.softmax(logits))[0]
  for name, p in result:
    assert p == pytest.approx(expected[CLASSES.index(name)], abs=1e-5)


def test_a_bare_published_file_gives_the_workdirs_answer(workdir, tmp_path):
  path = _image(tmp_path / 'a.jpg')
  from_run = inference.predict_files(inference.load_model(workdir), [path])
  bare = inference.load_model(os.path.join(workdir, 'model.npz'))
  assert bare.image_size == 32 and bare.model.patches['size'] == (8, 8)
  from_file = inference.predict_files(bare, [path])
  assert [p for _, p in from_file[0]] == pytest.approx(
      [p for _, p in from_run[0]], abs=1e-6)
  assert from_file[0][0][0].startswith('class_')


def test_a_labels_file_names_the_classes(workdir, tmp_path):
  labels = tmp_path / 'labels.txt'
  labels.write_text('cat\ndog\n\nbird\n')
  trained = inference.load_model(workdir, labels_file=str(labels))
  assert trained.class_names == ('cat', 'dog', 'bird')
  labels.write_text('cat\ndog\n')
  with pytest.raises(ValueError, match='2 class names but the model has 3'):
    inference.load_model(workdir, labels_file=str(labels))


def test_cli_prints_top_k_and_json(workdir, tmp_path, capsys):
  path = _image(tmp_path / 'a.jpg')
  assert predict.main(['--checkpoint', workdir, '--top_k', '2', path]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == path and len(lines) == 3
  assert lines[1].strip().startswith('1. ')
  assert predict.main(['--checkpoint', workdir, '--json', path]) == 0
  record = json.loads(capsys.readouterr().out)
  assert record['image'] == path and len(record['top_k']) == 3


def test_unreadable_and_missing_images_are_named_in_one_line(workdir,
                                                              tmp_path,
                                                              capsys):
  bad = tmp_path / 'broken.png'
  bad.write_bytes(b'not a png')
  good = _image(tmp_path / 'a.jpg')
  assert predict.main(['--checkpoint', workdir, good, str(bad)]) == 1
  error = capsys.readouterr().err
  assert error.startswith(f'Error: {bad}: cannot read it as an image')
  assert predict.main(['--checkpoint', workdir,
                       str(tmp_path / 'nope.jpg')]) == 1
  assert 'nope.jpg: no such file' in capsys.readouterr().err


def test_mismatched_checkpoints_are_refused_clearly(workdir, tmp_path,
                                                   capsys):
  image = _image(tmp_path / 'a.jpg')
  file = os.path.join(workdir, 'model.npz')
  assert predict.main(['--checkpoint', file, '--model_name', 'ViT-Ti_8',
                       image]) == 1
  error = capsys.readouterr().err
  assert 'does not fit this model' in error and 'mismatched shapes' in error
  # A run.json that disagrees with model.npz (e.g. a copied-over file).
  other = make_workdir(tmp_path / 'other', class_names=CLASSES + ['grey'])
  os.replace(os.path.join(other, 'model.npz'), file)
  assert predict.main(['--checkpoint', workdir, image]) == 1
  assert 'head/kernel: file (10, 4) vs model (10, 3)' in capsys.readouterr().err
  os.remove(os.path.join(workdir, 'run.json'))
  assert predict.main(['--checkpoint', workdir, image]) == 1
  assert 'run.json is missing' in capsys.readouterr().err


def test_run_json_is_read_back_as_the_record_written(tmp_path, capsys):
  record = inference.RunRecord(
      model_name='testing', model={'patch_size': 8}, num_classes=3,
      class_names=tuple(CLASSES), image_size=32, dataset='cifar10',
      tfds_data_dir='/data', split_test='test[:50%]', source_size=40)
  model = models.get_model('testing', 3, patch_size=8)
  workdir = str(tmp_path / 'run')
  inference.save_model(workdir, _random_params(model, 32), record)
  assert inference.load_model(workdir).run == record
  with open(os.path.join(workdir, 'run.json')) as f:
    stored = json.load(f)
  assert list(stored) == [  # The order train.export has always written.
      'model_name', 'model', 'num_classes', 'class_names', 'image_size',
      'dataset', 'tfds_data_dir', 'split_test', 'source_size', 'model_type']
  del stored['image_size']
  stored['epochs'] = 3
  with open(os.path.join(workdir, 'run.json'), 'w') as f:
    json.dump(stored, f)
  image = _image(tmp_path / 'a.jpg')
  assert predict.main(['--checkpoint', workdir, image]) == 1
  error = capsys.readouterr().err
  assert 'run.json is not a run record' in error
  assert "missing ['image_size'], unknown ['epochs']" in error


def test_predict_sees_the_pixels_training_sees(tmp_path):
  """A file gives the same uint8 pixels as input to predict and, resized by
  pp.source_size, in an image-folder dataset."""
  root = make_image_folder(tmp_path / 'data', size=40)
  config = ml_collections.ConfigDict({
      'dataset': root, 'tfds_data_dir': None, 'tfds_download': False,
      'pp': {'source_size': 32}})
  images, labels, _ = input_pipeline.load_split(config, 'test')
  files = sorted(glob.glob(os.path.join(root, 'test', '*', '*.png')))
  assert len(files) == len(images) == 9
  for file, image in zip(files, images):
    np.testing.assert_array_equal(image_io.read_image(file, 32), image)
