"""Datasets as in-memory arrays, and batches addressed by training step.

CIFAR-sized datasets fit in host (and accelerator) memory, so a split is
loaded once into uint8 arrays and the training loop asks for the example
indices of step `s`. Data order then depends only on (seed, step): not on the
number of devices or processes, and a restarted run resumes mid-epoch exactly
where it stopped, without replaying earlier steps. Augmentation runs later,
on device (see preprocess.py); this module only delivers fixed-size uint8
images.

Sources: any TFDS image classification dataset by name (read from
`config.tfds_data_dir`, else TFDS_DATA_DIR, else the TFDS default; downloaded
and prepared there on first use unless `config.tfds_download` is False), or
an image folder laid out `{train,test}/<class>/*.jpg|png`.

The original repository's tf.data API (`get_datasets`, `get_data_from_tfds`,
`get_dataset_info`, ...) is at the end: the same sources, as datasets of
preprocessed batches for `jax.pmap`.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import functools
import os
import shutil
import time
from typing import Iterator
import urllib.error
import urllib.request

from absl import logging
import numpy as np

from vit_jax import checkpoint
from vit_jax import cluster
from vit_jax import image_io


def _tensorflow():
  """TensorFlow and TFDS, imported on first use: image folders and the
  training loop itself run without them (e.g. on a GPU host without TF)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tf, tfds


IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
FOLDER_LAYOUT = ('{root}/{train,test}/<class name>/*.jpg|*.jpeg|*.png '
                 '(one subfolder per class; class names from train/)')
_PROGRESS_SECONDS = 10.0  # How often a long load logs how far it got.
_TFDS_READ_BATCH = 1024


class DataError(ValueError):
  """A dataset that cannot be loaded: says which name or path, and the fix."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  class_names: tuple[str, ...]
  num_examples: int  # Of the split loaded.
  image_size: int  # Side of the uint8 images yielded.


def load_split(config, split: str
               ) -> tuple[np.ndarray, np.ndarray, DatasetInfo]:
  """Whole split as host arrays: images uint8 [N,S,S,3], labels int32 [N].

  `config.dataset` is a TFDS name or an image folder; `split` uses TFDS slice
  syntax ('train[:98%]') for both. Images are resized to
  `config.pp.source_size` when set; otherwise their native size must be
  uniform and square.
  """
  source_size = config.pp.source_size
  started = time.time()
  folder = _image_folder_path(config.dataset)
  if folder is not None:
    images, labels, class_names = _load_image_folder(folder, split,
                                                     source_size)
  else:
    images, labels, class_names = _load_tfds(
        config.dataset, _tfds_data_dir(config), split, source_size,
        config.tfds_download, config.get('tfds_manual_dir'))
  if not len(labels):
    raise DataError(f'Split {split!r} of dataset {config.dataset!r} is empty.')
  info = DatasetInfo(num_classes=len(class_names), class_names=class_names,
                     num_examples=len(labels), image_size=images.shape[1])
  logging.info('Loaded %s %s: %d images of %dx%d in %.1f s.', config.dataset,
               split, info.num_examples, info.image_size, info.image_size,
               time.time() - started)
  return images, labels, info


# ---------------------------------------------------------------- batching --


def train_indices(seed: int, step: int, global_batch: int,
                  num_examples: int) -> np.ndarray:
  """int32 [global_batch] example indices of the global batch at `step`.

  The stream of examples is epoch 0's permutation, then epoch 1's, ...; batch
  `step` is positions [step * global_batch, (step + 1) * global_batch) of that
  stream, so a batch spanning an epoch boundary takes the tail of one epoch
  and the head of the next. Any step is computed directly, with work
  proportional to the batch plus one permutation per epoch touched.
  """
  if seed < 0 or step < 0 or global_batch < 1 or num_examples < 1:
    raise ValueError(
        'train_indices needs seed >= 0, step >= 0, global_batch >= 1 and '
        f'num_examples >= 1; got seed={seed}, step={step}, '
        f'global_batch={global_batch}, num_examples={num_examples}.')
  positions = step * global_batch + np.arange(global_batch, dtype=np.int64)
  epochs, offsets = np.divmod(positions, num_examples)
  indices = np.empty(global_batch, np.int32)
  for epoch in np.unique(epochs):
    in_epoch = epochs == epoch
    permutation = _epoch_permutation(seed, int(epoch), num_examples)
    indices[in_epoch] = permutation[offsets[in_epoch]]
  return indices


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """Epoch `epoch`'s order; cached because consecutive steps share epochs."""
  rng = np.random.default_rng([seed, epoch])
  permutation = rng.permutation(num_examples).astype(np.int32)
  permutation.flags.writeable = False  # Shared by the cache.
  return permutation


