"""MLP-Mixer (Tolstikhin et al., 2021), with the published files' names."""

from typing import Any, Optional

import einops
import flax.linen as nn
import jax.numpy as jnp


class MlpBlock(nn.Module):
  """Dense -> GELU -> Dense back to the input width."""
  mlp_dim: int

  @nn.compact
  def __call__(self, x):
    y = nn.gelu(nn.Dense(self.mlp_dim)(x))
    return nn.Dense(x.shape[-1])(y)


class MixerBlock(nn.Module):
  """Token mixing (across patches), then channel mixing (per patch)."""
  tokens_mlp_dim: int
  channels_mlp_dim: int

  @nn.compact
  def __call__(self, x_BxLxD):
    y = nn.LayerNorm()(x_BxLxD)
    y_BxDxL = jnp.swapaxes(y, 1, 2)
    y_BxDxL = MlpBlock(self.tokens_mlp_dim, name='token_mixing')(y_BxDxL)
    x_BxLxD = x_BxLxD + jnp.swapaxes(y_BxDxL, 1, 2)
    y = nn.LayerNorm()(x_BxLxD)
    return x_BxLxD + MlpBlock(self.channels_mlp_dim,
                              name='channel_mixing')(y)


class MlpMixer(nn.Module):
  """Mixer classifier. Input: NHWC images in [-1, 1]; output: logits."""
  patches: Any
  num_classes: int
  num_blocks: int
  hidden_dim: int
  tokens_mlp_dim: int
  channels_mlp_dim: int
  model_name: Optional[str] = None

  @nn.compact
  def __call__(self, inputs, *, train: bool = False):
    del train  # No dropout.
    x = nn.Conv(self.hidden_dim, self.patches['size'],
                strides=self.patches['size'], name='stem')(inputs)
    x_BxLxD = einops.rearrange(x, 'n h w c -> n (h w) c')
    for _ in range(self.num_blocks):
      x_BxLxD = MixerBlock(self.tokens_mlp_dim,
                           self.channels_mlp_dim)(x_BxLxD)
    x_BxLxD = nn.LayerNorm(name='pre_head_layer_norm')(x_BxLxD)
    x_BxD = jnp.mean(x_BxLxD, axis=1)
    if self.num_classes:
      x_BxD = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                       name='head')(x_BxD)
    return x_BxD
