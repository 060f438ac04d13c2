"""Smoke check of an installation: front end, transformations and inverse on a synthetic tone.

    python -m amych_tf.smoke

Computes the log-Mel of a 220 Hz harmonic tone, shifts it an octave up with the
pitch transformation (under XLA), compares it with the log-Mel of a 440 Hz tone,
and re-synthesises the shifted spectrogram with Griffin-Lim. Prints what it
measured and exits non-zero if any number is off.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import librosa  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from amych_tf import spectral, transforms  # noqa: E402


def harmonic_tone(f0: float, sample_rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    partials = [np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 11) if f0 * h < sample_rate / 2]
    return (0.2 * np.sum(partials, axis=0)).astype(np.float32)


def main() -> int:
    start = time.perf_counter()
    config = spectral.FeatureConfig.preset("librispeech")
    mel_values = config.mel_values()
    low, high = (spectral.log_mel(harmonic_tone(f0, config.sample_rate)[None], config)[0] for f0 in (220.0, 440.0))

    @tf.function(jit_compile=True)
    def octave_up(m):
        return transforms.pitch_shift(m, 2.0 * tf.ones(tf.shape(m)[:1]), mel_values)

    shifted = octave_up(low)
    error_shifted = float(tf.reduce_mean((shifted - high) ** 2))
    error_unshifted = float(tf.reduce_mean((low - high) ** 2))
    audio = spectral.inverse_log_mel(shifted.numpy(), config, n_iter=32)
    pitch = float(np.median(librosa.yin(audio, fmin=80, fmax=1000, sr=config.sample_rate)))
    print(f"TensorFlow {tf.__version__}, devices: {[d.device_type for d in tf.config.list_physical_devices()]}")
    print(f"log-Mel of a 1 s tone: {tuple(low.shape)} (frames, mels) at {config.sample_rate} Hz")
    print(f"octave shift, MSE to the 440 Hz tone: {error_shifted:.4f} (unshifted: {error_unshifted:.4f})")
    print(f"Griffin-Lim of the shifted spectrogram: pitch {pitch:.1f} Hz (expected 440)")
    print(f"smoke check done in {time.perf_counter() - start:.1f} s")
    ok = error_shifted < error_unshifted / 5 and abs(pitch / 440.0 - 1.0) < 0.03
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
