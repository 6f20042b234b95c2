"""The text AR-fit app (Sander et al. 2024, Sec. 6, Fig. 4) and its library, icl_jax/text_ar.py.

The library: the Gram-side minimum-norm fit against numpy.linalg.lstsq, on random windows and on
constructed ones (a repeated token with two successors has loss > 1e-12, distinct tokens ~0), the
closed form and the token-level masks, tokenizer, tables and loaders. The app: one smoke run
(conftest's `smoke_run`), every claim caught by a mutation of its evidence (the pattern of
tests/fgd_construction_multihead_test.py), bad input.
"""

import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, assert_bad_input_stops, assert_validate_names
from mutation_test import Case, _check, _matching, assert_covered, times
from experiments import common
from icl_jax import results, text_ar

APP = 'autoregressive/text_ar_fit'
THR = 1e-12


def _module():
  from experiments.autoregressive import text_ar_fit
  return text_ar_fit


def _config(preset='smoke'):
  from experiments.autoregressive.configs import text_ar_fit
  return text_ar_fit.get_config(preset)


def _evidence(smoke_run) -> results.Evidence:
  proc, workdir = smoke_run(APP)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return results.load_evidence(str(workdir))


def _lstsq_loss(s_TxD: np.ndarray) -> tuple[float, int, np.ndarray]:
  """Loss (5) at numpy's minimum-norm least-squares W, rank of the inputs, W [d, d]."""
  b_DxD, _, rank, _ = np.linalg.lstsq(s_TxD[:-1], s_TxD[1:], rcond=None)
  return 0.5 * float(np.sum((s_TxD[1:] - s_TxD[:-1] @ b_DxD) ** 2)), int(rank), b_DxD.T


# --- the fit ------------------------------------------------------------------------------------

def test_fit_matches_numpy_lstsq_on_random_windows():
  """Per window: loss, rank and the minimum-norm W equal numpy.linalg.lstsq's, for d > T (full
  rank: loss ~0), d < T - 1 (rank d: a real residual) and a window with one token repeated.
  Fails on a wrong null space (e.g. the kept eigenvectors instead of the null ones), a missing
  1/2, or a W that is not the minimum-norm one."""
  rng = np.random.default_rng(0)
  windows = [rng.normal(size=(5, 16)), rng.normal(size=(5, 3)), rng.normal(size=(8, 64))]
  windows[2][3] = windows[2][0]          # s_4 = s_1, followed by different tokens
  fit = jax.jit(lambda s: (text_ar.ar_fit_error(s, rtol=1e-13),
                           text_ar.min_norm_fit(s, rtol=1e-13)))
  with jax.enable_x64():
    for s in windows:
      got, w_fit = fit(jnp.asarray(s))
      loss, rank, w = _lstsq_loss(s)
      # float64 rounding of a loss of O(1..30) and of W = Y G^+ X^T (entries O(1)).
      assert abs(float(got['error']) - loss) <= 1e-12 * max(loss, 1.0), s.shape
      assert int(got['rank']) == rank, s.shape
      np.testing.assert_allclose(w_fit, w, atol=1e-12)


@pytest.fixture(scope='module')
def table():
  """[7, 16] float64 Gaussian rows; row 5 equals row 0, row 6 is 0."""
  t = np.random.default_rng(1).normal(size=(7, 16))
  t[5], t[6] = t[0], 0.0
  return t


# window -> (has an inconsistency, inputs distinct, loss in closed form from the table t)
CONSTRUCTED = {
    (0, 1, 2, 3, 4): (False, True, lambda t: 0.0),
    (0, 1, 0, 2, 3): (True, False, lambda t: np.sum((t[1] - t[2]) ** 2) / 4),   # 0 -> 1, 0 -> 2
    (0, 1, 0, 1, 0): (False, False, lambda t: 0.0),                              # 0 -> 1 twice
    (0, 0, 0, 0, 0): (False, False, lambda t: 0.0),
    (0, 1, 2, 0, 1): (False, False, lambda t: 0.0),
    (0, 1, 5, 2, 3): (True, False, lambda t: np.sum((t[1] - t[2]) ** 2) / 4),   # row 5 = row 0
    (6, 1, 2, 3, 4): (True, False, lambda t: np.sum(t[1] ** 2) / 2),            # 0 vector -> 1
    (1, 6, 6, 2, 3): (True, False, lambda t: np.sum(t[2] ** 2) / 2),            # 0 -> 0, 0 -> 2
}


