"""Fitting an AR process s_{t+1} = W s_t to windows of token embeddings (Sander et al., Sec. 6).

Section 6 ("Validation of the token encoding choice", Fig. 4) of Sander et al. (2024) cuts a book's
token embeddings into windows of T consecutive tokens and fits, per window, the W minimising their
loss (5)

    L(W) = 1/2 sum_{t=1}^{T-1} ||s_{t+1} - W s_t||^2,

by a linear solve, then counts the windows whose minimum is above 1e-12, for the book and for a
shuffled copy of its tokens.

The fit, on the T x T side. With the window's inputs X = [s_1 .. s_{T-1}] (d x (T-1)) and targets
Y = [s_2 .. s_T], the minimisers are W = Y X^+ + (anything that vanishes on span X), the
minimum-norm one W* = Y X^+, and the minimum is 1/2 ||Y (I - X^+ X)||_F^2: the targets' part along
the null space of X. With G = X^T X = V diag(w) V^T ((T-1) x (T-1), `linalg.eigh`), that null
space is spanned by the eigenvectors with w_k <= rtol max(w), so

    L(W*) = 1/2 sum_{k: w_k <= rtol max w} ||Y v_k||^2,

computed in d-space (Y v_k), not as v_k^T (Y^T Y) v_k, whose cancellation would leave
~eps ||s||^2 for a consistent window. For d >= T - 1 and inputs in general position the null space
is empty and L(W*) = 0 exactly. rtol is a cut on eigenvalues of the Gram, i.e. on squared
singular values of X: it must sit above the rounding of eigh (eps max w, ~1e-16 relative in
float64) and below the smallest genuine eigenvalue (distinct embeddings that are nearly parallel).
`numpy.linalg.lstsq` cuts singular values at eps max(d, T-1) instead, which the Gram cannot
resolve; the two agree whenever no singular value falls between the cuts (tested).

The closed form (`closed_form_errors`). If the distinct nonzero vectors of a window's inputs are
linearly independent (generic once d >= T - 1), the row space of X (in R^{T-1}) is spanned by the
indicators of the groups of equal inputs, so X^+ X averages over each group and

    L(W*) = 1/2 sum_t ||s_{t+1} - mean{s_{t'+1} : s_{t'} = s_t}||^2

(a zero input vector predicts 0): W* sends each input token to the mean of its successors in the
window. Hence L(W*) > 0 exactly when a token occurs twice among s_1 .. s_{T-1} followed by two
different tokens (`conflicts`), which the paper's Sec. 6 names as the source of nonzero losses:
whether a window's loss passes 1e-12 depends on the token sequence only, not on the embedding
table, as long as the table keeps distinct tokens distinct.

References:
  Sander, Giryes, Suzuki, Blondel, Peyre. How do Transformers Perform In-Context Autoregressive
  Learning? ICML 2024, arXiv:2402.05787. Sec. 6, eq. (5), Fig. 4.
  Levy, Goldberg, Dagan. Improving Distributional Similarity with Lessons Learned from Word
  Embeddings. TACL 2015 (PPMI with context-distribution smoothing, SVD embeddings).
  Halko, Martinsson, Tropp. Finding Structure with Randomness. SIAM Review 2011 (randomized SVD).
"""

import functools
import gzip
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from icl_jax import linalg

# GPT-2's pre-tokenizer (Radford et al. 2019, `encoder.py`), with `re`'s classes for \p{L} and
# \p{N}: letters [^\W\d_], digits \d, other symbols [^\s\w] or '_'. GPT-2's byte-pair encoding
# then splits a rare pre-token into pieces; here each pre-token is one word-level token.
GPT2_PATTERN = re.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")
WHITESPACE = ('collapse', 'keep')


# --- text and tokens ---------------------------------------------------------------------------

def load_text(path: str) -> str:
  """A UTF-8 text file, gzip-compressed when its name ends in .gz."""
  if path.endswith('.gz'):
    with gzip.open(path, 'rt', encoding='utf-8') as f:
      return f.read()
  with open(path, encoding='utf-8') as f:
    return f.read()


def normalise_whitespace(text: str, whitespace: str = 'collapse') -> str:
  """'collapse': every run of whitespace becomes one space (hard line wraps and verse indentation
  of a plain-text e-text are typesetting, not language); 'keep': the text as it is."""
  if whitespace not in WHITESPACE:
    raise ValueError(f'whitespace={whitespace!r}: must be one of {WHITESPACE}')
  return re.sub(r'\s+', ' ', text).strip() if whitespace == 'collapse' else text


