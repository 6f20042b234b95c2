"""Linear-regression prompts, one per key (Zhang, Frei & Bartlett 2023, Secs. 3.3, 4.2, 4.3).

Covariates x_i, x_query ~ N(0, Lambda); labels from a task: linear with w ~ N(0, I) (Sec. 3.3),
a fixed w, a noisy linear model, or a nonlinear function (task shift, Sec. 4.2); the query may
come from another Gaussian or be orthogonal to the context span (query shift, Sec. 4.2);
Lambda may itself be a random diagonal matrix drawn per prompt (Sec. 4.3).

`cov` arguments are either a [d] vector (the diagonal of Lambda) or a [d, d] matrix.
"""

import functools
from typing import Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from icl_jax import linalg
from icl_jax.prompts import LinearPromptStats, Prompt

COVARIANCE_LAWS = ('exponential', 'uniform', 'chi2_1')
QUERY_KINDS = ('same', 'gaussian', 'orthogonal')


def _times_cov_sqrt(cov: jax.Array, a_DxK: jax.Array) -> jax.Array:
  """R a for a factor R R^T = cov: a row scaling by sqrt(cov) for a [d] cov, Cholesky if [d, d].

  The Cholesky goes through `icl_jax.linalg`, whose batches cannot deadlock jaxlib 0.10.2's
  CPU runtime should a caller vmap over covariances.
  """
  cov = jnp.asarray(cov)
  if cov.ndim == 1:
    return jnp.sqrt(cov)[:, None] * a_DxK
  return linalg.cholesky(cov) @ a_DxK


def gaussian(key: jax.Array, n: int, cov: jax.Array) -> jax.Array:
  """n i.i.d. draws from N(0, cov): [n, d]."""
  cov = jnp.asarray(cov)
  z_DxN = jax.random.normal(key, (n, cov.shape[0])).T
  return _times_cov_sqrt(cov, z_DxN).T


def random_diagonal(key: jax.Array, d: int, law: str = 'exponential',
                    scale: float = 1.0) -> jax.Array:
  """Diagonal of a random covariance Lambda_tau = scale * diag(lambda_1..lambda_d), Sec. 4.3.

  Args:
    key: PRNG key.
    d: dimension.
    law: law of the i.i.d. lambda_i: 'exponential' (Exp(1), the paper's), 'uniform' (U(0, 2)),
      or 'chi2_1' (chi-squared with one degree of freedom). All have mean 1.
    scale: the factor c multiplying Lambda (Fig. 1 uses c in {1, 4, 9}).

  Returns:
    [d] positive diagonal.
  """
  if law == 'exponential':
    lam = jax.random.exponential(key, (d,))
  elif law == 'uniform':
    lam = jax.random.uniform(key, (d,), minval=0.0, maxval=2.0)
  elif law == 'chi2_1':
    lam = jnp.square(jax.random.normal(key, (d,)))
  else:
    raise ValueError(f'law must be one of {COVARIANCE_LAWS}, got {law!r}')
  return scale * lam


def law_moments(law: str, scale: float = 1.0) -> tuple[float, float, float]:
  """(E lambda, E lambda^2, E lambda^3) of `scale * lambda` for a law of `random_diagonal`."""
  if law == 'exponential':
    m = (1.0, 2.0, 6.0)          # E X^k = k! for Exp(1)
  elif law == 'uniform':
    m = (1.0, 4.0 / 3.0, 2.0)    # E X^k = 2^k / (k + 1) for U(0, 2)
  elif law == 'chi2_1':
    m = (1.0, 3.0, 15.0)         # E Z^{2k} = (2k - 1)!!
  else:
    raise ValueError(f'law must be one of {COVARIANCE_LAWS}, got {law!r}')
  return tuple(scale**k * mk for k, mk in zip((1, 2, 3), m))


