"""Attention activations h~ and label kernels K of Cheng, Chen & Sra (2024), by name.

Activations (eq. (12)) act on the score matrix S_ij = <B x_i, C x_j> of key i and query j:
  linear  S_ij            relu  max(S_ij, 0)            exp  exp(S_ij)
  softmax exp(S_ij) / sum_{k context} exp(S_kj)   (Example 3: normalised over the n context
          keys only, so the query token never attends to itself).
The mask M of eq. (2) (the query never acts as a key/value) is applied by `attention_weights`
through a boolean key mask, which also lets a padded prompt hide its unused context slots.

Label kernels (eq. (11), (14) and Appendix D), for the K Gaussian process of Definition 3.3:
  linear <u, w>    relu max(<u, w>, 0)    exp exp(<u, w> / bandwidth^2)
  composite  alpha <G1 u, G1 w> + (1 - alpha) exp(<G2 u, G2 w> / bandwidth^2)   (Prop D.1, Fig 4).
The paper's Fig 4(c) text writes the exponential part as exp((u3 w3 + u4 w4 + u5 w5) / 2), i.e.
bandwidth^2 = 2 with G2 = diag(0, 0, 1, 1, 1); the issue fixes G2 and leaves the bandwidth 1.
Both are reachable through `bandwidth`.

References:
  Cheng, Chen, Sra. Transformers Implement Functional Gradient Descent to Learn Non-Linear
  Functions In Context. ICML 2024.
"""

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

ACTIVATIONS = ('linear', 'relu', 'exp', 'softmax')
KERNELS = ('linear', 'relu', 'exp', 'composite')
# Activations that equal a label kernel entrywise, h~(U, W)_ij = K(U_i, W_j) (Prop 3.1).
KERNEL_OF_ACTIVATION = {'linear': 'linear', 'relu': 'relu', 'exp': 'exp'}


def _check(name: str, allowed: Sequence[str], what: str) -> None:
  if name not in allowed:
    raise ValueError(f'unknown {what} {name!r}: allowed are {", ".join(allowed)}')


def check_activation(name: str) -> None:
  _check(name, ACTIVATIONS, 'activation')


def check_kernel(name: str) -> None:
  _check(name, KERNELS, 'kernel')


def attention_weights(activation: str, scores_KxQ: jax.Array,
                      key_mask_K: Optional[jax.Array] = None) -> jax.Array:
  """M h~(BX, CX) of eqs. (2) and (12): the activation of the scores, zero on masked keys.

  Args:
    activation: one of ACTIVATIONS.
    scores_KxQ: [keys, queries] S_ij = <B x_i, C x_j>, key i, query j.
    key_mask_K: [keys] bool, True for the tokens that act as keys/values (the context);
      None: all of them.

  Returns:
    [keys, queries] weights; rows of masked keys are exactly 0.
  """
  check_activation(activation)
  mask_Kx1 = (jnp.ones(scores_KxQ.shape[:1], bool) if key_mask_K is None else key_mask_K)[:, None]
  if activation == 'softmax':
    # where= keeps masked keys out of the max and the sum, and gives them weight 0.
    return jax.nn.softmax(scores_KxQ, axis=0, where=mask_Kx1)
  act = {'linear': lambda s: s, 'relu': jax.nn.relu, 'exp': jnp.exp}[activation]
  return jnp.where(mask_Kx1, act(scores_KxQ), 0.0)


def _inner(u_NxD, w_MxD):
  return u_NxD @ w_MxD.T


def gram(name: str, u_NxD: jax.Array, w_MxD: Optional[jax.Array] = None, *,
         bandwidth: float = 1.0, alpha: float = 0.5, g1: Optional[jax.Array] = None,
         g2: Optional[jax.Array] = None) -> jax.Array:
  """Kernel matrix [K(u_i, w_j)]_ij of a label kernel, eq. (11)/(14) or the composite of App. D.

  Args:
    name: one of KERNELS.
    u_NxD, w_MxD: points as rows; w defaults to u (the Gram matrix of Definition 3.3).
    bandwidth: sigma of K_exp(u, w) = exp(<u, w> / sigma^2) (also the composite's exp part).
    alpha, g1, g2: the composite kernel alpha K_lin(G1 u, G1 w) + (1 - alpha) K_exp(G2 u, G2 w);
      g1, g2 are [d, d] (default: identity).

  Returns:
    [N, M].
  """
  check_kernel(name)
  w_MxD = u_NxD if w_MxD is None else w_MxD
  if name == 'linear':
    return _inner(u_NxD, w_MxD)
  if name == 'relu':
    return jax.nn.relu(_inner(u_NxD, w_MxD))
  if name == 'exp':
    return jnp.exp(_inner(u_NxD, w_MxD) / bandwidth**2)
  d = u_NxD.shape[-1]
  g1 = jnp.eye(d) if g1 is None else jnp.asarray(g1)
  g2 = jnp.eye(d) if g2 is None else jnp.asarray(g2)
  lin = _inner(u_NxD @ g1.T, w_MxD @ g1.T)
  ex = jnp.exp(_inner(u_NxD @ g2.T, w_MxD @ g2.T) / bandwidth**2)
  return alpha * lin + (1.0 - alpha) * ex


def gram_fn(name: str, **params) -> Callable[..., jax.Array]:
  """`gram` with the kernel fixed by name: f(u_NxD, w_MxD=None) -> [N, M]. Checks the name now."""
  check_kernel(name)
  return lambda u, w=None: gram(name, u, w, **params)
