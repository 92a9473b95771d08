"""What a run shows while it trains: a live bar on a terminal, lines in a log.

On a terminal (stderr is a TTY) a tqdm bar updates in place with step/total,
images/s, the current loss, the last test accuracy and an ETA; evaluations
get a bar of their own. Written to a file, the same facts come as one line
every `progress_every` steps, as a log should read. The rate and the ETA
start after the first (compiling) step and leave evaluations out of img/s.
Only process 0 shows anything.
"""

import contextlib
import logging as std_logging
import math
import os
import shutil
import sys
import time
from typing import Callable, Iterator, Optional, TextIO

from absl import logging
import tqdm

_REFRESH_SECONDS = 0.5  # The bar reads the loss (a device sync) this often.


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{seconds:02d}s'


class Clock:
  """Training time and rate, from the end of the first (compiling) step,
  with evaluations left out of the rate but kept in the ETA."""

  def __init__(self, start_step: int, total_steps: int, batch: int):
    self.total = total_steps
    self.batch = batch
    self.start_step = start_step
    self._started = None
    self._paused = 0.0  # Seconds spent evaluating since _started.

  def start(self, step: int):
    self.start_step, self._started = step, time.monotonic()

  @contextlib.contextmanager
  def paused(self):
    begin = time.monotonic()
    try:
      yield
    finally:
      if self._started is not None:
        self._paused += time.monotonic() - begin

  def images_per_second(self, step: int) -> Optional[float]:
    if self._started is None or step <= self.start_step:
      return None
    training = time.monotonic() - self._started - self._paused
    return (step - self.start_step) * self.batch / max(training, 1e-9)

  def eta(self, step: int) -> Optional[float]:
    if self._started is None or step <= self.start_step:
      return None
    per_step = (time.monotonic() - self._started) / (step - self.start_step)
    return per_step * (self.total - step)


def describe(step: int, clock: Clock, loss: Optional[float],
             accuracy: Optional[float]) -> str:
  """'step 200/400 | 143 img/s | loss 1.52 | test acc 41.2% | ETA 1m10s'."""
  parts = [f'step {step}/{clock.total}']
  rate, eta = clock.images_per_second(step), clock.eta(step)
  if rate is not None:
    parts.append(f'{rate:.4g} img/s')
  if loss is not None:
    parts.append(f'loss {loss:.4g}')
  if accuracy is not None:
    parts.append(f'test acc {100 * accuracy:.1f}%')
  if eta is not None:
    parts.append(f'ETA {format_duration(eta)}')
  return ' | '.join(parts)


class Reporter:
  """The run's progress: a bar on a terminal, periodic lines otherwise.

  `interactive` None: decided by whether `stream` is a terminal. A silent
  Reporter (`enabled=False`, processes other than 0) shows nothing.
  """

  def __init__(self, clock: Clock, every: int, enabled: bool = True,
               interactive: Optional[bool] = None,
               stream: Optional[TextIO] = None):
    self.clock = clock
    self._every = every
    self._enabled = enabled
    self._stream = stream or sys.stderr
    if interactive is None:
      interactive = _is_terminal(self._stream)
    self._bar = None
    if enabled and interactive:
      self._bar = tqdm.tqdm(
          total=clock.total, initial=clock.start_step, file=self._stream,
          **_shape(),
          bar_format='{desc} {percentage:3.0f}%|{bar}|',
          desc=f'step {clock.start_step}/{clock.total} | compiling')
    self._loss = None
    self._accuracy = None
    self._refreshed = 0.0

  @property
  def live(self) -> bool:
    return self._bar is not None

  def wants_loss(self) -> bool:
    """True when a live bar is due a refresh (it then reads the loss)."""
    return self.live and time.monotonic() - self._refreshed > _REFRESH_SECONDS

  def step(self, step: int, loss: Optional[float] = None):
    """After each step; `loss`: the step's loss when known (else the last)."""
    if loss is not None:
      self._loss = loss
    if self.live:
      self._bar.n = step
      if loss is not None or step == self.clock.total:
        self._refreshed = time.monotonic()
        self._bar.set_description_str(self._text(step), refresh=False)
        self._bar.refresh()
    elif self._enabled and (step % self._every == 0 or
                            step == self.clock.total):
      logging.info('%s', self._text(step))

  def evaluated(self, step: int, accuracy: float, loss: float):
    self._accuracy = accuracy
    text = (f'step {step}/{self.clock.total} | test acc {100 * accuracy:.2f}%'
            f' | test loss {loss:.4g}')
    if self.live:
      self._bar.write(text, file=self._stream)
      self._bar.set_description_str(self._text(step))
    elif self._enabled:
      logging.info('%s', text)

  @contextlib.contextmanager
  def evaluating(self, num_batches: int) -> Iterator[Callable[[], None]]:
    """Yields a per-batch tick; a bar of its own on a terminal."""
    with self.clock.paused():
      if not self.live:
        yield lambda: None
        return
      with tqdm.tqdm(total=num_batches, file=self._stream, leave=False,
                     desc='eval', **_shape()) as bar:
        yield bar.update

  def close(self):
    if self._bar is not None:
      self._bar.close()
      self._bar = None

  def _text(self, step: int) -> str:
    return describe(step, self.clock, self._loss, self._accuracy)


def _shape() -> dict[str, int]:
  """The terminal's size for tqdm; 80x24 where it reports none (a bare
  pty), in which tqdm would otherwise hide its bar."""
  columns, lines = shutil.get_terminal_size()
  return {'ncols': columns, 'nrows': lines}


def _is_terminal(stream: TextIO) -> bool:
  try:
    return stream.isatty()
  except (AttributeError, ValueError):  # No isatty, or a closed stream.
    return False


def run_line(model_name: str, num_params: int, dataset: str,
             num_train: int, num_test: int, start: int, total: int,
             devices: int, processes: int) -> str:
  """The one-line description of a run, in place of the config dump."""
  return (f'Training {model_name} from step {start} to {total}: '
          f'{num_params / 1e6:.3g}M parameters, {dataset} ({num_train:,} '
          f'train / {num_test:,} test images), {devices} device(s), '
          f'{processes} process(es).')


def summary_table(summary: dict[str, float], workdir: str,
                  outputs: list[str]) -> str:
  """The end of a run at a glance: accuracy, time, speed, where things are."""
  rows = [('steps', f'{summary["steps"]}')]
  if 'accuracy_test' in summary:
    rows.append(('test accuracy', f'final {100 * summary["accuracy_test"]:.2f}%'
                 f'   best {100 * summary["best_accuracy_test"]:.2f}% (step '
                 f'{summary["best_step"]})'))
  if 'train_loss' in summary:
    rows.append(('train loss', f'final {summary["train_loss"]:.4g}'))
  rows.append(('time', f'training {format_duration(summary["seconds"])}, '
                       f'whole command {format_duration(summary["wall_seconds"])}'))
  if summary.get('img_sec'):
    rows.append(('speed', f'{summary["img_sec"]:.4g} img/s (training steps)'))
  rows.append(('outputs', os.path.abspath(workdir) + os.sep))
  rows.append(('', ', '.join(outputs)))
  width = max(len(name) for name, _ in rows)
  return '\n'.join(['Done.'] + [f'  {name:<{width}}  {value}'
                                for name, value in rows])


def eval_batches(num_examples: int, batch: int) -> int:
  return math.ceil(num_examples / batch)


# ------------------------------------------------ what the console shows --


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep  # vit_jax/


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
