"""Tests for input_pipeline: loading, step-addressed batches, bad inputs."""

import os

import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from vit_jax import input_pipeline

CLASS_COLOURS = {'cat': 30, 'dog': 130, 'emu': 230}  # Grey level per class.


def make_config(dataset, tfds_data_dir=None, source_size=None,
                tfds_download=False):
  return ml_collections.ConfigDict({
      'dataset': str(dataset), 'tfds_data_dir': tfds_data_dir, 'seed': 0,
      'tfds_download': tfds_download,
      'pp': {'train': 'train[:98%]', 'test': 'test',
             'source_size': source_size}})


def write_image(path, grey, size=8):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((size, size, 3), grey, np.uint8)).save(path)


def make_folder(root, sizes=(8,)):
  """train/: 4 images per class in mixed formats; test/: 2 classes only."""
  for class_name, grey in CLASS_COLOURS.items():
    for i, name in enumerate(['a.png', 'b.JPG', 'c.jpeg', 'd.PNG']):
      write_image(os.path.join(root, 'train', class_name, name), grey,
                  sizes[i % len(sizes)])
  for class_name in ('dog', 'emu'):
    for name in ('x.png', 'y.jpg'):
      write_image(os.path.join(root, 'test', class_name, name),
                  CLASS_COLOURS[class_name], sizes[0])
  return root


@pytest.fixture(autouse=True)
def no_tfds_data_dir_env(monkeypatch):
  monkeypatch.delenv('TFDS_DATA_DIR', raising=False)


# --------------------------------------------------------------------- tfds --


@pytest.mark.parametrize('dataset, source_size, side', [
    ('cifar10', None, 32),  # Native size.
    ('cifar10', 16, 16),  # Downsized at load time.
    ('mnist', 12, 12),  # Greyscale becomes RGB.
])
def test_tfds_split_loads_with_exact_count_and_shape(dataset, source_size,
                                                     side):
  with tfds.testing.mock_data(num_examples=5):
    images, labels, info = input_pipeline.load_split(
        make_config(dataset, source_size=source_size), 'train[:98%]')
  assert images.shape == (5, side, side, 3) and images.dtype == np.uint8
  assert labels.shape == (5,) and labels.dtype == np.int32
  assert ((labels >= 0) & (labels < 10)).all()
  assert info == input_pipeline.DatasetInfo(
      num_classes=10, class_names=info.class_names, num_examples=5,
      image_size=side)
  assert len(info.class_names) == 10


# ------------------------------------------------------------ train order --


def stream(seed, global_batch, num_examples, steps):
  return np.concatenate([
      input_pipeline.train_indices(seed, step, global_batch, num_examples)
      for step in range(steps)])


def test_each_epoch_visits_every_example_once():
  indices = stream(seed=3, global_batch=5, num_examples=10, steps=6)
  for epoch in indices.reshape(3, 10):
    np.testing.assert_array_equal(np.sort(epoch), np.arange(10))
  assert indices.dtype == np.int32


