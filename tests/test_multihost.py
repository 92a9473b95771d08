"""Multi-host training through `python -m vit_jax.main`, on one machine.

Two processes with two fake CPU devices each join one JAX job over
127.0.0.1 (gloo collectives) and must train exactly what one process with
four devices trains.
"""

import os

from absl import app
import numpy as np
import pytest

from tests.conftest import free_port
from tests.conftest import wait_all
from tests.conftest import run_cli
from vit_jax import checkpoint
from vit_jax import cli


def _args(workdir, data):
  return ['--config', 'configs/cifar10_scratch.py:cpu,model=testing',
          '--workdir', workdir, f'--config.dataset={data}',
          '--config.model.patches.size=(8, 8)', '--config.pp.train=train',
          '--config.pp.test=test', '--config.batch=8',
          '--config.batch_eval=4', '--config.total_steps=3',
          '--config.warmup_steps=1', '--config.progress_every=1',
          '--config.eval_every=3', '--config.checkpoint_every=2',
          '--config.model.transformer.dropout_rate=0.1',
          # A fixed step count, evaluations and checkpoints (the preset's
          # own learning rate and optimizer).
          '--config.train_minutes=0', '--config.eval_count=0']


def _env(devices):
  return {'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
          'JAX_CPU_COLLECTIVES_IMPLEMENTATION': 'gloo'}


def _params(workdir):
  return checkpoint.flatten(checkpoint.load(os.path.join(workdir,
                                                         'model.npz')))


def test_two_processes_train_the_parameters_of_one(tmp_path, image_folder):
  shared = str(tmp_path / 'two_processes')  # One workdir for both.
  single = str(tmp_path / 'one_process')
  address = f'127.0.0.1:{free_port()}'
  processes = [
      run_cli(_args(shared, image_folder) + [
          f'--coordinator_address={address}', '--num_processes=2',
          f'--process_id={i}'], env_extra=_env(2))
      for i in range(2)]
  processes.append(run_cli(_args(single, image_folder), env_extra=_env(4)))
  first, second, alone = wait_all(processes)
  assert 'JAX process 0 of 2' in first and 'all devices: 4' in first
  assert 'Training testing from step 0' in first
  assert 'Training testing' not in second  # Process 1 logs warnings only.
  assert 'JAX process 0 of 1' in alone and 'all devices: 4' in alone
  expected, actual = _params(single), _params(shared)
  assert expected.keys() == actual.keys()
  for key in expected:
    if key.endswith('key/bias'):  # Zero gradient, exactly: never moved.
      assert actual[key].tobytes() == expected[key].tobytes(), key
    # Float rounding in the gradient's reduction order, grown by Adam:
    # 1.7e-6 after these 3 steps at lr 8e-3.
    np.testing.assert_allclose(actual[key], expected[key], atol=1e-5,
                               err_msg=key)
  with open(os.path.join(shared, 'metrics.jsonl')) as f:
    steps = [line for line in f if '"train_loss"' in line]
  assert len(steps) == 3  # Written once, by process 0.


def test_flags_name_the_coordinator_explicitly():
  assert cli.distributed_args('10.0.0.1:1234', 4, 3, {}) == {
      'coordinator_address': '10.0.0.1:1234', 'num_processes': 4,
      'process_id': 3}
  with pytest.raises(app.UsageError, match='also pass --num_processes'):
    cli.distributed_args('10.0.0.1:1234', None, 0, {})
  with pytest.raises(app.UsageError, match='must be in'):
    cli.distributed_args('10.0.0.1:1234', 2, 2, {})


@pytest.mark.parametrize('environ, expected', [
    ({}, None),
    ({'SLURM_JOB_ID': '7', 'SLURM_STEP_NODELIST': 'n[1-2]',
      'SLURM_NTASKS': '2'}, {}),
    ({'SLURM_JOB_ID': '7', 'SLURM_STEP_NODELIST': 'n1',
      'SLURM_NTASKS': '1'}, None),
    ({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '4'}, None),  # salloc, no srun.
    ({'TPU_WORKER_HOSTNAMES': 'w0,w1,w2,w3'}, {}),
    ({'TPU_WORKER_HOSTNAMES': 'localhost'}, None),
])
def test_clusters_are_detected_from_the_environment(environ, expected):
  assert cli.distributed_args(None, None, None, environ) == expected
