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
from typing import Any, Mapping, Optional, Sequence

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


def prepare_workdir(workdir: str, experiment: str) -> None:
  """Creates workdir and marks it as this experiment's; refuses one that holds another.

  Raises:
    WorkdirError: workdir holds results or checkpoints of a different experiment.
  """
  marker = os.path.join(workdir, MARKER)
  existing = None
  if os.path.exists(marker):
    with open(marker) as f:
      existing = json.load(f).get('experiment')
  elif os.path.exists(os.path.join(workdir, 'results.json')):
    with open(os.path.join(workdir, 'results.json')) as f:
      existing = json.load(f).get('experiment')
  if existing is not None and existing != experiment:
    raise WorkdirError(f'--workdir={workdir} holds experiment {existing!r}, not {experiment!r}; '
                       'use another workdir')
  if existing is None:
    atomic_write_text(marker, json.dumps({'experiment': experiment}) + '\n')


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


def write_run(workdir: str, *, experiment: str, paper: str, reproduces: str, config: Mapping,
              metrics: Mapping[str, float], claims: Sequence[Claim],
              arrays: Optional[Mapping[str, Any]] = None,
              figures: Optional[Mapping[str, Any]] = None, runtime_s: float = 0.0) -> dict:
  """Writes arrays.npz, the figures and results.json (last, so it marks a complete run).

  Args:
    figures: {file name: matplotlib figure}; saved as PNGs in workdir.

  Returns:
    The results dictionary written to results.json.
  """
  os.makedirs(workdir, exist_ok=True)
  if arrays:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    _atomic_write_bytes(os.path.join(workdir, 'arrays.npz'), buf.getvalue())
  names = []
  for name, fig in (figures or {}).items():
    save_figure(fig, os.path.join(workdir, name))
    names.append(name)
  results = {
      'experiment': experiment, 'paper': paper, 'reproduces': reproduces,
      'config': _jsonable(config), 'metrics': _jsonable({k: float(v) for k, v in metrics.items()}),
      'claims': [c.to_json() for c in claims], 'figures': names,
      'runtime_s': float(runtime_s), 'versions': versions(),
  }
  atomic_write_text(os.path.join(workdir, 'results.json'), json.dumps(results, indent=2) + '\n')
  return results
