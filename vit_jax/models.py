"""Vision Transformer (Dosovitskiy et al., 2020) in Flax linen.

The parameter tree is the one of google-research/vision_transformer's linen
model, so the published checkpoints load unchanged (see `checkpoint.py`):

  embedding/{kernel (p,p,3,D), bias}
  cls (1,1,D)
  Transformer/posembed_input/pos_embedding (1,tokens,D)
  Transformer/encoderblock_{i}/LayerNorm_0, MultiHeadDotProductAttention_0/
      {query,key,value}/{kernel (D,heads,head_dim), bias (heads,head_dim)},
      out/{kernel (heads,head_dim,D), bias}, LayerNorm_1, MlpBlock_0/Dense_{0,1}
  Transformer/encoder_norm
  pre_logits (only with representation_size), head

Array names carry their shapes: B batch, L tokens, D width, H heads, K head dim.
"""

import dataclasses
import math
import re
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax import attention
from vit_jax import fp8 as fp8_lib
from vit_jax import layers

# name -> (hidden_size, mlp_dim, num_heads, num_layers). One table for every size.
MODEL_SIZES = {
    'Ti': (192, 768, 3, 12),
    'S': (384, 1536, 6, 12),
    'M': (512, 2048, 8, 12),
    'B': (768, 3072, 12, 12),
    'L': (1024, 4096, 16, 24),
    'H': (1280, 5120, 16, 32),
}

# The published names; any other `ViT-{size}_{patch}` (e.g. ViT-Ti_4 for 32x32
# CIFAR images) parses too.
PUBLISHED_NAMES = ('ViT-Ti_16', 'ViT-S_16', 'ViT-S_32', 'ViT-B_8', 'ViT-B_16',
                   'ViT-B_32', 'ViT-L_16', 'ViT-L_32', 'ViT-H_14')

_NAME_RE = re.compile(r'^(?:ViT-)?(?P<size>[A-Za-z]+)[_/](?P<patch>\d+)$')

@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """Architecture hyper-parameters; every field is a `get_model` override."""
  hidden_size: int
  mlp_dim: int
  num_heads: int
  num_layers: int
  patch_size: int
  classifier: str = 'token'  # 'token' (class token) or 'gap' (mean pooling).
  representation_size: Optional[int] = None  # Width of `pre_logits`, if any.
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stochastic_depth: float = 0.0  # Drop-path rate of the last block.
  patch_dropout: float = 0.0  # Training only: fraction of patch tokens dropped.
  dtype: Any = jnp.float32  # Compute dtype; parameters stay float32.
  attention_impl: str = 'auto'  # One of attention.IMPLS.
  remat: bool = False  # Recompute blocks in the backward pass to save memory.
  fp8: bool = False  # FP8 q/k/v, out and MLP matmuls (vit_jax/fp8.py).


def model_config(name: str, **overrides) -> ViTConfig:
  """Returns the architecture of `name` ('ViT-B_16', 'B/16' or 'testing')."""
  if name == 'testing':
    base = dict(hidden_size=10, mlp_dim=10, num_heads=2, num_layers=1,
                patch_size=16, representation_size=10)
  else:
    match = _NAME_RE.match(name)
    if not match or match['size'] not in MODEL_SIZES:
      raise ValueError(
          f'Unknown model name {name!r}. Use ViT-<size>_<patch> with size in '
          f'{sorted(MODEL_SIZES)} (e.g. ViT-B_16, ViT-Ti_4) or "testing".')
    hidden, mlp, heads, layers = MODEL_SIZES[match['size']]
    base = dict(hidden_size=hidden, mlp_dim=mlp, num_heads=heads,
                num_layers=layers, patch_size=int(match['patch']))
  unknown = set(overrides) - {f.name for f in dataclasses.fields(ViTConfig)}
  if unknown:
    raise ValueError(f'Unknown model option(s) {sorted(unknown)} for {name}.')
  config = ViTConfig(**{**base, **overrides})
  if config.classifier not in ('token', 'gap'):
    raise ValueError(f'classifier must be "token" or "gap", got '
                     f'{config.classifier!r}.')
  if not 0.0 <= config.patch_dropout < 1.0:
    raise ValueError(f'patch_dropout must be in [0, 1), got '
                     f'{config.patch_dropout!r}.')
  if config.attention_impl not in attention.IMPLS:
    raise ValueError(f'attention_impl must be one of {attention.IMPLS}, got '
                     f'{config.attention_impl!r}.')
  return config


