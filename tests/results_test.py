"""Tests of icl_jax.results: claims, the results.json contract, atomic writes, workdir guard."""

import json
import os

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from icl_jax import results  # noqa: E402

RESULT_KEYS = {'experiment', 'paper', 'reproduces', 'config', 'metrics', 'claims', 'figures',
               'runtime_s', 'versions'}   # DESIGN.md, "Experiment apps — the contract"


@pytest.mark.parametrize('mode,measured,holds', [
    ('within', 1.05, True), ('within', 0.95, True), ('within', 1.2, False),
    ('within', 0.8, False), ('at_most', 0.5, True), ('at_most', 1.1, True),
    ('at_most', 1.2, False), ('at_least', 2.0, True), ('at_least', 0.9, True),
    ('at_least', 0.8, False)])
def test_claim_modes(mode, measured, holds):
  """expected 1, tolerance 0.1 (boundaries avoided: float rounding of 1 +- 0.1)."""
  assert results.Claim('c', measured, 1.0, 0.1, mode).holds is holds


@pytest.mark.parametrize('field', ['measured', 'expected', 'tolerance'])
@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_claim_non_finite_does_not_hold(field, bad):
  """A nan (or inf) anywhere makes a claim fail in every mode, never pass silently."""
  for mode in results.MODES:
    kw = dict(claim='c', measured=1.0, expected=1.0, tolerance=0.1, mode=mode)
    kw[field] = bad
    assert results.Claim(**kw).holds is False


def test_claim_validation_and_json():
  """Unknown modes raise; numbers become floats; holds is computed, not a constructor arg."""
  with pytest.raises(ValueError, match='mode'):
    results.Claim('c', 1.0, 1.0, 0.1, 'roughly')
  with pytest.raises(TypeError):
    results.Claim('c', 1.0, 1.0, 0.1, holds=True)  # pylint: disable=unexpected-keyword-arg
  c = results.Claim('slope is -1', np.float32(-0.98), -1, np.float64(0.05))
  assert c.to_json() == {'claim': 'slope is -1', 'measured': pytest.approx(-0.98),
                         'expected': -1.0, 'tolerance': 0.05, 'mode': 'within', 'holds': True}
  assert all(isinstance(v, float) for v in (c.measured, c.expected, c.tolerance))


def _write(workdir, **over):
  fig, ax = plt.subplots()
  ax.plot([0, 1], [1, 0])
  kw = dict(experiment='trained_lsa/gradient_flow', paper='trained_lsa', reproduces='Thm 4',
            config={'d': 3, 'lr': np.float32(0.5), 'sizes': np.arange(3), 'x': float('nan')},
            run=results.Run(
                metrics={'error': np.float64(0.25), 'bad': float('nan')},
                claims=[results.Claim('ok', 1.0, 1.0, 0.1), results.Claim('no', 2.0, 1.0, 0.1)],
                arrays={'w': np.eye(3), 'curve': np.arange(5.0)}, figures={'fig1.png': fig}),
            runtime_s=1.5)
  kw.update(over)
  return results.write_run(workdir, **kw)


