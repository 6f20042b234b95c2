"""Prompt samplers: one prompt from one PRNG key."""
from icl_jax.samplers import regression