def eval_batches(num_examples: int, batch: int
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(indices int32 [batch], mask bool [batch]) covering each example once.

  Every batch has the same shape (one compiled eval step); the last one is
  padded with index 0 and mask False so that nothing is dropped or counted
  twice.
  """
  if num_examples < 1 or batch < 1:
    raise ValueError('eval_batches needs num_examples >= 1 and batch >= 1; '
                     f'got num_examples={num_examples}, batch={batch}.')
  for start in range(0, num_examples, batch):
    real = np.arange(start, min(start + batch, num_examples), dtype=np.int32)
    indices = np.zeros(batch, np.int32)
    indices[:len(real)] = real
    yield indices, np.arange(batch) < len(real)


def process_slice(global_array: np.ndarray, process_index: int,
                  process_count: int) -> np.ndarray:
  """This process's contiguous share of a global batch.

  Every process computes the same global indices; each then gathers only its
  rows, which together (in process order) are exactly the global batch.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} is not in '
                     f'[0, {process_count}).')
  size = len(global_array)
  if size % process_count:
    raise ValueError(
        f'A global batch of {size} examples cannot be split evenly across '
        f'{process_count} processes; choose a batch size that is a multiple '
        f'of {process_count} (e.g. --config.batch / --config.batch_eval).')
  share = size // process_count
  return global_array[process_index * share:(process_index + 1) * share]


# -------------------------------------------------------------------- TFDS --


def _tfds_data_dir(config) -> str | None:
  """config.tfds_data_dir, else TFDS_DATA_DIR; checked so typos fail early."""
  if config.tfds_data_dir:
    data_dir, origin = config.tfds_data_dir, '--config.tfds_data_dir'
  elif os.environ.get('TFDS_DATA_DIR'):
    data_dir, origin = os.environ['TFDS_DATA_DIR'], 'TFDS_DATA_DIR'
  else:
    return None  # TFDS's default (~/tensorflow_datasets).
  data_dir = os.path.expanduser(data_dir)
  if not checkpoint.is_remote(data_dir) and not os.path.isdir(data_dir):
    raise DataError(
        f'TFDS data dir {data_dir!r} (from {origin}) does not exist. Point '
        '--config.tfds_data_dir or TFDS_DATA_DIR at the folder that holds '
        f"'{config.dataset}/', or unset both to use the TFDS default.")
  return data_dir


def _load_tfds(name: str, data_dir: str | None, split: str,
               source_size: int | None, download: bool,
               manual_dir: str | None = None):
  tf, _ = _tensorflow()
  builder = _tfds_builder(name, data_dir)
  image_key, label_key = _image_label_keys(builder.info, name)
  _check_native_size(builder.info, name, image_key, source_size)
  try:
    dataset = builder.as_dataset(split=split, shuffle_files=False)
  except AssertionError:  # How TFDS reports "not prepared".
    _prepare_once_per_cluster(builder, name, download, manual_dir)
    builder = _tfds_builder(name, data_dir)  # Metadata of the prepared set.
    dataset = builder.as_dataset(split=split, shuffle_files=False)
  dataset = dataset.map(
      lambda example: (_to_rgb(example[image_key], source_size),
                       tf.cast(example[label_key], tf.int32)),
      num_parallel_calls=tf.data.AUTOTUNE)
  images, labels = _read_all(dataset, f'{name} {split}',
                             _tfds_split_size(builder.info, split))
  class_names = tuple(builder.info.features[label_key].names)
  return images, labels, class_names


