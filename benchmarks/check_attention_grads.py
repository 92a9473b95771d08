"""Do the attention implementations agree, gradients included? (GPU check.)

  python benchmarks/check_attention_grads.py

Compares logits and parameter gradients of the scratch recipe's model with
attention_impl 'xla' (the reference) against 'auto' and 'cudnn' (when
available), in float32 and bfloat16, and prints relative errors as JSON.
Run first in a GPU session: a wrong fused-attention backward pass would
silently cripple training.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import models


def _relative_error(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def main():
  images = jax.random.uniform(jax.random.key(1), (16, 32, 32, 3),
                              minval=-1, maxval=1)
  labels = jax.nn.one_hot(jnp.arange(16) % 10, 10)
  report = {'backend': jax.default_backend()}
  for dtype in (jnp.float32, jnp.bfloat16):
    kwargs = dict(num_layers=2, classifier='gap', dtype=dtype)
    reference = models.get_model('ViT-S_4', 10, attention_impl='xla',
                                 **kwargs)
    params = reference.init(jax.random.key(0), images)['params']
    params['head']['kernel'] = 0.02 * jax.random.normal(
        jax.random.key(2), params['head']['kernel'].shape)

    def loss_and_grads(model):
      def loss(p):
        logits = model.apply({'params': p}, images)
        return -(jax.nn.log_softmax(logits) * labels).sum(-1).mean()
      return jax.jit(jax.value_and_grad(loss))(params)

    ref_loss, ref_grads = loss_and_grads(reference)
    for impl in ('auto', 'cudnn'):
      try:
        model = models.get_model('ViT-S_4', 10, attention_impl=impl,
                                 **kwargs)
        got_loss, got_grads = loss_and_grads(model)
      except Exception as e:  # pylint: disable=broad-except
        report[f'{impl}_{jnp.dtype(dtype).name}'] = f'unavailable: {e}'[:120]
        continue
      # Relative to the whole gradient: some leaves (key biases) have a
      # gradient that is zero in exact arithmetic.
      flat = lambda tree: np.concatenate(
          [np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])
      errors = jax.tree.map(_relative_error, got_grads, ref_grads)
      report[f'{impl}_{jnp.dtype(dtype).name}'] = {
          'loss_rel_err': _relative_error(got_loss, ref_loss),
          'grad_rel_err': _relative_error(flat(got_grads), flat(ref_grads)),
          'query_kernel_grad_rel_err': errors['Transformer'][
              'encoderblock_0']['MultiHeadDotProductAttention_0']['query'][
                  'kernel']}
  print(json.dumps(report))


if __name__ == '__main__':
  main()