def test_constructed_windows(table):
  """A repeated token with two different successors has loss > 1e-12, equal to 1/4 of their
  squared distance; a window of distinct tokens, or repeats with one successor, has ~0; rows
  that are equal (5 and 0) are one token; a zero row predicts 0. The fit (fit_errors, vmapped
  and chunked), the closed form, the masks and numpy.linalg.lstsq all agree on each window."""
  ids = np.asarray(list(CONSTRUCTED), np.int32)
  with jax.enable_x64():
    out = text_ar.fit_errors(jnp.asarray(table), jnp.asarray(ids), rtol=1e-13, chunk=3)
  canon, zero = text_ar.canonical_ids(table, ids)
  closed = text_ar.closed_form_errors(table, ids, canon, zero, chunk=3)
  conflict = text_ar.conflicts(ids, canon, zero)
  distinct = text_ar.distinct_inputs(ids, canon, zero)
  for i, (window, (clash, dist, loss)) in enumerate(CONSTRUCTED.items()):
    expected = float(loss(table))
    got = float(out['error'][i])
    assert conflict[i] == clash and distinct[i] == dist, window
    assert (got > THR) == clash, (window, got)
    # Consistent windows: rounding only (~1e-31 here); inconsistent: O(1) losses, float64.
    assert abs(got - expected) <= 1e-12 * max(expected, 1.0), (window, got, expected)
    assert abs(closed[i] - expected) <= 1e-12 * max(expected, 1.0), (window, closed[i])
    assert abs(got - _lstsq_loss(table[list(window)])[0]) <= 1e-12, window


def test_counts_depend_on_the_token_sequence_only():
  """The windows above 1e-12 are those `conflicts` finds from the ids alone, for two Gaussian
  tables (the reason the app's default table is random): fails if the fit's rank cut merges
  distinct tokens or splits a repeated one."""
  text = text_ar.normalise_whitespace(text_ar.load_text(
      f'{ROOT}/experiments/autoregressive/data/devils_dictionary.txt.gz'))[:20000]
  ids, vocab = text_ar.encode(text_ar.word_tokenize(text))
  wins = text_ar.windows(ids, 5)
  expected = text_ar.conflicts(wins, np.arange(len(vocab)), np.zeros(len(vocab), bool))
  assert 10 < expected.sum() < len(wins)
  with jax.enable_x64():
    for seed in (0, 1):
      dim = 8   # > T - 1 = 4: Gaussian rows keep 4 distinct tokens independent (a.s.)
      tab = text_ar.random_table(jax.random.key(seed), len(vocab), dim)
      err = np.asarray(text_ar.fit_errors(jnp.asarray(tab), jnp.asarray(wins), rtol=1e-13,
                                          chunk=512)['error'])
      np.testing.assert_array_equal(err > THR, expected)


def test_shuffled_windows_permute_the_same_tokens():
  ids = np.arange(23) % 7
  a = text_ar.shuffled_windows(jax.random.key(0), ids, 5)
  assert a.shape == (4, 5)
  np.testing.assert_array_equal(np.sort(a.ravel()), np.sort(ids[:20]))
  np.testing.assert_array_equal(a, text_ar.shuffled_windows(jax.random.key(0), ids, 5))
  assert not np.array_equal(a, text_ar.windows(ids, 5))


# --- tokens and tables --------------------------------------------------------------------------