def word_tokenize(text: str) -> list[str]:
  """GPT-2's pre-tokens of text (`GPT2_PATTERN`): words with their leading space, punctuation
  runs, digit runs, whitespace runs. ''.join(word_tokenize(t)) == t."""
  return GPT2_PATTERN.findall(text)


def encode(tokens: Sequence[str]) -> tuple[np.ndarray, dict]:
  """Token ids in order of first appearance: (ids [N] int32, vocabulary {token: id})."""
  vocab: dict = {}
  ids = np.fromiter((vocab.setdefault(t, len(vocab)) for t in tokens), np.int32, len(tokens))
  return ids, vocab


def compact_ids(ids: np.ndarray) -> tuple[np.ndarray, int]:
  """ids renumbered 0 .. V-1 in increasing order of the original id: (ids [N] int32, V)."""
  used, inverse = np.unique(np.asarray(ids), return_inverse=True)
  return inverse.astype(np.int32).reshape(-1), int(used.size)


# --- embedding tables --------------------------------------------------------------------------

def table_shape(path: str, key: str = '') -> tuple:
  """Shape of the table in an .npy (memory-mapped: nothing is read) or .safetensors file."""
  if path.endswith('.safetensors'):
    from safetensors import safe_open
    with safe_open(path, framework='np') as f:
      if key not in f.keys():
        raise KeyError(f'no tensor {key!r}; the file has {sorted(f.keys())[:8]}')
      return tuple(f.get_slice(key).get_shape())
  return tuple(np.load(path, mmap_mode='r').shape)


def load_table(path: str, key: str = '') -> np.ndarray:
  """[V, d] float64 embedding table from .npy, or tensor `key` of a .safetensors file (GPT-2's
  HuggingFace `model.safetensors` keeps the token embedding as 'wte.weight')."""
  if path.endswith('.safetensors'):
    from safetensors import safe_open
    with safe_open(path, framework='np') as f:
      table = f.get_tensor(key)
  else:
    table = np.load(path)
  return np.asarray(table, np.float64)


def random_table(key: jax.Array, vocab_size: int, dim: int) -> np.ndarray:
  """[V, d] float64 rows drawn i.i.d. N(0, I/d): a table with no semantics (a control)."""
  with jax.enable_x64():
    return np.asarray(jax.random.normal(key, (vocab_size, dim), jnp.float64)) / np.sqrt(dim)


def _ppmi(ids: np.ndarray, vocab_size: int, window: int, alpha: float):
  """Sparse [V, V] positive PMI of (word, context) pairs within +-window positions, with the
  context distribution raised to alpha (Levy et al. 2015)."""
  import scipy.sparse as sp
  rows = np.concatenate([np.concatenate([ids[:-k], ids[k:]]) for k in range(1, window + 1)])
  cols = np.concatenate([np.concatenate([ids[k:], ids[:-k]]) for k in range(1, window + 1)])
  counts = sp.coo_matrix((np.ones(rows.size), (rows, cols)),
                         shape=(vocab_size, vocab_size)).tocsr()
  counts.sum_duplicates()
  total = counts.sum()
  p_word = np.asarray(counts.sum(axis=1)).ravel() / total
  c_ctx = np.asarray(counts.sum(axis=0)).ravel() ** alpha
  p_ctx = c_ctx / c_ctx.sum()
  coo = counts.tocoo()
  pmi = np.log(coo.data / total / (p_word[coo.row] * p_ctx[coo.col]))
  keep = pmi > 0
  return sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])),
                       shape=(vocab_size, vocab_size))


def _orthonormal(b: np.ndarray) -> np.ndarray:
  """An orthonormal basis of the columns of a tall b [V, k] (rank k), by two rounds of
  eigh-of-the-Gram orthonormalisation (like CholeskyQR2: the second round repairs the first's
  loss of orthogonality, ~ eps cond(b)^2)."""
  for _ in range(2):
    w, v = np.linalg.eigh(b.T @ b)
    b = b @ (v / np.sqrt(np.maximum(w, np.finfo(b.dtype).tiny))[None, :])
  return b


