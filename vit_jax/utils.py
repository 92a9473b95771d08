"""The original repository's training utilities: schedule, accumulation, logs.

Names, signatures and values are those of google-research/vision_transformer
(`vit_jax/utils.py`), so notebook code written for it runs unchanged. The
learning-rate formula here is the project's only one: `optim.phase_schedule`
is this schedule with `linear_end=0`. TensorFlow is imported only by the
file logger, so the schedule and gradient accumulation work on hosts
without it.
"""

import logging as python_logging
import os
import threading

from absl import logging
import jax
import jax.numpy as jnp

_DECAY_TYPES = ('linear', 'cosine')


class GFileHandler(python_logging.StreamHandler):
  """Writes log records to a file through tf.io.gfile (local or gs://).

  Flushes `flush_secs` after the last record rather than after each one, so
  a burst of records costs one write to remote storage.
  """

  def __init__(self, filename, mode, flush_secs=1.0):
    super().__init__()
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.io.gfile.makedirs(os.path.dirname(filename))
    if mode == 'a' and not tf.io.gfile.exists(filename):
      mode = 'w'
    self.filehandle = tf.io.gfile.GFile(filename, mode)
    self.flush_secs = flush_secs
    self.flush_timer = None

  def flush(self):
    self.filehandle.flush()

  def emit(self, record):
    self.filehandle.write(f'{self.format(record)}\n')
    if self.flush_timer is not None:
      self.flush_timer.cancel()
    self.flush_timer = threading.Timer(self.flush_secs, self.flush)
    self.flush_timer.start()


def add_gfile_logger(workdir, *, basename='train', level=python_logging.INFO):
  """Also logs to `{workdir}/{basename}.log` (appending), in absl's format."""
  handler = GFileHandler(f'{workdir}/{basename}.log', 'a')
  handler.setLevel(level)
  handler.setFormatter(logging.PythonFormatter())
  python_logging.getLogger('').addHandler(handler)


def create_learning_rate_schedule(total_steps, base, decay_type, warmup_steps,
                                  linear_end=1e-5):
  """step -> float32 learning rate: linear warm-up, then linear/cosine decay.

  The decay runs over steps [warmup_steps, total_steps]: 'cosine' from
  `base` to 0, 'linear' from `base` to `linear_end`; it stays at its final
  value afterwards. The warm-up multiplies by min(1, step / warmup_steps),
  so step 0 has rate 0. Computed in the original's order of operations, so
  the values are the original's to the last bit. Works on traced steps
  (inside jit, as an optax schedule).
  """
  if decay_type not in _DECAY_TYPES:
    raise ValueError(f'Unknown lr type {decay_type}')

  def step_fn(step):
    progress = (step - warmup_steps) / float(total_steps - warmup_steps)
    progress = jnp.clip(progress, 0.0, 1.0)
    if decay_type == 'linear':
      lr = linear_end + (base - linear_end) * (1.0 - progress)
    else:
      lr = base * 0.5 * (1. + jnp.cos(jnp.pi * progress))
    if warmup_steps:
      lr = lr * jnp.minimum(1., step / warmup_steps)
    return jnp.asarray(lr, dtype=jnp.float32)

  return step_fn


def accumulate_gradient(loss_and_grad_fn, params, images, labels, accum_steps):
  """Mean (loss, grads) of `loss_and_grad_fn` over `accum_steps` micro-batches.

  Trades time for memory: only one micro-batch's activations are alive at a
  time. Micro-batch i is rows [i * n, (i + 1) * n) of `images` and `labels`
  (n = batch / accum_steps); with equal-sized micro-batches the mean of
  their mean losses is the full batch's mean loss, and likewise for the
  gradients. accum_steps None, 0 or 1 makes a single call.
  """
  if not accum_steps or accum_steps <= 1:
    return loss_and_grad_fn(params, images, labels)
  if images.shape[0] % accum_steps:
    raise ValueError(f'Bad accum_steps {accum_steps} for batch size '
                     f'{images.shape[0]}')
  step_size = images.shape[0] // accum_steps

  def micro_batch(array, i):
    start = (i * step_size,) + (0,) * (array.ndim - 1)
    return jax.lax.dynamic_slice(array, start,
                                 (step_size,) + array.shape[1:])

  def add_micro_batch(i, loss_and_grads):
    loss_i, grads_i = loss_and_grad_fn(params, micro_batch(images, i),
                                       micro_batch(labels, i))
    loss, grads = loss_and_grads
    return loss + loss_i, jax.tree.map(jnp.add, grads, grads_i)

  # The first micro-batch outside the loop gives the carry its structure.
  first = loss_and_grad_fn(params, images[:step_size], labels[:step_size])
  total = jax.lax.fori_loop(1, accum_steps, add_micro_batch, first)
  return jax.tree.map(lambda x: x / accum_steps, total)