def test_word_tokenize_is_gpt2_pretokenization():
  text = "Hello, world's end.\n\n  Next 42"
  toks = text_ar.word_tokenize(text)
  assert toks == ['Hello', ',', ' world', "'s", ' end', '.', '\n\n ', ' Next', ' 42']
  assert ''.join(toks) == text
  assert text_ar.normalise_whitespace(text) == "Hello, world's end. Next 42"
  ids, vocab = text_ar.encode(['a', ' b', 'a'])
  assert ids.tolist() == [0, 1, 0] and vocab == {'a': 0, ' b': 1}


def test_ppmi_svd_table_is_deterministic_unit_rows():
  """Same key, same table; rows of unit norm; a shape the caller asked for."""
  ids = np.asarray([0, 1, 2, 3, 1, 2, 4, 0, 1, 2, 3, 5, 4, 0] * 3)
  a = text_ar.ppmi_svd_table(jax.random.key(0), ids, 6, dim=3)
  b = text_ar.ppmi_svd_table(jax.random.key(0), ids, 6, dim=3)
  assert a.shape == (6, 3) and a.dtype == np.float64
  np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-12)


def test_tables_load_from_npy_and_safetensors(tmp_path):
  t = np.arange(12, dtype=np.float32).reshape(4, 3)
  np.save(tmp_path / 't.npy', t)
  assert text_ar.table_shape(str(tmp_path / 't.npy')) == (4, 3)
  np.testing.assert_array_equal(text_ar.load_table(str(tmp_path / 't.npy')), t)
  st = pytest.importorskip('safetensors.numpy')
  st.save_file({'wte.weight': t}, str(tmp_path / 'm.safetensors'))
  path = str(tmp_path / 'm.safetensors')
  assert text_ar.table_shape(path, 'wte.weight') == (4, 3)
  np.testing.assert_array_equal(text_ar.load_table(path, 'wte.weight'), t)
  with pytest.raises(KeyError, match='wte.weight'):
    text_ar.table_shape(path, 'transformer.wte.weight')


def _files(tmp_path, rows=8, dim=6, ids=None):
  ids = np.asarray([1, 2, 3, 1, 4, 5, 2, 6, 7, 3, 1, 2] if ids is None else ids)
  np.save(tmp_path / 'ids.npy', ids)
  np.save(tmp_path / 'wte.npy', np.random.default_rng(0).normal(size=(rows, dim)))
  return str(tmp_path / 'ids.npy'), str(tmp_path / 'wte.npy')


def test_paper_preset_stops_on_the_missing_path_and_runs_with_files(tmp_path):
  """The paper preset names the GPT-2 file it lacks; given files, it validates and measures (the
  file table indexed by the raw ids)."""
  config = _config('paper')
  with pytest.raises(common.ConfigError, match="config.data.ids_path='experiments/"
                     "autoregressive/data/gpt2/moby_dick_gpt2_ids.npy': no such file"):
    _module().validate(config)
  config.data.ids_path, config.embedding.path = _files(tmp_path)
  _module().validate(config)
  tokens = _module().load_tokens(config)
  table, ids = _module().load_table(config, jax.random.key(0), tokens)
  assert table.shape == (8, 6) and ids.tolist() == tokens.tolist()


def test_tokenizer_json_path(tmp_path):
  """data.tokenizer='tokenizer_json' reads a tokenizer.json through the `tokenizers` package."""
  tokenizers = pytest.importorskip('tokenizers')
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {'the': 0, 'cat': 1, 'sat': 2, '[UNK]': 3}, unk_token='[UNK]'))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.save(str(tmp_path / 'tokenizer.json'))
  (tmp_path / 'book.txt').write_text('the cat sat\n the  dog sat the cat')
  config = _config('smoke')
  config.data.text_path = str(tmp_path / 'book.txt')
  config.data.tokenizer, config.data.tokenizer_path = 'tokenizer_json', str(
      tmp_path / 'tokenizer.json')
  config.embedding.dim = 4
  assert _module().load_tokens(config).tolist() == [0, 1, 2, 0, 3, 2, 0, 1]


# --- the app: smoke run, mutations --------------------------------------------------------------

def test_smoke_writes_results_whose_claims_hold(smoke_run):
  """Fails if the smoke run exits non-zero, a claim fails, or results/arrays/figure are missing;
  and if the numbers drift: the threshold must sit in a gap (consistent windows <= 1e-25,
  inconsistent >= 0.1 with unit-scale Gaussian rows) and the counts stay those of seed 0."""
  proc, workdir = smoke_run(APP)
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads((workdir / 'results.json').read_text())
  assert res['experiment'] == APP and res['claims'] and res['figures']
  failed = [c['claim'] for c in res['claims'] if not c['holds']]
  assert not failed, failed
  for name in res['figures']:
    assert (workdir / name).stat().st_size > 10_000, name
  met = res['metrics']
  assert met['n_windows'] == 4000 and met['count_original'] == 131
  assert met['count_shuffled'] > 1.5 * 131
  for ds in ('original', 'shuffled'):
    assert met[f'max_loss_consistent_{ds}'] < 1e-25 and met[f'min_loss_inconsistent_{ds}'] > 0.1
    assert met[f'null_eig_ratio_max_{ds}'] < 1e-14 < 1e-3 < met[f'kept_eig_ratio_min_{ds}']
  with np.load(workdir / 'arrays.npz') as arrays:
    assert arrays['error_original'].shape == (4000,)
    assert arrays['hist_original'].sum() == 131
    assert arrays['windows_shuffled'].shape == (4000, 5)


class FromKey(NamedTuple):
  """A mutation that replaces the entry with another entry of the same part."""
  key: str


def _flip(to: bool, every: int = 10):
  """Every `every`-th window whose mask is `not to` gets `to` (a 10% wrong mask)."""
  def mutate(mask):
    mask = np.array(mask, bool)
    mask[np.flatnonzero(mask != to)[::every]] = to
    return mask
  return mutate


def _zero_every(k: int):
  return lambda v: np.where(np.arange(np.size(v)) % k == 0, 0.0, np.asarray(v))


_RATIO, _Z = 'count ratio shuffled/original', 'is significant'
CASES = [
    Case(APP, 'measured', 'error_shuffled', FromKey('error_original'), (_RATIO, _Z),
         why='no shuffle: D_shuffle made of the original windows (ratio 1, z 0)'),
    Case(APP, 'measured', 'error_shuffled', lambda v: np.where(np.arange(np.size(v)) % 2, v, 0.0),
         (_RATIO, _Z), why='half of the shuffled windows above the threshold lost (a 2x error in '
                           'the count: ratio ~1, z ~0 at smoke)'),
]
for _ds in ('original', 'shuffled'):
  _form, _exact, _above = (f'[{_ds}] the min-norm', f'[{_ds}] windows with no token',
                           f'[{_ds}] every window with')
  CASES += [
      Case(APP, 'measured', f'error_{_ds}', times(), (_form,)),
      Case(APP, 'theory', f'closed_form_{_ds}', times(), (_form,)),
      Case(APP, 'measured', f'error_{_ds}', lambda v: np.asarray(v) + 1e-10, (_exact,),
           why='a fit that is not exact on consistent windows (rounding of a float32 solve, '
               '~1e-10): their losses pass 1e-12'),
      Case(APP, 'measured', f'error_{_ds}', _zero_every(10), (_above, _form),
           why='a fit that returns 0 for one window in ten (e.g. a rank cut that calls no '
               'direction null)'),
      Case(APP, 'theory', f'conflict_{_ds}', _flip(False), (_exact,),
           why='an inconsistency test that misses one inconsistent window in ten'),
      Case(APP, 'theory', f'conflict_{_ds}', _flip(True), (_above,),
           why='an inconsistency test that flags one consistent window in ten'),
  ]


def _mutated(evidence, case):
  part = dict(getattr(evidence, case.part))
  assert case.key in part, f'{case.part} has no {case.key!r}; it has {sorted(part)}'
  part[case.key] = (part[case.mutate.key] if isinstance(case.mutate, FromKey)
                    else case.mutate(part[case.key]))
  return evidence._replace(**{case.part: part})


