"""vit_jax.ipynb runs top to bottom, headless, with its small CPU settings."""

import os

import pytest

from tests.conftest import REPO

nbclient = pytest.importorskip('nbclient')
nbformat = pytest.importorskip('nbformat')

NOTEBOOK = os.path.join(REPO, 'vit_jax.ipynb')


def test_notebook_is_stored_without_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  for cell in notebook.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None


@pytest.mark.skipif(not os.environ.get('VIT_JAX_CIFAR10_DIR'),
                    reason='VIT_JAX_CIFAR10_DIR (a TFDS data dir holding '
                           'cifar10/) is not set')
def test_notebook_runs_headless_on_cifar10(tmp_path, monkeypatch):
  # The kernel inherits this environment: small settings, the shared data.
  monkeypatch.setenv('TFDS_DATA_DIR', os.environ['VIT_JAX_CIFAR10_DIR'])
  monkeypatch.setenv('VIT_JAX_WORKDIR', str(tmp_path / 'run'))
  monkeypatch.setenv('VIT_JAX_NOTEBOOK_SMALL', '1')
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(notebook, timeout=300, kernel_name='python3',
                          resources={'metadata': {'path': REPO}}).execute()
  nbformat.write(notebook, str(tmp_path / 'executed.ipynb'))  # To inspect.
  outputs = [output for cell in notebook.cells if cell.cell_type == 'code'
             for output in cell.outputs]
  text = ''.join(output.get('text', '') for output in outputs)
  assert 'small settings' in text
  assert 'of test[:500]' in text  # The evaluation line.
  images = [o for o in outputs if 'image/png' in o.get('data', {})]
  # Examples, loss curve, confusion matrix and two attention maps.
  assert len(images) >= 5
  assert os.path.exists(tmp_path / 'run' / 'model.npz')