@pytest.mark.parametrize('global_batch', [4, 25])
def test_batches_crossing_epochs_take_tail_then_head(global_batch):
  num_examples = 10
  epochs = [input_pipeline.train_indices(1, epoch, num_examples, num_examples)
            for epoch in range(6)]  # Batch == N: step e is epoch e exactly.
  expected = np.concatenate(epochs)
  steps = -(-3 * num_examples // global_batch)  # Crosses >= 2 boundaries.
  got = stream(1, global_batch, num_examples, steps)
  np.testing.assert_array_equal(got, expected[:steps * global_batch])


def test_same_seed_and_step_give_same_batch_in_any_order():
  in_order = [input_pipeline.train_indices(7, s, 6, 20) for s in range(8)]
  input_pipeline._epoch_permutation.cache_clear()  # Fresh, like a restart.
  for step in (5, 0, 7, 3):
    np.testing.assert_array_equal(
        input_pipeline.train_indices(7, step, 6, 20), in_order[step])


def test_different_seeds_give_different_orders():
  assert not np.array_equal(stream(0, 10, 100, 1), stream(1, 10, 100, 1))


@pytest.mark.parametrize('process_count', [1, 2, 4])
def test_process_slices_concatenate_to_the_global_batch(process_count):
  global_batch = input_pipeline.train_indices(0, 3, 8, 13)
  parts = [input_pipeline.process_slice(global_batch, i, process_count)
           for i in range(process_count)]
  assert {len(part) for part in parts} == {8 // process_count}
  np.testing.assert_array_equal(np.concatenate(parts), global_batch)


def test_train_indices_rejects_bad_arguments():
  with pytest.raises(ValueError, match='num_examples >= 1'):
    input_pipeline.train_indices(0, 0, 4, 0)


# ------------------------------------------------------------- evaluation --


@pytest.mark.parametrize('num_examples, batch', [
    (1, 4), (4, 4), (5, 4), (7, 3)])
def test_eval_batches_cover_each_example_once(num_examples, batch):
  batches = list(input_pipeline.eval_batches(num_examples, batch))
  assert len(batches) == -(-num_examples // batch)
  for indices, mask in batches:
    assert indices.shape == mask.shape == (batch,)
    assert indices.dtype == np.int32 and mask.dtype == bool
    assert (indices[~mask] == 0).all()
  real = np.concatenate([indices[mask] for indices, mask in batches])
  np.testing.assert_array_equal(real, np.arange(num_examples))
  assert sum((~mask).sum() for _, mask in batches) == (
      len(batches) * batch - num_examples)


# ----------------------------------------------------------- image folder --


def test_image_folder_loads_labels_and_class_names(tmp_path):
  root = make_folder(tmp_path / 'data')
  images, labels, info = input_pipeline.load_split(make_config(root), 'train')
  assert info == input_pipeline.DatasetInfo(3, ('cat', 'dog', 'emu'), 12, 8)
  assert images.shape == (12, 8, 8, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, np.repeat([0, 1, 2], 4))
  greys = np.array(list(CLASS_COLOURS.values()))[labels]
  np.testing.assert_allclose(images.mean(axis=(1, 2, 3)), greys, atol=3)

  _, test_labels, test_info = input_pipeline.load_split(make_config(root),
                                                        'test')
  np.testing.assert_array_equal(test_labels, [1, 1, 2, 2])  # Train's ids.
  assert test_info.class_names == info.class_names


def test_image_folder_slices_follow_sorted_file_order(tmp_path):
  config = make_config(make_folder(tmp_path / 'data'))
  whole, _, _ = input_pipeline.load_split(config, 'train')
  head, _, head_info = input_pipeline.load_split(config, 'train[:75%]')
  tail, tail_labels, _ = input_pipeline.load_split(config, 'train[75%:]')
  assert head_info.num_examples == 9
  np.testing.assert_array_equal(np.concatenate([head, tail]), whole)
  np.testing.assert_array_equal(tail_labels, [2, 2, 2])


def test_image_folder_of_mixed_sizes_is_resized_to_source_size(tmp_path):
  config = make_config(make_folder(tmp_path / 'data', sizes=(8, 12)),
                       source_size=6)
  images, _, info = input_pipeline.load_split(config, 'train')
  assert images.shape == (12, 6, 6, 3) and info.image_size == 6


# ------------------------------------------------------------- bad inputs --


def load_error(config, split='train'):
  with pytest.raises(input_pipeline.DataError) as error:
    input_pipeline.load_split(config, split)
  return str(error.value)


def test_unknown_dataset_suggests_close_names():
  message = load_error(make_config('cifar_10'))
  assert "Unknown dataset 'cifar_10'" in message and 'cifar10' in message


def test_missing_tfds_data_dir_is_named(tmp_path, monkeypatch):
  missing = str(tmp_path / 'no_such_dir')
  message = load_error(make_config('cifar10', tfds_data_dir=missing))
  assert missing in message and '--config.tfds_data_dir' in message
  monkeypatch.setenv('TFDS_DATA_DIR', missing)
  assert 'TFDS_DATA_DIR' in load_error(make_config('cifar10'))


def test_unprepared_dataset_says_where_it_looked_and_how_to_fix(tmp_path):
  message = load_error(make_config('cifar10', tfds_data_dir=str(tmp_path)))
  assert str(tmp_path) in message and "'cifar10'" in message
  assert '--config.tfds_data_dir' in message and 'tfds build' in message
  assert 'Downloading is off (--config.tfds_download=False)' in message
  assert os.listdir(tmp_path) == []  # Nothing written.


def test_empty_image_folder(tmp_path):
  (tmp_path / 'data').mkdir()
  message = load_error(make_config(tmp_path / 'data'))
  assert 'is empty' in message and '<class name>' in message


def test_missing_image_folder(tmp_path):
  message = load_error(make_config(tmp_path / 'nope'))
  assert 'does not exist' in message and str(tmp_path / 'nope') in message


def test_split_folder_without_class_subfolders(tmp_path):
  (tmp_path / 'data' / 'train').mkdir(parents=True)
  message = load_error(make_config(tmp_path / 'data'))
  assert 'no class subfolders' in message and 'train' in message


def test_class_folder_without_images(tmp_path):
  root = make_folder(tmp_path / 'data')
  empty_class = tmp_path / 'data' / 'train' / 'fox'
  empty_class.mkdir()
  (empty_class / 'notes.txt').write_text('not an image')
  message = load_error(make_config(root))
  assert str(empty_class) in message and 'has no images' in message


@pytest.mark.parametrize('layout, expected', [
    ('images_without_classes', 'holds image files directly'),
    ('no_train_folder', 'has no train/ subfolder'),
    ('test_class_not_in_train', "classes ['yak']"),
])
def test_malformed_layout_names_path_and_expected_layout(tmp_path, layout,
                                                         expected):
  root = str(tmp_path / 'data')
  if layout == 'images_without_classes':
    write_image(os.path.join(root, 'train', 'loose.png'), 0)
  elif layout == 'no_train_folder':
    write_image(os.path.join(root, 'images', 'cat', 'a.png'), 0)
  else:
    make_folder(root)
    write_image(os.path.join(root, 'test', 'yak', 'a.png'), 0)
  message = load_error(make_config(root), split='test' if 'test' in layout
                       else 'train')
  assert expected in message and root in message
  assert 'Expected layout' in message


def test_unreadable_image_file_is_named(tmp_path):
  root = make_folder(tmp_path / 'data')
  broken = tmp_path / 'data' / 'train' / 'dog' / 'broken.png'
  broken.write_bytes(b'not a png')
  message = load_error(make_config(root))
  assert f'{broken}: cannot read it as an image' in message


def test_images_of_different_sizes_need_source_size(tmp_path):
  root = make_folder(tmp_path / 'data', sizes=(8, 12))
  assert '--config.pp.source_size' in load_error(make_config(root))


def test_batch_not_divisible_by_process_count():
  with pytest.raises(ValueError, match='10 examples cannot be split evenly '
                     'across 3 processes'):
    input_pipeline.process_slice(np.arange(10), 0, 3)
