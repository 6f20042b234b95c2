"""Closed forms of Zhang, Frei & Bartlett (2023) for one trained linear self-attention layer.

Gamma, the Theorem 4 optimum, the Theorem 5 / Corollary 6 test error, the Theorem 8 optimum for
random diagonal covariances and the M, N -> infinity factor of eq. (23); and the exact population
loss (8) of an LSA layer with arbitrary weights on Gaussian prompts.

`cov` is Lambda, a [d] diagonal or a [d, d] symmetric positive-definite matrix.

References:
  Zhang, Frei, Bartlett. Trained Transformers Learn Linear Models In-Context.
  arXiv:2306.09927, JMLR 2024.
"""

import jax
import jax.numpy as jnp


def as_matrix(cov: jax.Array) -> jax.Array:
  cov = jnp.asarray(cov)
  return jnp.diag(cov) if cov.ndim == 1 else cov


def gamma(cov: jax.Array, n: int) -> jax.Array:
  """Gamma = (1 + 1/N) Lambda + tr(Lambda)/N I_d (Theorem 4)."""
  lam = as_matrix(cov)
  d = lam.shape[0]
  return (1.0 + 1.0 / n) * lam + jnp.trace(lam) / n * jnp.eye(d, dtype=lam.dtype)


def sigma_bound(cov: jax.Array, n: int) -> jax.Array:
  """The largest Assumption 3 scale Theorem 4 allows: sigma^2 ||Gamma||_op sqrt(d) < 2.

  Returns sqrt(2 / (||Gamma||_op sqrt(d))); an initialisation scale sigma must be below it.
  ||Gamma||_op is its largest eigenvalue, max(diag) for a diagonal Lambda; a full Lambda goes
  through `jnp.linalg.eigvalsh` (one call).
  """
  cov = jnp.asarray(cov)
  g = gamma(cov, n)
  d = g.shape[0]
  g_op = jnp.max(jnp.diag(g)) if cov.ndim == 1 else jnp.linalg.eigvalsh(g)[-1]
  return jnp.sqrt(2.0 / (g_op * jnp.sqrt(d)))


def _blocks(top_left: jax.Array, scale: jax.Array):
  d = top_left.shape[0]
  w_kq = jnp.zeros((d + 1, d + 1), top_left.dtype).at[:d, :d].set(top_left / jnp.sqrt(scale))
  w_pv = jnp.zeros((d + 1, d + 1), top_left.dtype).at[d, d].set(jnp.sqrt(scale))
  return w_kq, w_pv


