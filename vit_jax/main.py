"""Command line: python -m vit_jax.main --config configs/X.py[:arg] --workdir DIR.

Config keys are set with --config.KEY=VALUE; the keys the other commands
share (dataset, tfds_data_dir, model_name, batch) may also be written
--KEY=VALUE, as those commands take them (cli.py).

Multi-host: run the same command on every host with the same --workdir (a
shared file system or gs://). Processes join one JAX job through
`jax.distributed.initialize`: from --coordinator_address, --num_processes and
--process_id when given, else detected from the environment of a SLURM job
with several tasks or of a TPU slice that names its workers
(TPU_WORKER_HOSTNAMES, MEGASCALE_COORDINATOR_ADDRESS). On Cloud TPU VM pod
slices libtpu connects the hosts by itself. Only process 0 logs at INFO.

The console shows the project's own lines: a progress bar on a terminal
(progress.py), and the libraries' warnings and errors; --verbose adds the
libraries' INFO lines and the config.
"""

import difflib
import logging as std_logging
import functools
import importlib.util
import os
import sys
import time
from typing import Any, Mapping, Optional

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
from vit_jax import cli
from vit_jax import host_memory
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

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class OwnInfoOnly(std_logging.Filter):
  """Passes warnings and errors from anywhere, INFO and below from vit_jax
  only: orbax, JAX and TensorFlow log through the same (absl) handler."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return (record.levelno >= std_logging.WARNING or
            os.path.abspath(record.pathname).startswith(_PACKAGE_DIR))


def quiet_libraries(verbose: bool):
  """Libraries' start-up and per-checkpoint chatter off the console, unless
  --verbose. Before TensorFlow is imported: its C++ logging (and XLA's)
  reads TF_CPP_MIN_LOG_LEVEL once (1: warnings and errors)."""
  if verbose:
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  logging.get_absl_handler().addFilter(OwnInfoOnly())


def distributed_args(coordinator_address: Optional[str],
                     num_processes: Optional[int], process_id: Optional[int],
                     environ: Mapping[str, str]) -> Optional[dict[str, Any]]:
  """Arguments for jax.distributed.initialize, or None for a single process.

  Explicit flags win; otherwise a SLURM job step with several tasks or a
  multi-host Cloud TPU slice is left to JAX's own cluster detection ({}).
  """
  explicit = {'coordinator_address': coordinator_address,
              'num_processes': num_processes, 'process_id': process_id}
  given = {k: v for k, v in explicit.items() if v is not None}
  if given:
    missing = sorted(set(explicit) - set(given))
    if missing:
      raise app.UsageError(
          'Multi-host flags go together: also pass '
          + ', '.join(f'--{m}' for m in missing) + '.')
    if not 0 <= process_id < num_processes:
      raise app.UsageError(f'--process_id={process_id} must be in [0, '
                           f'{num_processes}).')
    return given
  slurm_tasks = environ.get('SLURM_NTASKS') or environ.get('SLURM_NPROCS')
  if ('SLURM_JOB_ID' in environ and 'SLURM_STEP_NODELIST' in environ
      and slurm_tasks and int(slurm_tasks) > 1):
    return {}
  tpu_hosts = environ.get('TPU_WORKER_HOSTNAMES', '')
  if ',' in tpu_hosts or environ.get('MEGASCALE_COORDINATOR_ADDRESS'):
    return {}
  return None


def _initialize_distributed():
  """Joins the multi-process job, if this is one; before any JAX work."""
  kwargs = distributed_args(_COORDINATOR.value, _NUM_PROCESSES.value,
                            _PROCESS_ID.value, os.environ)
  if kwargs is not None:
    jax.distributed.initialize(**kwargs)
    if jax.process_index() != 0:  # One process speaks for the job.
      logging.set_verbosity(logging.WARNING)


def _all_keys(config, prefix=''):
  for key, value in config.items():
    yield prefix + key
    if hasattr(value, 'items'):
      yield from _all_keys(value, prefix + key + '.')


def _keep_tensorflow_off_accelerators():
  """tf.data runs on the CPU; the accelerators belong to JAX."""
  if 'tensorflow' in sys.modules:
    sys.modules['tensorflow'].config.set_visible_devices([], 'GPU')


def main(argv, started: float):
  """`started`: time.monotonic() at the command's start (train_minutes)."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  quiet_libraries(_VERBOSE.value)
  reuse_memory = (_CONFIG.value.reuse_host_memory and
                  host_memory.will_run_on_cpu(
                      jax.config.jax_platforms,
                      host_memory.accelerator_plugins()) and
                  host_memory.reuse_freed_memory())
  _initialize_distributed()
  _keep_tensorflow_off_accelerators()
  from vit_jax import train  # pylint: disable=g-import-not-at-top
  logging.info('JAX process %d of %d; local devices: %s; all devices: %d; '
               'host memory reused between steps: %s', jax.process_index(),
               jax.process_count(), jax.local_devices(), jax.device_count(),
               reuse_memory)
  # The whole config: workdir/config.json and, with --verbose, here.
  if _VERBOSE.value:
    logging.info('Config:\n%s', _CONFIG.value)
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, started)
  except _explained_errors() as e:
    sys.exit(f'Error: {e}')  # The message says what to do; no traceback.


def _explained_errors() -> tuple[type[Exception], ...]:
  """Errors whose message names the cause and the way out: one line each."""
  from vit_jax import budget, input_pipeline, recovery, train  # pylint: disable=g-import-not-at-top
  return (input_pipeline.DataError, workdir_lock.WorkdirBusyError,
          budget.NoTimeToTrainError, recovery.NoRestorableCheckpointError,
          recovery.CheckpointSaveError, train.NonFiniteLossError)


def _config_overrides(argv) -> list[str]:
  return [a[len('--config.'):].split('=', 1)[0] for a in argv
          if a.startswith('--config.')]


def _load_config_file(argv):
  """The config named by --config, loaded directly (for error hints only)."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      value = arg.split('=', 1)[1]
    elif arg == '--config' and i + 1 < len(argv):
      value = argv[i + 1]
  path, _, arg = value.partition(':')
  spec = importlib.util.spec_from_file_location('_config_for_hint', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _parse_flags_or_explain(argv):
  """Parses flags; an unknown --config.key exits with one clear line.

  Returns the remaining arguments, for `app.run` (which must not parse the
  flags again: config_flags would define each --config.key override twice).
  """
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError) as e:
    unknown = [k for k in _config_overrides(argv) if repr(k.split('.')[-1])
               in str(e)]
    if not unknown:
      sys.exit(f'Error: {e}')
    keys = list(_all_keys(_load_config_file(argv)))
    close = difflib.get_close_matches(unknown[0], keys, n=3, cutoff=0.5)
    hint = f' Did you mean: {", ".join(close)}?' if close else ''
    sys.exit(f'Error: unknown config key {unknown[0]!r} (the config is '
             f'locked).{hint}')


def run():
  started = time.monotonic()
  # config_flags finds the --config.key overrides in sys.argv itself.
  sys.argv = cli.as_config_overrides(sys.argv)
  remaining = _parse_flags_or_explain(sys.argv)
  app.run(functools.partial(main, started=started),
          flags_parser=lambda _: remaining)


if __name__ == '__main__':
  run()