def ppmi_svd_table(key: jax.Array, ids: np.ndarray, vocab_size: int, *, dim: int,
                   window: int = 2, alpha: float = 0.75, oversample: int = 16,
                   power_iters: int = 4) -> np.ndarray:
  """[V, d] float64 word vectors from the token stream itself: rank-d SVD of the PPMI matrix.

  E = U_d S_d^{1/2} of a randomized SVD (Halko et al. 2011; Gaussian test matrix from `key`,
  power iterations, NumPy LAPACK), rows scaled to unit norm. Words used in similar contexts get
  similar vectors, so a window's fit error (the scatter of a repeated word's successors) is small
  when those successors are near-synonyms, as with a trained model's embedding.

  Args:
    key: the test matrix's key (same key, same table).
    ids: [N] token ids in 0 .. vocab_size - 1, in text order.
    dim: d < vocab_size.
    window: context positions on each side.
    alpha: context-distribution smoothing exponent.
  """
  if not 0 < dim < vocab_size:
    raise ValueError(f'dim={dim}: must be in 1 .. vocab_size - 1 = {vocab_size - 1}')
  a = _ppmi(np.asarray(ids, np.int64), vocab_size, window, alpha)
  k = min(dim + oversample, vocab_size)
  with jax.enable_x64():
    omega = np.asarray(jax.random.normal(key, (vocab_size, k), jnp.float64))
  q = _orthonormal(a @ omega)
  for _ in range(power_iters):
    q = _orthonormal(a @ _orthonormal(a.T @ q))
  # A ~ Q C with C = Q^T A [k, V]; C C^T = U_c S^2 U_c^T gives A's top left singular vectors
  # Q U_c: small eigh problems only (NumPy's QR / SVD of the tall matrices took seconds here).
  c = (a.T @ q).T
  s2, u_c = np.linalg.eigh(c @ c.T)
  order = np.argsort(s2)[::-1][:dim]
  emb = (q @ u_c[:, order]) * np.sqrt(np.sqrt(np.maximum(s2[order], 0.0)))[None, :]
  norm = np.linalg.norm(emb, axis=1, keepdims=True)
  return emb / np.where(norm > 0, norm, 1.0)


# --- windows -----------------------------------------------------------------------------------

def windows(ids: np.ndarray, T: int) -> np.ndarray:
  """[n, T] consecutive non-overlapping windows, n = N // T (the paper's D of shape (n, T, d))."""
  n = len(ids) // T
  return np.asarray(ids[:n * T]).reshape(n, T)


def shuffled_windows(key: jax.Array, ids: np.ndarray, T: int) -> np.ndarray:
  """[n, T] windows of a uniform permutation of the n T tokens the windows of `ids` hold (the
  paper's D_shuffle: D shuffled across its first two dimensions)."""
  flat = windows(ids, T).reshape(-1)
  return flat[np.asarray(jax.random.permutation(key, flat.size))].reshape(-1, T)


# --- the fit -----------------------------------------------------------------------------------

def _null_mask(w_K: jax.Array, rtol: float) -> tuple[jax.Array, jax.Array]:
  top = w_K[-1]                                   # eigh sorts ascending
  null_K = w_K <= rtol * top                      # all null when every input is 0
  ratio_K = jnp.abs(w_K) / jnp.where(top > 0, top, 1.0)
  return null_K, ratio_K


def ar_fit_error(s_TxD: jax.Array, *, rtol: float) -> dict:
  """Loss (5) at its minimum-norm minimiser W* = Y X^+ for one window (module docstring).

  Args:
    s_TxD: [T, d] the window's token vectors s_1 .. s_T (rows).
    rtol: Gram eigenvalues <= rtol x the largest count as zero (rank cut).

  Returns:
    {'error': L(W*), 'rank': rank of X, 'null_ratio_max': largest |w_k| / max w called zero
    (0 if none), 'kept_ratio_min': smallest w_k / max w kept}: the last two show how clear
    the rank decision was.
  """
  x_KxD, y_KxD = s_TxD[:-1], s_TxD[1:]
  w_K, v_KxK = linalg.eigh(x_KxD @ x_KxD.T)
  null_K, ratio_K = _null_mask(w_K, rtol)
  r_KxD = (v_KxK * null_K[None, :].astype(v_KxK.dtype)).T @ y_KxD   # rows v_k^T Y^T, k null
  return {'error': 0.5 * jnp.sum(r_KxD * r_KxD),
          'rank': jnp.sum(~null_K).astype(jnp.int32),
          'null_ratio_max': jnp.max(jnp.where(null_K, ratio_K, 0.0)),
          'kept_ratio_min': jnp.min(jnp.where(null_K, jnp.inf, ratio_K))}


def min_norm_fit(s_TxD: jax.Array, *, rtol: float) -> jax.Array:
  """[d, d] the minimum-norm minimiser W* = Y X^+ = Y G^+ X^T of loss (5) for one window (for
  checks: the counts only need `ar_fit_error`)."""
  x_KxD, y_KxD = s_TxD[:-1], s_TxD[1:]
  w_K, v_KxK = linalg.eigh(x_KxD @ x_KxD.T)
  null_K, _ = _null_mask(w_K, rtol)
  inv_K = jnp.where(null_K, 0.0, 1.0 / jnp.where(null_K, 1.0, w_K))
  g_plus_KxK = (v_KxK * inv_K[None, :]) @ v_KxK.T
  return y_KxD.T @ g_plus_KxK @ x_KxD


