"""hashbench: a benchmark suite for deep hashing in medical image retrieval.

The Python API (:mod:`hashbench.api`) is available here too (``hashbench.run_grid``, ...),
imported on first use so that ``import hashbench`` stays cheap: torch loads only when a call needs it.
"""

__version__ = "0.1.0"


import importlib


def __getattr__(name: str):
    if name in _SUBPACKAGES or name.startswith("_"):  # a submodule not imported yet: the import system's, not the API's
        raise AttributeError(f"module 'hashbench' has no attribute {name!r}")
    api = importlib.import_module("hashbench.api")
    if name in api.__all__:
        return getattr(api, name)
    raise AttributeError(f"module 'hashbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *importlib.import_module("hashbench.api").__all__])


_SUBPACKAGES = (
    "api",
    "cli",
    "config",
    "data",
    "datasets",
    "distributed",
    "evaluation",
    "methods",
    "model",
    "report",
    "runner",
    "store",
    "training",
)
