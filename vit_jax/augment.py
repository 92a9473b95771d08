"""On-device data augmentation in pure JAX for small-image training.

Training ViTs from scratch on CIFAR-sized data needs strong augmentation, and
the whole dataset fits in accelerator memory, so augmentation runs inside the
jit-compiled train step instead of a host input pipeline. Every function here
is therefore batched, shape-static and driven only by a `jax.random` key: the
same key and images always give the same output. Eager and jitted calls agree
too, except that XLA's fusion can move a float result that lands on a rounding
tie by one uint8 level (photometric and rotate/shear ops only).

Images are uint8 arrays shaped [batch, height, width, channels] until
`normalize` turns them into float32 in [-1, 1] for the model. Per-image ops
(`rotate`, `equalize`, ...) take a single uint8 image [height, width, channels]
and are vmapped by the batched policies.
"""

from typing import Callable, Tuple

import jax
import jax.numpy as jnp
from jax import lax

# Value for pixels that geometric ops move in from outside the image. Mid-gray
# sits near the dataset mean, so it is a milder artefact than black; RandAugment
# implementations use the same value.
FILL_VALUE = 128.0

# RandAugment magnitudes run from 0 (every op is the identity) to this value.
MAX_MAGNITUDE = 10.0

# Parameter ranges at MAX_MAGNITUDE, from the AutoAugment/RandAugment papers.
# Translation is 10 px on 32x32 images, as in AutoAugment's CIFAR policy, and
# scales with the image side for other sizes.
_MAX_ROTATE_DEGREES = 30.0
_MAX_SHEAR = 0.3
_MAX_TRANSLATE_FRACTION = 10.0 / 32.0
_MAX_ENHANCE_DELTA = 0.9  # Enhancement factors span [0.1, 1.9].
_MAX_POSTERIZE_BITS_REMOVED = 4.0  # Keeps 8 bits at magnitude 0, 4 at the max.

# PIL's RGB -> luma weights, used by the colour and contrast ops.
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def normalize(images_u8: jax.Array) -> jax.Array:
  """Maps uint8 pixels to float32 in [-1, 1], the input range ViT expects."""
  return jnp.asarray(images_u8, jnp.float32) / 127.5 - 1.0


# ------------------------------------------------------------- crop and flip --


def reflect_pad(images_u8: jax.Array, pad: int) -> jax.Array:
  """Pads each side of a [B,H,W,C] batch by `pad` pixels, mirroring the image.

  Reflection rather than zeros: zero padding puts black bars into training
  images that never occur at test time, and their width tells the model the
  crop offset. On CIFAR-10 the two choices score within noise of each other
  (Wide ResNets used reflection, ResNets zeros), so we take the one that adds
  no out-of-distribution pixels.
  """
  padding = ((0, 0), (pad, pad), (pad, pad), (0, 0))
  return jnp.pad(images_u8, padding, mode="reflect")


def random_crop(rng: jax.Array, images: jax.Array, crop: int) -> jax.Array:
  """A random crop x crop window of each image of a [B,S,S,C] batch."""
  batch, side, _, channels = images.shape
  if side == crop:
    return images
  offsets = jax.random.randint(rng, (batch, 2), 0, side - crop + 1)

  def crop_one(image, offset):
    return lax.dynamic_slice(image, (offset[0], offset[1], 0),
                             (crop, crop, channels))

  return jax.vmap(crop_one)(images, offsets)


def random_flip(rng: jax.Array, images_u8: jax.Array) -> jax.Array:
  """Mirrors each image left-right with probability 1/2."""
  flip = jax.random.bernoulli(rng, 0.5, (images_u8.shape[0],))
  return jnp.where(flip[:, None, None, None], images_u8[:, :, ::-1], images_u8)


# ------------------------------------------------------------ per-image ops --


def to_uint8(pixels: jax.Array) -> jax.Array:
  """Rounds and clips like PIL does, so chained ops stay on the uint8 grid."""
  return jnp.clip(jnp.round(pixels), 0, 255).astype(jnp.uint8)


