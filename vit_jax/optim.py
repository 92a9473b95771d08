"""Optimizers and schedules (optax).

Fine-tuning in two phases with one optimizer: parameters are labelled 'head'
(head, and pre_logits if kept) or 'backbone'; optax.multi_transform gives
each label its own transformation, and the backbone's is wrapped in
optax.transforms.conditionally_mask so it returns zero updates and keeps its
state untouched until `freeze_steps` have passed. That mask is the one
freezing mechanism (the train step only skips computing gradients it would
throw away). Each phase has its own
warm-up + decay.
"""

from typing import Any

import jax
import optax

from vit_jax import utils

HEAD_KEYS = ('head', 'pre_logits')
# Parameters that weight decay skips (besides biases and norm scales).
_NO_DECAY_KEYS = ('cls', 'pos_embedding')


def phase_schedule(base_lr: float, warmup_steps: int, total_steps: int,
                   decay_type: str) -> optax.Schedule:
  """Linear warm-up to base_lr, then cosine or linear decay to zero.

  The original's `utils.create_learning_rate_schedule` with linear_end=0
  (one formula for both). The warm-up is cut to leave at least one decay
  step, so a phase shorter than its warm-up still ends at zero.
  """
  if decay_type not in ('cosine', 'linear'):
    raise ValueError(f'decay_type must be "cosine" or "linear", got '
                     f'{decay_type!r}.')
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  total_steps = max(total_steps, warmup_steps + 1)
  return utils.create_learning_rate_schedule(
      total_steps, base_lr, decay_type, warmup_steps, linear_end=0.0)


def learning_rate_fn(config) -> optax.Schedule:
  """Learning rate of the head at each global step (both phases joined)."""
  full = phase_schedule(config.base_lr, config.warmup_steps,
                        config.total_steps - config.freeze_steps,
                        config.decay_type)
  if not config.freeze_steps:
    return full
  frozen = phase_schedule(config.base_lr, config.warmup_steps,
                          config.freeze_steps, config.decay_type)
  return optax.join_schedules([frozen, full], [config.freeze_steps])


def decay_mask(params) -> Any:
  """True for kernels; False for biases, norms, cls and pos_embedding.

  Decided by name, not rank: the attention biases are (heads, head_dim)
  matrices, and decaying them would shrink what is meant to be free.
  """
  def decays(path, _):
    names = [getattr(p, 'key', str(p)) for p in path]
    return names[-1] == 'kernel' and not any(n in _NO_DECAY_KEYS
                                             for n in names)
  return jax.tree_util.tree_map_with_path(decays, params)


def muon_dimensions(params) -> Any:
  """Muon's matrix view of each encoder kernel; None (AdamW) for the rest.

  The encoder's dense kernels are matrices; the attention's are stored per
  head, (hidden, heads, head_dim) and for `out` (heads, head_dim, hidden), and
  are orthogonalized as the (hidden, heads * head_dim) matrices they are. The
  patch embedding, head, biases, norms, cls and pos_embedding get optax
  muon's Adam (Nesterov, no weight decay); weight_decay applies to the Muon
  kernels only.
  """
  def dims(path, leaf):
    names = [getattr(p, 'key', str(p)) for p in path]
    if names[0] != 'Transformer' or names[-1] != 'kernel':
      return None
    if leaf.ndim == 2:
      return optax.contrib.MuonDimensionNumbers(0, 1)
    if names[-2] == 'out':
      return optax.contrib.MuonDimensionNumbers((0, 1), 2)
    return optax.contrib.MuonDimensionNumbers(0, (1, 2))
  return jax.tree_util.tree_map_with_path(dims, params)


def _base_optimizer(config, schedule) -> optax.GradientTransformation:
  # The momentum state's dtype: the original keeps SGD's in bfloat16.
  mu_dtype = config.optim_dtype
  if config.optimizer == 'sgd':
    return optax.sgd(schedule, momentum=config.momentum or None,
                     accumulator_dtype=mu_dtype)
  if config.optimizer == 'adamw':
    return optax.adamw(schedule, b1=config.momentum, b2=config.b2,
                       weight_decay=config.weight_decay, mask=decay_mask,
                       mu_dtype=mu_dtype)
  if config.optimizer == 'muon':
    return optax.contrib.muon(
        schedule, beta=config.momentum, weight_decay=config.weight_decay,
        mu_dtype=mu_dtype,
        weight_decay_mask=decay_mask, adam_b1=config.momentum,
        adam_b2=config.b2, consistent_rms=0.2,
        muon_weight_dimension_numbers=muon_dimensions)
  raise ValueError(f'optimizer must be "sgd", "adamw" or "muon", got '
                   f'{config.optimizer!r}.')


def param_labels(params) -> dict[str, Any]:
  """'head' for the classifier layers, 'backbone' for everything else."""
  return {key: jax.tree.map(
      lambda _, k=key: 'head' if k in HEAD_KEYS else 'backbone', value)
          for key, value in params.items()}


def make_optimizer(config) -> optax.GradientTransformation:
  """Clipping + SGD/AdamW; the backbone frozen for the first freeze_steps."""
  head = _base_optimizer(config, learning_rate_fn(config))
  backbone_schedule = phase_schedule(
      config.base_lr, config.warmup_steps,
      config.total_steps - config.freeze_steps, config.decay_type)
  backbone = _base_optimizer(config, backbone_schedule)
  if config.freeze_steps:
    freeze_steps = config.freeze_steps
    backbone = optax.transforms.conditionally_mask(
        backbone, lambda count: count >= freeze_steps)
  clip = (optax.clip_by_global_norm(config.grad_norm_clip)
          if config.grad_norm_clip else optax.identity())
  return optax.chain(clip, optax.multi_transform(
      {'head': head, 'backbone': backbone}, param_labels))
