"""On-device preprocessing: uint8 batches in, model-ready float batches out.

Runs inside the jitted train/eval steps, so the host only gathers uint8
images (or, with data on device, only indices). Randomness comes from one key
per step, so a batch's augmentation depends only on (seed, step). Arguments
are explicit (sizes and the `aug` settings), so inference code calls
`eval_images(x, crop)` without a training config.
"""

import jax
import jax.numpy as jnp
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