def _tfds_builder(name: str, data_dir: str | None):
  """tfds.builder, with close names suggested for a misspelt dataset."""
  _, tfds = _tensorflow()
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.DatasetNotFoundError as error:
    base_name = name.split(':')[0].split('/')[0]
    close = difflib.get_close_matches(base_name, tfds.list_builders(), n=5)
    hint = f' Close names: {", ".join(close)}.' if close else ''
    raise DataError(
        f'Unknown dataset {name!r}: not a TFDS dataset name and not an '
        f'existing image folder.{hint}') from error


def _image_label_keys(info, name: str) -> tuple[str, str]:
  """The (image, label) feature names; supervised_keys when the set has them."""
  _, tfds = _tensorflow()
  keys = info.supervised_keys
  if not (isinstance(keys, tuple) and len(keys) == 2
          and all(isinstance(key, str) for key in keys)):
    keys = ('image', 'label')
  image_key, label_key = keys
  features = info.features
  if not (image_key in features and label_key in features
          and isinstance(features[image_key], tfds.features.Image)
          and isinstance(features[label_key], tfds.features.ClassLabel)):
    raise DataError(f'TFDS dataset {name!r} is not an image classification '
                    f'dataset (need an Image feature and a ClassLabel '
                    f'feature; it has {sorted(features)}).')
  return image_key, label_key


def _check_native_size(info, name: str, image_key: str,
                       source_size: int | None) -> None:
  """Without resizing, images must share one square size to form an array."""
  height, width, _ = info.features[image_key].shape
  if not source_size and (height is None or height != width):
    raise DataError(
        f'Images of TFDS dataset {name!r} have shape '
        f'{info.features[image_key].shape} (varying or not square); set '
        '--config.pp.source_size=N to resize them to NxN when loading.')


def _prepared_builder(name: str, data_dir: str | None, download: bool,
                      manual_dir: str | None):
  """The dataset's builder, once its data is downloaded and prepared."""
  builder = _tfds_builder(name, data_dir)
  if builder.is_prepared():
    return builder
  _prepare_once_per_cluster(builder, name, download, manual_dir)
  return _tfds_builder(name, data_dir)  # Metadata of the prepared set.


def _prepare_once_per_cluster(builder, name: str, download: bool,
                              manual_dir: str | None = None) -> None:
  """Downloads and prepares `builder`'s dataset: once per shared data dir.

  manual_dir: where tfds looks for files that must be fetched by hand
  (`config.tfds_manual_dir`, e.g. ImageNet's archives).
  """
  if not download:
    raise DataError(_not_prepared_message(
        builder, name, 'Downloading is off (--config.tfds_download=False).'))
  cluster.once_per_cluster(
      lambda: _download_and_prepare(builder, name, manual_dir),
      builder.is_prepared, f'prepare TFDS {name!r}')


def _download_and_prepare(builder, name: str,
                          manual_dir: str | None = None) -> None:
  """tfds's download_and_prepare (progress bars included); on failure, one
  message that says what was tried and the ways out, and nothing left that
  a later run would mistake for data."""
  if builder.is_prepared():
    return
  data_root = str(builder.data_dir_root)
  logging.info('TFDS dataset %r is not prepared in %s: downloading and '
               'preparing it (once; --config.tfds_download=False turns this '
               'off).', name, data_root)
  before = _download_leftovers(data_root)
  dataset_dir = os.path.join(data_root, builder.name)
  dataset_dir_existed = os.path.exists(dataset_dir)
  try:
    _check_reachable(builder)
    _, tfds = _tensorflow()
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir))
  except Exception as error:  # pylint: disable=broad-except
    # Network, HTTP, checksum or disk errors all end the same way.
    for leftover in _download_leftovers(data_root) - before:
      shutil.rmtree(leftover, ignore_errors=True)
    if not dataset_dir_existed:
      shutil.rmtree(dataset_dir, ignore_errors=True)
    urls = ', '.join(_failed_request_urls(error) or _registered_urls(builder))
    raise DataError(_not_prepared_message(
        builder, name, f'Downloading it from {urls or "its source"} failed: '
        f'{_first_line(error)}')) from None
  logging.info('Prepared TFDS dataset %r in %s.', name, builder.data_dir)


