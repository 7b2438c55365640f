"""The frozen model itself: evaluation only, no parameters."""

from .base import AdapterMethod


class Baseline(AdapterMethod):
    name = "baseline"
