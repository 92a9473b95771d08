"""On-device preprocessing: uint8 batches in, model-ready float batches out.

Runs inside the jitted train/eval steps, so the host only gathers uint8
images (or, with data on device, only indices). Randomness comes from one key
per step, so a batch's augmentation depends only on (seed, step). Arguments
are explicit (sizes and the `aug` settings), so inference code calls
`eval_images(x, crop)` without a training config.

`PreprocessImages` is the original repository's TensorFlow preprocessing
for inference (resize or resize + central crop), kept for code written
against it.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax import augment


def resize_side(crop: int, resize=None) -> int:
  """Side before the random crop: `resize`, else crop * 8/7 (256 for 224)."""
  return resize or round(crop * 8 / 7)


def _resize(images, side: int):
  """Bilinear resize of a [B,H,W,C] batch to side x side (no-op if equal)."""
  batch, height, width, channels = images.shape
  if (height, width) == (side, side):
    return images
  return jax.image.resize(images.astype(jnp.float32),
                          (batch, side, side, channels), 'bilinear')


def _jitter(rng, images_u8, *, crop: int, resize: int, crop_padding: int):
  """Random crop after a resize to `resize`, or reflect-pad-and-crop."""
  if resize != images_u8.shape[1] or resize != crop:
    images = augment.random_crop(rng, _resize(images_u8, resize), crop)
    return augment.to_uint8(images)
  if crop_padding:
    padded = augment.reflect_pad(images_u8, crop_padding)
    return augment.random_crop(rng, padded, crop)
  return images_u8


def train_images(rng, images_u8, *, crop: int, resize: int, aug):
  """Random crop + flip + RandAugment, then scaled to [-1, 1].

  resize: side before the crop (see `resize_side`). aug: the config's `aug`
  block (crop_padding, flip, randaugment_ops, randaugment_magnitude).
  """
  crop_rng, flip_rng, ra_rng = jax.random.split(rng, 3)
  images = _jitter(crop_rng, images_u8, crop=crop, resize=resize,
                   crop_padding=aug.crop_padding)
  if aug.flip:
    images = augment.random_flip(flip_rng, images)
  if aug.randaugment_ops:
    images = augment.rand_augment(ra_rng, images,
                                  num_ops=aug.randaugment_ops,
                                  magnitude=aug.randaugment_magnitude)
  return augment.normalize(images)


def train_batch(rng, images_u8, labels, *, num_classes: int, crop: int,
                resize: int, aug):
  """Augmented images in [-1, 1] and soft targets (smoothing, mixup/cutmix)."""
  image_rng, mix_rng = jax.random.split(rng)
  images = train_images(image_rng, images_u8, crop=crop, resize=resize,
                        aug=aug)
  targets = jax.nn.one_hot(labels, num_classes)
  if aug.mixup_alpha > 0 or aug.cutmix_alpha > 0:
    images, targets = augment.mixup_cutmix(
        mix_rng, images, targets, mixup_alpha=aug.mixup_alpha,
        cutmix_alpha=aug.cutmix_alpha)
  if aug.label_smoothing:
    targets = optax.smooth_labels(targets, aug.label_smoothing)
  return images, targets


def eval_images(images_u8, crop: int):
  """Resize straight to the crop size, then scale to [-1, 1]."""
  images = _resize(images_u8, crop)
  if images.dtype == jnp.uint8:
    return augment.normalize(images)
  return images / 127.5 - 1.0


@dataclasses.dataclass(frozen=True)
class PreprocessImages:
  """The original's image preprocessing for inference: resize, [-1, 1].

  `preprocess_tf(image)` works on one uint8 [H, W, C] image inside a
  TensorFlow graph (e.g. `tf.data.Dataset.map`); calling the object on a
  sequence of images returns a float32 numpy array [N, size, size, C].
  TensorFlow is imported when one of them runs, so the on-device functions
  above keep working on hosts without it.

  Attributes:
    size: Side of the output images.
    crop: False: both sides resized to `size` (aspect ratio not kept). True:
      the short side resized to `size` (aspect ratio kept), then the central
      size x size crop.
  """
  size: int
  crop: bool = False

  def _resize_small(self, image):
    """Bilinear resize so that the shorter side is `size`."""
    tf = _tensorflow()
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    ratio = tf.cast(self.size, tf.float32) / tf.reduce_min(shape)
    new_shape = tf.cast(tf.round(shape * ratio), tf.int32)
    return tf.image.resize(image, new_shape, method='bilinear')

  def _crop(self, image):
    """The central size x size window (offsets rounded down)."""
    tf = _tensorflow()
    offsets = (tf.shape(image)[:2] - self.size) // 2
    return tf.image.crop_to_bounding_box(image, offsets[0], offsets[1],
                                         self.size, self.size)

  def preprocess_tf(self, image):
    """uint8 [H, W, C] -> float32 [size, size, C] in [-1, 1], in a TF graph.

    The resized image is truncated back to uint8 before scaling, as the
    original does, so outputs are exactly the original's.
    """
    tf = _tensorflow()
    if image.dtype != tf.uint8:
      raise ValueError(f'PreprocessImages needs uint8 images, got '
                       f'{image.dtype.name}.')
    if self.crop:
      image = self._crop(self._resize_small(image))
    else:
      image = tf.image.resize(image, [self.size, self.size],
                              method='bilinear')
    image = tf.cast(tf.cast(image, tf.uint8), tf.float32) / 255
    return -1 + image * 2

  def __call__(self, images):
    """A sequence of uint8 images (sizes may differ) -> numpy [N, S, S, C]."""
    tf = _tensorflow()
    return np.stack([self.preprocess_tf(tf.constant(image)).numpy()
                     for image in images])


def _tensorflow():
  """TensorFlow, imported on first use (GPU hosts may not have it)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf
