"""hashbench: a benchmark suite for deep hashing in medical image retrieval."""

__version__ = "0.1.0"
