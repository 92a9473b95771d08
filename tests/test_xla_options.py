"""Tests for vit_jax.xla_options: which compile options each backend gets,
and that the CPU ones reach the compiled steps."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import hlo_computations
from vit_jax import inference
from vit_jax import models
from vit_jax import xla_options


def test_accelerators_get_xlas_defaults():
  for backend in ('gpu', 'tpu', 'cuda', 'rocm'):
    assert xla_options.for_backend(backend) == {}, backend


def test_cpu_gets_its_options_on_this_jaxlib():
  # Fails if a jaxlib upgrade renames the option: re-measure and update.
  assert xla_options.for_backend('cpu') == xla_options.CPU_OPTIONS


def test_an_option_xla_does_not_know_is_dropped():
  assert not xla_options.accepted('xla_cpu_no_such_option', 'true')
  assert not xla_options.accepted('xla_cpu_experimental_ynn_fusion_type',
                                  'NOT_A_FUSION_TYPE')


def _dots_in_ynn_fusions(hlo: str) -> int:
  """Dots inside the computations that YNNPACK fusions call."""
  called = set(re.findall(r'kind=kCustom, calls=%?([\w.\-]+)[^\n]*__ynn_fusion',
                          hlo))
  return sum(len(re.findall(r' dot\(', body))
             for name, body in hlo_computations(hlo).items() if name in called)


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='XLA:CPU options')
def test_eval_step_matmuls_leave_ynnpack_and_results_agree():
  model = models.get_model('testing', num_classes=10)
  params = inference.init_params(model, 32, seed=0)
  images = jnp.asarray(np.random.default_rng(0).integers(
      0, 256, (8, 32, 32, 3)), jnp.uint8)
  labels = jnp.arange(8) % 10
  step = inference.make_eval_step(model, crop=32)
  ours = step.lower(params, images, labels).compile()
  default = jax.jit(step.__wrapped__).lower(params, images, labels).compile()
  assert _dots_in_ynn_fusions(default.as_text()) > 0  # The check can fail.
  assert _dots_in_ynn_fusions(ours.as_text()) == 0
  (pred_a, loss_a), (pred_b, loss_b) = (ours(params, images, labels),
                                        default(params, images, labels))
  np.testing.assert_array_equal(pred_a, pred_b)
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
