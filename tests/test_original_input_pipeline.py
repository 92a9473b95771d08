"""input_pipeline's tf.data API (the original's): info dicts and batches."""

import os

import jax
import ml_collections
import numpy as np
from PIL import Image
import pytest

from vit_jax import input_pipeline

# Uniform images: pixel values survive decoding and resizing exactly.
_COLOURS = {'cat': 0, 'dog': 255}


def _folder(root, per_class=(('train', 4), ('test', 3))):
  """{train,test}/{cat,dog}/*: cat as .png, dog as .jpg, 8x6 pixels."""
  for split, count in per_class:
    for name, colour in _COLOURS.items():
      os.makedirs(os.path.join(root, split, name))
      for i in range(count):
        ext = 'png' if name == 'cat' else 'jpg'
        Image.fromarray(np.full((6, 8, 3), colour, np.uint8)).save(
            os.path.join(root, split, name, f'{i}.{ext}'))
  return str(root)


def _config(dataset, batch=4, batch_eval=2):
  return ml_collections.ConfigDict(dict(
      dataset=dataset, batch=batch, batch_eval=batch_eval, shuffle_buffer=50,
      pp=dict(train='train', test='test', crop=5), tfds_data_dir=None,
      tfds_manual_dir=None))


def test_directory_info_counts_files_and_names_classes(tmp_path):
  root = _folder(tmp_path)
  info = input_pipeline.get_dataset_info(root, 'test')
  assert info['num_examples'] == 6 and info['num_classes'] == 2
  assert [info['int2str'](i) for i in range(2)] == ['cat', 'dog']
  assert sorted(info['examples_glob']) == [
      os.path.join(root, 'test', '*', '*.jpg'),
      os.path.join(root, 'test', '*', '*.png')]


def test_test_mode_yields_each_example_once_resized_and_one_hot(tmp_path):
  _, ds_test = input_pipeline.get_datasets(_config(_folder(tmp_path)))
  batches = list(ds_test.as_numpy_iterator())
  devices = jax.local_device_count()
  assert len(batches) == 3
  for batch in batches:
    assert batch['image'].shape == (devices, 2 // devices, 5, 5, 3)
    assert batch['image'].dtype == batch['label'].dtype == np.float32
    assert batch['label'].shape == (devices, 2 // devices, 2)
  images = np.concatenate([b['image'].reshape(-1, 5, 5, 3) for b in batches])
  labels = np.concatenate([b['label'].reshape(-1, 2) for b in batches])
  np.testing.assert_array_equal(labels.sum(0), [3, 3])
  # cat (label 0) is black -> -1, dog is white -> 1, exactly.
  expected = np.where(labels[:, 1] == 1, 1.0, -1.0)
  np.testing.assert_allclose(images.reshape(6, -1),
                             np.repeat(expected[:, None], 75, 1), atol=1e-6)


def test_train_mode_repeats_forever_with_crops_in_range(tmp_path):
  ds_train, _ = input_pipeline.get_datasets(_config(_folder(tmp_path)))
  batches = list(ds_train.take(5).as_numpy_iterator())  # 20 > 8 examples.
  assert len(batches) == 5
  labels = np.concatenate([b['label'].reshape(-1, 2) for b in batches])
  images = np.concatenate([b['image'].reshape(-1, 75) for b in batches])
  assert set(labels.sum(1)) == {1.0} and set(labels.argmax(1)) == {0, 1}
  expected = np.where(labels[:, 1:] == 1, 1.0, -1.0)
  np.testing.assert_allclose(images, np.broadcast_to(expected, images.shape),
                             atol=1e-6)


def test_classes_are_numbered_by_train_in_every_split(tmp_path):
  root = _folder(tmp_path)
  for name in os.listdir(os.path.join(root, 'test', 'cat')):
    os.remove(os.path.join(root, 'test', 'cat', name))
  os.rmdir(os.path.join(root, 'test', 'cat'))
  info = input_pipeline.get_directory_info(os.path.join(root, 'test'))
  assert info['num_classes'] == 2 and info['int2str'](1) == 'dog'
  _, ds_test = input_pipeline.get_datasets(_config(root))
  labels = np.concatenate([b['label'].reshape(-1, 2)
                           for b in ds_test.as_numpy_iterator()])
  np.testing.assert_array_equal(labels.sum(0), [0, 3 - 3 % 2])


def test_batch_not_divisible_by_local_devices_is_refused(tmp_path):
  config = _config(_folder(tmp_path), batch=jax.local_device_count() + 1)
  if jax.local_device_count() == 1:
    pytest.skip('every batch divides over one device')
  with pytest.raises(input_pipeline.DataError, match='local devices'):
    input_pipeline.get_datasets(config)


def test_missing_split_folder_is_named(tmp_path):
  root = _folder(tmp_path, per_class=(('train', 1),))
  with pytest.raises(input_pipeline.DataError, match='no test/ subfolder'):
    input_pipeline.get_datasets(_config(root))
