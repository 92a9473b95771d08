"""preprocess.PreprocessImages: the original's TF inference preprocessing."""

import subprocess
import sys

import numpy as np

from tests.conftest import REPO
from vit_jax import preprocess


def _scaled(pixels):
  return np.asarray(pixels, np.float32) / 255 * 2 - 1


def test_crop_keeps_the_central_window_of_the_short_side_resize():
  image = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3) * 10
  # Short side already 2: no resize; the central 2x2 window is columns 1-2.
  out = preprocess.PreprocessImages(size=2, crop=True)([image])
  assert out.shape == (1, 2, 2, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out[0], _scaled(image[:, 1:3]), atol=1e-6)


def test_without_crop_both_sides_are_resized():
  image = np.full((6, 2, 3), 255, np.uint8)
  image[:, 0] = 0
  out = preprocess.PreprocessImages(size=2)([image])
  # Columns keep their values (width unchanged); rows are squeezed.
  np.testing.assert_allclose(out[0, :, 0], -1.0)
  np.testing.assert_allclose(out[0, :, 1], 1.0)


def test_preprocess_tf_runs_in_a_dataset_map():
  # Imported here, not at collection: TensorFlow loaded in every test
  # process makes a later import of torch's triton (timm parity tests)
  # crash the process.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  pp = preprocess.PreprocessImages(size=4, crop=True)
  images = tf.data.Dataset.from_tensor_slices(
      np.full((3, 8, 6, 3), 51, np.uint8))
  batch = next(images.map(pp.preprocess_tf).batch(3).as_numpy_iterator())
  assert batch.shape == (3, 4, 4, 3) and batch.dtype == np.float32
  np.testing.assert_allclose(batch, 51 / 255 * 2 - 1, atol=1e-6)


def test_module_imports_without_tensorflow():
  code = ('import sys; from vit_jax import preprocess; '
          'assert "tensorflow" not in sys.modules; '
          'preprocess.PreprocessImages(size=4)')
  subprocess.run([sys.executable, '-c', code], cwd=REPO, check=True)