def test_claims_notice_a_wrong_input(smoke_run):
  """Fails if a claim meant to catch a mutated entry still holds (or the unmutated run fails).
  One test over all cases: each check() is NumPy on 2 x 4000 windows."""
  evidence = _evidence(smoke_run)
  assert all(c.holds for c in _check(APP, evidence)), 'the unmutated smoke run must pass'
  for case in CASES:
    claims = _check(APP, _mutated(evidence, case))
    for text in case.fails:
      for c in _matching(claims, text):
        assert not c.holds, (f'{case.part}[{case.key!r}] mutated ({case.why or "x1.1"}), yet '
                             f'"{c.claim}" holds: measured {c.measured}, expected {c.expected}')


def test_every_claim_is_covered_by_a_case(smoke_run):
  claims = _check(APP, _evidence(smoke_run))
  assert len(claims) == 8
  assert_covered(claims, CASES)


# --- bad input ----------------------------------------------------------------------------------

BAD = [
    ({'data.T': 1}, 'config.data.T'),
    ({'data.source': 'csv'}, 'config.data.source'),
    ({'data.whitespace': 'strip'}, 'config.data.whitespace'),
    ({'data.tokenizer': 'bpe'}, 'config.data.tokenizer'),
    ({'data.text_path': 'no/such/book.txt'}, "config.data.text_path='no/such/book.txt'"),
    ({'data.max_tokens': 9}, 'config.data.max_tokens=9'),
    ({'data.max_tokens': -1}, 'config.data.max_tokens'),
    ({'embedding.kind': 'glove'}, 'config.embedding.kind'),
    ({'embedding.dim': 3}, 'config.embedding.dim'),
    ({'embedding.kind': 'file'}, "config.embedding.kind='file'"),
    ({'fit.rtol': 2.0}, 'config.fit.rtol'),
    ({'fit.threshold': 0.0}, 'config.fit.threshold'),
    ({'fit.chunk': 0}, 'config.fit.chunk'),
    ({'claims.min_ratio': 0.9}, 'config.claims.min_ratio'),
    ({'claims.min_ratio': 5.0}, 'config.claims.min_ratio'),
]


def _set(config, overrides):
  config.update_from_flattened_dict(overrides)
  return config


@pytest.mark.parametrize('overrides,field', BAD)
def test_validate_names_the_field(overrides, field):
  assert_validate_names(_module().validate, _config(), overrides, field)


def test_validate_checks_the_table_against_the_data(tmp_path):
  """A table with too few rows for the ids, a d below T - 1, a missing table, or an ids file
  that is not 1-D integers: each named."""
  for rows, dim, match in ((6, 6, 'has 6 rows but the token ids go up to 7'), (8, 3, 'd=3')):
    config = _set(_config('paper'), {})
    config.data.ids_path, config.embedding.path = _files(tmp_path, rows, dim)
    with pytest.raises(common.ConfigError, match=match):
      _module().validate(config)
  config = _set(_config('paper'), {'data.ids_path': _files(tmp_path)[0],
                                   'embedding.path': str(tmp_path / 'none.npy')})
  with pytest.raises(common.ConfigError, match="config.embedding.path='.*none.npy': no such"):
    _module().validate(config)
  np.save(tmp_path / 'bad.npy', np.zeros((3, 4)))
  config = _set(_config('paper'), {'data.ids_path': str(tmp_path / 'bad.npy')})
  with pytest.raises(common.ConfigError, match='config.data.ids_path=.*1-D array'):
    _module().validate(config)


def test_presets_validate():
  """smoke and quick pass validate (paper: above, with files)."""
  for preset in ('smoke', 'quick'):
    _module().validate(_config(preset))


def test_bad_input_exits_2_with_one_line_and_touches_nothing(tmp_path):
  assert_bad_input_stops(APP, tmp_path, 'config.data.T', '--config.data.T=1')