@functools.partial(jax.jit, static_argnames=('rtol', 'chunk'))
def fit_errors(table_VxD: jax.Array, ids_NxT: jax.Array, *, rtol: float, chunk: int) -> dict:
  """`ar_fit_error` of every window table[ids[i]]: a dict of [N] arrays.

  Windows are gathered from the table `chunk` at a time (`lax.map`), so memory stays at
  chunk x T x d whatever N; the eigh calls go through `linalg.eigh` (no LAPACK deadlock).
  Run in float64 (`jax.enable_x64`) for a 1e-12 threshold to mean anything.
  """
  return jax.lax.map(lambda ids_T: ar_fit_error(table_VxD[ids_T], rtol=rtol), ids_NxT,
                     batch_size=chunk)


# --- the closed form ---------------------------------------------------------------------------

def canonical_ids(table_VxD: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Tokens identified by their vectors: (canon [V] int64, zero [V] bool).

  canon[i] == canon[j] iff rows i and j of the table are equal (for the ids used; -1 for the
  others); zero[i] iff row i is 0. Distinct ids with equal rows are one token for the fit.
  """
  used = np.unique(np.asarray(ids))
  rows = np.asarray(table_VxD)[used]
  _, inverse = np.unique(rows, axis=0, return_inverse=True)
  canon = np.full(table_VxD.shape[0], -1, np.int64)
  canon[used] = inverse.reshape(-1)
  zero = np.zeros(table_VxD.shape[0], bool)
  zero[used] = ~rows.any(axis=1)
  return canon, zero


def _groups(c_NxT: np.ndarray, z_NxT: np.ndarray) -> np.ndarray:
  """[n, T-1, T-1] same[t, t'] iff inputs t and t' are the same nonzero token."""
  x = c_NxT[:, :-1]
  return (x[:, :, None] == x[:, None, :]) & ~z_NxT[:, :-1, None]


def conflicts(ids_NxT: np.ndarray, canon: np.ndarray, zero: np.ndarray) -> np.ndarray:
  """[n] bool: the window's inputs hold a token followed by two different tokens (or a zero
  vector followed by a nonzero one): exactly the windows with L(W*) > 0 (module docstring)."""
  c, z = canon[ids_NxT], zero[ids_NxT]
  same = _groups(c, z)
  succ = c[:, 1:]
  clash = same & (succ[:, :, None] != succ[:, None, :])
  return clash.any(axis=(1, 2)) | (z[:, :-1] & ~z[:, 1:]).any(axis=1)


def distinct_inputs(ids_NxT: np.ndarray, canon: np.ndarray, zero: np.ndarray) -> np.ndarray:
  """[n] bool: the T-1 inputs are distinct nonzero tokens (X has full column rank)."""
  c, z = canon[ids_NxT], zero[ids_NxT]
  same = _groups(c, z).sum(axis=(1, 2))
  return (same == c.shape[1] - 1) & ~z[:, :-1].any(axis=1)


def closed_form_errors(table_VxD: np.ndarray, ids_NxT: np.ndarray, canon: np.ndarray,
                       zero: np.ndarray, chunk: int = 4096) -> np.ndarray:
  """[n] float64 1/2 sum_t ||s_{t+1} - mean of the successors of s_t's group||^2 (NumPy; no
  linear solve): L(W*) when each window's distinct nonzero inputs are linearly independent.

  With A the group-averaging matrix (A_tu = 1/|group| for inputs t, u of one nonzero group, a
  zero input's row 0) and K = Y^T Y the successors' Gram, the loss is 1/2 tr((I - A) K), as
  I - A is a symmetric projector: no d-sized intermediate but the gathered successors. Its
  rounding is ~eps ||s||^2 (not 0) for a consistent window.
  """
  table = np.asarray(table_VxD, np.float64)
  out = np.empty(len(ids_NxT))
  for start in range(0, len(ids_NxT), chunk):
    ids = ids_NxT[start:start + chunk]
    same = _groups(canon[ids], zero[ids]).astype(np.float64)
    a_NxKxK = same / np.maximum(same.sum(axis=2, keepdims=True), 1.0)
    y_NxKxD = table[ids[:, 1:]]
    k_NxKxK = np.matmul(y_NxKxD, np.swapaxes(y_NxKxD, 1, 2))
    p_NxKxK = np.eye(ids.shape[1] - 1)[None] - a_NxKxK
    out[start:start + chunk] = 0.5 * np.sum(p_NxKxK * k_NxKxK, axis=(1, 2))
  return out
