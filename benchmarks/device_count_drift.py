"""How far do 1 and 4 devices drift apart over training? (CPU, real data.)

  python benchmarks/device_count_drift.py --tfds_data_dir ../shared/data/tensorflow_datasets \
      --total_steps 5000 --record 1,5,10,20,50,100,200

Trains the `:cpu` scratch preset (model `testing` with the preset's
overrides, batch 32, the preset's optimizer and learning rate; the schedule of
`--total_steps`) once with 1 and once with 4 host devices
(XLA_FLAGS=--xla_force_host_platform_device_count), each in its own process,
and prints one JSON line per recorded step: the largest |difference| over
all parameters, the array it is in, and how many arrays are bit-identical.
With 4 devices the gradient is summed per device and then across devices, in
another order than on 1: the difference is float rounding, then grown by
training itself.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(args):
  from vit_jax import cli  # pylint: disable=g-import-not-at-top
  config = cli.load_config_file(
      os.path.join(_REPO, 'configs', 'cifar10_scratch.py:cpu,model=testing'))
  with config.unlocked():
    config.batch = 32
    config.total_steps = args.total_steps
    config.tfds_data_dir = args.tfds_data_dir
  return config


def _train(args, out: str):
  """One device count: parameters at each recorded step, into `out`."""
  from vit_jax import checkpoint, sharding, train  # pylint: disable=g-import-not-at-top
  record = sorted(int(s) for s in args.record.split(','))
  with tempfile.TemporaryDirectory() as workdir:
    trainer = train.Trainer(_config(args), workdir)
    saved = {}
    for step in range(record[-1]):
      images, labels = trainer.train_batch(step)
      trainer.state, _ = trainer.steps[False](trainer.state, images, labels)
      if step + 1 in record:
        params = checkpoint.flatten(sharding.to_host(trainer.state.params))
        saved.update({f'{step + 1}:{k}': v for k, v in params.items()})
  np.savez(out, **saved)


def _compare(one: str, four: str):
  a, b = np.load(one), np.load(four)
  steps = sorted({int(k.split(':')[0]) for k in a.files})
  for step in steps:
    keys = [k for k in a.files if k.startswith(f'{step}:')]
    diffs = {k.split(':', 1)[1]: float(np.abs(a[k] - b[k]).max())
             for k in keys}
    worst = max(diffs, key=diffs.get)
    print(json.dumps({'step': step, 'max_abs_diff': diffs[worst],
                      'array': worst, 'arrays': len(keys),
                      'bit_identical': sum(d == 0 for d in diffs.values())}),
          flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tfds_data_dir', default=None)
  parser.add_argument('--total_steps', type=int, default=5000,
                      help='Sets the schedule (warm-up + cosine).')
  parser.add_argument('--record', default='1,5,10,20,50,100,200',
                      help='Steps at which parameters are compared.')
  parser.add_argument('--out', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.out:  # A worker with its own device count.
    _train(args, args.out)
    return
  with tempfile.TemporaryDirectory() as tmp:
    outs = {}
    for devices in (1, 4):
      outs[devices] = os.path.join(tmp, f'd{devices}.npz')
      env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_'
                 f'count={devices}', JAX_PLATFORMS='cpu')
      subprocess.run([sys.executable, os.path.abspath(__file__),
                      *sys.argv[1:], '--out', outs[devices]], check=True,
                     env=env, cwd=_REPO)
    _compare(outs[1], outs[4])


if __name__ == '__main__':
  main()
