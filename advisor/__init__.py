"""optadvise: a decision advisor for training deep networks under real resource limits."""

__version__ = "0.1.0"