def _blend(image_u8: jax.Array, degenerate: jax.Array,
           factor: jax.Array) -> jax.Array:
  """PIL ImageEnhance: 0 gives `degenerate`, 1 the image, >1 extrapolates.

  Written as image * f + degenerate * (1 - f) so that f == 1 is exact.
  """
  image = jnp.asarray(image_u8, jnp.float32)
  return to_uint8(image * factor + degenerate * (1.0 - factor))


def _grayscale(image: jax.Array) -> jax.Array:
  """Luma of an RGB image as [height, width, 1]; other channel counts pass."""
  if image.shape[-1] != 3:
    return image
  weights = jnp.asarray(_LUMA_WEIGHTS, jnp.float32)
  return jnp.sum(image * weights, axis=-1, keepdims=True)


def autocontrast(image_u8: jax.Array) -> jax.Array:
  """Stretches each channel so its darkest pixel is 0 and brightest is 255."""
  image = jnp.asarray(image_u8, jnp.float32)
  low = image.min(axis=(0, 1), keepdims=True)
  high = image.max(axis=(0, 1), keepdims=True)
  scale = 255.0 / jnp.maximum(high - low, 1.0)
  return jnp.where(high > low, to_uint8((image - low) * scale), image_u8)


def _equalize_channel(channel_u8: jax.Array) -> jax.Array:
  """PIL's histogram equalization of one [height, width] channel.

  The lookup table spreads the cumulative histogram over 0..255, ignoring the
  brightest occupied bin as PIL does; a channel with one value is unchanged.
  """
  histogram = jnp.bincount(channel_u8.ravel(), length=256)
  brightest_bin = 255 - jnp.argmax(histogram[::-1] > 0)
  step = (channel_u8.size - histogram[brightest_bin]) // 255
  count_below = jnp.cumsum(histogram) - histogram
  lookup = (count_below + step // 2) // jnp.maximum(step, 1)
  lookup = jnp.minimum(lookup, 255).astype(jnp.uint8)
  return jnp.where(step > 0, lookup[channel_u8], channel_u8)


def equalize(image_u8: jax.Array) -> jax.Array:
  """Equalizes each channel's histogram (a 256-bin bincount: cheap at 32x32)."""
  return jax.vmap(_equalize_channel, in_axes=-1, out_axes=-1)(image_u8)


def solarize(image_u8: jax.Array, threshold: jax.Array) -> jax.Array:
  """Inverts pixels at or above `threshold`; 256 leaves the image unchanged."""
  return jnp.where(image_u8 >= threshold, 255 - image_u8, image_u8)


def posterize(image_u8: jax.Array, bits: jax.Array) -> jax.Array:
  """Keeps the `bits` high bits of each pixel (8 is the identity)."""
  shift = (8 - jnp.asarray(bits)).astype(jnp.uint8)
  return jnp.left_shift(jnp.right_shift(image_u8, shift), shift)


def adjust_color(image_u8: jax.Array, factor: jax.Array) -> jax.Array:
  """Scales saturation: 0 is grayscale, 1 the identity."""
  grayscale = _grayscale(jnp.asarray(image_u8, jnp.float32))
  return _blend(image_u8, grayscale, factor)


def adjust_contrast(image_u8: jax.Array, factor: jax.Array) -> jax.Array:
  """Scales contrast around the mean luma: 0 is flat gray, 1 the identity."""
  mean_luma = jnp.mean(_grayscale(jnp.asarray(image_u8, jnp.float32)))
  return _blend(image_u8, mean_luma, factor)


def adjust_brightness(image_u8: jax.Array, factor: jax.Array) -> jax.Array:
  """Scales brightness: 0 is black, 1 the identity."""
  return _blend(image_u8, jnp.zeros((), jnp.float32), factor)


def _smooth(image: jax.Array) -> jax.Array:
  """PIL's SMOOTH filter (centre weight 5 of 13) on the interior pixels.

  Border pixels keep their values, as in PIL's sharpness op.
  """
  height, width, _ = image.shape
  weights = ((1, 1, 1), (1, 5, 1), (1, 1, 1))
  interior = sum(
      weights[dy][dx] * image[dy:dy + height - 2, dx:dx + width - 2]
      for dy in range(3) for dx in range(3)) / 13.0
  return image.at[1:-1, 1:-1].set(interior)


def adjust_sharpness(image_u8: jax.Array, factor: jax.Array) -> jax.Array:
  """Blends with a smoothed copy: 0 is blurred, 1 the identity, 2 sharpened."""
  smoothed = _smooth(jnp.asarray(image_u8, jnp.float32))
  return _blend(image_u8, smoothed, factor)


# ----------------------------------------------------------- geometric ops --


def _sample_bilinear(image: jax.Array, rows: jax.Array,
                     cols: jax.Array) -> jax.Array:
  """Reads `image` at fractional (rows, cols); outside pixels read FILL_VALUE.

  Integer coordinates give weights of exactly 1 and 0, so whole-pixel
  translations copy pixels without blurring.
  """
  height, width, _ = image.shape
  pixels = jnp.asarray(image, jnp.float32)
  row0, col0 = jnp.floor(rows), jnp.floor(cols)
  row_frac, col_frac = rows - row0, cols - col0
  sampled = jnp.zeros(rows.shape + image.shape[-1:], jnp.float32)
  for row, row_weight in ((row0, 1.0 - row_frac), (row0 + 1.0, row_frac)):
    for col, col_weight in ((col0, 1.0 - col_frac), (col0 + 1.0, col_frac)):
      inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
      row_index = jnp.clip(row, 0, height - 1).astype(jnp.int32)
      col_index = jnp.clip(col, 0, width - 1).astype(jnp.int32)
      corner = jnp.where(inside[..., None], pixels[row_index, col_index],
                         FILL_VALUE)
      sampled += (row_weight * col_weight)[..., None] * corner
  return sampled


def affine_warp(image_u8: jax.Array, matrix: jax.Array) -> jax.Array:
  """Applies an affine map given as its inverse, about the image centre.

  `matrix` is 2x3 and maps each output pixel's (x, y), measured from the centre
  with y pointing down, to the (x, y) it is read from: source = M[:, :2] @ out +
  M[:, 2]. Every geometric op is one such matrix, so all share one sampler.
  """
  height, width, _ = image_u8.shape
  center_y, center_x = (height - 1) / 2.0, (width - 1) / 2.0
  out_y, out_x = jnp.meshgrid(
      jnp.arange(height, dtype=jnp.float32) - center_y,
      jnp.arange(width, dtype=jnp.float32) - center_x, indexing="ij")
  source_x = matrix[0, 0] * out_x + matrix[0, 1] * out_y + matrix[0, 2]
  source_y = matrix[1, 0] * out_x + matrix[1, 1] * out_y + matrix[1, 2]
  sampled = _sample_bilinear(image_u8, source_y + center_y, source_x + center_x)
  return to_uint8(sampled)


def rotate(image_u8: jax.Array, degrees: jax.Array) -> jax.Array:
  """Rotates the content counter-clockwise (as displayed) about the centre."""
  radians = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
  cos, sin = jnp.cos(radians), jnp.sin(radians)
  return affine_warp(image_u8, jnp.array([[cos, -sin, 0.0], [sin, cos, 0.0]]))


def shear_x(image_u8: jax.Array, shear: jax.Array) -> jax.Array:
  """Shifts each row sideways by `shear` times its offset from the centre."""
  return affine_warp(image_u8, jnp.array([[1.0, shear, 0.0], [0.0, 1.0, 0.0]]))


def shear_y(image_u8: jax.Array, shear: jax.Array) -> jax.Array:
  """Shifts each column up/down by `shear` times its offset from the centre."""
  return affine_warp(image_u8, jnp.array([[1.0, 0.0, 0.0], [shear, 1.0, 0.0]]))


def translate_x(image_u8: jax.Array, pixels: jax.Array) -> jax.Array:
  """Moves the content `pixels` to the right (left when negative)."""
  return affine_warp(image_u8,
                     jnp.array([[1.0, 0.0, -pixels], [0.0, 1.0, 0.0]]))


def translate_y(image_u8: jax.Array, pixels: jax.Array) -> jax.Array:
  """Moves the content `pixels` down (up when negative)."""
  return affine_warp(image_u8,
                     jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, -pixels]]))