def orthogonal_to_span(x_NxD: jax.Array, v_D: jax.Array) -> jax.Array:
  """Projection of v onto the orthogonal complement of span{x_1..x_n} (n < d for it to be nonzero).

  An orthonormal basis of the span by classical Gram-Schmidt with one reorthogonalisation
  ("twice is enough", Giraud, Langou & Rozloznik 2005), the projection also applied twice: as
  accurate as QR when X has full row rank, as Gaussian covariates do almost surely. Kept over
  `icl_jax.linalg.qr` because it measured faster: jit(vmap) over 1024-16384 prompts on 2
  shared CPU cores, 2.1-3.5x at (n, d) = (2, 5), (4, 5), (2, 10), (5, 10); 1.3-2.2x at
  (5, 20), (10, 20); 1.1-2x at (19, 20). It has no LAPACK call at all. For n >= d the first d
  rows span R^d and the result is 0 to rounding.
  """
  n, d = x_NxD.shape
  rows = min(n, d)

  def project_out(q_RxD, u_D):
    for _ in range(2):
      u_D = u_D - q_RxD.T @ (q_RxD @ u_D)
    return u_D

  def add_row(i, q_RxD):
    u_D = project_out(q_RxD, x_NxD[i])  # rows >= i of q are still 0
    return q_RxD.at[i].set(u_D / jnp.sqrt(jnp.sum(jnp.square(u_D))))

  q_RxD = jax.lax.fori_loop(0, rows, add_row, jnp.zeros((rows, d), x_NxD.dtype))
  return project_out(q_RxD, v_D)


def _query(key, x_NxD, cov, query, query_cov):
  if query == 'same':
    return gaussian(key, 1, cov)[0]
  if query == 'gaussian':
    return gaussian(key, 1, query_cov)[0]
  if query == 'orthogonal':
    return orthogonal_to_span(x_NxD, gaussian(key, 1, cov if query_cov is None else query_cov)[0])
  raise ValueError(f'query must be one of {QUERY_KINDS}, got {query!r}')


def linear_prompt(key: jax.Array, *, n: int, cov: jax.Array, w: Optional[jax.Array] = None,
                  noise_std: float = 0.0, query: str = 'same',
                  query_cov: Optional[jax.Array] = None) -> Prompt:
  """A (noisy) linear prompt: y_i = <w, x_i> + eps_i, eps_i ~ N(0, noise_std^2), Sec. 3.3 / 4.2.

  Args:
    key: PRNG key; one prompt per key.
    n: context length (N in training, M at test).
    cov: [d] or [d, d] covariance Lambda of the context covariates.
    w: fixed task vector [d]; None draws w ~ N(0, I_d) (the training distribution).
    noise_std: label noise standard deviation (task shift when > 0). The query label is noisy too.
    query: 'same' (x_query ~ N(0, Lambda)), 'gaussian' (x_query ~ N(0, query_cov)) or
      'orthogonal' (a Gaussian draw projected off span{x_i}).
    query_cov: covariance of the query for 'gaussian' (and optionally 'orthogonal').

  Returns:
    Prompt with x [n, d], y [n], x_query [d], y_query [].
  """
  cov = jnp.asarray(cov)
  d = cov.shape[0]
  k_w, k_x, k_q, k_eps = jax.random.split(key, 4)
  if w is None:
    w = jax.random.normal(k_w, (d,))
  x_NxD = gaussian(k_x, n, cov)
  x_q = _query(k_q, x_NxD, cov, query, query_cov)
  eps = noise_std * jax.random.normal(k_eps, (n + 1,))
  return Prompt(x=x_NxD, y=x_NxD @ w + eps[:n], x_query=x_q, y_query=jnp.dot(w, x_q) + eps[n])


def labelled_prompt(key: jax.Array, *, n: int, cov: jax.Array,
                    label_fn: Callable[[jax.Array], jax.Array], noise_std: float = 0.0,
                    query: str = 'same', query_cov: Optional[jax.Array] = None) -> Prompt:
  """A prompt with labels y = label_fn(x) + noise from a fixed (possibly nonlinear) function.

  This is a draw of (x_i, y_i) i.i.d. from one distribution D as in Theorem 5.

  Args:
    label_fn: maps one covariate [d] to a scalar label.
    Others as in `linear_prompt`.
  """
  k_x, k_q, k_eps = jax.random.split(key, 3)
  x_NxD = gaussian(k_x, n, cov)
  x_q = _query(k_q, x_NxD, jnp.asarray(cov), query, query_cov)
  eps = noise_std * jax.random.normal(k_eps, (n + 1,))
  return Prompt(x=x_NxD, y=jax.vmap(label_fn)(x_NxD) + eps[:n], x_query=x_q,
                y_query=label_fn(x_q) + eps[n])


