"""Vision Transformer (Dosovitskiy et al., 2020) in Flax linen.

The modules, their fields and their parameter trees are those of
google-research/vision_transformer's `models_vit.py`, so its configs
(`vit_jax.configs.models`) and published checkpoints work unchanged:

  [conv_root, gn_root, block{i}/unit{j}/...]  (hybrids: the ResNet stem)
  embedding/{kernel (p,p,C,D), bias}
  cls (1,1,D)
  Transformer/posembed_input/pos_embedding (1,tokens,D)
  Transformer/encoderblock_{i}/LayerNorm_0, MultiHeadDotProductAttention_0/
      {query,key,value}/{kernel (D,heads,head_dim), bias (heads,head_dim)},
      out/{kernel (heads,head_dim,D), bias}, LayerNorm_1, MlpBlock_0/Dense_{0,1}
  Transformer/encoder_norm
  pre_logits (only with representation_size), head

This project's options are extra fields that default to the original's
behaviour: compute `dtype`, the attention kernel (`attention_impl`, chosen
per backend by attention.py), `stochastic_depth`, `patch_dropout`, `remat`
and `fp8`.

Array names carry their shapes: B batch, L tokens, D width, H heads, K head dim.
"""

import math
from typing import Any, Callable, Optional, Type

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax import attention
from vit_jax import fp8 as fp8_lib
from vit_jax import layers
from vit_jax import models_resnet

_xavier = nn.initializers.xavier_uniform()
_tiny_normal = nn.initializers.normal(stddev=1e-6)

# dot_general dimension numbers of the projections, named by their einsums.
# (The attention module calls dot_general itself so that FP8 can replace it.)
_BLD_DHK_TO_BLHK = (((2,), (0,)), ((), ()))
_BLHK_HKD_TO_BLD = (((2, 3), (0, 1)), ((), ()))
_BHLK_HKD_TO_BLD = (((1, 3), (0, 1)), ((), ()))
_MATMUL = (((1,), (0,)), ((), ()))  # 'ij,jk->ik'


class IdentityLayer(nn.Module):
  """Identity layer, convenient for giving a name to an array."""

  @nn.compact
  def __call__(self, x):
    return x


class AddPositionEmbs(nn.Module):
  """Learned position embeddings, shaped by the input at initialisation."""
  posemb_init: Callable = nn.initializers.normal(stddev=0.02)  # From BERT.
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs):
    if inputs.ndim != 3:
      raise ValueError(f'Expected (batch, tokens, width), got {inputs.shape}.')
    pos_embedding = self.param('pos_embedding', self.posemb_init,
                               (1,) + inputs.shape[1:], self.param_dtype)
    return inputs + pos_embedding.astype(inputs.dtype)


class MlpBlock(nn.Module):
  """Dense -> GELU (tanh approximation, as published) -> Dense."""
  mlp_dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  out_dim: Optional[int] = None
  dropout_rate: float = 0.1
  kernel_init: Callable = _xavier
  bias_init: Callable = _tiny_normal
  fp8: bool = False

  @nn.compact
  def __call__(self, inputs, *, deterministic):
    dense = lambda n: nn.Dense(n, dtype=self.dtype,
                               param_dtype=self.param_dtype,
                               kernel_init=self.kernel_init,
                               bias_init=self.bias_init,
                               dot_general=fp8_lib.dot_general_for(self.fp8))
    x = layers.gelu_tanh(dense(self.mlp_dim)(inputs))
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    x = dense(self.out_dim or inputs.shape[-1])(x)
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
  mlp_dim: int
  num_heads: int
  dtype: Any = jnp.float32
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  drop_path_rate: float = 0.0
  attention_impl: str = 'auto'
  fp8: bool = False

  @nn.compact
  def __call__(self, inputs, deterministic: bool):
    drop_path = DropPath(self.drop_path_rate)
    y = layers.LayerNorm(dtype=self.dtype, name='LayerNorm_0')(inputs)
    y = MultiHeadDotProductAttention(
        self.num_heads, self.dtype, self.attention_dropout_rate,
        self.attention_impl, self.fp8, name='MultiHeadDotProductAttention_0')(
            y, deterministic=deterministic)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    x = inputs + drop_path(y, deterministic=deterministic)
    y = layers.LayerNorm(dtype=self.dtype, name='LayerNorm_1')(x)
    y = MlpBlock(self.mlp_dim, dtype=self.dtype,
                 dropout_rate=self.dropout_rate, fp8=self.fp8,
                 name='MlpBlock_0')(y, deterministic=deterministic)
    return x + drop_path(y, deterministic=deterministic)


