"""Models as pure functions of a params pytree."""
from icl_jax.models import lsa