def relu_network(key: jax.Array, d: int, width: int) -> Callable[[jax.Array], jax.Array]:
  """A random two-layer ReLU network x -> a^T relu(V x) / sqrt(width), V, a ~ N(0, 1).

  Drawn once and held fixed: the nonlinear task of the task-shift experiment.
  """
  k_v, k_a = jax.random.split(key)
  v_HxD = jax.random.normal(k_v, (width, d)) / jnp.sqrt(d)
  a_H = jax.random.normal(k_a, (width,))

  def label_fn(x_D):
    return jnp.dot(a_H, jax.nn.relu(v_HxD @ x_D)) / jnp.sqrt(width)

  return label_fn


def random_covariance_prompt(key: jax.Array, *, n: int, d: int, law: str = 'exponential',
                             scale: float = 1.0, query: str = 'same') -> Prompt:
  """A linear prompt whose covariance Lambda_tau is a random diagonal drawn for it (Sec. 4.3).

  Args:
    query: 'same' draws x_query ~ N(0, Lambda_tau) as in eq. (20); 'independent' draws it from
      N(0, E Lambda_tau), independent of Lambda_tau, which is how the paper averages eq. (23)
      over Lambda_new with (x_query, w) held fixed.
  """
  if query not in ('same', 'independent'):
    raise ValueError(f"query must be 'same' or 'independent', got {query!r}")
  k_lam, k_w, k_prompt = jax.random.split(key, 3)
  lam = random_diagonal(k_lam, d, law, scale)
  w = jax.random.normal(k_w, (d,))
  if query == 'same':
    return linear_prompt(k_prompt, n=n, cov=lam, w=w)
  mean_lam = jnp.full((d,), law_moments(law, scale)[0])
  return linear_prompt(k_prompt, n=n, cov=lam, w=w, query='gaussian', query_cov=mean_lam)


def chi2(key: jax.Array, df: np.ndarray) -> jax.Array:
  """Independent chi-square draws with static degrees of freedom df (each >= 1): [len(df)].

  chi2(k) = 2 Gamma(k / 2), and Gamma(alpha) by Marsaglia & Tsang's squeeze-free rejection
  method (alpha >= 1; alpha = 1/2 via Gamma(alpha + 1) U^(1 / alpha)). Each round draws one
  normal and one uniform per entry from `fold_in(key, round)` and keeps the first accepted
  proposal; a round accepts with probability >= 0.95 for alpha >= 1, so a vmapped batch needs
  a handful of rounds. Unlike `jax.random.gamma` it splits no key per entry, which makes it
  several times faster on the Wishart diagonal.

  References:
    Marsaglia, Tsang. A simple method for generating gamma variables. ACM TOMS 26(3), 2000.
  """
  df = np.asarray(df, np.float64)
  if df.ndim != 1 or np.any(df < 1):
    raise ValueError(f'chi2 needs a 1-D df with every entry >= 1, got {df}')
  alpha = df / 2.0
  boost = alpha < 1.0
  dm = jnp.asarray(np.where(boost, alpha + 1.0, alpha) - 1.0 / 3.0, jnp.float32)
  c = 1.0 / jnp.sqrt(9.0 * dm)
  k_boost, k_rounds = jax.random.split(key)

  def propose(r):
    k_x, k_u = jax.random.split(jax.random.fold_in(k_rounds, r))
    x = jax.random.normal(k_x, df.shape)
    u = jax.random.uniform(k_u, df.shape)
    t = 1.0 + c * x
    v = t * t * t
    ok = (v > 0) & (jnp.log(u) < 0.5 * x * x + dm - dm * v + dm * jnp.log(jnp.maximum(v, 1e-30)))
    return dm * v, ok

  def cond(state):
    return ~jnp.all(state[2])

  def body(state):
    r, g, done = state
    g_new, ok = propose(r)
    return r + 1, jnp.where(done, g, g_new), done | ok

  g0, ok0 = propose(0)
  _, g, _ = jax.lax.while_loop(cond, body, (1, g0, ok0))
  if np.any(boost):
    u = jax.random.uniform(k_boost, df.shape, minval=jnp.finfo(jnp.float32).tiny)
    g = jnp.where(jnp.asarray(boost), g * u ** jnp.asarray(1.0 / alpha, jnp.float32), g)
  return 2.0 * g


