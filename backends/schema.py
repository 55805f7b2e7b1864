"""Renamed to :mod:`pbuffer.backends.tables`; this re-export goes once nothing imports the old name."""
from . import tables
from .tables import *  # noqa: F403

__all__ = tables.__all__
