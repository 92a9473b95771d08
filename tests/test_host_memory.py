"""host_memory: large allocations on worker threads come from the heap."""

import subprocess
import sys
import textwrap

import pytest

from vit_jax import host_memory

# Allocates 200 MB on a worker thread (as XLA:CPU does for a step's scratch
# memory) and prints whether it came from the [heap] mapping, and the reuse
# setting's result.
_PROBE = textwrap.dedent("""
    import sys, threading
    import numpy as np
    from vit_jax import host_memory
    applied = host_memory.reuse_freed_memory() if sys.argv[1] == '1' else None
    addresses = []
    def allocate():
      addresses.append(np.ones(200 * 2**20, np.uint8).ctypes.data)
    thread = threading.Thread(target=allocate)
    thread.start()
    thread.join()
    with open('/proc/self/maps') as f:
      heap = [l.split()[0] for l in f if l.rstrip().endswith('[heap]')]
    start, end = (int(x, 16) for x in heap[0].split('-'))
    print(applied, start <= addresses[0] < end)
""")


def _probe(reuse: bool) -> str:
  return subprocess.run([sys.executable, '-c', _PROBE, '1' if reuse else '0'],
                        capture_output=True, text=True, check=True,
                        timeout=120).stdout.split()


@pytest.mark.skipif(not sys.platform.startswith('linux'),
                    reason='glibc malloc and /proc/self/maps')
def test_thread_allocations_come_from_the_heap_only_when_asked():
  assert _probe(reuse=False) == ['None', 'False']  # A fresh mmap.
  assert _probe(reuse=True) == ['True', 'True']


def test_will_run_on_cpu():
  assert host_memory.will_run_on_cpu('cpu', ['cuda'])
  assert not host_memory.will_run_on_cpu('cuda,cpu', [])
  assert not host_memory.will_run_on_cpu(None, ['xla_cuda12'])
  assert host_memory.will_run_on_cpu(None, [])
  assert host_memory.will_run_on_cpu('', [])