def _failed_request_urls(error: BaseException) -> list[str]:
  """The URL of the HTTP request that failed, when the error carries it."""
  while error is not None:
    url = getattr(getattr(error, 'request', None), 'url', None)
    if url:
      return [url]
    error = error.__cause__ or error.__context__
  return []


def _check_reachable(builder, timeout: float = 10.0) -> None:
  """Fails at once when a known download host is unreachable (offline):
  tfds itself retries for minutes before giving up."""
  for url in _registered_urls(builder):
    if not url.startswith(('http://', 'https://')):
      continue
    try:
      urllib.request.urlopen(urllib.request.Request(url, method='HEAD'),
                             timeout=timeout).close()
    except urllib.error.HTTPError:
      pass  # It answered; tfds reports real HTTP errors itself.
    except OSError as error:
      raise ConnectionError(f'{url} is unreachable ({error}); offline?'
                            ) from None


def _download_leftovers(data_root: str) -> set[str]:
  """Unfinished downloads/extractions in data_root (tfds marks them so)."""
  found = set()
  for folder, dirs, files in os.walk(os.path.join(data_root, 'downloads')):
    for entry in dirs + files:
      if '.tmp.' in entry or 'incomplete' in entry.lower():
        found.add(os.path.join(folder, entry))
    dirs[:] = [d for d in dirs if os.path.join(folder, d) not in found]
  return found


def _registered_urls(builder) -> list[str]:
  """The dataset's download URLs, where tfds lists them (checksums file)."""
  try:
    return sorted(builder.url_infos or ())
  except Exception:  # pylint: disable=broad-except
    return []


def _first_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return f'{type(error).__name__}: {lines[0]}' if lines else (
      type(error).__name__)


def _not_prepared_message(builder, name: str, why: str) -> str:
  data_root = str(builder.data_dir_root)
  return (
      f'TFDS dataset {name!r} is not prepared in data dir {data_root}. {why} '
      f'Ways out: pass --config.tfds_data_dir=DIR (or set TFDS_DATA_DIR=DIR) '
      f"for a DIR that holds a prepared '{builder.name}/', or prepare it "
      f'with `tfds build {name} --data_dir={data_root}` on a machine that '
      'can download, and copy it there.')


def _tfds_split_size(info, split: str) -> int | None:
  """Expected example count for progress lines; None when TFDS can't tell."""
  try:
    return info.splits[split].num_examples
  except (KeyError, ValueError):
    return None


