"""Test setup: 8 simulated CPU devices and strict rank promotion (STYLE.md section 5).

XLA_FLAGS must be set before jax is first imported, which is why it happens at the top of
conftest (pytest imports conftest before any test module).
"""

import os

os.environ['XLA_FLAGS'] = ' '.join(
    [os.environ.get('XLA_FLAGS', ''), '--xla_force_host_platform_device_count=8']).strip()

import jax  # noqa: E402  (after XLA_FLAGS on purpose)
import pytest  # noqa: E402

jax.config.update('jax_numpy_rank_promotion', 'raise')


def pytest_collection_modifyitems(config, items):
  """Without a -m expression, `slow` tests are skipped: the default tier stays fast."""
  if config.option.markexpr:
    return
  skip = pytest.mark.skip(reason='slow: run with -m slow')
  for item in items:
    if 'slow' in item.keywords:
      item.add_marker(skip)