def sample_linear_stats(key: jax.Array, *, n: int, cov: jax.Array,
                        w: Optional[jax.Array] = None) -> LinearPromptStats:
  """Sufficient statistics (S, w, x_query) of a noiseless linear prompt, without its n points.

  n S = X^T X ~ Wishart_d(n, Lambda), drawn by the Bartlett decomposition: X^T X = R B B^T R^T
  with R R^T = Lambda, B lower triangular, B_ii ~ sqrt(chi2(n - i)), B_ij ~ N(0, 1) for i > j.
  That is d(d-1)/2 normals and d chi-squares in place of n d normals, and S is returned as its
  factor F = R B / sqrt(n) (S = F F^T), never formed. Same distribution as
  `linear_prompt(key, n=n, cov=cov, w=w)` (not the same numbers for a key). Needs n >= d.
  """
  cov = jnp.asarray(cov)
  d = cov.shape[0]
  if n < d:
    raise ValueError(f'the Wishart draw needs n >= d, got n={n}, d={d}')
  k_chi, k_normal = jax.random.split(key)
  # One normal draw for B's strict lower triangle, the query and (if random) w.
  num_lower = d * (d - 1) // 2
  z = jax.random.normal(k_normal, (num_lower + d + (d if w is None else 0),))
  rows, cols = np.tril_indices(d, -1)
  index_DxD = np.full((d, d), num_lower + d, np.int32)  # -> an appended zero
  index_DxD[rows, cols] = np.arange(num_lower)
  b_DxD = jnp.concatenate([z[:num_lower], jnp.zeros((1,), z.dtype)])[index_DxD]
  b_DxD = b_DxD + jnp.diag(jnp.sqrt(chi2(k_chi, n - np.arange(d))))
  if w is None:
    w = z[num_lower + d:]
  # R [B | z_q]: one product (a row scaling for diagonal Lambda) for the factor and the query.
  rb_Dx1d = _times_cov_sqrt(cov, jnp.concatenate([b_DxD, z[num_lower:num_lower + d, None]], 1))
  rb_DxD, x_q = rb_Dx1d[:, :d], rb_Dx1d[:, d]
  return LinearPromptStats(x_factor=rb_DxD / np.sqrt(n), w=w, x_query=x_q,
                           y_query=jnp.dot(w, x_q), n=n)


def random_covariance_stats(key: jax.Array, *, n: int, d: int, law: str = 'exponential',
                            scale: float = 1.0, query: str = 'same') -> LinearPromptStats:
  """Sufficient statistics of a `random_covariance_prompt`, at a cost independent of n.

  Lambda_tau = `random_diagonal`, w ~ N(0, I_d), n S ~ Wishart_d(n, Lambda_tau) by
  `sample_linear_stats` (needs n >= d); the query as in `random_covariance_prompt`: 'same'
  (x_query ~ N(0, Lambda_tau), eq. (20)) or 'independent' (N(0, E Lambda_tau)). Same
  distribution as `random_covariance_prompt`, not the same numbers for a key.
  """
  if query not in ('same', 'independent'):
    raise ValueError(f"query must be 'same' or 'independent', got {query!r}")
  k_lam, k_stats, k_query = jax.random.split(key, 3)
  lam = random_diagonal(k_lam, d, law, scale)
  stats = sample_linear_stats(k_stats, n=n, cov=lam)
  if query == 'same':
    return stats
  x_q = np.sqrt(law_moments(law, scale)[0]) * jax.random.normal(k_query, (d,), lam.dtype)
  return stats.replace(x_query=x_q, y_query=jnp.dot(stats.w, x_q))


# --- shift-experiment prompts (Sec. 4.2): reduced to sufficient statistics, or rescaled ----------

