"""Process-memory measurements the benchmarks share: current and peak RSS (Linux /proc)."""

import math
import platform


def proc_status_kib(field: str) -> float:
  """A 'kB' field of /proc/self/status (VmHWM: peak RSS, VmRSS: current RSS); nan off Linux."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith(field + ':'):
          return float(line.split()[1])
  except OSError:
    pass
  return math.nan


def peak_rss_mb() -> float:
  peak = proc_status_kib('VmHWM')
  if math.isnan(peak):
    import resource  # pylint: disable=g-import-not-at-top
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    if platform.system() == 'Darwin':
      peak /= 1024.0
  return peak / 1024.0


def reset_peak_rss() -> bool:
  """Resets VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False
