"""Shared test set-up: quiet TensorFlow, deterministic seeds, tiny audio helpers."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# What `import amych_tf` sets for users (amych_tf/__init__.py: oneDNN's kernels on any CPU); here
# TensorFlow is imported first, so the tests ask for it themselves and run what users run.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import numpy as np
import pytest
import tensorflow as tf


def pytest_collection_modifyitems(items):
    """Tests marked slow first (a stable sort): pytest-xdist then starts the longest while the
    short ones fill the other worker, instead of one worker ending the run alone on a long test."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)
    tf.random.set_seed(0)
    tf.keras.utils.set_random_seed(0)
