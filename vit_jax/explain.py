"""Where the model looks: attention rollout and last-layer CLS attention.

The maps and the overlay PNG behind `python -m vit_jax.visualize`.

Attention rollout (Abnar & Zuidema, 2020, "Quantifying Attention Flow in
Transformers"): per layer, average the heads, add the identity for the
residual connection and renormalise the rows; multiply these matrices from
the first layer to the last. The class token's row of the product says how
much each patch contributed to the classification. The last layer's CLS
attention (heads averaged) is shown beside it: what the last layer reads
directly. For `gap` models (no class token) both maps average the rows of all
tokens, as the classifier averages the tokens.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import image_io
from vit_jax import inference
from vit_jax import preprocess


def attention_weights(model, params, images) -> jax.Array:
  """Per-layer attention weights, [num_layers, B, heads, L, L] (float32).

  Making the 'intermediates' collection mutable switches the model to the
  explicit attention path that sows its weights.
  """
  _, state = model.apply({'params': params}, images, train=False,
                         mutable=['intermediates'])
  encoder = state['intermediates']['Transformer']
  return jnp.stack([
      encoder[f'encoderblock_{i}']['MultiHeadDotProductAttention_0'][
          'attention_weights'][0].astype(jnp.float32)
      for i in range(model.transformer['num_layers'])])


def rollout(weights_NxBxHxLxL: jax.Array) -> jax.Array:
  """Attention rollout, [B, L, L]; every row sums to 1."""
  mixed_NxBxLxL = weights_NxBxHxLxL.mean(axis=2)
  mixed_NxBxLxL = mixed_NxBxLxL + jnp.eye(mixed_NxBxLxL.shape[-1])
  mixed_NxBxLxL = mixed_NxBxLxL / mixed_NxBxLxL.sum(-1, keepdims=True)
  joint_BxLxL = mixed_NxBxLxL[0]
  for layer_BxLxL in mixed_NxBxLxL[1:]:
    # Full float32: GPUs would otherwise use TF32 and rows drift from 1.
    joint_BxLxL = jnp.matmul(layer_BxLxL, joint_BxLxL,
                             precision=jax.lax.Precision.HIGHEST)
  return joint_BxLxL


def _patch_relevance(matrix_BxLxL: jax.Array, has_cls: bool) -> jax.Array:
  """Rows read by the classifier -> relevance of each patch, [B, patches]."""
  if has_cls:
    return matrix_BxLxL[:, 0, 1:]
  return matrix_BxLxL.mean(axis=1)


def _to_grid(relevance_BxP: jax.Array) -> np.ndarray:
  """[B, patches] -> [B, side, side], scaled to [0, 1] per image."""
  relevance_BxP = np.asarray(relevance_BxP)
  side = int(round(relevance_BxP.shape[-1] ** 0.5))
  grid = relevance_BxP.reshape(-1, side, side)
  low = grid.min(axis=(1, 2), keepdims=True)
  high = grid.max(axis=(1, 2), keepdims=True)
  return (grid - low) / np.maximum(high - low, 1e-12)


def attention_maps(trained: inference.TrainedModel,
                   images_u8: np.ndarray) -> dict[str, np.ndarray]:
  """'rollout' and 'last_layer' maps, [B, grid, grid] in [0, 1], and 'probs'."""
  images = preprocess.eval_images(jnp.asarray(images_u8), trained.image_size)
  weights = attention_weights(trained.model, trained.params, images)
  has_cls = trained.model.has_class_token
  logits = trained.model.apply({'params': trained.params}, images,
                               train=False)
  return {
      'rollout': _to_grid(_patch_relevance(rollout(weights), has_cls)),
      'last_layer': _to_grid(_patch_relevance(weights[-1].mean(1), has_cls)),
      'probs': np.asarray(jax.nn.softmax(logits)),
  }


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
  """A [side, side] map -> [size, size], bilinear (for a smooth overlay)."""
  return np.asarray(jax.image.resize(jnp.asarray(grid, jnp.float32),
                                     (size, size), 'bilinear'))


def save_overlay(image_u8: np.ndarray, maps: dict[str, np.ndarray],
                 path: str, title: str = '', has_cls: bool = True):
  """A PNG with three panels: the image, rollout and last-layer attention."""
  # A bare Figure (no pyplot): no global backend switch, safe in notebooks.
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  size = image_u8.shape[0]
  fig = Figure(figsize=(10, 3.8))
  axes = fig.subplots(1, 3)
  axes[0].imshow(image_u8)
  axes[0].set_title(title or 'input', fontsize=9)
  last = ('last-layer CLS attention' if has_cls else
          'last-layer attention (mean over tokens)')
  for ax, key, label in ((axes[1], 'rollout', 'attention rollout'),
                         (axes[2], 'last_layer', last)):
    ax.imshow(image_u8)
    ax.imshow(_upsample(maps[key], size), cmap='jet', alpha=0.5, vmin=0,
              vmax=1)
    ax.set_title(label, fontsize=9)
  for ax in axes:
    ax.axis('off')
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)


def visualize_file(trained: inference.TrainedModel, image_path: str,
                   out: str) -> dict[str, np.ndarray]:
  """Reads an image, computes both maps, writes the overlay PNG to `out`."""
  image = image_io.read_image(image_path, trained.image_size)
  maps = attention_maps(trained, image[None])
  maps = {k: v[0] for k, v in maps.items()}
  best = int(np.argmax(maps['probs']))
  title = (f'{os.path.basename(image_path)}: {trained.class_names[best]} '
           f'({maps["probs"][best]:.2f})')
  save_overlay(image, maps, out, title,
               trained.model.has_class_token)
  return maps