def num_tokens(config: ViTConfig, image_size: int, train: bool) -> int:
  """Tokens each block sees: patches (fewer under PatchDropout while
  training), plus the class token."""
  patches = (image_size // config.patch_size) ** 2
  if train and config.patch_dropout:
    patches = _kept_patches(patches, config.patch_dropout)
  return patches + (config.classifier == 'token')


def attention_plan(config: ViTConfig, image_size: int, train: bool,
                   backend: Optional[str] = None) -> attention.AttentionPlan:
  """The attention kernel this model uses for `image_size` images: what
  each attention module decides while tracing, for logging it up front.
  `backend` (default: this process's) lets tests ask what a GPU would do."""
  return attention.plan_attention(
      config.attention_impl, backend=backend or jax.default_backend(),
      dtype=config.dtype, head_dim=config.hidden_size // config.num_heads,
      length=num_tokens(config, image_size, train), training=train,
      needs_weights=train and config.attention_dropout_rate > 0,
      probe=attention.probe_on(jax.default_backend()))


def name_for(hidden_size: int, num_layers: int, patch_size: int) -> str:
  """The table name of an architecture, e.g. for 'this file fits ViT-B_16'."""
  for size, (hidden, _, _, layers) in MODEL_SIZES.items():
    if (hidden, layers) == (hidden_size, num_layers):
      return f'ViT-{size}_{patch_size}'
  return (f'an unnamed ViT (hidden_size={hidden_size}, '
          f'num_layers={num_layers}, patch_size={patch_size})')


def get_model(name: str, num_classes: int, **overrides) -> 'VisionTransformer':
  """Returns the linen module for a named size, with optional overrides."""
  return VisionTransformer(config=model_config(name, **overrides),
                           num_classes=num_classes)


_xavier = nn.initializers.xavier_uniform()
_tiny_normal = nn.initializers.normal(stddev=1e-6)

# dot_general dimension numbers of the projections, named by their einsums.
# (The attention module calls dot_general itself so that FP8 can replace it.)
_BLD_DHK_TO_BLHK = (((2,), (0,)), ((), ()))
_BLHK_HKD_TO_BLD = (((2, 3), (0, 1)), ((), ()))
_BHLK_HKD_TO_BLD = (((1, 3), (0, 1)), ((), ()))
_MATMUL = (((1,), (0,)), ((), ()))  # 'ij,jk->ik'


class MlpBlock(nn.Module):
  """Dense -> GELU (tanh approximation, as published) -> Dense."""
  mlp_dim: int
  dtype: Any
  dropout_rate: float
  fp8: bool = False

  @nn.compact
  def __call__(self, x_BxLxD, *, deterministic):
    dense = lambda n: nn.Dense(n, dtype=self.dtype, kernel_init=_xavier,
                               bias_init=_tiny_normal,
                               dot_general=fp8_lib.dot_general_for(self.fp8))
    x = layers.gelu_tanh(dense(self.mlp_dim)(x_BxLxD))
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    x = dense(x_BxLxD.shape[-1])(x)
    return nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)


class _DenseParams(nn.Module):
  """The kernel and bias of an `nn.DenseGeneral`: same names, shapes and
  initialisation, for projections computed in the layout the caller needs."""
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  dtype: Any

  @nn.compact
  def __call__(self):
    flat = (math.prod(self.in_shape), math.prod(self.out_shape))
    init = lambda rng, shape, dtype=jnp.float32: jnp.reshape(
        _xavier(rng, flat, dtype), shape)
    kernel = self.param('kernel', init, self.in_shape + self.out_shape)
    bias = self.param('bias', nn.initializers.zeros, self.out_shape)
    return kernel.astype(self.dtype), bias.astype(self.dtype)


