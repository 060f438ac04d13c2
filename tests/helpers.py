"""Tiny audio made by the tests themselves (nothing is downloaded)."""

import numpy as np


def harmonic_tone(f0, sample_rate, seconds=1.0, num_harmonics=10, amplitude=0.2):
    """A tone with partials h * f0 of amplitude 1 / h (those below Nyquist)."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    partials = [np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, num_harmonics + 1) if f0 * h < sample_rate / 2]
    return (amplitude * np.sum(partials, axis=0)).astype(np.float32)