# ---------------------------------------------------- RandAugment policies --


def _translate_pixels(image_u8: jax.Array, level: jax.Array) -> jax.Array:
  return level * _MAX_TRANSLATE_FRACTION * image_u8.shape[1]


def _enhance_factor(level: jax.Array) -> jax.Array:
  return 1.0 + _MAX_ENHANCE_DELTA * level


# Each op takes (image, level) where level in [-1, 1] is the signed magnitude as
# a fraction of MAX_MAGNITUDE. Level 0 is the identity for every op except
# autocontrast and equalize, which take no magnitude. Ops with no direction
# (solarize, posterize) ignore the sign.
RAND_AUGMENT_OPS: Tuple[Tuple[str, Callable[[jax.Array, jax.Array],
                                            jax.Array]], ...] = (
    ("identity", lambda image, level: image),
    ("autocontrast", lambda image, level: autocontrast(image)),
    ("equalize", lambda image, level: equalize(image)),
    ("rotate", lambda image, level: rotate(image,
                                           level * _MAX_ROTATE_DEGREES)),
    ("solarize", lambda image, level: solarize(image,
                                               256.0 * (1.0 - abs(level)))),
    ("color", lambda image, level: adjust_color(image,
                                                _enhance_factor(level))),
    ("posterize", lambda image, level: posterize(
        image, 8 - jnp.round(_MAX_POSTERIZE_BITS_REMOVED * abs(level)))),
    ("contrast", lambda image, level: adjust_contrast(
        image, _enhance_factor(level))),
    ("brightness", lambda image, level: adjust_brightness(
        image, _enhance_factor(level))),
    ("sharpness", lambda image, level: adjust_sharpness(
        image, _enhance_factor(level))),
    ("shear_x", lambda image, level: shear_x(image, level * _MAX_SHEAR)),
    ("shear_y", lambda image, level: shear_y(image, level * _MAX_SHEAR)),
    ("translate_x", lambda image, level: translate_x(
        image, _translate_pixels(image, level))),
    ("translate_y", lambda image, level: translate_y(
        image, _translate_pixels(image, level))),
)


