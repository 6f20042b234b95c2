"""Closed forms from the papers, one module per paper; these depend on jax.numpy only."""
from icl_jax.theory import trained_lsa
