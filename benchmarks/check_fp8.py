"""Do the FP8 matmuls run as FP8 GEMMs on this device, and stay accurate?

  python benchmarks/check_fp8.py --out fp8.json [--tiny]

Compiles the bfloat16 ViT-B/16 training step (224px) with config.model.fp8
and counts, in the program XLA compiled, the FP8 GEMMs: cuBLASLt FP8 calls
and Triton GEMM fusions with FP8 operands. `fp8.count_fp8_matmuls` says how
many there should be (the rule CPU tests check). On a device with FP8 GEMMs
(`fp8.has_fp8_gemm`) the two must agree; elsewhere there must be none (the
emulation). Also compares the FP8 step's logits and gradients with the
bfloat16 step's. --tiny shrinks the model for a CPU rehearsal. Exits 1 on
any mismatch or non-finite value.
"""

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from check_attention import flat_leaves  # Same folder: run as a script.
from check_attention import relative_error
from vit_jax import fp8
from vit_jax import models

# Relative (Frobenius) error allowed against bfloat16 without FP8: e4m3 keeps
# 3 mantissa bits (relative rounding 6%); matmuls average some of it away.
LOGITS_TOLERANCE = 0.25
GRADS_TOLERANCE = 0.5
TINY = dict(hidden_size=128, mlp_dim=256, num_heads=2, num_layers=2)


def run(tiny: bool, batch: int) -> dict:
  size = 32 if tiny else 224
  overrides = dict(TINY if tiny else {}, dtype=jnp.bfloat16)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)), jnp.float32)
  labels = jax.nn.one_hot(rng.integers(0, 10, batch), 10)
  report = {'device': jax.devices()[0].device_kind, 'batch': batch,
            'image_size': size,
            'fp8_gemm_device': fp8.device_has_fp8_gemm(jax.devices()[0])}
  results = {}
  for use_fp8 in (False, True):
    model = models.get_model('ViT-B_16', 10, fp8=use_fp8, **overrides)
    params = model.init(jax.random.key(0), images[:1])['params']
    head = params['head']
    head['kernel'] = 0.05 * jax.random.normal(jax.random.key(1),
                                              head['kernel'].shape)

    def loss(p, model=model):
      logits = model.apply({'params': p}, images, train=True)
      return -(jax.nn.log_softmax(logits) * labels).sum(-1).mean(), logits

    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (_, logits), grads = step(params)
    results[use_fp8] = (np.asarray(logits, np.float32), flat_leaves(grads))
    if use_fp8:
      report['expected_fp8_gemms'], report['all_matmuls'] = (
          fp8.count_fp8_matmuls(jax.make_jaxpr(step)(params)))
      report.update(fp8.count_compiled_fp8_gemms(
          step.lower(params).compile().as_text()))
  (logits_bf16, grads_bf16), (logits_fp8, grads_fp8) = (results[False],
                                                        results[True])
  report['logits_error'] = relative_error(logits_fp8, logits_bf16)
  report['grads_error'] = relative_error(grads_fp8, grads_bf16)
  report['finite'] = bool(np.isfinite(logits_fp8).all() and
                          np.isfinite(grads_fp8).all())
  compiled = report['cublaslt_fp8'] + report['triton_fp8']
  wanted = report['expected_fp8_gemms'] if report['fp8_gemm_device'] else 0
  report['problems'] = [p for p, bad in (
      (f'{compiled} FP8 GEMMs compiled, {wanted} expected',
       compiled != wanted),
      ('no FP8 matmuls in the traced step', report['expected_fp8_gemms'] == 0),
      (f"logits off by {report['logits_error']:.3f}",
       not report['logits_error'] < LOGITS_TOLERANCE),
      (f"gradients off by {report['grads_error']:.3f}",
       not report['grads_error'] < GRADS_TOLERANCE),
      ('non-finite values', not report['finite'])) if bad]
  return report


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', required=True, help='JSON report path.')
  parser.add_argument('--tiny', action='store_true',
                      help='Small model and images (CPU rehearsal).')
  parser.add_argument('--batch', type=int, default=None,
                      help='Default: 32 (8 with --tiny).')
  args = parser.parse_args()
  report = run(args.tiny, args.batch or (8 if args.tiny else 32))
  with open(args.out, 'w') as f:
    json.dump(report, f, indent=1)
  print(json.dumps(report, indent=1))
  if report['problems']:
    print('FAILED: ' + '; '.join(report['problems']))
    sys.exit(1)
  print('ok')


if __name__ == '__main__':
  main()