class MultiHeadDotProductAttention(nn.Module):
  """Self-attention with the parameter names of flax's module of that name.

  The kernel comes from `attention.plan_attention` (the rules and why they
  exist are in vit_jax/attention.py). 'xla' and 'cudnn' run
  `jax.nn.dot_product_attention` on B x L x H x K projections; 'explicit'
  computes softmax(QK^T/sqrt(K))V itself on B x H x L x K ones, from one
  matmul for q, k and v together, with the backward pass of
  `layers.softmax_attention`. The explicit form also runs whenever
  attention weights are needed: with attention dropout, or when the caller
  asks for them by making the 'intermediates' collection mutable (they are
  then sown as `attention_weights`, B x H x L x L, for attention maps).

  The key bias enters softmax(q.(k + b)) as q.b, the same for every key of a
  query, so softmax removes it: its true gradient is zero. It is held out of
  differentiation so that the gradient is exactly zero rather than rounding
  noise, which optimizers that normalise updates (Adam, Muon) would turn
  into learning-rate-sized steps.
  """
  num_heads: int
  dtype: Any
  dropout_rate: float
  impl: str
  fp8: bool = False

  @nn.compact
  def __call__(self, x_BxLxD, *, deterministic):
    _, length, width = x_BxLxD.shape
    if width % self.num_heads:
      raise ValueError(f'hidden size {width} is not divisible by '
                       f'num_heads={self.num_heads}.')
    heads = (self.num_heads, width // self.num_heads)
    qkv = [_DenseParams((width,), heads, self.dtype, name=name)()
           for name in ('query', 'key', 'value')]
    # The key bias's gradient is exactly zero (see the docstring).
    qkv[1] = (qkv[1][0], jax.lax.stop_gradient(qkv[1][1]))
    out_kernel_HxKxD, out_bias_D = _DenseParams(heads, (width,), self.dtype,
                                                name='out')()
    x_BxLxD = x_BxLxD.astype(self.dtype)
    use_dropout = self.dropout_rate > 0 and not deterministic
    want_weights = self.is_mutable_collection('intermediates')
    backend = jax.default_backend()
    plan = attention.plan_attention(
        self.impl, backend=backend, dtype=self.dtype, head_dim=heads[1],
        length=length, training=not deterministic,
        needs_weights=use_dropout or want_weights,
        probe=attention.probe_on(backend))
    dot = fp8_lib.dot_general_for(self.fp8)
    if plan.kernel == 'explicit':
      q_BxHxLxK, k_BxHxLxK, v_BxHxLxK = _heads_major_qkv(x_BxLxD, qkv, dot)
      out_BxHxLxK = self._explicit(q_BxHxLxK, k_BxHxLxK, v_BxHxLxK,
                                   deterministic, want_weights)
      out_BxLxD = dot(out_BxHxLxK, out_kernel_HxKxD, _BHLK_HKD_TO_BLD)
    else:
      q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = (
          dot(x_BxLxD, kernel, _BLD_DHK_TO_BLHK) + bias for kernel, bias in qkv)
      out_BxLxHxK = attention.attend(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, plan)
      out_BxLxD = dot(out_BxLxHxK, out_kernel_HxKxD, _BLHK_HKD_TO_BLD)
    return out_BxLxD + out_bias_D

  def _explicit(self, q_BxHxLxK, k_BxHxLxK, v_BxHxLxK, deterministic,
                want_weights):
    """Softmax(QK^T/sqrt(K))V with the weights materialised: through
    `layers.softmax_attention` unless the weights themselves are needed."""
    if not want_weights and (deterministic or self.dropout_rate == 0):
      return layers.softmax_attention(q_BxHxLxK, k_BxHxLxK, v_BxHxLxK)
    weights_BxHxLxL = layers.attention_weights(q_BxHxLxK, k_BxHxLxK)
    if want_weights:
      self.sow('intermediates', 'attention_weights', weights_BxHxLxL)
    weights_BxHxLxL = nn.Dropout(self.dropout_rate)(
        weights_BxHxLxL, deterministic=deterministic)
    return jnp.einsum('bhqt,bhtk->bhqk', weights_BxHxLxL, v_BxHxLxK)


def _heads_major_qkv(x_BxLxD, qkv, dot_general):
  """q, k, v as B x H x L x K from one (B*L, D) x (D, 3*H*K) matmul.

  Written as a plain 2-D dot so that XLA keeps both operands in place and
  only transposes the result (an einsum straight to B x H x L x K made
  XLA:CPU transpose the activations and the kernels too).
  """
  batch, length, width = x_BxLxD.shape
  heads, head_dim = qkv[0][0].shape[1:]
  kernel_Dx3xHxK = jnp.stack([kernel for kernel, _ in qkv], axis=1)
  bias_3xHxK = jnp.stack([bias for _, bias in qkv])
  y = dot_general(x_BxLxD.reshape(batch * length, width),
                  kernel_Dx3xHxK.reshape(width, -1), _MATMUL)
  y = y + bias_3xHxK.reshape(-1)
  y_BxLx3xHxK = y.reshape(batch, length, 3, heads, head_dim)
  return jnp.transpose(y_BxLx3xHxK, (2, 0, 3, 1, 4))


class DropPath(nn.Module):
  """Stochastic depth: drops a residual branch per example while training."""
  rate: float

  @nn.compact
  def __call__(self, x_BxLxD, *, deterministic):
    if deterministic or self.rate == 0:
      return x_BxLxD
    keep = 1.0 - self.rate
    mask_B = jax.random.bernoulli(self.make_rng('dropout'), keep,
                                  (x_BxLxD.shape[0],))
    return x_BxLxD * (mask_B / keep).astype(x_BxLxD.dtype)[:, None, None]


class Encoder1DBlock(nn.Module):
  """Pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""
  config: ViTConfig
  drop_path_rate: float

  @nn.compact
  def __call__(self, x_BxLxD, deterministic):
    c = self.config
    drop_path = DropPath(self.drop_path_rate)
    y = layers.LayerNorm(dtype=c.dtype, name='LayerNorm_0')(x_BxLxD)
    y = MultiHeadDotProductAttention(
        c.num_heads, c.dtype, c.attention_dropout_rate, c.attention_impl,
        c.fp8, name='MultiHeadDotProductAttention_0')(
            y, deterministic=deterministic)
    y = nn.Dropout(c.dropout_rate)(y, deterministic=deterministic)
    x_BxLxD = x_BxLxD + drop_path(y, deterministic=deterministic)
    y = layers.LayerNorm(dtype=c.dtype, name='LayerNorm_1')(x_BxLxD)
    y = MlpBlock(c.mlp_dim, c.dtype, c.dropout_rate, c.fp8, name='MlpBlock_0')(
        y, deterministic=deterministic)
    return x_BxLxD + drop_path(y, deterministic=deterministic)


class Encoder(nn.Module):
  """Position embeddings, the stack of blocks, and the final LayerNorm."""
  config: ViTConfig

  @nn.compact
  def __call__(self, x_BxLxD, *, train):
    c = self.config
    x_BxLxD = AddPositionEmbs(name='posembed_input')(x_BxLxD)
    x_BxLxD = nn.Dropout(c.dropout_rate)(x_BxLxD, deterministic=not train)
    if train and c.patch_dropout:
      x_BxLxD = keep_random_patches(
          self.make_rng('dropout'), x_BxLxD, c.patch_dropout,
          num_prefix=1 if c.classifier == 'token' else 0)
    block = nn.remat(Encoder1DBlock, static_argnums=(2,)) if c.remat else (
        Encoder1DBlock)
    for i in range(c.num_layers):
      rate = c.stochastic_depth * i / max(c.num_layers - 1, 1)
      x_BxLxD = block(c, rate, name=f'encoderblock_{i}')(x_BxLxD, not train)
    return layers.LayerNorm(dtype=c.dtype, name='encoder_norm')(x_BxLxD)


def keep_random_patches(rng, x_BxLxD, drop_fraction: float,
                        num_prefix: int) -> jax.Array:
  """PatchDropout (Liu et al., 2022): each image keeps a random subset of its
  patch tokens (the class token, if any, always stays).

  Applied after the position embeddings, so kept tokens know where they came
  from; the blocks then cost about (1 - drop_fraction) as much. Evaluation
  sees every token: the weights are those of the plain ViT.
  """
  prefix, patches = x_BxLxD[:, :num_prefix], x_BxLxD[:, num_prefix:]
  batch, length, _ = patches.shape
  keep = _kept_patches(length, drop_fraction)
  order_BxL = jnp.argsort(jax.random.uniform(rng, (batch, length)), axis=1)
  kept_BxLxD = jnp.take_along_axis(patches, order_BxL[:, :keep, None], axis=1)
  return jnp.concatenate([prefix, kept_BxLxD], axis=1)


def _kept_patches(num_patches: int, drop_fraction: float) -> int:
  return max(1, round(num_patches * (1.0 - drop_fraction)))


class AddPositionEmbs(nn.Module):
  """Learned position embeddings, shaped by the input at initialisation."""

  @nn.compact
  def __call__(self, x_BxLxD):
    pos_embedding = self.param('pos_embedding',
                               nn.initializers.normal(stddev=0.02),
                               (1,) + x_BxLxD.shape[1:])
    return x_BxLxD + pos_embedding.astype(x_BxLxD.dtype)


class VisionTransformer(nn.Module):
  """ViT classifier. Input: NHWC float images in [-1, 1]; output: logits.

  `model.apply({'params': p}, images, train=False)`; with `train=True`
  dropout and stochastic depth need a 'dropout' rng.
  """
  config: ViTConfig
  num_classes: int

  @nn.compact
  def __call__(self, images_BxHxWxC, *, train: bool = False):
    c = self.config
    p = c.patch_size
    x = nn.Conv(c.hidden_size, (p, p), strides=(p, p), padding='VALID',
                dtype=c.dtype, name='embedding')(images_BxHxWxC)
    batch, grid_h, grid_w, width = x.shape
    x_BxLxD = x.reshape(batch, grid_h * grid_w, width)
    if c.classifier == 'token':
      cls = self.param('cls', nn.initializers.zeros, (1, 1, width))
      cls_BxLxD = jnp.broadcast_to(cls, (batch, 1, width)).astype(x.dtype)
      x_BxLxD = jnp.concatenate([cls_BxLxD, x_BxLxD], axis=1)
    x_BxLxD = Encoder(c, name='Transformer')(x_BxLxD, train=train)
    x_BxD = x_BxLxD[:, 0] if c.classifier == 'token' else x_BxLxD.mean(1)
    if c.representation_size is not None:
      x_BxD = nn.tanh(nn.Dense(c.representation_size, dtype=c.dtype,
                               name='pre_logits')(x_BxD))
    logits = nn.Dense(self.num_classes, dtype=c.dtype, name='head',
                      kernel_init=nn.initializers.zeros)(x_BxD)
    return logits.astype(jnp.float32)
