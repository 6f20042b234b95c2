"""What every functional_gd config shares: the covariates and label kernels of Appendix H.1.

Each app's config starts from `base()` and adds its own fields; `each` writes one preset
override for every activation of a by_activation table.
"""

from ml_collections import config_dict

from experiments import common
from icl_jax.samplers import kernel_gp


def base() -> config_dict.ConfigDict:
  """common.base_config() with d, num_seeds, covariance_diag and the kernel parameters."""
  config = common.base_config()
  config.d = 5                                      # covariate dimension d (Appendix H.1)
  config.num_seeds = 1                              # Sigma = U^T D U per seed (config.seed picks U)
  config.covariance_diag = kernel_gp.PAPER_DIAG     # D of Appendix H.1
  # Label kernels (eq. (11), App. D). The composite is Fig 4(c)'s with the issue's G2 and
  # bandwidth 1 (the paper's text has exp(<G2 u, G2 w> / 2), i.e. bandwidth^2 = 2); apps without
  # the composite still carry its fields (fgd_common.validate_problem checks them).
  config.kernel = config_dict.ConfigDict({
      'bandwidth': 1.0,                  # sigma of K_exp(u, w) = exp(<u, w> / sigma^2)
      'alpha': 0.5,                      # composite: alpha K_lin(G1 .) + (1 - alpha) K_exp(G2 .)
      'g1': (1.0, 1.0, 0.0, 0.0, 0.0),   # diagonal of G1
      'g2': (0.0, 0.0, 1.0, 1.0, 1.0),   # diagonal of G2
  })
  return config


def each(activations, **fields) -> dict:
  """Preset overrides by_activation.<act>.<field> = value for every activation."""
  return {f'by_activation.{a}.{f}': v for a in activations for f, v in fields.items()}
