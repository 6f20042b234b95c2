"""Kernel-Gaussian-process prompts of Cheng, Chen & Sra (2024), one prompt per key.

Covariates (Appendix H.1): x_i = Sigma^{1/2} xi_i with xi_i uniform on the unit sphere of R^d and
Sigma = U^T D U, D = diag(1, 1, 0.25, 2.25, 1), U Haar-random orthogonal, fixed per seed.
Labels (Definition 3.3, Example 7): Y | X ~ N(0, K_+(X)) with [K(X)]_ij = K(Sigma^{-1/2} x_i,
Sigma^{-1/2} x_j) = K(xi_i, xi_j) and K_+ = V |Lambda| V^T (eigenvalues made non-negative; equal to
K for a PSD kernel). Or the random two-layer ReLU network of Example 8.

References:
  Cheng, Chen, Sra. Transformers Implement Functional Gradient Descent to Learn Non-Linear
  Functions In Context. ICML 2024.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from icl_jax import linalg
from icl_jax.prompts import Prompt

PAPER_DIAG = (1.0, 1.0, 0.25, 2.25, 1.0)  # D of Appendix H.1 (d = 5)


class Covariance(NamedTuple):
  """Sigma = U^T D U and its square roots, all [d, d] symmetric."""
  sigma: jax.Array
  sqrt: jax.Array       # Sigma^{1/2}
  inv_sqrt: jax.Array   # Sigma^{-1/2}


def haar_orthogonal(key: jax.Array, d: int) -> jax.Array:
  """A Haar-random d x d orthogonal matrix: Q of a Gaussian matrix, column signs fixed by diag R
  (Mezzadri 2007; without the sign fix Q is not Haar)."""
  q, r = linalg.qr(jax.random.normal(key, (d, d)))
  return q * jnp.sign(jnp.diagonal(r))[None, :]


def covariance(key: jax.Array, diag=PAPER_DIAG) -> Covariance:
  """Sigma = U^T D U with U Haar-random (Appendix H.1); D = diag(diag), all entries > 0."""
  # The default float dtype: float64 under jax.enable_x64, for closed-form comparisons.
  diag = jnp.asarray(diag, jnp.result_type(float))
  u = haar_orthogonal(key, diag.shape[0]).astype(diag.dtype)
  with_diag = lambda v: u.T @ (v[:, None] * u)
  return Covariance(with_diag(diag), with_diag(jnp.sqrt(diag)), with_diag(1.0 / jnp.sqrt(diag)))


def sphere(key: jax.Array, num: int, d: int) -> jax.Array:
  """[num, d] points uniform on the unit sphere of R^d."""
  g = jax.random.normal(key, (num, d))
  return g / jnp.linalg.norm(g, axis=-1, keepdims=True)


def psd_part(k_TxT: jax.Array) -> jax.Array:
  """K_+ = V |Lambda| V^T of Definition 3.3 (one symmetric eigendecomposition, `linalg.eigh`)."""
  w, v = linalg.eigh(k_TxT)
  return (v * jnp.abs(w)[None, :]) @ v.T


def gaussian_labels(key: jax.Array, k_plus_TxT: jax.Array) -> jax.Array:
  """Y ~ N(0, K_+) through the eigendecomposition of K_+ (PSD, possibly singular)."""
  w, v = linalg.eigh(k_plus_TxT)
  return v @ (jnp.sqrt(jnp.maximum(w, 0.0)) * jax.random.normal(key, w.shape))


class KernelPrompt(NamedTuple):
  """A prompt and what its labels were drawn from.

  prompt: context x [n, d], y [n], query x_query [d], y_query [].
  xi: [n+1, d] Sigma^{-1/2} x (query last), the points the label kernel saw.
  k_plus: [n+1, n+1] K_+(X), the covariance of (y_1..y_n, y_query) given X.
  """
  prompt: Prompt
  xi: jax.Array
  k_plus: jax.Array


def sample(key: jax.Array, *, n: int, cov: Covariance, gram: Callable[[jax.Array], jax.Array]
           ) -> KernelPrompt:
  """One K-Gaussian-process prompt (Definition 3.3, Example 7, Appendix H.1).

  Args:
    key: PRNG key.
    n: context length (n + 1 points with the query).
    cov: Sigma and its square roots (`covariance`).
    gram: u_TxD -> [T, T] the label kernel's Gram matrix (`kernels.gram_fn(name)`).

  Returns:
    KernelPrompt; vmap over keys for a batch.
  """
  k_xi, k_y = jax.random.split(key)
  d = cov.sigma.shape[0]
  xi_TxD = sphere(k_xi, n + 1, d)
  x_TxD = xi_TxD @ cov.sqrt  # Sigma^{1/2} symmetric: rows x_i = Sigma^{1/2} xi_i
  # One eigendecomposition serves both: K_+ = V |L| V^T has K's eigenvectors, so Y = V sqrt|L| g
  # is N(0, K_+) without factoring K_+ again (1.8-1.9x faster, benchmarks/kernel_gp.py).
  lam, v = linalg.eigh(gram(xi_TxD))
  k_plus = (v * jnp.abs(lam)[None, :]) @ v.T
  y_T = v @ (jnp.sqrt(jnp.abs(lam)) * jax.random.normal(k_y, lam.shape))
  prompt = Prompt(x=x_TxD[:n], y=y_T[:n], x_query=x_TxD[n], y_query=y_T[n])
  return KernelPrompt(prompt, xi_TxD, k_plus)


def relu_network_prompt(key: jax.Array, *, n: int, cov: Covariance, width: int) -> Prompt:
  """Example 8: y = <theta_2, relu(theta_1 x)>, theta entries i.i.d. N(0, 1), drawn per prompt.

  Its label covariance E[y_i y_j | X] = E relu(theta_1 x_i)^T relu(theta_1 x_j) is rotation
  invariant in x (Appendix I.1), so Assumption 4.2 holds with Sigma from the covariates.
  """
  k_xi, k_1, k_2 = jax.random.split(key, 3)
  d = cov.sigma.shape[0]
  x_TxD = sphere(k_xi, n + 1, d) @ cov.sqrt
  theta1_MxD = jax.random.normal(k_1, (width, d))
  theta2_M = jax.random.normal(k_2, (width,))
  y_T = jax.nn.relu(x_TxD @ theta1_MxD.T) @ theta2_M
  return Prompt(x=x_TxD[:n], y=y_T[:n], x_query=x_TxD[n], y_query=y_T[n])


def pad_context(prompt: Prompt, n_max: int) -> tuple[Prompt, jax.Array]:
  """A prompt with its context padded by zeros to n_max slots, and the [n_max] key mask.

  Models read the mask (`kernel_attention.apply(..., context_mask=)`), so prompts with different
  n share one shape and train as one program; padded slots never act as keys or values.
  """
  n, d = prompt.x.shape
  if n > n_max:
    raise ValueError(f'pad_context: n={n} exceeds n_max={n_max}')
  pad = n_max - n
  padded = Prompt(x=jnp.concatenate([prompt.x, jnp.zeros((pad, d), prompt.x.dtype)]),
                  y=jnp.concatenate([prompt.y, jnp.zeros((pad,), prompt.y.dtype)]),
                  x_query=prompt.x_query, y_query=prompt.y_query)
  return padded, jnp.arange(n_max) < n