@flax.struct.dataclass
class ReducedPrompt:
  """A linear-regression prompt of length n >= d reduced to d rows with the same statistics.

  With X = Q R (QR, R [d, d] upper triangular) and r = Q^T y, the d-row prompt (R, r) has
  R^T R = X^T X and R^T r = X^T y, and y^T y = r^T r + y_residual_sq, where y_residual_sq is
  the label energy orthogonal to the columns of X. Eq. (6) reads a prompt only through
  E E^T / n (`gram`), and least squares only through X^T X and X^T y (`prompt`), so both give
  on the reduced prompt exactly what they give on the n points. `reduced_linear_prompt` draws
  it at a cost independent of n.

  Attributes:
    x: [d, d] R, upper triangular.
    y: [d] r.
    y_residual_sq: [] ||y||^2 - ||r||^2 >= 0.
    x_query: [d] the query covariate.
    y_query: [] its label.
    n: static length n of the prompt it stands for (rho = n in eq. (3)).
  """
  x: jax.Array
  y: jax.Array
  y_residual_sq: jax.Array
  x_query: jax.Array
  y_query: jax.Array
  n: int = flax.struct.field(pytree_node=False)

  def prompt(self) -> Prompt:
    """The d-row prompt (R, r, x_query, y_query): `estimators.ols` on it is OLS on the n points
    (both solve X^T X w = X^T y); eq. (6) on it is not (rho = d): use `gram`."""
    return Prompt(x=self.x, y=self.y, x_query=self.x_query, y_query=self.y_query)

  def least_squares(self) -> jax.Array:
    """[d] the OLS fit (X^T X)^-1 X^T y of the n points: R^-1 r by back substitution.

    O(d^2) and free of LAPACK calls (R is triangular, so no elimination is needed); equals the
    solve `estimators.ols` does on `prompt()`. Needs R invertible (n >= d, X of full rank).
    """
    w_D = jnp.zeros_like(self.y)
    for i in reversed(range(w_D.shape[0])):   # row i of R is 0 left of i, w is 0 from i down
      w_D = w_D.at[i].set((self.y[i] - self.x[i] @ w_D) / self.x[i, i])
    return w_D

  def gram(self) -> jax.Array:
    """[d+1, d+1] E E^T / n of eq. (6) for the n-point prompt, = `prompts.gram` of it."""
    xx = (self.x.T @ self.x + jnp.outer(self.x_query, self.x_query)) / self.n
    xy = self.x.T @ self.y / self.n
    yy = (jnp.dot(self.y, self.y) + self.y_residual_sq) / self.n
    top = jnp.concatenate([xx, xy[:, None]], axis=1)
    return jnp.concatenate([top, jnp.concatenate([xy, yy[None]])[None]], axis=0)


def reduced_linear_prompt(key: jax.Array, *, n: int, cov: jax.Array,
                          w: Optional[jax.Array] = None, noise_std: float = 0.0,
                          query: str = 'same',
                          query_cov: Optional[jax.Array] = None) -> ReducedPrompt:
  """`linear_prompt` (same arguments, query 'same' or 'gaussian') reduced to d rows, O(d^2) draws.

  A Wishart draw of `sample_linear_stats` relabelled by `reduce_linear_stats`: the triple
  (X^T X, X^T y, y^T y) and (x_query, y_query) have the joint law they have under
  `linear_prompt` (not the same numbers for a key), at a cost independent of n.

  Args:
    key: PRNG key; one prompt per key.
    n: prompt length M (>= d).
    cov: [d] or [d, d] covariance Lambda of the covariates.
    w: fixed task vector [d]; None draws w ~ N(0, I_d).
    noise_std: label noise std s (context and query labels). A Python 0 skips the noise draws.
    query: 'same' (x_query ~ N(0, Lambda)) or 'gaussian' (x_query ~ N(0, query_cov)).
    query_cov: [d] or [d, d] covariance of a 'gaussian' query.

  Returns:
    ReducedPrompt with x [d, d], y [d], x_query [d], and n.
  """
  if query not in ('same', 'gaussian'):
    raise ValueError(f"query must be 'same' or 'gaussian' (a reduced prompt has no points to be "
                     f"orthogonal to), got {query!r}")
  k_stats, k_noise, k_query = jax.random.split(key, 3)
  stats = sample_linear_stats(k_stats, n=n, cov=cov, w=w)
  x_q = None if query == 'same' else gaussian(k_query, 1, query_cov)[0]
  return reduce_linear_stats(k_noise, stats, noise_std=noise_std, x_query=x_q)


