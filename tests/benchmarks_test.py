"""The benchmarks run end to end and end with their JSON summary lines.

Only the interface is checked (keys, positive finite figures), never a timing: the development
machine is shared, so speeds vary several-fold from run to run.
"""

import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {'benchmark', 'prompts_per_s', 'ratio_to_ceiling', 'matmul_gflops',
        'rng_limit_prompts_per_s', 'direct_prompts_per_s', 'wishart_prompts_per_s',
        'speedup_vs_rng_limit', 'exact_evals_per_s', 'peak_rss_mb_small', 'peak_rss_mb_large',
        'num_prompts', 'd', 'n'}


def test_lsa_population_quick_prints_summary_json():
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)   # one CPU device, as a user runs it (conftest simulates 8)
  env['PYTHONPATH'] = ROOT
  out = subprocess.run([sys.executable, '-m', 'benchmarks.lsa_population', '--quick'],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.strip().splitlines()
  summary = json.loads(lines[-1])
  assert set(summary) == KEYS
  assert summary['benchmark'] == 'lsa_population'
  for name in KEYS - {'benchmark'}:
    value = summary[name]
    assert isinstance(value, (int, float)) and not isinstance(value, bool), (name, value)
    assert math.isfinite(value) and value > 0, (name, value)
  assert (summary['d'], summary['n']) == (20, 100)
  assert summary['prompts_per_s'] == summary['wishart_prompts_per_s']
  assert '(b) Wishart MC' in out.stdout   # the table came before the JSON line
  # Memory is flat in the number of prompts: 16x the prompts at the same chunk. Holding all of
  # the large run's 131,072 prompts' statistics at once would take over 200 MiB; the chunked scan
  # measures within a few MiB here, and the RSS left by a compilation varies by up to ~40 MiB,
  # so 128 MiB separates the two.
  assert summary['peak_rss_mb_large'] < summary['peak_rss_mb_small'] + 128


GPT2_KEYS = {'benchmark', 's_per_step', 'steps_per_s', 'median_s_per_step', 'compile_s',
             'ratio_to_ceiling', 'matmul_gflops', 'model_gflop_per_step', 'achieved_gflops',
             'peak_rss_mb', 'torch_s_per_step', 'speedup_vs_torch', 'torch_max_abs_diff',
             'params', 'batch', 'points', 'tokens', 'd', 'depth', 'width', 'heads', 'devices'}
GPT2_TORCH_KEYS = {'torch_s_per_step', 'speedup_vs_torch', 'torch_max_abs_diff'}


def test_gpt2_step_quick_prints_summary_json():
  """Passes with or without the optional torch peer (CI installs only .[test])."""
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  env['PYTHONPATH'] = ROOT
  out = subprocess.run([sys.executable, '-m', 'benchmarks.gpt2_step', '--quick'],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads(out.stdout.strip().splitlines()[-1])
  assert set(summary) == GPT2_KEYS
  assert summary['benchmark'] == 'gpt2_step'
  for name in GPT2_KEYS - {'benchmark'} - GPT2_TORCH_KEYS:
    value = summary[name]
    assert isinstance(value, (int, float)) and not isinstance(value, bool), (name, value)
    assert math.isfinite(value) and value > 0, (name, value)
  assert summary['tokens'] == 2 * summary['points']
  assert math.isclose(summary['steps_per_s'] * summary['s_per_step'], 1.0)
  if summary['torch_s_per_step'] is None:   # torch not installed: the peer says it skipped
    assert all(summary[name] is None for name in GPT2_TORCH_KEYS)
    assert 'torch not installed: skipped' in out.stdout
  else:   # the peer ran: the same model (same params, same batch) and positive timings
    assert summary['torch_s_per_step'] > 0 and summary['speedup_vs_torch'] > 0
    assert 0 <= summary['torch_max_abs_diff'] < 1e-4
  assert 'jax' in out.stdout and 'Ceiling' in out.stdout   # the table came before the JSON line


KERNEL_GP_KEYS = {'benchmark', 'prompts_per_s', 'numpy_prompts_per_s', 'speedup',
                  'prompts_per_s_linear', 'prompts_per_s_exp', 'numpy_prompts_per_s_linear',
                  'numpy_prompts_per_s_exp', 'linear_no_eigh_prompts_per_s',
                  'one_eigh_prompts_per_s', 'steps_per_s', 's_per_step', 'numpy_s_per_step',
                  'train_speedup', 'chunked_s_per_step', 'chunked_peak_rss_mb',
                  'numpy_grad_max_rel_diff', 'matmul_gflops',
                  'model_gflop_per_step', 'achieved_gflops', 'ratio_to_ceiling', 'peak_rss_mb',
                  'sampler_peak_rss_mb', 'num_prompts', 'numpy_prompts', 'batch', 'numpy_batch',
                  'd', 'n', 'layers'}
# Timed in full runs only (the other label kernels and the diagnostics): null with --quick.
KERNEL_GP_FULL_ONLY = {'prompts_per_s_linear', 'prompts_per_s_exp', 'numpy_prompts_per_s_linear',
                       'numpy_prompts_per_s_exp', 'linear_no_eigh_prompts_per_s',
                       'one_eigh_prompts_per_s', 'chunked_s_per_step', 'chunked_peak_rss_mb'}


def test_kernel_gp_quick_prints_summary_json():
  """benchmarks.kernel_gp --quick: the summary keys, positive finite figures (null only for the
  full-run rows), the sampler's headline ratio consistent with its two rates, and the NumPy
  baseline's hand-written gradient equal to jax.grad on the same prompts (float32 rounding:
  < 1e-4 relative), which is what makes its timing a like-for-like step."""
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  env['PYTHONPATH'] = ROOT
  out = subprocess.run([sys.executable, '-m', 'benchmarks.kernel_gp', '--quick'],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads(out.stdout.strip().splitlines()[-1])
  assert set(summary) == KERNEL_GP_KEYS
  assert summary['benchmark'] == 'kernel_gp'
  for name in KERNEL_GP_KEYS - {'benchmark'}:
    value = summary[name]
    if name in KERNEL_GP_FULL_ONLY and value is None:
      continue
    assert isinstance(value, (int, float)) and not isinstance(value, bool), (name, value)
    assert math.isfinite(value) and value > 0, (name, value)
  assert (summary['d'], summary['n'], summary['layers']) == (5, 30, 3)
  assert math.isclose(summary['speedup'],
                      summary['prompts_per_s'] / summary['numpy_prompts_per_s'])
  assert math.isclose(summary['steps_per_s'] * summary['s_per_step'], 1.0)
  assert summary['numpy_grad_max_rel_diff'] < 1e-4
  assert '(1) Sampler' in out.stdout and '(2) Training step' in out.stdout


AR_TRAINING_KEYS = {'benchmark', 'quick', 'd', 't_max', 'layers', 'batch', 'sequences',
                    'best_impl', 'sequences_per_s', 'ratio_to_ceiling', 'matmul_gflops',
                    'quadratic_sequences_per_s', 'prefix_sequences_per_s',
                    'torch_sequences_per_s', 'speedup_vs_torch', 'torch_loss_diff',
                    'authors_sequences_per_s', 'speedup_vs_authors', 'peak_rss_mb', 'backend',
                    'devices'}


def test_ar_training_quick_prints_summary_json():
  """benchmarks.ar_training --quick: the summary keys (sequences_per_s and ratio_to_ceiling are
  named by the autoregressive issue), positive finite rates, the headline the faster of the two
  JAX paths, and -- with torch installed -- the PyTorch peer's first loss equal to the library's
  on the same batch and parameters (float32 rounding: < 1e-3 on a loss of ~100), which is what
  makes its timing a like-for-like comparison."""
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  env['PYTHONPATH'] = ROOT
  out = subprocess.run([sys.executable, '-m', 'benchmarks.ar_training', '--quick'],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads(out.stdout.strip().splitlines()[-1])
  assert set(summary) == AR_TRAINING_KEYS
  for name in ('sequences_per_s', 'ratio_to_ceiling', 'matmul_gflops',
               'quadratic_sequences_per_s', 'prefix_sequences_per_s'):
    assert math.isfinite(summary[name]) and summary[name] > 0, name
  assert summary['sequences_per_s'] == max(summary['quadratic_sequences_per_s'],
                                           summary['prefix_sequences_per_s'])
  assert summary['authors_sequences_per_s'] is None and summary['speedup_vs_authors'] is None
  if summary['torch_sequences_per_s'] is not None:
    assert summary['torch_loss_diff'] < 1e-3
    assert math.isclose(summary['speedup_vs_torch'],
                        summary['sequences_per_s'] / summary['torch_sequences_per_s'])
