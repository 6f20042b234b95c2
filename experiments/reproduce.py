"""The main job: run the `quick` preset of every registered experiment, then write REPORT.md.

  python -m experiments.reproduce [--out=results] [--only=trained_lsa | trained_lsa/gradient_flow,...]
      [--preset=quick]

Each experiment runs as its own process (its absl app, exactly as a user would run it) into
<out>/<paper>/<name>/. REPORT.md gives, per paper and experiment, the claims table
(claim, expected, measured, holds) and the figures. Exits non-zero if any claim fails or any
experiment fails to run.
"""

import json
import os
import subprocess
import sys
import time

from absl import app, flags, logging

from experiments import registry
from icl_jax import results

_OUT = flags.DEFINE_string('out', 'results', 'output folder')
_ONLY = flags.DEFINE_list('only', [], 'paper keys or paper/experiment names to run (default all)')
_PRESET = flags.DEFINE_enum('preset', 'quick', ['smoke', 'quick', 'paper'], 'preset to run')


def select(only):
  """[(paper, name)] for --only; raises ValueError naming what is unknown."""
  everything = [(p, n) for p, names in registry.EXPERIMENTS.items() for n in names]
  if not only:
    return everything
  chosen = []
  for item in only:
    if item in registry.EXPERIMENTS:
      chosen += [(item, n) for n in registry.EXPERIMENTS[item]]
    elif '/' in item and tuple(item.split('/', 1)) in everything:
      chosen.append(tuple(item.split('/', 1)))
    else:
      allowed = ', '.join(list(registry.EXPERIMENTS) + [f'{p}/{n}' for p, n in everything])
      raise ValueError(f'--only: unknown {item!r}; allowed: {allowed}')
  return list(dict.fromkeys(chosen))


def run_one(paper, name, out, preset):
  workdir = os.path.join(out, paper, name)
  cmd = [sys.executable, '-m', registry.module(paper, name),
         f'--config={registry.config_path(paper, name)}:{preset}', f'--workdir={workdir}']
  logging.info('running %s', ' '.join(cmd))
  start = time.time()
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'log.txt'), 'w') as log:
    code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
  elapsed = time.time() - start
  path = os.path.join(workdir, 'results.json')
  if code != 0 or not os.path.exists(path):
    logging.error('%s/%s failed (exit %d) after %.0f s; see %s', paper, name, code, elapsed,
                  os.path.join(workdir, 'log.txt'))
    return None, elapsed
  with open(path) as f:
    res = json.load(f)
  held = sum(c['holds'] for c in res['claims'])
  logging.info('%s/%s: %d/%d claims hold (%.0f s)', paper, name, held, len(res['claims']),
               elapsed)
  return res, elapsed


def _fmt(x):
  return f'{x:.4g}'


def report(runs, out, preset) -> str:
  lines = [f'# icl_jax reproduction report ({preset} preset)', '']
  total = sum(len(r['claims']) for _, _, r, _ in runs if r)
  held = sum(c['holds'] for _, _, r, _ in runs if r for c in r['claims'])
  failed_runs = [f'{p}/{n}' for p, n, r, _ in runs if r is None]
  lines += [f'**{held}/{total} claims hold**' + (f'; failed to run: {", ".join(failed_runs)}'
                                                  if failed_runs else '') + '.', '']
  for paper in dict.fromkeys(p for p, _, _, _ in runs):
    lines += [f'## {registry.PAPERS.get(paper, paper)}', '']
    for p, name, res, elapsed in runs:
      if p != paper:
        continue
      if res is None:
        lines += [f'### {name}: FAILED TO RUN', '', f'See `{p}/{name}/log.txt`.', '']
        continue
      lines += [f'### {name} — reproduces {res["reproduces"]} ({elapsed:.0f} s)', '',
                '| claim | expected | measured | tolerance | holds |', '|---|---|---|---|---|']
      for c in res['claims']:
        rel = {'within': '±', 'at_most': '≤ +', 'at_least': '≥ −'}[c['mode']]
        lines.append(f'| {c["claim"]} | {_fmt(c["expected"])} | {_fmt(c["measured"])} | '
                     f'{rel}{_fmt(c["tolerance"])} | {"yes" if c["holds"] else "**NO**"} |')
      lines.append('')
      for fig in res['figures']:
        lines.append(f'![{name} {fig}]({p}/{name}/{fig})')
      lines.append('')
  return '\n'.join(lines) + '\n'


def main(argv):
  if len(argv) > 1:
    raise SystemExit(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    chosen = select(_ONLY.value)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  out = _OUT.value
  os.makedirs(out, exist_ok=True)
  runs = []
  for paper, name in chosen:
    res, elapsed = run_one(paper, name, out, _PRESET.value)
    runs.append((paper, name, res, elapsed))
  text = report(runs, out, _PRESET.value)
  results.atomic_write_text(os.path.join(out, 'REPORT.md'), text)
  ok = all(r is not None and all(c['holds'] for c in r['claims']) for _, _, r, _ in runs)
  logging.info('wrote %s: %s', os.path.join(out, 'REPORT.md'),
               'every claim holds' if ok else 'SOME CLAIMS FAIL OR RUNS FAILED')
  sys.exit(0 if ok else 1)


if __name__ == '__main__':
  app.run(main)
