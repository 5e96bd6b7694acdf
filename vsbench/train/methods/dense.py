"""``dense``: certified training without pruning (the baseline every method is compared to)."""

from . import register
from .base import Sparsifier


@register
class Dense(Sparsifier):
    name = "dense"
