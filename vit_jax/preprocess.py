"""On-device preprocessing: uint8 batches in, model-ready float batches out.

Runs inside the jitted train/eval steps, so the host only gathers uint8
images (or, with data on device, only indices). Randomness comes from one key
per step, so a batch's augmentation depends only on (seed, step).
"""

import jax
import jax.numpy as jnp
import optax

from vit_jax import augment


def resize_side(config) -> int:
  """Side before the random crop: pp.resize, else crop * 8/7 (256 for 224)."""
  return config.pp.resize or round(config.pp.crop * 8 / 7)


def _resize(images, side: int):
  """Bilinear resize of a [B,H,W,C] batch to side x side (no-op if equal)."""
  batch, height, width, channels = images.shape
  if (height, width) == (side, side):
    return images
  return jax.image.resize(images.astype(jnp.float32),
                          (batch, side, side, channels), 'bilinear')


def _random_crop(rng, images, crop: int):
  """Per-example random crop of a [B,S,S,C] batch to crop x crop."""
  batch, side = images.shape[0], images.shape[1]
  if side == crop:
    return images
  offsets = jax.random.randint(rng, (batch, 2), 0, side - crop + 1)
  crop_one = lambda image, offset: jax.lax.dynamic_slice(
      image, (offset[0], offset[1], 0), (crop, crop, image.shape[-1]))
  return jax.vmap(crop_one)(images, offsets)


def train_images(rng, images_u8, config):
  """Random crop (after resize, or pad-and-crop) + flip + RandAugment."""
  crop_rng, flip_rng, ra_rng = jax.random.split(rng, 3)
  crop, side = config.pp.crop, resize_side(config)
  if side != images_u8.shape[1] or side != crop:
    images = _random_crop(crop_rng, _resize(images_u8, side), crop)
    images = jnp.clip(jnp.round(images), 0, 255).astype(jnp.uint8)
  elif config.aug.crop_padding:
    images = augment.random_crop(crop_rng, images_u8, config.aug.crop_padding)
  else:
    images = images_u8
  if config.aug.flip:
    images = augment.random_flip(flip_rng, images)
  if config.aug.randaugment_ops:
    images = augment.rand_augment(ra_rng, images,
                                  num_ops=config.aug.randaugment_ops,
                                  magnitude=config.aug.randaugment_magnitude)
  return augment.normalize(images)


def train_batch(rng, images_u8, labels, num_classes: int, config):
  """Augmented images in [-1, 1] and soft targets (smoothing, mixup/cutmix)."""
  image_rng, mix_rng = jax.random.split(rng)
  images = train_images(image_rng, images_u8, config)
  targets = jax.nn.one_hot(labels, num_classes)
  if config.aug.mixup_alpha > 0 or config.aug.cutmix_alpha > 0:
    images, targets = augment.mixup_cutmix(
        mix_rng, images, targets, mixup_alpha=config.aug.mixup_alpha,
        cutmix_alpha=config.aug.cutmix_alpha)
  if config.aug.label_smoothing:
    targets = optax.smooth_labels(targets, config.aug.label_smoothing)
  return images, targets


def eval_images(images_u8, config):
  """Resize straight to the crop size, then scale to [-1, 1]."""
  images = _resize(images_u8, config.pp.crop)
  if images.dtype == jnp.uint8:
    return augment.normalize(images)
  return images / 127.5 - 1.0