def optimum(cov: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
  """(W_KQ*, W_PV*) of eq. (11): [tr(Gamma^-2)]^(-1/4) Gamma^-1 and [tr(Gamma^-2)]^(1/4) e e^T."""
  g_inv = jnp.linalg.inv(gamma(cov, n))
  return _blocks(g_inv, jnp.sqrt(jnp.trace(g_inv @ g_inv)))


def population_loss(w_kq: jax.Array, w_pv: jax.Array, cov: jax.Array, n: int) -> jax.Array:
  """Exact population loss (8) of f_LSA with any weights, x ~ N(0, Lambda), w ~ N(0, I_d).

  With b = w_21^PV, c = w_22^PV, A = W_11^KQ, k = w_21^KQ the prediction (6) on a linear prompt
  is y_hat = beta^T S C q + (1/N)(b^T q)(q^T A q), beta = b + c w, C = A + w k^T,
  S = X^T X / N, q = x_query. The loss is a polynomial in (S, w, q); its expectation follows from
  the Wishart second moment E(u^T S v)^2 = (u^T L v)^2 + [(u^T L u)(v^T L v) + (u^T L v)^2]/N and
  Isserlis' theorem for w and q. Derived for this project (not in the paper); it reduces to
  Lemma 9's quadratic form (1/2)[c^2 tr(Gamma L A L A^T) - 2c tr(A L^2) + tr L] when b = k = 0,
  and tests check it against Monte Carlo for arbitrary weights.

  Returns:
    [] L(theta) = E (y_hat - <w, x_query>)^2 / 2.
  """
  lam = as_matrix(cov)
  d = lam.shape[0]
  a, k = w_kq[:d, :d], w_kq[d, :d]
  b, c = w_pv[d, :d], w_pv[d, d]
  lam2 = lam @ lam
  t1, t2 = jnp.trace(lam), jnp.trace(lam2)
  m4 = t1**2 + 2.0 * t2                         # E (w^T L w)^2
  a_sym = 0.5 * (a + a.T)
  k_l_k, b_l_b = k @ lam @ k, b @ lam @ b
  b_l2_a_l_k = b @ lam2 @ a @ lam @ k
  tr_a_l_a_l = jnp.trace(a.T @ lam @ a @ lam)
  # E (beta^T L C q)^2
  e_p2 = (b @ lam @ a @ lam @ a.T @ lam @ b + k_l_k * (b @ lam2 @ b) + 2.0 * c * b_l2_a_l_k
          + c**2 * jnp.trace(a.T @ lam2 @ a @ lam) + 2.0 * c * t1 * (b @ lam @ a @ lam @ k)
          + c**2 * k_l_k * m4)
  # E (beta^T L beta)(q^T C^T L C q)
  e_t2 = (b_l_b * tr_a_l_a_l + 4.0 * c * b_l2_a_l_k + (b_l_b * k_l_k + c**2 * tr_a_l_a_l) * t1
          + c**2 * k_l_k * m4)
  # E (beta^T L C q) r with r = (1/N)(b^T q)(q^T A q) - w^T q
  m = a.T @ lam @ b + c * t1 * k
  t = jnp.trace(a_sym @ lam)
  e_pr = (((b @ lam @ m) * t + 2.0 * (b @ lam @ a_sym @ lam @ m)) / n
          - b @ lam2 @ k - c * jnp.trace(a @ lam2))
  # E r^2
  e_r2 = ((b_l_b * (t**2 + 2.0 * jnp.trace(a_sym @ lam @ a_sym @ lam))
           + 4.0 * t * (b @ lam @ a_sym @ lam @ b)
           + 8.0 * (b @ lam @ a_sym @ lam @ a_sym @ lam @ b)) / n**2 + t1)
  return 0.5 * ((1.0 + 1.0 / n) * e_p2 + e_t2 / n + 2.0 * e_pr + e_r2)


def test_error(cov, n, m, a, sigma_xy, best_linear_error):
  """Theorem 5, eq. (16): E (y_hat - y_query)^2 of the Theorem 4 optimum on prompts of length M.

  Args:
    cov: Lambda of the test (= training) covariates.
    n: training prompt length N.
    m: test prompt length M.
    a: [d] best linear predictor Lambda^-1 E[x y].
    sigma_xy: [d, d] covariance of x y.
    best_linear_error: min_w E (<w, x> - y)^2.
  """
  lam = as_matrix(cov)
  g_inv = jnp.linalg.inv(gamma(lam, n))
  g_inv2 = g_inv @ g_inv
  t1 = jnp.trace(lam)

  def norm2(mat):
    return a @ mat @ a

  return (best_linear_error + jnp.trace(sigma_xy @ g_inv2 @ lam) / m
          + (norm2(g_inv2 @ lam @ lam @ lam) + 2.0 * t1 * norm2(g_inv2 @ lam @ lam)
             + t1**2 * norm2(g_inv2 @ lam)) / n**2)


def linear_task_moments(cov, w, noise_std=0.0):
  """(a, Sigma, best linear error) of Theorem 5 for y = <w, x> + eps, eps ~ N(0, noise_std^2).

  Sigma = ||w||_L^2 L + L w w^T L + noise_std^2 L (the paper's remark after Thm 5, plus noise).
  """
  lam = as_matrix(cov)
  lw = lam @ w
  sigma = (w @ lw + noise_std**2) * lam + jnp.outer(lw, lw)
  return w, sigma, jnp.asarray(noise_std**2, lam.dtype)


def test_error_linear(cov, n, m, w, noise_std=0.0):
  """Theorem 5 for (noisy) linear prompts with a fixed task vector w."""
  a, sigma, best = linear_task_moments(cov, w, noise_std)
  return test_error(cov, n, m, a, sigma, best)


def test_error_expected(cov, n, m):
  """Theorem 5 averaged over w ~ N(0, I_d) for noiseless linear prompts (Cor. 6's setting).

  E ||w||_B^2 = tr(B), so every ||w||^2 in the fixed-w form becomes a trace.
  """
  lam = as_matrix(cov)
  g_inv = jnp.linalg.inv(gamma(lam, n))
  g_inv2 = g_inv @ g_inv
  t1 = jnp.trace(lam)
  lam2, lam3 = lam @ lam, lam @ lam @ lam
  return ((jnp.trace(g_inv2 @ lam3) + jnp.trace(g_inv2 @ lam2) * t1) / m
          + (jnp.trace(g_inv2 @ lam3) + 2.0 * t1 * jnp.trace(g_inv2 @ lam2)
             + t1**2 * jnp.trace(g_inv2 @ lam)) / n**2)


def error_floor_expected(cov, n):
  """The M -> infinity limit of `test_error_expected`: the N-dependent 1/N^2 term."""
  lam = as_matrix(cov)
  g_inv = jnp.linalg.inv(gamma(lam, n))
  g_inv2 = g_inv @ g_inv
  t1 = jnp.trace(lam)
  return (jnp.trace(g_inv2 @ lam @ lam @ lam) + 2.0 * t1 * jnp.trace(g_inv2 @ lam @ lam)
          + t1**2 * jnp.trace(g_inv2 @ lam)) / n**2


def shifted_query_error(cov, n, m, query_cov):
  """E (y_hat - <w, x_query>)^2 of the optimum when x_query ~ N(0, query_cov), w ~ N(0, I).

  y_hat - y = x_q^T (Gamma^-1 S - I) w with S = (1/M) sum x_i x_i^T, so the error is
  tr E[(S G - I) Q (G S - I)] with G = Gamma^-1, Q = query_cov, and the Wishart moment
  E[S B S] = (1 + 1/M) L B L + tr(B L) L / M. (Derived for the query-shift claim of Sec. 4.2.)
  """
  lam, q = as_matrix(cov), as_matrix(query_cov)
  g_inv = jnp.linalg.inv(gamma(lam, n))
  bmat = g_inv @ q @ g_inv
  e_sbs = (1.0 + 1.0 / m) * lam @ bmat @ lam + jnp.trace(bmat @ lam) * lam / m
  return jnp.trace(e_sbs) - 2.0 * jnp.trace(lam @ g_inv @ q) + jnp.trace(q)


def covariate_shift_slope(cov, n, scale):
  """Slope of y_hat on <w, x_query> when test covariates are N(0, scale * Lambda), w ~ N(0, I).

  E[y_hat y] / E[y^2] = scale tr(Gamma^-1 Lambda^2) / tr(Lambda); -> scale as N -> infinity,
  the c^2 of Sec. 4.2 with c^2 = scale.
  """
  lam = as_matrix(cov)
  g_inv = jnp.linalg.inv(gamma(lam, n))
  return scale * jnp.trace(g_inv @ lam @ lam) / jnp.trace(lam)


def random_covariance_product(moments, d: int, n: int) -> jax.Array:
  """Theorem 8: w_22^PV W_11^KQ -> [E Gamma_tau Lambda_tau^2]^-1 E Lambda_tau^2 (diagonal).

  For independent diagonal entries with moments (m1, m2, m3) = E lambda^k,
  E[Gamma_tau Lambda_tau^2]_ii = (1 + 1/N) m3 + (m3 + (d - 1) m1 m2) / N.

  Returns:
    [d] the diagonal of the limit.
  """
  m1, m2, m3 = moments
  e_gl2 = (1.0 + 1.0 / n) * m3 + (m3 + (d - 1) * m1 * m2) / n
  return jnp.full((d,), m2 / e_gl2)


def random_covariance_optimum(moments, d: int, n: int) -> tuple[jax.Array, jax.Array]:
  """(W_KQ*, W_PV*) of eq. (22), scaled by ||[E Gamma L^2]^-1 E L^2||_F^(-/+ 1/2)."""
  diag = random_covariance_product(moments, d, n)
  return _blocks(jnp.diag(diag), jnp.linalg.norm(diag))


def limit_factor(moments) -> float:
  """The M, N -> infinity factor of eq. (23) after averaging over Lambda_new: E L^2 [E L^3]^-1 E L.

  1/3 for Exp(1) entries (2 * 1 / 6).
  """
  m1, m2, m3 = moments
  return m2 * m1 / m3


def random_covariance_slopes(moments, d: int, n: int):
  """Slopes of y_hat on <w, x_query> for the Theorem 8 optimum on random-covariance test prompts.

  With D the Theorem 8 product and M -> infinity (any M: E S = Lambda_new and x_query is
  independent of S given Lambda_new):
    independent query (x_query ~ N(0, E Lambda)), the paper's reading of (23): m1 * mean(D);
    query ~ N(0, Lambda_new) as in eq. (20): E[tr(D L^2)] / E[tr L] = m2 * mean(D) / m1.

  Returns:
    (slope_independent_query, slope_same_query).
  """
  m1, m2, _ = moments
  dbar = jnp.mean(random_covariance_product(moments, d, n))
  return m1 * dbar, m2 * dbar / m1


def two_point_rule(moments) -> tuple[jax.Array, jax.Array]:
  """Nodes and weights of the 2-point Gauss rule of a law with moments (m1, m2, m3).

  E p(lambda) = sum_j weight_j p(node_j) exactly for polynomials p of degree <= 3. The nodes are
  the roots of x^2 + a x + b orthogonal to 1 and x: a = (m1 m2 - m3) / (m2 - m1^2),
  b = -m2 - a m1. For Exp(1): nodes 2 -+ sqrt(2) (Gauss-Laguerre).
  """
  m1, m2, m3 = (jnp.asarray(m, jnp.float32) for m in moments)
  a = (m1 * m2 - m3) / (m2 - m1**2)
  b = -m2 - a * m1
  disc = jnp.sqrt(a**2 - 4.0 * b)
  x1, x2 = (-a - disc) / 2.0, (-a + disc) / 2.0
  w1 = (x2 - m1) / (x2 - x1)
  return jnp.stack([x1, x2]), jnp.stack([w1, 1.0 - w1])


def random_covariance_population_loss(w_kq, w_pv, moments, d: int, n: int) -> jax.Array:
  """Exact population loss (20): `population_loss` averaged over Lambda_tau = diag(lambda_i).

  `population_loss` is a polynomial of total degree <= 3 in the diagonal of Lambda, and the
  lambda_i are independent, so the tensor product of d two-point Gauss rules matched to the
  law's first three moments gives the expectation exactly with 2^d evaluations (meant for
  d <= 12 or so; beyond that, sample Lambda_tau instead).
  """
  nodes, weights = two_point_rule(moments)
  grid = jnp.stack(jnp.meshgrid(*([jnp.arange(2)] * d), indexing='ij'), axis=-1).reshape(-1, d)
  lams = nodes[grid].astype(w_kq.dtype)
  probs = jnp.prod(weights[grid], axis=1).astype(w_kq.dtype)
  losses = jax.vmap(lambda lam: population_loss(w_kq, w_pv, lam, n))(lams)
  return jnp.sum(probs * losses)


def sparse_rule(moments, d: int) -> tuple[list, list]:
  """Points and weights of a (2d + 1)-point rule exact for E p(lambda_1..lambda_d), deg p <= 3.

  For i.i.d. lambda_i with moments (m1, m2, m3) and any polynomial p of total degree <= 3:
    E p = (1 - d) p(m1 1) + sum_i sum_j w_j p(m1 1 + (x_j - m1) e_i),
  with (x_j, w_j) the `two_point_rule`. Why: the tensor product of two-point rules is exact
  (each coordinate's degree is <= 3); write it as prod_i (U1 + D_i), U1 the one-point rule at m1
  and D_i = U2 - U1 on coordinate i. Both rules are exact for degree <= 1, so D_i kills every
  monomial of degree <= 1 in lambda_i, and a term with D_i on a set K survives only if each
  coordinate of K has degree >= 2: with total degree <= 3, |K| <= 1. That leaves the 2d + 1
  points above (a Smolyak-type truncation; derived for this project). The nodes are computed
  in double precision (Python floats), whatever the JAX dtype.

  Returns:
    (points, weights): nested lists of Python floats, [2d + 1][d] and [2d + 1].
  """
  m1, m2, m3 = (float(m) for m in moments)
  a = (m1 * m2 - m3) / (m2 - m1**2)
  disc = (a**2 + 4.0 * (m2 + a * m1)) ** 0.5
  nodes = ((-a - disc) / 2.0, (-a + disc) / 2.0)
  w1 = (nodes[1] - m1) / (nodes[1] - nodes[0])
  points, weights = [[m1] * d], [1.0 - d]
  for i in range(d):
    for node, weight in zip(nodes, (w1, 1.0 - w1)):
      points.append([node if k == i else m1 for k in range(d)])
      weights.append(weight)
  return points, weights


def random_covariance_loss_sparse(w_kq, w_pv, moments, d: int, n: int) -> jax.Array:
  """Exact population loss (20), like `random_covariance_population_loss`, with 2d + 1 points.

  `population_loss` has total degree <= 3 in the diagonal of Lambda, so `sparse_rule` is exact
  for it at any d (the 2^d tensor rule is limited to d <= 12 or so). The weight 1 - d < 0 makes
  the sum cancel: run large d in float64.
  """
  points, weights = sparse_rule(moments, d)
  lams = jnp.asarray(points, w_kq.dtype)
  losses = jax.vmap(lambda lam: population_loss(w_kq, w_pv, lam, n))(lams)
  return jnp.sum(jnp.asarray(weights, w_kq.dtype) * losses)


def random_covariance_product_slopes(diag, moments):
  """`random_covariance_slopes` for the predictor x_query^T diag(p) S w with any diagonal p.

  Returns (m1 mean(p), m2 mean(p) / m1): the slopes with x_query independent of Lambda_new and
  with x_query ~ N(0, Lambda_new). For p = `random_covariance_product(moments, d, n)` they are
  `random_covariance_slopes(moments, d, n)`.
  """
  m1, m2, _ = moments
  pbar = jnp.mean(jnp.asarray(diag), axis=-1)
  return m1 * pbar, m2 * pbar / m1


def random_covariance_error(diag, moments, m: int, query: str = 'same') -> jax.Array:
  """Normalised error E(y_hat - y)^2 / E y^2 of y_hat = x_q^T diag(p) S w on new prompts.

  Noiseless random-covariance prompts of length M (Sec. 4.3): lambda_i i.i.d. with moments
  (m1, m2, m3), w ~ N(0, I), S = (1/M) sum x_i x_i^T; the eq. (22) optimum predicts this way
  (w_21^PV = 0). Given Lambda and Q = E x_q x_q^T, the error is
  tr E[S P Q P S] - 2 tr(Lambda P Q) + tr Q, with the Wishart moment
  E[S B S] = (1 + 1/M) L B L + tr(B L) L / M; averaging over the lambda_i gives, with
  sum p^k = s_k:
    same query (Q = Lambda, eq. (20)): s_2 [(1 + 1/M) m3 + (m3 + (d - 1) m1 m2) / M]
      - 2 m2 s_1 + d m1;
    independent query (Q = m1 I): m1 s_2 [(1 + 1/M) m2 + (m2 + (d - 1) m1^2) / M]
      - 2 m1^2 s_1 + d m1;
  both divided by E y^2 = d m1. (Derived for this project; at M = N the same-query error is
  2 L(theta) / (d m1) and the Theorem 8 product minimises it.)
  """
  m1, m2, m3 = moments
  p = jnp.asarray(diag)
  d = p.shape[-1]
  s1, s2 = jnp.sum(p, axis=-1), jnp.sum(jnp.square(p), axis=-1)
  if query == 'same':
    err = s2 * ((1.0 + 1.0 / m) * m3 + (m3 + (d - 1) * m1 * m2) / m) - 2.0 * m2 * s1
  elif query == 'independent':
    err = m1 * s2 * ((1.0 + 1.0 / m) * m2 + (m2 + (d - 1) * m1**2) / m) - 2.0 * m1**2 * s1
  else:
    raise ValueError(f"query must be 'same' or 'independent', got {query!r}")
  return (err + d * m1) / (d * m1)


def label_moments(cov, e_yy, e_xy, e_yyxx):
  """(a, Sigma, best linear error) of eq. (15) from the moments of a label law D.

  a = Lambda^-1 E[x y], Sigma = Cov(x y) = E[y^2 x x^T] - E[x y] E[x y]^T, and the best linear
  error min_w E(<w, x> - y)^2 = E[y^2] - E[x y]^T a (attained at w = a). Any law of y given x
  (noisy, nonlinear) enters Theorem 5 only through these.

  Args:
    cov: Lambda, the covariance of x.
    e_yy: [] E[y^2].
    e_xy: [d] E[x y].
    e_yyxx: [d, d] E[y^2 x x^T].
  """
  cov = jnp.asarray(cov)
  a = e_xy / cov if cov.ndim == 1 else jnp.linalg.solve(cov, e_xy)
  return a, e_yyxx - jnp.outer(e_xy, e_xy), e_yy - jnp.dot(e_xy, a)


def test_error_moments(cov, n, m, e_yy, e_xy, e_yyxx):
  """Theorem 5, eq. (16), for any label law D, from E[y^2], E[x y] and E[y^2 x x^T].

  `test_error` with (a, Sigma, best) from `label_moments`; with moments estimated from a
  sample it is a smooth plug-in whose standard error follows by the delta method (its gradient
  in the moments). For y = <w, x> + eps it equals `test_error_linear`.
  """
  return test_error(cov, n, m, *label_moments(cov, e_yy, e_xy, e_yyxx))


def label_moment_estimates(x_BxD, y_B):
  """Sample means of y^2, x y and y^2 x x^T over a batch of (x, y) draws, as a dict.

  The inputs of `label_moments` / `test_error_moments` (keys 'yy', 'xy', 'yyxx'), by matmuls;
  averaged over independent batches they estimate the moments of a label law.
  """
  b = y_B.shape[0]
  y2_B = jnp.square(y_B)
  return {'yy': jnp.mean(y2_B), 'xy': x_BxD.T @ y_B / b,
          'yyxx': (x_BxD * y2_B[:, None]).T @ x_BxD / b}