def test_write_run_contract(tmp_path):
  """results.json has every DESIGN.md key and is strict JSON (non-finite numbers as strings);
  arrays.npz holds the arrays; the figure is a PNG; no temporary files remain."""
  workdir = str(tmp_path)
  returned = _write(workdir)
  with open(os.path.join(workdir, 'results.json')) as f:
    text = f.read()
  data = json.loads(text, parse_constant=lambda c: pytest.fail(f'non-JSON constant {c}'))
  assert set(data) == RESULT_KEYS
  assert data == json.loads(json.dumps(returned))
  assert data['figures'] == ['fig1.png']
  assert data['config']['sizes'] == [0, 1, 2] and data['config']['x'] == 'nan'
  assert data['metrics'] == {'error': 0.25, 'bad': 'nan'}
  assert [c['holds'] for c in data['claims']] == [True, False]
  assert set(data['claims'][0]) == {'claim', 'measured', 'expected', 'tolerance', 'mode',
                                    'holds'}
  assert data['versions']['device_count'] >= 1 and 'jax' in data['versions']
  with np.load(os.path.join(workdir, 'arrays.npz')) as npz:
    np.testing.assert_array_equal(npz['w'], np.eye(3))
    np.testing.assert_array_equal(npz['curve'], np.arange(5.0))
  with open(os.path.join(workdir, 'fig1.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert not [n for n in os.listdir(workdir) if n.startswith('.tmp-')]


def test_write_is_atomic_on_failure(tmp_path, monkeypatch):
  """If the final rename fails, the previous results.json is untouched and the temporary file
  is removed (fails if write_run writes in place or leaks .tmp- files)."""
  workdir = str(tmp_path)
  _write(workdir)
  path = os.path.join(workdir, 'results.json')
  with open(path) as f:
    before = f.read()

  def broken_replace(src, dst):
    raise OSError('disk full')

  monkeypatch.setattr(os, 'replace', broken_replace)
  with pytest.raises(OSError, match='disk full'):
    _write(workdir, reproduces='Fig 2')
  monkeypatch.undo()
  with open(path) as f:
    assert f.read() == before
  assert not [n for n in os.listdir(workdir) if n.startswith('.tmp-')]


def test_prepare_workdir(tmp_path):
  """A new workdir is created and marked; the same experiment may reuse it; another
  experiment's workdir (by marker or by results.json) raises WorkdirError and is left
  byte-for-byte untouched."""
  workdir = str(tmp_path / 'w')
  results.prepare_workdir(workdir, 'trained_lsa/a')
  assert os.path.exists(os.path.join(workdir, results.MARKER))
  results.prepare_workdir(workdir, 'trained_lsa/a')
  _write(workdir, experiment='trained_lsa/a')

  def snapshot():
    out = {}
    for name in sorted(os.listdir(workdir)):
      with open(os.path.join(workdir, name), 'rb') as f:
        out[name] = f.read()
    return out

  before = snapshot()
  with pytest.raises(results.WorkdirError, match="holds experiment 'trained_lsa/a'"):
    results.prepare_workdir(workdir, 'trained_lsa/b')
  assert snapshot() == before
  # an older workdir with results.json but no marker is recognised too
  os.remove(os.path.join(workdir, results.MARKER))
  before = snapshot()
  with pytest.raises(results.WorkdirError):
    results.prepare_workdir(workdir, 'trained_lsa/b')
  assert snapshot() == before
  assert isinstance(results.WorkdirError('x'), ValueError)


def test_stderr_claim_tolerance_is_k_times_combined_stderr():
  """stderr_claim's tolerance is k * hypot(stderr, expected_stderr) (3 * hypot(0.03, 0.04) =
  0.15 here), in 'within' mode, and the text states k and the tolerance; a measurement just
  inside holds, just outside does not. Fails on adding the standard errors (0.21) or dropping
  the expected value's error (0.09)."""
  c = results.stderr_claim('MC mean = closed form', 1.14, 0.03, 1.0, 3.0, expected_stderr=0.04)
  assert c.tolerance == pytest.approx(0.15) and c.mode == 'within' and c.holds
  assert '3 x stderr = 0.15' in c.claim and c.claim.startswith('MC mean = closed form')
  assert not results.stderr_claim('t', 1.16, 0.03, 1.0, 3.0, expected_stderr=0.04).holds
  assert not results.stderr_claim('t', 0.84, 0.03, 1.0, 3.0, expected_stderr=0.04).holds
  assert results.stderr_claim('t', 1.0, 0.02, 0.95, 4.0).tolerance == pytest.approx(0.08)


def test_evidence_round_trip(tmp_path):
  """write_run with an Evidence writes evidence.npz; load_evidence gives back both parts with
  the same names, values, shapes and dtypes (a scalar stays 0-d). Fails if the parts are mixed
  up, a name containing '/' is split wrongly, or values are cast."""
  measured = {'w_kq': np.arange(16.0).reshape(4, 4), 'mc/mean': np.float32(0.25),
              'steps': np.int64(300)}
  theory = {'w_kq': np.eye(4), 'slope': 1.0 / 3.0}
  _write(str(tmp_path), run=results.Run(
      metrics={}, claims=[results.Claim('ok', 1.0, 1.0, 0.1)],
      evidence=results.Evidence(measured=measured, theory=theory)))
  got = results.load_evidence(str(tmp_path))
  assert set(got.measured) == set(measured) and set(got.theory) == set(theory)
  for want, have in ((measured, got.measured), (theory, got.theory)):
    for k, v in want.items():
      assert have[k].dtype == np.asarray(v).dtype and have[k].shape == np.shape(v), k
      np.testing.assert_array_equal(have[k], v)
  plt.close('all')   # _write's default figure, unused here
