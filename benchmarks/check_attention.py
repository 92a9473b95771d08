"""Do the attention kernels agree, gradients included, at the real shapes?

  python benchmarks/check_attention.py --out report.json [--tiny]

For ViT-B/16 at 224 and 384px (197 and 577 tokens) and the from-scratch
model at 64 tokens (mean pooling) and 65 (class token), runs each attention
kernel (cudnn, xla, explicit) in bfloat16 and compares the logits and the
parameter gradients with float32 'explicit' attention at full matmul
precision. A wrong fused backward pass would otherwise cripple training
silently. cuDNN is skipped off a GPU. --tiny keeps the token counts but
shrinks width and depth, for a CPU rehearsal. Exits 1 if any kernel that ran
is off by more than bfloat16 rounding explains, or is not finite.
"""

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import models

# name -> (model name, image size, overrides); depth cut to keep it quick.
CASES = {
    'B16_224': ('ViT-B_16', 224, dict(num_layers=2)),
    'B16_384': ('ViT-B_16', 384, dict(num_layers=2)),
    'scratch_64': ('ViT-S_4', 32, dict(num_layers=2, classifier='gap')),
    'scratch_65': ('ViT-S_4', 32, dict(num_layers=2, classifier='token')),
}
TINY = dict(hidden_size=128, mlp_dim=128, num_heads=2, num_layers=1)
KERNELS = ('cudnn', 'xla', 'explicit')
# Relative (Frobenius) error allowed against float32: bfloat16 keeps 8 bits
# of mantissa (relative rounding 0.4%) and errors add up over the layers.
LOGITS_TOLERANCE = 0.03
GRADS_TOLERANCE = 0.05


def relative_error(a, b) -> float:
  """|a - b| / |b| over all elements, in float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def flat_leaves(tree) -> np.ndarray:
  """Every leaf of `tree` in one float32 vector, to compare gradients."""
  return np.concatenate([np.ravel(np.asarray(x, np.float32))
                         for x in jax.tree.leaves(tree)])


def _logits_and_grads(model, params, images, labels):
  def loss(p):
    logits = model.apply({'params': p}, images, train=True)
    return -(jax.nn.log_softmax(logits) * labels).sum(-1).mean(), logits
  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return np.asarray(logits), grads


def check_case(name: str, tiny: bool, batch: int) -> dict:
  """One model shape: every kernel against float32 explicit."""
  model_name, size, overrides = CASES[name]
  overrides = {**overrides, **(TINY if tiny else {})}
  images = jax.random.uniform(jax.random.key(1), (batch, size, size, 3),
                              minval=-1, maxval=1)
  labels = jax.nn.one_hot(jnp.arange(batch) % 10, 10)
  reference = models.get_model(model_name, 10, attention_impl='explicit',
                               **overrides)
  params = reference.init(jax.random.key(0), images[:1])['params']
  params['head']['kernel'] = 0.02 * jax.random.normal(
      jax.random.key(2), params['head']['kernel'].shape)
  with jax.default_matmul_precision('highest'):
    ref_logits, ref_grads = _logits_and_grads(reference, params, images,
                                              labels)
  results = {'tokens': models.num_tokens(reference, size, True)}
  for kernel in KERNELS:
    if kernel == 'cudnn' and jax.default_backend() != 'gpu':
      results[kernel] = {'skipped': 'needs a GPU'}
      continue
    model = models.get_model(model_name, 10, attention_impl=kernel,
                             dtype=jnp.bfloat16, **overrides)
    plan = models.attention_plan(model, size, True)
    logits, grads = _logits_and_grads(model, params, images, labels)
    flat = flat_leaves(grads)
    results[kernel] = {
        'plan': plan.describe(),
        'finite': bool(np.isfinite(logits).all() and np.isfinite(flat).all()),
        'logits_rel_error': relative_error(logits, ref_logits),
        'grads_rel_error': relative_error(flat, flat_leaves(ref_grads)),
    }
    results[kernel]['ok'] = bool(
        results[kernel]['finite'] and
        results[kernel]['logits_rel_error'] <= LOGITS_TOLERANCE and
        results[kernel]['grads_rel_error'] <= GRADS_TOLERANCE)
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default=None, help='Write the report here.')
  parser.add_argument('--tiny', action='store_true',
                      help='Small width and depth (CPU rehearsal).')
  parser.add_argument('--batch', type=int, default=4)
  args = parser.parse_args()
  report = {'backend': jax.default_backend(),
            'device': jax.devices()[0].device_kind,
            'tolerances': {'logits': LOGITS_TOLERANCE,
                           'grads': GRADS_TOLERANCE}}
  failed = []
  for name in CASES:
    report[name] = check_case(name, args.tiny, args.batch)
    for kernel in KERNELS:
      result = report[name][kernel]
      if 'skipped' not in result and not result['ok']:
        failed.append(f'{name}/{kernel}')
      print(name, kernel, json.dumps(result), flush=True)
  report['failed'] = failed
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(report, f, indent=2)
  print('FAILED: ' + ', '.join(failed) if failed else 'all kernels agree')
  sys.exit(1 if failed else 0)


if __name__ == '__main__':
  main()