def _apply_random_ops(rng: jax.Array, images_u8: jax.Array, num_ops: int,
                      magnitudes: jax.Array) -> jax.Array:
  """Applies `num_ops` uniformly drawn ops, each with a random sign, per image.

  Under vmap, lax.switch evaluates every op and selects per example; at 32x32
  that is cheaper than any gather-based dispatch and keeps shapes static.
  """
  batch = images_u8.shape[0]
  branches = tuple(op for _, op in RAND_AUGMENT_OPS)
  apply_op = jax.vmap(
      lambda image, index, level: lax.switch(index, branches, image, level))
  fractions = jnp.clip(magnitudes / MAX_MAGNITUDE, 0.0, 1.0)
  for op_rng in jax.random.split(rng, num_ops):
    choice_rng, sign_rng = jax.random.split(op_rng)
    op_indices = jax.random.randint(choice_rng, (batch,), 0, len(branches))
    signs = jnp.where(jax.random.bernoulli(sign_rng, 0.5, (batch,)), 1.0, -1.0)
    images_u8 = apply_op(images_u8, op_indices, signs * fractions)
  return images_u8


def rand_augment(rng: jax.Array, images_u8: jax.Array, num_ops: int = 2,
                 magnitude: float = 9.0) -> jax.Array:
  """RandAugment (Cubuk et al., 2019): `num_ops` random ops at one magnitude.

  `magnitude` runs from 0 to MAX_MAGNITUDE (10) and may be a traced scalar, so
  a schedule can change it without recompiling; `num_ops` must be static.
  """
  magnitudes = jnp.full((images_u8.shape[0],), magnitude, jnp.float32)
  return _apply_random_ops(rng, images_u8, num_ops, magnitudes)


