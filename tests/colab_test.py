"""Runs colab/trained_lsa.ipynb headlessly at the smoke size and checks what it reports.

The notebook executes in a separate ipykernel process started by nbclient, with the working
directory set to colab/. The kernelspec `python3` has argv[0] == 'python', which jupyter_client
replaces by `sys.executable`, so the kernel runs on this interpreter (the venv's); the notebook
reports its `sys.prefix` and the test checks it. Sizes come from the environment variable
`ICL_JAX_NOTEBOOK_SIZE` (the notebook's parameters cell reads it), and
`JAX_NUMPY_RANK_PROMOTION=raise` gives the kernel the same rank-promotion rule as conftest.py.

Runtime: about 20-40 s alone on the 2-core development machine, about 60 s beside other tests
under `make test` (-n 2); XLA compilation dominates.
"""

import json
import math
import os
import pathlib
import sys

import pytest

nbclient = pytest.importorskip('nbclient')
nbformat = pytest.importorskip('nbformat')
pytest.importorskip('ipykernel')

_COLAB = pathlib.Path(__file__).resolve().parent.parent / 'colab'
_NOTEBOOK = _COLAB / 'trained_lsa.ipynb'
_SUMMARY_PREFIX = 'ICL_JAX_SUMMARY '
_SECTION_PLOTS = 6   # loss curve and heatmaps (Thm 4), then one figure per later section


def _stream_text(nb) -> str:
  return ''.join(out.get('text', '') for cell in nb.cells if cell.cell_type == 'code'
                 for out in cell.get('outputs', []) if out.get('output_type') == 'stream')


def _summary(nb) -> dict:
  lines = [line for line in _stream_text(nb).splitlines() if line.startswith(_SUMMARY_PREFIX)]
  assert len(lines) == 1, f'expected one summary line, got {len(lines)}'
  return json.loads(lines[0][len(_SUMMARY_PREFIX):])


def execute_notebook(path: pathlib.Path, tmp_path_factory):
  """Executes a notebook of colab/ at smoke size in a fresh kernel; returns it with outputs."""
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, kernel_name='python3', timeout=300,
                                   resources={'metadata': {'path': str(_COLAB)}})
  with pytest.MonkeyPatch.context() as mp:   # the kernel process inherits this environment
    mp.setenv('ICL_JAX_NOTEBOOK_SIZE', 'smoke')
    mp.setenv('JAX_NUMPY_RANK_PROMOTION', 'raise')
    mp.setenv('JAX_PLATFORMS', 'cpu')
    client.execute()   # raises CellExecutionError at the first failing cell
  # Keep a copy with outputs for inspection when a check fails.
  nbformat.write(nb, tmp_path_factory.mktemp('colab') / f'{path.stem}.executed.ipynb')
  return nb


def assert_clean_with_parameters_cell(path: pathlib.Path) -> None:
  """A notebook of colab/ is committed without outputs and has one papermill parameters cell
  that defaults to SIZE = 'quick'."""
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert all(not c.outputs and c.execution_count is None for c in code), 'commit without outputs'
  params = [c for c in code if 'parameters' in c.metadata.get('tags', [])]
  assert len(params) == 1 and "SIZE = 'quick'" in params[0].source


def assert_ran_here_and_plotted(nb, plots: int) -> None:
  """No cell errors, the smoke size, a kernel on this interpreter, and `plots` PNG figures."""
  errors = [out for cell in nb.cells if cell.cell_type == 'code'
            for out in cell.outputs if out.output_type == 'error']
  assert not errors, errors
  summary = _summary(nb)
  assert summary['size'] == 'smoke'
  assert os.path.realpath(summary['sys_prefix']) == os.path.realpath(sys.prefix)
  pngs = [out for cell in nb.cells if cell.cell_type == 'code' for out in cell.outputs
          if out.output_type == 'display_data' and 'image/png' in out.get('data', {})]
  assert len(pngs) == plots


@pytest.fixture(scope='session')   # once per worker, even if other modules' tests interleave
def executed(tmp_path_factory):
  """The notebook executed once at smoke size (shared by the tests of this module)."""
  return execute_notebook(_NOTEBOOK, tmp_path_factory)


def test_notebook_is_clean_and_has_parameters_cell():
  assert_clean_with_parameters_cell(_NOTEBOOK)


def test_no_cell_errors(executed):
  errors = [out for cell in executed.cells if cell.cell_type == 'code'
            for out in cell.outputs if out.output_type == 'error']
  assert not errors, errors


def test_kernel_is_this_interpreter(executed):
  summary = _summary(executed)
  assert summary['size'] == 'smoke'
  assert os.path.realpath(summary['sys_prefix']) == os.path.realpath(sys.prefix)


def test_every_section_plots(executed):
  pngs = [out for cell in executed.cells if cell.cell_type == 'code' for out in cell.outputs
          if out.output_type == 'display_data' and 'image/png' in out.get('data', {})]
  assert len(pngs) == _SECTION_PLOTS


def test_reported_numbers(executed):
  summary = _summary(executed)
  # Theorem 4: float32 gradient descent stopped at |grad L| <= 1e-4 lands at ~1.2e-4 relative
  # error on the smoke problem; 1e-3 leaves an 8x margin and still fails a wrong optimum
  # (a wrong N or Lambda in Gamma moves Gamma^-1 by percents).
  assert summary['thm4_converged']
  assert summary['thm4_product_rel_error'] < 1e-3
  # Monte Carlo vs closed forms (Thm 5, Sec. 4.2, Thm 8): fixed seeds, so these are
  # deterministic; 5 standard errors bounds a correct estimator's deviation over the ~15
  # comparisons with room to spare, while dropping the finite-N corrections (the 1/N^2 term
  # of (16), Gamma -> Lambda in the slopes) moves a prediction by 10 standard errors or more.
  assert summary['thm5_max_abs_z'] < 5
  assert summary['shift_max_abs_z'] < 5
  assert summary['rc_max_abs_z'] < 5
  # Eq. (23): the slope tends to 1/3 with N. At the largest smoke N (320) the closed form is
  # 0.331 and the Monte-Carlo slope 0.336 +- 0.015, so 5% and 10% (2 standard errors) bound them.
  assert summary['rc_limit_factor'] == pytest.approx(1 / 3)
  assert summary['rc_theory_largest_n'] == pytest.approx(1 / 3, rel=0.05)
  assert summary['rc_slope_largest_n'] == pytest.approx(1 / 3, rel=0.1)
  # Sec 4.3 (GPT2): the smoke model trains for 40 steps, so only its finiteness is checked; OLS
  # on noiseless prompts is exact for M >= d: the labels carry float32 rounding (~1e-7
  # relative), amplified by cond(X) at M = d (4e-11 seen), so 1e-8; and at M = 1 < d = 3 errs by
  # 1 - M/d = 2/3 on identity covariates (512 prompts: stderr ~0.04, so 0.2 is ~5 stderr).
  assert math.isfinite(summary['gpt2_error_at_n_identity'])
  assert summary['gpt2_ols_max_error_m_ge_d'] < 1e-8
  assert summary['gpt2_ols_error_m1_identity'] == pytest.approx(2 / 3, abs=0.2)
