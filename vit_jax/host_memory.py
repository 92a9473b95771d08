"""Lets XLA:CPU reuse host memory between steps instead of faulting it in.

XLA:CPU allocates each step's scratch memory (the activations kept for the
backward pass: 162 MB for the `:cpu` scratch preset, 1.2 GB for ViT-Ti/16
training at batch 32) with malloc on the thread that runs the step. glibc
serves requests that large with a fresh mmap() and returns them with
munmap(), so every step the kernel faults in and zeroes the same amount of
memory again: a quarter of all CPU time on the `:cpu` preset (measured with
`perf`).

`reuse_freed_memory` stops that: JAX runs CPU computations on the calling
(main) thread instead of a dispatch thread (`jax_cpu_enable_async_dispatch`
off), and malloc neither maps large blocks nor trims its heap, so the main
thread's heap keeps the pages of one step for the next. It has to be the
main thread: a worker thread's arena maps large blocks afresh even with
mmap off. Worker threads keep their own arenas (capping glibc at one arena,
this module's earlier approach, made XLA's worker threads queue for malloc's
lock). `:cpu` preset: 1.35-1.55x the steps per second of the one-arena one,
bit-identical results (BENCHMARKS.md). The process keeps its peak heap until
it exits, which suits a training run; Python no longer runs ahead of the
computation, which costs little when steps take milliseconds or more.

Only for runs on the CPU: an accelerator's memory is not malloc's, and
there the dispatch thread lets Python run ahead.

Huge pages cut what is left of that cost, and help where the memory is not
reused: with glibc's `glibc.malloc.hugetlb=1` tunable, malloc asks the kernel
for transparent huge pages (2 MB) for its large blocks, so scratch memory is
faulted in 2 MB at a time instead of 4 kB at a time, and the TLB covers it.
ViT-Ti/16 training: 0.88-0.94x -> 1.11-1.13x timm's speed on 2 cores
(BENCHMARKS.md). The tunable is read when the process starts, so the command
lines run themselves again with it set (`rerun_with_huge_pages`);
`GLIBC_TUNABLES=glibc.malloc.hugetlb=0` opts out.
"""

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os
import sys
from typing import Mapping, Optional

import jax

# mallopt() parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_SETTINGS = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))

_HUGE_PAGES_TUNABLE = 'glibc.malloc.hugetlb'
_FIRST_GLIBC_WITH_IT = (2, 35)
_THP_SETTING = '/sys/kernel/mm/transparent_hugepage/enabled'


def accelerator_plugins() -> list[str]:
  """JAX plugins (GPU, TPU, ...) installed here, found without starting JAX."""
  found = [ep.name for ep in importlib.metadata.entry_points(
      group='jax_plugins')]
  for module in ('jax_plugins', 'libtpu'):
    if importlib.util.find_spec(module) is not None:
      found.append(module)
  return found


def will_run_on_cpu(platforms: Optional[str], plugins: list[str]) -> bool:
  """Whether JAX's default backend will be the CPU, known before JAX starts.

  Args:
    platforms: jax.config.jax_platforms (JAX_PLATFORMS), e.g. 'cuda,cpu'.
    plugins: accelerator_plugins().
  """
  if platforms:
    return platforms.split(',')[0] == 'cpu'
  return not plugins


def this_process_runs_on_cpu() -> bool:
  """`will_run_on_cpu` for this process: JAX's platforms setting and the
  plugins installed here. Reads config only; JAX's backend stays unstarted."""
  return will_run_on_cpu(jax.config.jax_platforms, accelerator_plugins())


def reuse_freed_memory() -> bool:
  """Runs CPU steps on the main thread, its heap reused (see above); False
  where the C library is not glibc (then nothing is changed).

  Must run before JAX starts its backend, which reads the dispatch setting
  once.
  """
  try:
    mallopt = ctypes.CDLL(ctypes.util.find_library('c')).mallopt
  except (OSError, AttributeError, TypeError):
    return False
  if not all(mallopt(param, value) == 1 for param, value in _SETTINGS):
    return False
  jax.config.update('jax_cpu_enable_async_dispatch', False)
  return True


def reuse_freed_memory_on_cpu(wanted: bool) -> bool:
  """`reuse_freed_memory` where `wanted` (the `reuse_host_memory` setting)
  and this process runs on the CPU; whether it now applies. For command
  lines, before JAX starts its backend."""
  return wanted and this_process_runs_on_cpu() and reuse_freed_memory()


def huge_pages_environ(environ: Mapping[str, str], *, on_cpu: bool,
                       glibc: str, thp_mode: str) -> Optional[dict[str, str]]:
  """The environment to run this process again in so that malloc asks for
  transparent huge pages; None where that would change nothing.

  Args:
    environ: the current environment (os.environ).
    on_cpu: will_run_on_cpu(...); accelerators keep their data elsewhere.
    glibc: os.confstr('CS_GNU_LIBC_VERSION'), e.g. 'glibc 2.36'; '' when
      the C library is not glibc.
    thp_mode: the kernel's transparent huge page mode, the bracketed word of
      /sys/kernel/mm/transparent_hugepage/enabled. Under 'always' the kernel
      already gives large mappings huge pages; under 'never' it gives none.
  """
  tunables = environ.get('GLIBC_TUNABLES', '')
  if (not on_cpu or thp_mode != 'madvise' or not _glibc_at_least(glibc)
      or _HUGE_PAGES_TUNABLE in tunables):  # Set already: set by the user.
    return None
  setting = f'{_HUGE_PAGES_TUNABLE}=1'
  return {**environ,
          'GLIBC_TUNABLES': f'{tunables}:{setting}' if tunables else setting}


def _glibc_at_least(glibc: str) -> bool:
  name, _, version = glibc.partition(' ')
  try:
    numbers = tuple(int(part) for part in version.split('.')[:2])
  except ValueError:
    return False
  return name == 'glibc' and numbers >= _FIRST_GLIBC_WITH_IT


def _thp_mode() -> str:
  try:
    with open(_THP_SETTING) as f:
      setting = f.read()
  except OSError:
    return ''
  start, end = setting.find('['), setting.find(']')
  return setting[start + 1:end] if 0 <= start < end else ''


def _glibc_version() -> str:
  try:
    return os.confstr('CS_GNU_LIBC_VERSION') or ''
  except (ValueError, OSError, AttributeError):
    return ''


def rerun_with_huge_pages(on_cpu: bool) -> None:
  """Replaces this process (same pid, same command line) by one that starts
  with the huge-page tunable, where `huge_pages_environ` says it helps;
  returns otherwise. For command lines, before they start work."""
  environ = huge_pages_environ(os.environ, on_cpu=on_cpu,
                               glibc=_glibc_version(), thp_mode=_thp_mode())
  if environ is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, environ)