# ------------------------------------------------------------ mixup/cutmix --


def _mix_labels(labels: jax.Array, lam: jax.Array) -> jax.Array:
  return lam * labels + (1.0 - lam) * labels[::-1]


def _mixup(rng: jax.Array, images: jax.Array, labels: jax.Array,
           alpha: float) -> Tuple[jax.Array, jax.Array]:
  """Blends each image with its partner in the flipped batch by lam ~ Beta."""
  lam = jax.random.beta(rng, alpha, alpha)
  mixed = lam * images + (1.0 - lam) * images[::-1]
  return mixed, _mix_labels(labels, lam)


def _cutmix_box(rng: jax.Array, height: int, width: int,
                alpha: float) -> Tuple[jax.Array, ...]:
  """A box covering about 1 - lam of the image, lam ~ Beta, clipped like timm.

  Returns (top, bottom, left, right) with bottom/right exclusive.
  """
  lam_rng, center_y_rng, center_x_rng = jax.random.split(rng, 3)
  cut_ratio = jnp.sqrt(1.0 - jax.random.beta(lam_rng, alpha, alpha))
  half_height = (height * cut_ratio).astype(jnp.int32) // 2
  half_width = (width * cut_ratio).astype(jnp.int32) // 2
  center_y = jax.random.randint(center_y_rng, (), 0, height)
  center_x = jax.random.randint(center_x_rng, (), 0, width)
  top = jnp.clip(center_y - half_height, 0, height)
  bottom = jnp.clip(center_y + half_height, 0, height)
  left = jnp.clip(center_x - half_width, 0, width)
  right = jnp.clip(center_x + half_width, 0, width)
  return top, bottom, left, right


def _cutmix(rng: jax.Array, images: jax.Array, labels: jax.Array,
            alpha: float) -> Tuple[jax.Array, jax.Array]:
  """Pastes a box from each image's partner; labels weigh the pasted area."""
  _, height, width, _ = images.shape
  top, bottom, left, right = _cutmix_box(rng, height, width, alpha)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  in_box = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
  mixed = jnp.where(in_box[None, :, :, None], images[::-1], images)
  # Clipping at the border shrinks the box, so weigh by the real area.
  lam = 1.0 - in_box.sum() / (height * width)
  return mixed, _mix_labels(labels, lam)


def mixup_cutmix(rng: jax.Array, images_f32: jax.Array,
                 labels_onehot: jax.Array, mixup_alpha: float = 0.8,
                 cutmix_alpha: float = 1.0,
                 switch_prob: float = 0.5) -> Tuple[jax.Array, jax.Array]:
  """Batch-level mixup or cutmix as in timm, pairing image i with image B-1-i.

  One lam per batch keeps it cheap and shape-static. With both alphas positive,
  cutmix is chosen with probability `switch_prob`; an alpha <= 0 disables that
  method, and disabling both returns the inputs. Alphas must be Python floats.
  """
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return images_f32, labels_onehot
  switch_rng, mix_rng = jax.random.split(rng)
  do_mixup = lambda: _mixup(mix_rng, images_f32, labels_onehot, mixup_alpha)
  do_cutmix = lambda: _cutmix(mix_rng, images_f32, labels_onehot, cutmix_alpha)
  if cutmix_alpha <= 0:
    return do_mixup()
  if mixup_alpha <= 0:
    return do_cutmix()
  use_cutmix = jax.random.bernoulli(switch_rng, switch_prob)
  return lax.cond(use_cutmix, do_cutmix, do_mixup)

