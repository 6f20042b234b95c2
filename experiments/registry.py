"""What `reproduce` runs: paper key -> experiment names (experiments/<paper>/<name>.py)."""

EXPERIMENTS = {
    'trained_lsa': ['gradient_flow', 'prediction_error', 'distribution_shift',
                    'random_covariance', 'gpt2_covariate_shift'],
    'functional_gd': ['construction', 'loss_vs_context', 'loss_vs_layers', 'multihead',
                      'stationary_points'],
    'autoregressive': ['augmented_gd', 'geometric_heads', 'heads_and_duplication',
                       'positional_encoding', 'softmax_ablation', 'text_ar_fit'],
}

PAPERS = {
    'trained_lsa': 'Zhang, Frei & Bartlett, Trained Transformers Learn Linear Models In-Context '
                   '(arXiv 2306.09927, JMLR 2024)',
    'functional_gd': 'Cheng, Chen & Sra, Transformers Implement Functional Gradient Descent to '
                     'Learn Non-Linear Functions In Context (ICML 2024)',
    'autoregressive': 'Sander, Giryes, Suzuki, Blondel & Peyre, How do Transformers Perform '
                      'In-Context Autoregressive Learning? (ICML 2024)',
}


def config_path(paper: str, name: str) -> str:
  return f'experiments/{paper}/configs/{name}.py'


def module(paper: str, name: str) -> str:
  return f'experiments.{paper}.{name}'
