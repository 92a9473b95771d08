"""Tests for vit_jax.augment: exact properties on tiny CPU batches."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import assert_reordered_float32_close
from vit_jax import augment

OPS = dict(augment.RAND_AUGMENT_OPS)
# Ops that take no magnitude, so level 0 need not be the identity for them.
MAGNITUDE_FREE_OPS = ("autocontrast", "equalize")



def _pad_crop_flip(rng, images_u8, pad=4):
  """The CIFAR jitter that preprocess.train_images composes from these ops."""
  crop_rng, flip_rng = jax.random.split(rng)
  padded = augment.reflect_pad(images_u8, pad)
  cropped = augment.random_crop(crop_rng, padded, images_u8.shape[1])
  return augment.random_flip(flip_rng, cropped)


BATCHED_AUGMENTATIONS = {
    "pad_crop_flip": _pad_crop_flip,
    "rand_augment": augment.rand_augment,
}


def _random_images(seed=0, batch=4, size=32, low=0, high=256):
  """Noise images: no symmetry, so a flip or shift always shows."""
  rng = np.random.default_rng(seed)
  return rng.integers(low, high, (batch, size, size, 3), dtype=np.uint8)


def _full_range_image():
  """16x16x3 image holding each value 0..255 once per channel.

  Its histogram is flat and spans 0..255, so autocontrast and equalize leave it
  unchanged, which makes every RandAugment op an identity at magnitude 0.
  """
  rng = np.random.default_rng(0)
  channels = [rng.permutation(256).reshape(16, 16) for _ in range(3)]
  return np.stack(channels, axis=-1).astype(np.uint8)


def _key(seed=0):
  return jax.random.PRNGKey(seed)


# ---------------------------------------------------------------- batched --


@pytest.mark.parametrize("name", sorted(BATCHED_AUGMENTATIONS))
def test_augmentation_is_deterministic_given_key(name):
  augmentation = jax.jit(BATCHED_AUGMENTATIONS[name])
  images = _random_images(batch=8)
  first = augmentation(_key(1), images)
  second = augmentation(_key(1), images)
  other_key = augmentation(_key(2), images)
  assert first.dtype == jnp.uint8 and first.shape == images.shape
  np.testing.assert_array_equal(first, second)
  assert not np.array_equal(first, other_key)


def test_normalize_maps_uint8_to_minus_one_one():
  normalized = augment.normalize(np.array([0, 255], np.uint8))
  assert normalized.dtype == jnp.float32
  np.testing.assert_allclose(normalized, [-1.0, 1.0])


def test_random_crop_to_the_input_size_is_identity():
  images = _random_images()
  np.testing.assert_array_equal(
      augment.random_crop(_key(), images, images.shape[1]), images)


def _crop_offset(crop, padded):
  """The (row, col) where `crop` sits in `padded`, or None if nowhere."""
  size = crop.shape[0]
  for row in range(padded.shape[0] - size + 1):
    for col in range(padded.shape[1] - size + 1):
      if np.array_equal(padded[row:row + size, col:col + size], crop):
        return row, col
  return None


def test_random_crop_takes_varied_windows_of_reflect_padded_image():
  images = _random_images(batch=8, size=8)
  crops = np.asarray(
      augment.random_crop(_key(), augment.reflect_pad(images, 2), 8))
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
  offsets = [_crop_offset(c, p) for c, p in zip(crops, padded)]
  assert None not in offsets
  assert len(set(offsets)) > 1


def _flipped_mask(outputs, images):
  """Which outputs are mirrored inputs; fails if one is neither."""
  same = np.all(outputs == images, axis=(1, 2, 3))
  mirrored = np.all(outputs == images[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(same != mirrored), "each output must be the input or mirror"
  return mirrored


def test_random_flip_mirrors_exactly_where_its_coin_says():
  images = _random_images(batch=16, size=4)
  outputs = np.asarray(augment.random_flip(_key(3), images))
  expected = np.asarray(jax.random.bernoulli(_key(3), 0.5, (16,)))
  np.testing.assert_array_equal(_flipped_mask(outputs, images), expected)


def test_rand_augment_at_magnitude_zero_is_identity_on_flat_histogram():
  images = np.stack([_full_range_image()] * 32)
  outputs = augment.rand_augment(_key(), images, num_ops=3, magnitude=0.0)
  np.testing.assert_array_equal(outputs, images)


def test_rand_augment_changes_most_images():
  images = _random_images(batch=16)
  outputs = np.asarray(augment.rand_augment(_key(), images))
  num_changed = np.any(outputs != images, axis=(1, 2, 3)).sum()
  assert num_changed >= 12


def test_rand_augment_accepts_traced_magnitude():
  images = _random_images(batch=2)
  augmentation = jax.jit(augment.rand_augment, static_argnames="num_ops")
  zero = augmentation(_key(), np.stack([_full_range_image()] * 2), 2,
                      jnp.float32(0))
  strong = augmentation(_key(), images, 2, jnp.float32(10))
  np.testing.assert_array_equal(zero, np.stack([_full_range_image()] * 2))
  assert strong.shape == images.shape


# ---------------------------------------------------------- per-image ops --


@pytest.mark.parametrize(
    "name", [n for n in OPS if n not in MAGNITUDE_FREE_OPS])
@pytest.mark.parametrize("level", [0.0, -0.0])
def test_op_at_level_zero_is_identity(name, level):
  image = _random_images(batch=1)[0]
  np.testing.assert_array_equal(OPS[name](image, jnp.float32(level)), image)


@pytest.mark.parametrize("name", MAGNITUDE_FREE_OPS)
def test_magnitude_free_op_keeps_flat_full_range_histogram(name):
  image = _full_range_image()
  np.testing.assert_array_equal(OPS[name](image, jnp.float32(0)), image)


@pytest.mark.parametrize("name", [n for n in OPS if n != "identity"])
def test_op_at_full_level_changes_low_contrast_image(name):
  image = _random_images(batch=1, low=64, high=192)[0]
  assert not np.array_equal(OPS[name](image, jnp.float32(1)), image)


def _pil_reference(pil_op, image):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return np.asarray(pil_op(Image.fromarray(image)))


@pytest.mark.parametrize("ours, pil_name, argument", [
    (augment.equalize, "equalize", None),
    (augment.solarize, "solarize", 100),
    (augment.posterize, "posterize", 3),
])
def test_integer_op_matches_pil(ours, pil_name, argument):
  image_ops = pytest.importorskip("PIL.ImageOps")
  image = _random_images(batch=1, low=30, high=200)[0]
  pil_op = getattr(image_ops, pil_name)
  if argument is None:
    expected, actual = _pil_reference(pil_op, image), ours(image)
  else:
    expected = _pil_reference(lambda im: pil_op(im, argument), image)
    actual = ours(image, argument)
  np.testing.assert_array_equal(actual, expected)


def test_autocontrast_stretches_each_channel_to_full_range():
  image = _random_images(batch=1, low=64, high=192)[0]
  stretched = np.asarray(augment.autocontrast(image))
  np.testing.assert_array_equal(stretched.min(axis=(0, 1)), [0, 0, 0])
  np.testing.assert_array_equal(stretched.max(axis=(0, 1)), [255, 255, 255])


def test_rotate_by_zero_is_identity_and_by_90_is_rot90():
  image = _random_images(batch=1, size=8)[0]
  np.testing.assert_array_equal(augment.rotate(image, 0.0), image)
  np.testing.assert_array_equal(augment.rotate(image, 90.0), np.rot90(image))


@pytest.mark.parametrize("pixels", [3, -2])
def test_translate_x_moves_content_by_whole_pixels(pixels):
  image = _random_images(batch=1, size=8)[0]
  moved = np.asarray(augment.translate_x(image, float(pixels)))
  fill = np.full_like(image[:, :abs(pixels)], augment.FILL_VALUE)
  if pixels > 0:
    expected = np.concatenate([fill, image[:, :-pixels]], axis=1)
  else:
    expected = np.concatenate([image[:, -pixels:], fill], axis=1)
  np.testing.assert_array_equal(moved, expected)


def test_translate_y_moves_content_down():
  image = _random_images(batch=1, size=8)[0]
  moved = np.asarray(augment.translate_y(image, 2.0))
  np.testing.assert_array_equal(moved[2:], image[:-2])
  assert np.all(moved[:2] == augment.FILL_VALUE)


# ----------------------------------------------------------- mixup/cutmix --


def _distinct_batch(batch=4, size=8):
  """Image i is constant i + 1 with label i, so every pixel shows its source."""
  values = np.arange(1, batch + 1, dtype=np.float32)
  images = np.broadcast_to(values[:, None, None, None], (batch, size, size, 3))
  return images, np.eye(batch, dtype=np.float32)


def test_mixup_blends_images_with_the_weight_in_the_labels():
  images, labels = _distinct_batch()
  mixed, mixed_labels = augment.mixup_cutmix(
      _key(), images, labels, mixup_alpha=0.8, cutmix_alpha=0.0)
  np.testing.assert_allclose(mixed_labels.sum(axis=1), 1.0, rtol=1e-6)
  lam = np.diag(mixed_labels)[:, None, None, None]
  expected = lam * images + (1 - lam) * images[::-1]
  np.testing.assert_allclose(mixed, expected, rtol=1e-6)


def test_cutmix_label_weight_equals_pasted_box_area():
  images, labels = _distinct_batch(size=16)
  for seed in range(5):
    mixed, mixed_labels = augment.mixup_cutmix(
        _key(seed), images, labels, mixup_alpha=0.0, cutmix_alpha=1.0)
    pasted = np.asarray(mixed != images)[..., 0]
    np.testing.assert_array_equal(pasted, pasted[:1].repeat(4, axis=0))
    np.testing.assert_array_equal(mixed[pasted], images[::-1][pasted])
    box = pasted[0]
    rows, cols = box.any(axis=1), box.any(axis=0)
    np.testing.assert_array_equal(box, np.outer(rows, cols))
    pasted_fraction = box.mean()
    np.testing.assert_allclose(np.diag(mixed_labels), 1 - pasted_fraction)
    np.testing.assert_allclose(mixed_labels.sum(axis=1), 1.0, rtol=1e-6)


def test_mixup_cutmix_with_both_alphas_off_is_identity():
  images, labels = _distinct_batch()
  mixed, mixed_labels = augment.mixup_cutmix(
      _key(), images, labels, mixup_alpha=0.0, cutmix_alpha=-1.0)
  np.testing.assert_array_equal(mixed, images)
  np.testing.assert_array_equal(mixed_labels, labels)


@pytest.mark.parametrize("switch_prob, expect_cutmix", [(0.0, False),
                                                        (1.0, True)])
def test_switch_prob_chooses_between_mixup_and_cutmix(switch_prob,
                                                      expect_cutmix):
  images, labels = _distinct_batch()
  mixed, _ = augment.mixup_cutmix(_key(), images, labels,
                                  switch_prob=switch_prob)
  only_source_values = np.all(np.isin(mixed, images))
  assert only_source_values == expect_cutmix


# ----------------------------------------------------------------- jit --


def test_pad_crop_flip_jit_matches_eager():
  """Bit-exact where only integers move; rand_augment is covered below."""
  images = _random_images(batch=4, size=16)
  jitted = jax.jit(_pad_crop_flip)(_key(), images)
  np.testing.assert_array_equal(jitted, _pad_crop_flip(_key(), images))


def test_rand_augment_jit_matches_eager_up_to_rounding():
  """XLA fuses float ops under jit (e.g. into FMAs), so a pixel whose value
  lands on a rounding tie may differ by one level from op-by-op execution."""
  images = _random_images(batch=4, size=16)
  augmentation = functools.partial(augment.rand_augment, num_ops=2)
  jitted = np.asarray(jax.jit(augmentation)(_key(), images), np.int32)
  eager = np.asarray(augmentation(_key(), images), np.int32)
  assert np.abs(jitted - eager).max() <= 1
  assert np.mean(jitted != eager) < 0.01


def test_mixup_cutmix_jit_matches_eager():
  images, labels = _distinct_batch()
  mix = functools.partial(augment.mixup_cutmix, mixup_alpha=0.8,
                          cutmix_alpha=1.0, switch_prob=0.5)
  jitted_mix = jax.jit(mix)
  for seed in range(3):
    jitted = jitted_mix(_key(seed), images, labels)
    eager = mix(_key(seed), images, labels)
    for jitted_part, eager_part in zip(jitted, eager):
      # lam * a + (1 - lam) * b, fused (FMA) or not: a sum of 2 terms.
      assert_reordered_float32_close(jitted_part, eager_part, 2)
