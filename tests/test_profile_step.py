"""The profile script's op classes and its side-by-side table.

The GPU benchmark's profile compares our step with timm's class by class
(`benchmarks/profile_step.py --compare timm`); a kernel put in the wrong
class there would misplace milliseconds in the one table that says where
the step's time goes. The names below are the kernels and ops each side
emits: cuBLAS/CUTLASS/cuDNN/Triton kernels on a GPU, XLA's HLO instructions
and PyTorch's aten ops on a CPU.
"""

import collections
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.conftest import load_benchmark_script


PROFILE = load_benchmark_script('profile_step')

_NORMS = 'norms and reductions (layernorm, softmax, loss)'

_NAMES = {
    # GPU kernels.
    'sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64': 'matmul',
    'void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm>':
        'matmul',
    'cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16': 'attention',
    'void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel':
        'attention',
    'triton_per_fused_native_layer_norm_0': _NORMS,
    'triton_tem_fused_mm_3': 'matmul',
    'triton_poi_fused_add_mul_tanh_5': 'elementwise (fusions, optimizer)',
    'void at::native::vectorized_elementwise_kernel<4, GeluCUDAKernel>':
        'elementwise (fusions, optimizer)',
    'void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor>':
        'elementwise (fusions, optimizer)',
    'loop_multiply_fusion_3': 'elementwise (fusions, optimizer)',
    'input_reduce_fusion_1': _NORMS,
    'loop_convert_fusion_2': 'elementwise (fusions, optimizer)',
    'nvjet_tst_192x192_64x4_2x1_v_bz_TNN': 'matmul',
    'triton_red_fused__log_softmax_nll_loss_forward_1': _NORMS,
    'transpose_copy_fusion_7': 'copy/transpose',
    # XLA:CPU instructions.
    'dot_general.370': 'matmul',
    'ynn_fusion.261': 'ynnpack fusion (dots with their elementwise ops)',
    'convolution.1': 'matmul',
    'reduce-window.2': _NORMS,
    # PyTorch CPU ops.
    'aten::addmm': 'matmul',
    'aten::mm': 'matmul',
    'aten::bmm': 'matmul',
    'aten::_scaled_dot_product_flash_attention_for_cpu_backward': 'attention',
    'aten::native_layer_norm_backward': _NORMS,
    'aten::copy_': 'copy/transpose',
    'aten::sum': _NORMS,
    'aten::_log_softmax': _NORMS,
    'aten::add_': 'elementwise (fusions, optimizer)',
    'aten::lerp_': 'elementwise (fusions, optimizer)',
    'aten::gelu_backward': 'elementwise (fusions, optimizer)',
    'aten::empty_strided': 'other',
}


@pytest.mark.parametrize('name', sorted(_NAMES))
def test_each_kernel_lands_in_its_class(name):
  assert PROFILE.op_class(name) == _NAMES[name]


def test_side_by_side_gives_each_class_per_step_and_the_totals():
  ours = collections.Counter({'dot_general.1': 3000.0, 'ynn_fusion.2': 600.0,
                              'transpose_copy_fusion.3': 300.0})
  timm = collections.Counter({'aten::addmm': 2000.0, 'aten::mm': 1000.0,
                              'aten::copy_': 600.0})
  lines = PROFILE.side_by_side(ours, timm, steps=3).splitlines()
  rows = {line[:48].strip(): line[48:].split() for line in lines[1:]}
  assert rows['matmul'] == ['1.00', '1.00', '1.00']
  assert rows['copy/transpose'] == ['0.10', '0.20', '0.50']
  assert rows['ynnpack fusion (dots with their elementwise ops)'] == [
      '0.20', '0.00', '-']
  assert rows['all'] == ['1.30', '1.20', '1.08']
  assert list(rows)[-1] == 'all' and len(rows) == 4


# Runs in a process of its own: the profiler's start-up (Kineto) reaches
# process-wide state, and once, in CI, the pytest-xdist worker running this
# test in-process lost its link to the controller and was shut down.
_CPU_SELF_TIMES = """
import json, sys
from torch import profiler
import torch
from tests.conftest import load_benchmark_script
x = torch.ones((64, 64))
with profiler.profile(activities=[profiler.ProfilerActivity.CPU]) as prof:
  torch.nn.functional.linear(x, x)  # aten::linear -> aten::addmm / mm.
times = load_benchmark_script('profile_step').torch_op_times(
    prof, on_device=False, trace_path='')
wall = sum(e.cpu_time_total for e in prof.key_averages()
           if e.key == 'aten::linear')
json.dump({'times': times, 'wall': wall}, sys.stdout)
"""


def test_torch_self_times_on_cpu_count_each_op_once():
  pytest.importorskip('torch')
  done = subprocess.run([sys.executable, '-c', _CPU_SELF_TIMES], cwd=REPO,
                        stdin=subprocess.DEVNULL, capture_output=True,
                        text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout)
  times, wall = result['times'], result['wall']
  assert 'aten::linear' in times
  assert any(name in times for name in ('aten::addmm', 'aten::mm'))
  # Self times: the nested matmul is not counted again inside linear.
  assert sum(times.values()) <= wall * 1.0001 + 1


class _FakeGpuProfile:
  """What PyTorch's Chrome trace of a GPU step holds: host-side op and
  runtime events beside the device's kernels, copies and fills."""

  def export_chrome_trace(self, path):
    events = [
        {'ph': 'X', 'cat': 'cpu_op', 'name': 'aten::mm', 'dur': 40},
        {'ph': 'X', 'cat': 'cuda_runtime', 'name': 'cudaLaunchKernel',
         'dur': 7},
        {'ph': 'X', 'cat': 'kernel', 'name': 'sm90_xmma_gemm_bf16', 'dur': 30},
        {'ph': 'X', 'cat': 'kernel', 'name': 'sm90_xmma_gemm_bf16', 'dur': 20},
        {'ph': 'X', 'cat': 'gpu_memcpy', 'name': 'Memcpy HtoD', 'dur': 3},
        {'ph': 'X', 'cat': 'gpu_memset', 'name': 'Memset (Device)', 'dur': 1},
    ]
    with open(path, 'w') as f:
      json.dump({'traceEvents': events}, f)


def test_torch_times_on_a_gpu_are_the_device_events_only(tmp_path):
  times = PROFILE.torch_op_times(_FakeGpuProfile(), on_device=True,
                                 trace_path=str(tmp_path / 'trace.json'))
  assert times == {'sm90_xmma_gemm_bf16': 50, 'Memcpy HtoD': 3,
                   'Memset (Device)': 1}
