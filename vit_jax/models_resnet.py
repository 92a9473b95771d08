"""The ResNet stem of the hybrid models (R50+ViT-B_16, R26+ViT-S_32, ...).

A ResNet v2-style body with weight-standardized convolutions and GroupNorm,
as in the original repository and BiT: its parameter names (`conv_root`,
`gn_root`, `block1/unit1/conv1`, ...) are those of the published hybrid
`.npz` files.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp


def weight_standardize(w, axis, eps):
  """Subtracts the mean and divides by the standard deviation over `axis`."""
  w = w - jnp.mean(w, axis=axis)
  return w / (jnp.std(w, axis=axis) + eps)


class StdConv(nn.Conv):
  """A convolution whose kernel is standardized each time it is used."""

  def param(self, name: str, init_fn, *init_args, **init_kwargs):
    param = super().param(name, init_fn, *init_args, **init_kwargs)
    if name == 'kernel':
      param = weight_standardize(param, axis=[0, 1, 2], eps=1e-5)
    return param


class ResidualUnit(nn.Module):
  """Bottleneck unit: 1x1, 3x3 (strided), 1x1 convs with GroupNorm."""
  features: int
  strides: Sequence[int] = (1, 1)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = lambda features, size, strides, name: StdConv(
        features, size, strides, use_bias=False, dtype=self.dtype,
        name=name)
    norm = lambda name, **kw: nn.GroupNorm(dtype=self.dtype, name=name, **kw)
    needs_projection = (x.shape[-1] != self.features * 4
                        or tuple(self.strides) != (1, 1))
    residual = x
    if needs_projection:
      residual = conv(self.features * 4, (1, 1), self.strides, 'conv_proj')(x)
      residual = norm('gn_proj')(residual)
    y = nn.relu(norm('gn1')(conv(self.features, (1, 1), (1, 1), 'conv1')(x)))
    y = nn.relu(norm('gn2')(conv(self.features, (3, 3), self.strides,
                                 'conv2')(y)))
    y = conv(self.features * 4, (1, 1), (1, 1), 'conv3')(y)
    # The last norm starts at zero: each unit starts as the identity.
    y = norm('gn3', scale_init=nn.initializers.zeros)(y)
    return nn.relu(residual + y)


class ResNetStage(nn.Module):
  """`block_size` units; the first one strides and projects."""
  block_size: int
  nout: int
  first_stride: Sequence[int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = ResidualUnit(self.nout, strides=self.first_stride, dtype=self.dtype,
                     name='unit1')(x)
    for i in range(1, self.block_size):
      x = ResidualUnit(self.nout, strides=(1, 1), dtype=self.dtype,
                       name=f'unit{i + 1}')(x)
    return x


def resnet_stem(x, resnet, dtype):
  """Applies the hybrid's ResNet in the calling module's scope.

  Must be called inside a compact `__call__`: its submodules then get the
  names of the published files (`conv_root`, `gn_root`, `block1`, ...).
  """
  width = int(64 * resnet['width_factor'])
  x = StdConv(width, (7, 7), (2, 2), use_bias=False, dtype=dtype,
              name='conv_root')(x)
  x = nn.relu(nn.GroupNorm(dtype=dtype, name='gn_root')(x))
  x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding='SAME')
  stages = resnet['num_layers']
  for i, block_size in enumerate(stages):
    x = ResNetStage(block_size, width * 2**i,
                    first_stride=(1, 1) if i == 0 else (2, 2), dtype=dtype,
                    name=f'block{i + 1}')(x)
  return x
