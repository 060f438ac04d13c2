"""The package's process-wide settings: Keras' optional imports refused, the kernels' log1p."""

import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from amych_tf import _lean_keras, reconstruction


def test_optional_keras_extras_skip_sklearn_and_matplotlib_only_while_keras_imports_them(monkeypatch):
    _lean_keras.install()
    finder = next(f for f in sys.meta_path if isinstance(f, _lean_keras._RefuseDuringKerasExtras))
    assert finder.find_spec("sklearn.base") is None  # nothing of Keras' extras is being imported
    extra = types.ModuleType("keras.src.wrappers.example")
    extra.__spec__ = types.SimpleNamespace(_initializing=True)
    monkeypatch.setitem(sys.modules, "keras.src.wrappers.example", extra)
    with pytest.raises(ModuleNotFoundError):
        finder.find_spec("sklearn.base")
    assert finder.find_spec("numpy.linalg") is None


def test_log1p_of_the_kernels_is_as_accurate_as_tensorflows():
    d = np.concatenate([np.exp(-np.linspace(0.0, 30.0, 2000)), np.linspace(0.0, 1.0, 2000)]).astype(np.float32)
    exact = np.log1p(d.astype(np.float64))
    np.testing.assert_allclose(reconstruction._log1p_unit(tf.constant(d)).numpy(), exact, rtol=3e-7, atol=0)
