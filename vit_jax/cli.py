"""One flag style for every command of the package.

`python -m vit_jax.main` takes config keys as `--config.KEY=VALUE`. The other
commands (evaluate, predict, visualize, benchmark) use the same names for the
same things, and each such flag is accepted in both spellings by every
command:

  --dataset        --config.dataset          TFDS name or image folder
  --tfds_data_dir  --config.tfds_data_dir    where TFDS datasets live
  --model_name     --config.model_name       a model name, e.g. ViT-B_16
                                             (not vit_jax.main's: there the
                                             config names the model)
  --batch          --config.batch            global batch
  --pretrained_dir --config.pretrained_dir   where pretrained weights live

`--flag=value` and `--flag value` both work. A misspelt flag gets one line
naming the nearest valid flags instead of a usage dump.
"""

import argparse
import difflib
import importlib.util
import sys
from typing import Any, Mapping, NoReturn, Optional, Sequence

from absl import app
from absl import flags

# Flags that are config keys of vit_jax.main: name -> argparse settings.
SHARED_FLAGS = {
    'dataset': dict(help='TFDS name or image folder'),
    'tfds_data_dir': dict(help='where TFDS datasets live (default: '
                               '$TFDS_DATA_DIR or TFDS\'s own)'),
    'model_name': dict(help='a size-table name, e.g. ViT-B_16'),
    'batch': dict(type=int, help='global batch (all devices and hosts)'),
    'pretrained_dir': dict(help='folder (local, gs://, https://) with '
                                '<model_name>.npz'),
}


def nearest_flags(flag: str, known: Sequence[str]) -> list[str]:
  """The valid flags closest to a misspelt one (at most three)."""
  return difflib.get_close_matches(flag, known, n=3, cutoff=0.6)


class Parser(argparse.ArgumentParser):
  """argparse with exact flag names (no abbreviations) and one-line errors."""

  def __init__(self, prog: str, description: Optional[str] = None,
               **kwargs):
    super().__init__(prog=prog, description=description, allow_abbrev=False,
                     **kwargs)

  def add_shared(self, name: str, **overrides):
    """Adds one of SHARED_FLAGS as --NAME and --config.NAME."""
    settings = {**SHARED_FLAGS[name], **overrides}
    return self.add_argument(f'--{name}', f'--config.{name}', dest=name,
                             **settings)

  def add_model_source(self):
    """--workdir (a finished vit_jax.main run) or --checkpoint (a file)."""
    which = self.add_mutually_exclusive_group(required=True)
    which.add_argument('--workdir', help='a finished vit_jax.main run')
    which.add_argument('--checkpoint',
                       help='a parameter file in any layout (or a workdir)')

  def add_trained_model(self):
    """Where the model is (--workdir or --checkpoint), what it must be
    (--model_name) and its class names (--labels)."""
    self.add_model_source()
    self.add_shared('model_name', help='for a bare file: check it is this '
                    'size (e.g. ViT-B_16)')
    self.add_argument('--labels', default=None,
                      help='file with one class name per line (overrides '
                           'the names saved with the run)')

  def known_flags(self) -> list[str]:
    """Every --flag, of the sub-commands too (`hub fetch`)."""
    flags = []
    for action in self._actions:
      flags += [s for s in action.option_strings if s.startswith('--')]
      if isinstance(action, argparse._SubParsersAction):  # pylint: disable=protected-access
        for sub in action.choices.values():
          flags += sub.known_flags()
    return sorted(set(flags))

  def error(self, message: str) -> NoReturn:
    """One line: what was wrong and the nearest valid flags; exit status 2."""
    unknown = _unrecognized(message)
    if unknown:
      close = nearest_flags(unknown.split('=')[0], self.known_flags())
      hint = f' Did you mean: {", ".join(close)}?' if close else ''
      message = f'unknown flag {unknown}.{hint}'
    self.exit(2, f'Error: {message} (see {self.prog} --help)\n')


def _unrecognized(message: str) -> Optional[str]:
  """The first unknown flag named in argparse's message, if that is it."""
  prefix = 'unrecognized arguments: '
  if not message.startswith(prefix):
    return None
  flags = [a for a in message[len(prefix):].split() if a.startswith('-')]
  return flags[0] if flags else message[len(prefix):].split()[0]


MAIN_MODEL_HINT = (
    'vit_jax.main takes the model from its config: --config=configs/'
    'cifar10_finetune.py:model=ViT-L_16 (our configs), or the config of the '
    'original\'s (vit_jax/configs/vit.py:l16,cifar10).')


def as_config_overrides(argv: Sequence[str]) -> list[str]:
  """vit_jax.main's argv with the short shared names made config keys:
  `--dataset=X` or `--dataset X` becomes `--config.dataset=X`."""
  out, args = [], list(argv)
  while args:
    arg = args.pop(0)
    name, eq, value = arg[2:].partition('=')
    if arg.startswith('--') and name in ('model_name', 'config.model_name'):
      sys.exit(f'Error: --{name} is not a flag of vit_jax.main. '
               f'{MAIN_MODEL_HINT}')
    if arg.startswith('--') and name in SHARED_FLAGS:
      if not eq:
        if not args:
          sys.exit(f'Error: --{name} needs a value.')
        value = args.pop(0)
      arg = f'--config.{name}={value}'
    out.append(arg)
  return out


# ------------------------------------------------------ vit_jax.main only --


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


def _all_keys(config, prefix=''):
  for key, value in config.items():
    yield prefix + key
    if hasattr(value, 'items'):
      yield from _all_keys(value, prefix + key + '.')


def _config_overrides(argv) -> list[str]:
  return [a[len('--config.'):].split('=', 1)[0] for a in argv
          if a.startswith('--config.')]


def load_config_file(spec: str):
  """`path/to/config.py[:arg]` -> its get_config(arg), as --config reads it
  (config files are files, not an installed package)."""
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('_vit_jax_config',
                                                       path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _load_config_file(argv):
  """The config named by --config, loaded directly (for error hints only)."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      value = arg.split('=', 1)[1]
    elif arg == '--config' and i + 1 < len(argv):
      value = argv[i + 1]
  return load_config_file(value)


def parse_flags_or_explain(flag_values, argv):
  """Parses flags; an unknown --config.key exits with one clear line.

  Returns the remaining arguments, for `app.run` (which must not parse the
  flags again: config_flags would define each --config.key override twice).
  """
  try:
    return flag_values(argv)
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