class Encoder(nn.Module):
  """Position embeddings, the stack of blocks, and the final LayerNorm."""
  num_layers: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  add_position_embedding: bool = True
  # This project's options (VisionTransformer passes them when set).
  dtype: Any = jnp.float32
  attention_impl: str = 'auto'
  stochastic_depth: float = 0.0  # Drop-path rate of the last block.
  patch_dropout: float = 0.0  # Training: fraction of patch tokens dropped.
  num_prefix_tokens: int = 0  # Tokens patch dropout always keeps (cls).
  remat: bool = False
  fp8: bool = False

  @nn.compact
  def __call__(self, x, *, train):
    if x.ndim != 3:
      raise ValueError(f'Expected (batch, tokens, width), got {x.shape}.')
    if self.add_position_embedding:
      x = AddPositionEmbs(name='posembed_input')(x)
      x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    if train and self.patch_dropout:
      x = keep_random_patches(self.make_rng('dropout'), x, self.patch_dropout,
                              self.num_prefix_tokens)
    block = (nn.remat(Encoder1DBlock, static_argnums=(2,)) if self.remat
             else Encoder1DBlock)
    for i in range(self.num_layers):
      x = block(mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                dtype=self.dtype, dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate,
                drop_path_rate=(self.stochastic_depth * i /
                                max(self.num_layers - 1, 1)),
                attention_impl=self.attention_impl, fp8=self.fp8,
                name=f'encoderblock_{i}')(x, not train)
    return layers.LayerNorm(dtype=self.dtype, name='encoder_norm')(x)


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
  keep = kept_patches(length, drop_fraction)
  order_BxL = jnp.argsort(jax.random.uniform(rng, (batch, length)), axis=1)
  kept_BxLxD = jnp.take_along_axis(patches, order_BxL[:, :keep, None], axis=1)
  return jnp.concatenate([prefix, kept_BxLxD], axis=1)


def kept_patches(num_patches: int, drop_fraction: float) -> int:
  """Patch tokens an image keeps under PatchDropout (at least one)."""
  return max(1, round(num_patches * (1.0 - drop_fraction)))


# VisionTransformer fields the Encoder takes too, passed on when set.
_ENCODER_OPTIONS = ('dtype', 'attention_impl', 'stochastic_depth',
                    'patch_dropout', 'remat', 'fp8')


class VisionTransformer(nn.Module):
  """ViT classifier (and hybrid, with `resnet`). Input: NHWC images in
  [-1, 1]; output: logits (per token for the 'unpooled' classifiers).

  `model.apply({'params': p}, images, train=False)`; with `train=True`
  dropout, stochastic depth and patch dropout need a 'dropout' rng.
  """
  num_classes: int
  patches: Any
  transformer: Any
  hidden_size: int
  resnet: Optional[Any] = None
  representation_size: Optional[int] = None
  classifier: str = 'token'
  head_bias_init: float = 0.
  encoder: Type[nn.Module] = Encoder
  model_name: Optional[str] = None
  # This project's options; each default is the original's behaviour.
  dtype: Any = 'float32'
  attention_impl: str = 'auto'
  stochastic_depth: float = 0.0
  patch_dropout: float = 0.0
  remat: bool = False
  fp8: bool = False

  @nn.compact
  def __call__(self, inputs, *, train: bool = False):
    dtype = jnp.dtype(self.dtype)
    x = inputs
    if self.resnet is not None:
      x = models_resnet.resnet_stem(x, self.resnet, dtype)
    x = nn.Conv(self.hidden_size, self.patches['size'],
                strides=self.patches['size'], padding='VALID', dtype=dtype,
                name='embedding')(x)
    if self.transformer is not None:
      batch, grid_h, grid_w, width = x.shape
      x = x.reshape(batch, grid_h * grid_w, width)
      if self.has_class_token:
        cls = self.param('cls', nn.initializers.zeros, (1, 1, width))
        cls_BxLxD = jnp.broadcast_to(cls, (batch, 1, width)).astype(x.dtype)
        x = jnp.concatenate([cls_BxLxD, x], axis=1)
      x = self.encoder(name='Transformer', **self.transformer,
                       **self._encoder_options())(x, train=train)
    x = self._pool(x)
    if self.representation_size is not None:
      x = nn.tanh(nn.Dense(self.representation_size, dtype=dtype,
                           name='pre_logits')(x))
    else:
      x = IdentityLayer(name='pre_logits')(x)
    if self.num_classes:
      x = nn.Dense(self.num_classes, dtype=dtype, name='head',
                   kernel_init=nn.initializers.zeros,
                   bias_init=nn.initializers.constant(self.head_bias_init))(x)
    return x.astype(jnp.float32)

  @property
  def has_class_token(self) -> bool:
    return self.classifier in ('token', 'token_unpooled')

  def _encoder_options(self) -> dict[str, Any]:
    """This project's encoder options, passed only when they differ from
    the defaults: an encoder written for the original keeps working."""
    values = {name: getattr(self, name) for name in _ENCODER_OPTIONS}
    values['dtype'] = jnp.dtype(values['dtype'])
    defaults = {name: getattr(VisionTransformer, name)
                for name in _ENCODER_OPTIONS}
    defaults['dtype'] = jnp.dtype(defaults['dtype'])
    options = {k: v for k, v in values.items() if v != defaults[k]}
    if self.patch_dropout and self.has_class_token:
      options['num_prefix_tokens'] = 1
    return options

  def _pool(self, x):
    if self.classifier == 'token':
      return x[:, 0]
    if self.classifier == 'gap':
      return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
    if self.classifier in ('unpooled', 'token_unpooled'):
      return x
    raise ValueError(f'Invalid classifier={self.classifier!r}.')
