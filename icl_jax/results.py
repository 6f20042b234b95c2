"""What every app ends with: results.json, arrays.npz and figures, written atomically.

The layout is the DESIGN.md app contract. Every file goes to a temporary name in the workdir and
is renamed into place, so an interrupted run never leaves half a result, and a run that fails
before `write_run` leaves the previous results untouched.
"""

import dataclasses
import io
import json
import math
import os
import platform
import tempfile
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import numpy as np

MARKER = 'experiment.json'
MODES = ('within', 'at_most', 'at_least')


class WorkdirError(ValueError):
  """The workdir belongs to another experiment."""


@dataclasses.dataclass(frozen=True)
class Claim:
  """A statement of the paper checked against a number measured in this run.

  `holds` is computed from measured, expected and tolerance, never passed in:
    'within':   |measured - expected| <= tolerance
    'at_most':  measured <= expected + tolerance
    'at_least': measured >= expected - tolerance
  The tolerance comes from the config, fixed before the run.
  """
  claim: str
  measured: float
  expected: float
  tolerance: float
  mode: str = 'within'

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f'mode must be one of {MODES}, got {self.mode!r}')
    for name in ('measured', 'expected', 'tolerance'):
      object.__setattr__(self, name, float(getattr(self, name)))

  @property
  def holds(self) -> bool:
    m, e, t = self.measured, self.expected, self.tolerance
    if not all(math.isfinite(v) for v in (m, e, t)):
      return False
    if self.mode == 'within':
      return abs(m - e) <= t
    if self.mode == 'at_most':
      return m <= e + t
    return m >= e - t

  def to_json(self) -> dict:
    return {'claim': self.claim, 'measured': self.measured, 'expected': self.expected,
            'tolerance': self.tolerance, 'mode': self.mode, 'holds': self.holds}


def stderr_claim(text: str, measured: float, stderr: float, expected: float, k: float,
                 expected_stderr: float = 0.0) -> Claim:
  """A Monte-Carlo estimate equals a closed form within k combined standard errors.

  The tolerance is k sqrt(stderr^2 + expected_stderr^2): k is fixed in the config before the run,
  the standard errors come from this run's samples (expected_stderr is nonzero when the expected
  value is itself an estimate, e.g. a plug-in of Monte-Carlo moments).
  """
  tol = k * math.hypot(float(stderr), float(expected_stderr))
  return Claim(f'{text} (tolerance {k:g} x stderr = {tol:.3g})', measured, expected, tol)


class Evidence(NamedTuple):
  """What an app's claims are checked on: `check(config, evidence) -> (claims, metrics)`.

  measured: numbers this run measured (learned weights, Monte-Carlo means and standard errors).
  theory: closed forms and optima, computed without looking at the measurement.
  Both map names to numbers or numeric arrays. Keeping them apart, and the claim builder a pure
  function of them, lets a test feed it a measurement or a closed form that is wrong by 10% and
  see the claims that should notice fail (tests/mutation_test.py); `evidence.npz` keeps them so a
  finished run can be re-checked.
  """
  measured: Mapping[str, Any]
  theory: Mapping[str, Any]


class Run(NamedTuple):
  """What an experiment's `run` returns; the app entry point times it and writes it."""
  metrics: Mapping[str, float]
  claims: Sequence[Claim]
  arrays: Mapping[str, Any] = {}
  figures: Mapping[str, Any] = {}   # {file name: matplotlib figure}
  evidence: Optional[Evidence] = None


def load_evidence(workdir: str) -> Evidence:
  """The Evidence a finished run saved in workdir/evidence.npz."""
  with np.load(os.path.join(workdir, 'evidence.npz')) as npz:
    parts = {'measured': {}, 'theory': {}}
    for name in npz.files:
      part, key = name.split('/', 1)
      parts[part][key] = npz[name]
  return Evidence(**parts)


def _atomic_write_bytes(path: str, data: bytes) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-', suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def atomic_write_text(path: str, text: str) -> None:
  _atomic_write_bytes(path, text.encode())


def _jsonable(x: Any) -> Any:
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if hasattr(x, 'tolist'):
    return _jsonable(x.tolist())
  if isinstance(x, float) and not math.isfinite(x):
    return str(x)
  return x


def check_workdir(workdir: str, experiment: str) -> None:
  """Refuses a workdir that holds another experiment's results or checkpoints; writes nothing.

  Raises:
    WorkdirError: workdir holds results or checkpoints of a different experiment.
  """
  existing = None
  for name in (MARKER, 'results.json'):
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      with open(path) as f:
        existing = json.load(f).get('experiment')
      break
  if existing is not None and existing != experiment:
    raise WorkdirError(f'--workdir={workdir} holds experiment {existing!r}, not {experiment!r}; '
                       'use another workdir')


def mark_workdir(workdir: str, experiment: str) -> None:
  """Marks workdir as this experiment's (after `check_workdir`; only the writer process)."""
  marker = os.path.join(workdir, MARKER)
  if not os.path.exists(marker):
    atomic_write_text(marker, json.dumps({'experiment': experiment}) + '\n')


def prepare_workdir(workdir: str, experiment: str) -> None:
  """`check_workdir`, then `mark_workdir`: for single-process callers."""
  check_workdir(workdir, experiment)
  mark_workdir(workdir, experiment)


def close_figures(figures: Mapping[str, Any]) -> None:
  """Closes figures a process will not save (every process but the writer)."""
  import matplotlib.pyplot as plt
  for fig in figures.values():
    plt.close(fig)


def save_figure(fig, path: str) -> None:
  """Saves a matplotlib figure atomically as PNG and closes it."""
  import matplotlib.pyplot as plt
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=110, bbox_inches='tight')
  plt.close(fig)
  _atomic_write_bytes(path, buf.getvalue())


def versions() -> dict:
  import jax
  import flax
  import optax
  return {'python': platform.python_version(), 'jax': jax.__version__, 'flax': flax.__version__,
          'optax': optax.__version__, 'numpy': np.__version__,
          'backend': jax.default_backend(), 'device_count': jax.device_count()}


def _save_npz(path: str, arrays: Mapping[str, Any]) -> None:
  buf = io.BytesIO()
  np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
  _atomic_write_bytes(path, buf.getvalue())


def write_run(workdir: str, *, experiment: str, paper: str, reproduces: str, config: Mapping,
              run: Run, runtime_s: float = 0.0) -> dict:
  """Writes arrays.npz, the figures and results.json (last, so it marks a complete run).

  Only the writer process (`distributed.is_writer`) calls this.

  Args:
    run: metrics, claims, arrays and {file name: matplotlib figure} of the run.

  Returns:
    The results dictionary written to results.json.
  """
  os.makedirs(workdir, exist_ok=True)
  if run.arrays:
    _save_npz(os.path.join(workdir, 'arrays.npz'), run.arrays)
  if run.evidence is not None:
    _save_npz(os.path.join(workdir, 'evidence.npz'),
              {f'{part}/{k}': v for part in ('measured', 'theory')
               for k, v in getattr(run.evidence, part).items()})
  names = []
  for name, fig in run.figures.items():
    save_figure(fig, os.path.join(workdir, name))
    names.append(name)
  results = {
      'experiment': experiment, 'paper': paper, 'reproduces': reproduces,
      'config': _jsonable(config),
      'metrics': _jsonable({k: float(v) for k, v in run.metrics.items()}),
      'claims': [c.to_json() for c in run.claims], 'figures': names,
      'runtime_s': float(runtime_s), 'versions': versions(),
  }
  atomic_write_text(os.path.join(workdir, 'results.json'), json.dumps(results, indent=2) + '\n')
  return results