def _to_rgb(image: tf.Tensor, source_size: int | None) -> tf.Tensor:
  """uint8 [H,W,C] -> uint8 [S,S,3]; antialiased so downsizing doesn't alias."""
  tf, _ = _tensorflow()
  channels = image.shape[-1]
  if channels == 1:
    image = tf.image.grayscale_to_rgb(image)
  elif channels == 4:
    image = image[..., :3]
  if not source_size:
    return image
  resized = tf.image.resize(image, [source_size, source_size],
                            method='bilinear', antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def _read_all(dataset: tf.data.Dataset, description: str,
              expected: int | None) -> tuple[np.ndarray, np.ndarray]:
  """Materialises (image, label) pairs, logging progress on long loads."""
  _, tfds = _tensorflow()
  image_batches, label_batches, count = [], [], 0
  last_log = started = time.time()
  batched = dataset.batch(_TFDS_READ_BATCH).prefetch(2)
  for images, labels in tfds.as_numpy(batched):
    image_batches.append(images)
    label_batches.append(labels)
    count += len(labels)
    if time.time() - last_log > _PROGRESS_SECONDS:
      last_log = time.time()
      logging.info('Loading %s: %d/%s examples after %.0f s.', description,
                   count, expected or '?', last_log - started)
  if not image_batches:
    return np.zeros((0, 0, 0, 3), np.uint8), np.zeros((0,), np.int32)
  return np.concatenate(image_batches), np.concatenate(label_batches)


# ------------------------------------------------------------ image folder --


def _image_folder_path(dataset: str) -> str | None:
  """The folder when `dataset` names one; None for a TFDS name."""
  path = os.path.expanduser(dataset)
  if os.path.isdir(path):
    return path
  if dataset.startswith(('/', '.', '~')):
    raise DataError(f'Image folder {path!r} does not exist. Expected layout: '
                    f'{FOLDER_LAYOUT}.')
  return None


def _load_image_folder(root: str, split: str, source_size: int | None):
  """Decodes the files of `split` (TFDS slice syntax over sorted files)."""
  splits = _FolderSplits(root)
  if split in splits:  # A whole folder: no slicing, no TFDS needed.
    paths, labels = splits[split].paths, splits[split].labels
    images = _decode_images(paths, source_size, f'{root} {split}')
    return images, np.asarray(labels, np.int32), splits.class_names
  _, tfds = _tensorflow()
  try:
    instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(
        splits)
  except DataError:
    raise
  except ValueError as error:  # A slice TFDS's parser rejects.
    raise DataError(f'Cannot read split {split!r} of image folder {root!r}: '
                    f'{error}') from error
  paths, labels = [], []
  for instruction in instructions:
    part = slice(instruction.from_, instruction.to)
    paths += splits[instruction.splitname].paths[part]
    labels += splits[instruction.splitname].labels[part]
  images = _decode_images(paths, source_size, f'{root} {split}')
  return images, np.asarray(labels, np.int32), splits.class_names


@dataclasses.dataclass(frozen=True)
class _FolderSplit:
  """One split folder's images, in sorted (class, file name) order."""
  paths: list[str]
  labels: list[int]

  @property
  def num_examples(self) -> int:  # Read by TFDS's slice arithmetic.
    return len(self.paths)

  @property
  def shard_lengths(self) -> list[int]:  # For 'train[:1shard]' slices.
    return [len(self.paths)]


class _FolderSplits(collections.abc.Mapping):
  """Split name -> _FolderSplit, listed lazily so unused folders are ignored.

  Shaped like TFDS's SplitDict, so TFDS's own parser turns 'train[:98%]' into
  file ranges with exactly the rounding it uses for TFDS datasets.
  """

  def __init__(self, root: str, classes_split: str = 'train'):
    self._root = root
    self._listed = {}
    self.class_names = tuple(_class_folders(root, classes_split))

  def __iter__(self):
    return iter(sorted(name for name in os.listdir(self._root)
                       if os.path.isdir(os.path.join(self._root, name))))

  def __len__(self):
    return len(list(iter(self)))

  def __getitem__(self, split_name: str) -> _FolderSplit:
    if not os.path.isdir(os.path.join(self._root, split_name)):
      raise KeyError(split_name)
    if split_name not in self._listed:
      self._listed[split_name] = self._list(split_name)
    return self._listed[split_name]

  def _list(self, split_name: str) -> _FolderSplit:
    class_names = _class_folders(self._root, split_name)
    unknown = sorted(set(class_names) - set(self.class_names))
    if unknown:
      raise DataError(
          f'{os.path.join(self._root, split_name)} has classes {unknown} that '
          f'train/ lacks; every split must use the classes of train/. '
          f'Expected layout: {FOLDER_LAYOUT}.')
    paths, labels = [], []
    for class_name in class_names:
      files = _image_files(os.path.join(self._root, split_name, class_name))
      paths += files
      labels += [self.class_names.index(class_name)] * len(files)
    return _FolderSplit(paths, labels)


def _class_folders(root: str, split_name: str) -> list[str]:
  """Sorted class subfolders of root/split_name; errors name the bad path."""
  layout_hint = f'Expected layout: {FOLDER_LAYOUT}.'
  if not os.listdir(root):
    raise DataError(f'Image folder {root!r} is empty. {layout_hint}')
  split_dir = os.path.join(root, split_name)
  if not os.path.isdir(split_dir):
    raise DataError(f'Image folder {root!r} has no {split_name}/ subfolder. '
                    f'{layout_hint}')
  entries = sorted(os.listdir(split_dir))
  loose_images = [name for name in entries if _is_image_file(name)]
  if loose_images:
    raise DataError(
        f'{split_dir} holds image files directly ({loose_images[0]}, ...); '
        f'put each image in a subfolder named after its class. {layout_hint}')
  classes = [name for name in entries if not name.startswith('.')
             and os.path.isdir(os.path.join(split_dir, name))]
  if not classes:
    raise DataError(f'{split_dir} has no class subfolders. {layout_hint}')
  return classes


def _image_files(class_dir: str) -> list[str]:
  files = [os.path.join(class_dir, name)
           for name in sorted(os.listdir(class_dir)) if _is_image_file(name)]
  if not files:
    raise DataError(f'Class folder {class_dir} has no images (looked for '
                    f'{", ".join(IMAGE_EXTENSIONS)}, any case). Expected '
                    f'layout: {FOLDER_LAYOUT}.')
  return files


def _is_image_file(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith('.')


def _decode_images(paths: list[str], source_size: int | None,
                   description: str) -> np.ndarray:
  """Decodes into one preallocated uint8 array (no per-image list to stack)."""
  images = None
  last_log = started = time.time()
  for i, path in enumerate(paths):
    try:
      image = image_io.read_image(path, source_size)
    except image_io.ImageError as e:
      raise DataError(f'{e} Loading {description}: remove or replace the '
                      'file.') from e
    if images is None:
      images = _allocate_images(len(paths), image, path)
    elif image.shape != images.shape[1:]:
      raise DataError(
          f'{path} is {image.shape[1]}x{image.shape[0]} but {paths[0]} is '
          f'{images.shape[2]}x{images.shape[1]}; images of different sizes '
          'need --config.pp.source_size=N to resize them to NxN.')
    images[i] = image
    if time.time() - last_log > _PROGRESS_SECONDS:
      last_log = time.time()
      logging.info('Decoding %s: %d/%d images after %.0f s.', description,
                   i + 1, len(paths), last_log - started)
  if images is None:
    return np.zeros((0, source_size or 0, source_size or 0, 3), np.uint8)
  return images


def _allocate_images(count: int, first: np.ndarray, path: str) -> np.ndarray:
  height, width, _ = first.shape
  if height != width:
    raise DataError(f'{path} is {width}x{height}, not square; set '
                    '--config.pp.source_size=N to resize images to NxN.')
  return np.empty((count, *first.shape), np.uint8)


# ------------------------------------------ the original's tf.data pipeline --
# google-research/vision_transformer's input_pipeline API, for code written
# against it (its notebook, its train.py): tf.data datasets of preprocessed
# float batches, shaped [local devices, batch / local devices, ...] for
# `jax.pmap`. Datasets are found, downloaded and listed by the same code as
# `load_split` above, so both read the same examples with the same labels.


def get_tfds_info(dataset, split, *, data_dir=None):
  """The original's info dict for a TFDS dataset; see `get_dataset_info`.

  data_dir: None reads TFDS_DATA_DIR (now: tfds itself reads it once, when
  imported), else TFDS's default.
  """
  data_dir = data_dir or os.environ.get('TFDS_DATA_DIR') or None
  return _tfds_info(_tfds_builder(dataset, data_dir), dataset, split)


def _tfds_info(builder, name: str, split: str) -> dict:
  """num_examples of `split` (slices too), classes and their names."""
  _, label_key = _image_label_keys(builder.info, name)
  num_examples = _tfds_split_size(builder.info, split)
  if num_examples is None:
    if not builder.is_prepared():
      raise DataError(_not_prepared_message(
          builder, name, 'Its splits are known once it is prepared.'))
    raise DataError(f'TFDS dataset {name!r} has no split {split!r}; its '
                    f'splits: {sorted(builder.info.splits)}.')
  labels = builder.info.features[label_key]
  return dict(num_examples=num_examples, num_classes=labels.num_classes,
              int2str=labels.int2str, examples_glob=None)


def get_directory_info(directory):
  """The original's info dict for one split folder `ROOT/SPLIT`.

  Classes are the subfolders of ROOT/train when it exists (so every split
  numbers them alike, even one that lacks a class), else of `directory`.
  examples_glob matches the images (a list of globs when the folder mixes
  extensions: tf.io.gfile.glob and tf.data's list_files take either).
  """
  listing, class_names = _directory_split(directory)
  extensions = sorted({os.path.splitext(path)[1] for path in listing.paths})
  globs = [os.path.join(directory, '*', f'*{ext}') for ext in extensions]
  return dict(num_examples=len(listing.paths), num_classes=len(class_names),
              int2str=class_names.__getitem__,
              examples_glob=globs[0] if len(globs) == 1 else globs)


def _directory_split(directory: str) -> tuple[_FolderSplit, tuple[str, ...]]:
  """The split folder's (paths, labels) and the class names, as load_split
  lists them."""
  root, split = os.path.split(os.path.normpath(os.path.expanduser(directory)))
  _class_folders(root, split)  # A missing or malformed split says so.
  classes_split = 'train' if os.path.isdir(os.path.join(root, 'train')) else (
      split)
  splits = _FolderSplits(root, classes_split)
  return splits[split], splits.class_names


def get_dataset_info(dataset, split):
  """Information about `split` of a TFDS dataset or an image folder.

  Returns the original's dict: num_examples (of the split; TFDS slices such
  as 'test[:90%]' are counted), num_classes, int2str (class id -> name) and
  examples_glob (the split's files; None for TFDS).
  """
  folder = _image_folder_path(dataset)
  if folder is not None:
    return get_directory_info(os.path.join(folder, split))
  return get_tfds_info(dataset, split)


def get_datasets(config):
  """(ds_train, ds_test) for `config.dataset`, a TFDS name or image folder."""
  folder = _image_folder_path(config.dataset)
  if folder is None:
    logging.info('Reading dataset from tfds %r', config.dataset)
    return (get_data_from_tfds(config=config, mode='train'),
            get_data_from_tfds(config=config, mode='test'))
  logging.info('Reading dataset from image folder %r', folder)
  return tuple(get_data_from_directory(config=config, mode=mode,
                                       directory=os.path.join(folder, mode))
               for mode in ('train', 'test'))


def get_data_from_directory(*, config, directory, mode):
  """Batches of the images in `directory` (one subfolder per class).

  Files are decoded by TensorFlow (JPEG, PNG, ...; 3 channels). In train
  mode the file list is reshuffled every epoch before the shuffle buffer,
  so a buffer smaller than the folder still mixes all classes.
  """
  tf, _ = _tensorflow()
  listing, class_names = _directory_split(directory)
  data = tf.data.Dataset.from_tensor_slices(
      {'image': listing.paths, 'label': listing.labels})
  if mode == 'train':
    data = data.shuffle(len(listing.paths), reshuffle_each_iteration=True)
  return get_data(
      data=data, mode=mode, num_classes=len(class_names),
      image_decoder=_decode_image_file, **_batching(config, mode,
                                                    len(listing.paths)))


def _decode_image_file(path):
  """uint8 [H, W, 3] from an image file's path, inside a TF graph."""
  tf, _ = _tensorflow()
  return tf.io.decode_image(tf.io.read_file(path), channels=3,
                            expand_animations=False)


def _batching(config, mode: str, num_examples: int) -> dict:
  """get_data's arguments that the original config decides."""
  return dict(
      repeats=None if mode == 'train' else 1,
      batch_size=config.batch_eval if mode == 'test' else config.batch,
      image_size=config.pp['crop'],
      shuffle_buffer=min(num_examples, config.shuffle_buffer))


def get_data_from_tfds(*, config, mode):
  """Batches of split `config.pp[mode]` of TFDS dataset `config.dataset`.

  The data dir is `config.tfds_data_dir`, else TFDS_DATA_DIR, else TFDS's
  default; the dataset is downloaded and prepared there on first use
  (`config.tfds_manual_dir` for files fetched by hand; no download when
  `config.tfds_download` is False). Images stay encoded in the shuffle
  buffer and are decoded after it, which keeps the buffer small.
  """
  tf, tfds = _tensorflow()
  builder = _prepared_builder(
      config.dataset, _tfds_data_dir(config), config.get('tfds_download', True),
      config.get('tfds_manual_dir'))
  image_key, label_key = _image_label_keys(builder.info, config.dataset)
  split = config.pp[mode]
  data = builder.as_dataset(split=split,
                            decoders={image_key: tfds.decode.SkipDecoding()},
                            shuffle_files=mode == 'train')
  data = data.map(lambda example: {'image': example[image_key],
                                   'label': example[label_key]},
                  num_parallel_calls=tf.data.AUTOTUNE)
  image_feature = builder.info.features[image_key]
  info = _tfds_info(builder, config.dataset, split)
  return get_data(
      data=data, mode=mode, num_classes=info['num_classes'],
      image_decoder=lambda encoded: _to_rgb(
          image_feature.decode_example(encoded), None),
      **_batching(config, mode, info['num_examples']))


def get_data(*, data, mode, num_classes, image_decoder, repeats, batch_size,
             image_size, shuffle_buffer, preprocess=None):
  """A tf.data pipeline of {'image', 'label'} examples -> sharded batches.

  Args (as the original's):
    data: dataset of {'image': encoded image or path, 'label': int}.
    mode: 'train' (shuffled, inception crop + flip) or 'test' (resize).
    num_classes: for the one-hot labels.
    image_decoder: applied to 'image' after shuffling, so that the shuffle
      buffer holds encoded images.
    repeats: epochs; None repeats forever.
    batch_size: global batch of this host, split over its local devices.
    image_size: side of the output images.
    shuffle_buffer: examples in the shuffle buffer (train mode).
    preprocess: optional map applied after shuffling, before decoding.

  Returns:
    Batches {'image': float32 [devices, batch / devices, size, size, 3] in
    [-1, 1], 'label': one-hot float32 [devices, batch / devices,
    num_classes]}; an incomplete last batch is dropped.
  """
  tf, _ = _tensorflow()
  import jax  # pylint: disable=g-import-not-at-top
  num_devices = jax.local_device_count()
  if batch_size % num_devices:
    raise DataError(f'Batch size {batch_size} cannot be split evenly across '
                    f'{num_devices} local devices.')

  def prepare(example):
    image = image_decoder(example['image'])
    if mode == 'train':
      image = _inception_crop_and_flip(image, image_size)
    else:
      image = tf.image.resize(image, [image_size, image_size])
    return {'image': (image - 127.5) / 127.5,
            'label': tf.one_hot(example['label'], num_classes)}

  def shard(batch):
    return {key: tf.reshape(value, [num_devices, -1, *value.shape[1:]])
            for key, value in batch.items()}

  data = data.repeat(repeats)
  if mode == 'train':
    data = data.shuffle(shuffle_buffer)
  if preprocess is not None:
    data = data.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  data = data.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  data = data.batch(batch_size, drop_remainder=True)
  return data.map(shard, num_parallel_calls=tf.data.AUTOTUNE).prefetch(1)


def _inception_crop_and_flip(image, image_size: int):
  """A random crop of 5%-100% of the area (any aspect ratio within TF's
  default 3/4-4/3), resized to image_size; flipped with probability 1/2."""
  tf, _ = _tensorflow()
  begin, size, _ = tf.image.sample_distorted_bounding_box(
      tf.shape(image), tf.zeros([0, 0, 4], tf.float32),
      area_range=(0.05, 1.0), min_object_covered=0,
      use_image_if_no_bounding_boxes=True)
  channels = image.shape[-1]
  image = tf.slice(image, begin, size)
  image.set_shape([None, None, channels])  # tf.slice forgets the channels.
  image = tf.image.resize(image, [image_size, image_size])
  return tf.image.random_flip_left_right(image)


def prefetch(dataset, n_prefetch):
  """An iterator of numpy batches; with n_prefetch, of device arrays
  sharded over the local devices, n_prefetch batches ahead."""
  batches = dataset.as_numpy_iterator()
  if n_prefetch:
    import flax.jax_utils  # pylint: disable=g-import-not-at-top
    batches = flax.jax_utils.prefetch_to_device(batches, n_prefetch)
  return batches