def reduce_linear_stats(key: jax.Array, stats: LinearPromptStats, *,
                        w: Optional[jax.Array] = None, noise_std: float = 0.0,
                        x_query: Optional[jax.Array] = None) -> ReducedPrompt:
  """The reduced prompt of the covariates behind a `sample_linear_stats` draw, labelled by w.

  X^T X = n F F^T gives R = sqrt(n) F^T (upper triangular, R^T R = X^T X). Given X, the noise
  eps ~ N(0, s^2 I_n) splits into its part along the columns of X, Q^T eps ~ N(0, s^2 I_d), and
  an independent rest with ||.||^2 ~ s^2 chi2(n - d); with y = X w + eps that makes
  r = Q^T y = R w + s z (z ~ N(0, I_d)) and y_residual_sq = s^2 chi2(n - d). Several calls on
  one draw give prompts that share their covariates (each of the law of `linear_prompt`).

  Args:
    key: PRNG key of the noise (unused when noise_std is a Python 0).
    stats: a draw of `sample_linear_stats` (its n, covariates, query and task).
    w: task vector [d]; None keeps stats.w.
    noise_std: label noise std s (context and query labels).
    x_query: [d] another query covariate; None keeps stats.x_query.
  """
  n, w = stats.n, stats.w if w is None else w
  d = w.shape[0]
  r_DxD = np.sqrt(n) * stats.x_factor.T
  x_q = stats.x_query if x_query is None else x_query
  y_D, y_q, resid = r_DxD @ w, jnp.dot(w, x_q), jnp.zeros((), r_DxD.dtype)
  if not (isinstance(noise_std, (int, float)) and noise_std == 0):
    k_z, k_resid = jax.random.split(key)
    z = jax.random.normal(k_z, (d + 1,))
    y_D, y_q = y_D + noise_std * z[:d], y_q + noise_std * z[d]
    if n > d:
      resid = noise_std**2 * chi2(k_resid, np.array([n - d]))[0]
  return ReducedPrompt(x=r_DxD, y=y_D, y_residual_sq=resid, x_query=x_q, y_query=y_q, n=n)


def scale_covariates(prompt, scale):
  """A noiseless linear prompt with every covariate multiplied by c = scale (covariate shift).

  Labels <w, c x> = c <w, x>: x, x_query and every label scale by c (a `ReducedPrompt`'s
  residual label energy by c^2), so one draw serves every c. Wrong for noisy or nonlinear
  labels, whose noise or shape does not scale with x.

  Args:
    prompt: a `Prompt` or `ReducedPrompt` with labels <w, x_i>.
    scale: c, a scalar.
  """
  fields = dict(x=scale * prompt.x, y=scale * prompt.y, x_query=scale * prompt.x_query,
                y_query=scale * prompt.y_query)
  if isinstance(prompt, ReducedPrompt):
    fields['y_residual_sq'] = scale**2 * prompt.y_residual_sq
  return prompt.replace(**fields)


def shift_prompts(key: jax.Array, *, n: int, cov: jax.Array, tasks=None,
                  query_covs=None) -> dict:
  """Task- and query-shift test prompts of Sec. 4.2 on one draw of n covariates, reduced.

  One `sample_linear_stats` draw (X^T X, w ~ N(0, I_d), x_query ~ N(0, Lambda)) relabelled by
  `reduce_linear_stats`: 'same' keeps it (the training law); tasks[name] = (w, noise_std) gives
  a fixed task vector with label noise (task shift); query_covs[name] = Q draws x_query ~ N(0, Q)
  for the random task (query shift). The prompts share X, so their errors are correlated; each
  alone has the law of `linear_prompt` with the same arguments.

  Returns:
    {'same': ReducedPrompt, **{name: ReducedPrompt for tasks and query_covs}}.
  """
  k_stats, k_noise, k_query = jax.random.split(key, 3)
  stats = sample_linear_stats(k_stats, n=n, cov=cov)
  out = {'same': reduce_linear_stats(k_noise, stats)}
  for i, (name, (w, noise_std)) in enumerate((tasks or {}).items()):
    out[name] = reduce_linear_stats(jax.random.fold_in(k_noise, i), stats, w=w,
                                    noise_std=noise_std)
  for i, (name, q_cov) in enumerate((query_covs or {}).items()):
    x_q = gaussian(jax.random.fold_in(k_query, i), 1, q_cov)[0]
    out[name] = reduce_linear_stats(k_noise, stats, x_query=x_q)
  return out


def orthogonal_query_prompts(key: jax.Array, *, n: int, covs: jax.Array) -> Prompt:
  """Linear prompts of n < d points with a query orthogonal to their span, one per covariance.

  `linear_prompt(query='orthogonal')` vmapped over covs [k, d] (one compiled sampler for all,
  which matters on CPU where every random call site costs compile time). Sec. 4.2 predicts
  y_hat = 0 for such a query.

  Returns:
    Prompt with a leading [k] axis.
  """
  sample = functools.partial(linear_prompt, n=n, query='orthogonal')
  return jax.vmap(sample)(jax.random.split(key, covs.shape[0]), cov=covs)
