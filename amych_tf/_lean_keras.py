"""Keras without the scikit-learn and matplotlib it imports only for optional extras.

Keras 3 imports scikit-learn (for its `keras.wrappers` estimator classes, which
this project does not use) and matplotlib (for `keras.visualization`'s galleries)
when they are installed, and scikit-learn pulls in SciPy: ~0.09 GB of resident
memory in every process that imports Keras (0.60 -> 0.52 GB after importing
TensorFlow and Keras, measured on the machine of benchmarks/RESULTS-train.md).
Keras guards both imports and runs without them. `install` adds an import hook
that refuses these two packages only while one of those Keras modules is being
imported (`OPTIONAL_EXTRAS`); everyone else, including Keras later and this
project's own plots, imports them as usual. Nothing is refused once Keras has
been imported, and nothing is changed if Keras was imported before amych_tf.
"""

from __future__ import annotations

import importlib.abc
import sys

# Keras modules whose scikit-learn / matplotlib imports are optional (guarded by `except ImportError`).
OPTIONAL_EXTRAS = ("keras.src.wrappers", "keras.src.visualization")
REFUSED = ("sklearn", "matplotlib")


def _importing_optional_extra() -> bool:
    for name, module in list(sys.modules.items()):
        if name.startswith(OPTIONAL_EXTRAS) and getattr(getattr(module, "__spec__", None), "_initializing", False):
            return True
    return False


class _RefuseDuringKerasExtras(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in REFUSED and _importing_optional_extra():
            raise ModuleNotFoundError(f"{name} is not imported for Keras' optional extras (amych_tf._lean_keras)",
                                      name=name)
        return None


def install() -> None:
    """Add the hook (once). Keras imported before this call is left as it is."""
    if not any(isinstance(finder, _RefuseDuringKerasExtras) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RefuseDuringKerasExtras())
