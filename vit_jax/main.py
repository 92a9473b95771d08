"""Command line: python -m vit_jax.main --config configs/X.py[:arg] --workdir DIR.

The original repository's configs run the same way:
--config=vit_jax/configs/vit.py:b16,cifar10 (also augreg.py, mixer_*.py).
Config keys are set with --config.KEY=VALUE; the keys the other commands
share (dataset, tfds_data_dir, batch) may also be written --KEY=VALUE, as
those commands take them (cli.py).

Multi-host: run the same command on every host with the same --workdir (a
shared file system or gs://). Processes join one JAX job through
`jax.distributed.initialize`: from --coordinator_address, --num_processes and
--process_id when given, else detected from the environment of a SLURM job
with several tasks or of a TPU slice that names its workers
(TPU_WORKER_HOSTNAMES, MEGASCALE_COORDINATOR_ADDRESS). On Cloud TPU VM pod
slices libtpu connects the hosts by itself. Only process 0 logs at INFO.

SIGTERM (preemption) or Ctrl-C during training: the step in progress
finishes, its checkpoint is saved, the workdir is released and one line says
so; the exit status is 75 (EX_TEMPFAIL: rerun the same command to resume). A
second signal during that save aborts it at once (the previous checkpoint
stays). Ctrl-C before training starts exits with 130 (preemption.py).

The console shows the project's own lines: a progress bar on a terminal
(progress.py), and the libraries' warnings and errors; --verbose adds the
libraries' INFO lines and the config.
"""

import functools
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
from vit_jax import cli
from vit_jax import host_memory
from vit_jax import preemption
from vit_jax import progress
from vit_jax import workdir_lock

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, e.g. configs/cifar10_scratch.py:cpu.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Run folder: checkpoints, metrics, model.npz. Reusing it '
    'resumes the run.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'Multi-host: host:port of process 0, e.g. '
    '10.0.0.1:1234 (not needed under SLURM or on Cloud TPU pods).')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Multi-host: number of processes in the job.')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'Multi-host: this process\'s index, 0 .. '
    'num_processes - 1.')
_VERBOSE = flags.DEFINE_bool(
    'verbose', False, 'Also show the INFO lines of the libraries (orbax, '
    'TensorFlow, JAX/XLA) and the config; by default they show '
    'warnings and errors only.')
flags.mark_flags_as_required(['config', 'workdir'])

def _initialize_distributed():
  """Joins the multi-process job, if this is one; before any JAX work."""
  kwargs = cli.distributed_args(_COORDINATOR.value, _NUM_PROCESSES.value,
                            _PROCESS_ID.value, os.environ)
  if kwargs is not None:
    jax.distributed.initialize(**kwargs)
    if jax.process_index() != 0:  # One process speaks for the job.
      logging.set_verbosity(logging.WARNING)


def _keep_tensorflow_off_accelerators():
  """tf.data runs on the CPU; the accelerators belong to JAX."""
  if 'tensorflow' in sys.modules:
    sys.modules['tensorflow'].config.set_visible_devices([], 'GPU')


def main(argv, started: float):
  """`started`: time.monotonic() at the command's start (train_minutes)."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  progress.quiet_libraries(_VERBOSE.value)
  reuse_memory = host_memory.reuse_freed_memory_on_cpu(
      _CONFIG.value.reuse_host_memory)
  _initialize_distributed()
  _keep_tensorflow_off_accelerators()
  from vit_jax import train  # pylint: disable=g-import-not-at-top
  logging.info('JAX process %d of %d; local devices: %s; all devices: %d; '
               'host memory reused between steps: %s; GLIBC_TUNABLES: %r',
               jax.process_index(), jax.process_count(), jax.local_devices(),
               jax.device_count(), reuse_memory,
               os.environ.get('GLIBC_TUNABLES', ''))
  # The whole config: workdir/config.json and, with --verbose, here.
  if _VERBOSE.value:
    logging.info('Config:\n%s', _CONFIG.value)
  if _CONFIG.value.trainer != 'train':
    raise app.UsageError(
        f'config.trainer={_CONFIG.value.trainer!r}: vit_jax.main trains '
        "('train'); for the original's 'inference_time' use python -m "
        'vit_jax.benchmark --mode infer.')
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, started)
  except _explained_errors() as e:
    sys.exit(f'Error: {e}')  # The message says what to do; no traceback.
  except preemption.Preempted as e:
    print(e, file=sys.stderr, flush=True)
    sys.exit(preemption.EXIT_STATUS)
  except KeyboardInterrupt:  # Before training started: nothing to save.
    print('Interrupted before training started; nothing new to save.',
          file=sys.stderr, flush=True)
    sys.exit(preemption.INTERRUPTED_STATUS)


def _explained_errors() -> tuple[type[Exception], ...]:
  """Errors whose message names the cause and the way out: one line each."""
  from vit_jax import budget, checkpoint, hub, input_pipeline, recovery, train  # pylint: disable=g-import-not-at-top
  from vit_jax.configs import common  # pylint: disable=g-import-not-at-top
  return (input_pipeline.DataError, workdir_lock.WorkdirBusyError,
          budget.NoTimeToTrainError, recovery.NoRestorableCheckpointError,
          recovery.CheckpointSaveError, train.NonFiniteLossError,
          hub.FetchError, checkpoint.CheckpointError, common.ConfigError)


def run():
  # On CPU: once more, with huge pages for malloc (host_memory.py).
  host_memory.rerun_with_huge_pages(host_memory.this_process_runs_on_cpu())
  started = time.monotonic()
  # config_flags finds the --config.key overrides in sys.argv itself.
  sys.argv = cli.as_config_overrides(sys.argv)
  remaining = cli.parse_flags_or_explain(flags.FLAGS, sys.argv)
  app.run(functools.partial(main, started=started),
          flags_parser=lambda _: remaining)


if __name__ == '__main__':
  run()
