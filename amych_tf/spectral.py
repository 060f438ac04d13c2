"""Log-Mel front end and its inverse.

One implementation serves data preparation, training and the exported model:
`log_mel` (a pure TensorFlow function) and its Keras wrapper `LogMel`.

Features follow the paper (section 3) and the authors' settings:
the *power* STFT (|X|^2, torchaudio's default, `FeatureConfig.power`) with a
Hann window of `n_fft` samples (no centring, so frame `t` covers samples
`[t * hop, t * hop + n_fft)`), HTK mel filterbank from
`tf.signal.linear_to_mel_weight_matrix`, and the scaling

    log_mel = (log10(mel + 1e-10) + 10) / 17

which puts most values in [0, 1]. In these log units the power spectrogram
has twice the contrast of the magnitude one (a partial 40 dB above the floor
spans 4/17 instead of 2/17), against the fixed augmentation noise and bias
and the gain/filter ranges: docs in README ("Hearing fidelity") give the
measured effect. `inverse_log_mel` undoes the scaling, maps mel back to a
linear spectrum by non-negative least squares against the same filterbank,
and runs Griffin-Lim (librosa's implementation) to get audio.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf

# HTK mel scale: mel = MEL_A * log10(1 + hz / MEL_BREAK_HZ). The paper's pitch
# shift (eq. 2) uses the same constant A.
MEL_A = 2595.0
MEL_BREAK_HZ = 700.0
LOG_EPSILON = 1e-10
LOG_OFFSET = 10.0
LOG_RANGE = 17.0

# The paper's feature settings (docs/DESIGN.md, section 2.1); `FeatureConfig.preset(name)`.
PRESETS = {
    "sol": dict(sample_rate=44100, n_fft=2048, hop_length=512, n_mels=128),
    "librispeech": dict(sample_rate=16000, n_fft=1024, hop_length=512, n_mels=128),
}


def hz_to_mel(hz):
    """HTK mel value of a frequency in Hz (NumPy or Python scalars)."""
    return MEL_A * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / MEL_BREAK_HZ)


def mel_to_hz(mel):
    """Frequency in Hz of an HTK mel value (NumPy or Python scalars)."""
    return MEL_BREAK_HZ * (10.0 ** (np.asarray(mel, dtype=np.float64) / MEL_A) - 1.0)


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Parameters of the log-Mel features; they travel with data and models.

    `fmax=None` means the Nyquist frequency. `power` is the exponent of the
    STFT magnitude before the mel filterbank: 2 (power, the authors' choice and
    the default) or 1 (magnitude). Use `FeatureConfig.preset(name)`
    for the paper's settings and `check_compatible` wherever features computed
    elsewhere (a dataset, a checkpoint) meet this configuration.
    """

    sample_rate: int
    n_fft: int
    hop_length: int
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float | None = None
    power: float = 2.0

    def __post_init__(self):
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels"):
            value = getattr(self, name)
            if int(value) != value or value <= 0:
                raise ValueError(f"FeatureConfig.{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        fmax = self.sample_rate / 2.0 if self.fmax is None else float(self.fmax)
        object.__setattr__(self, "fmax", fmax)
        object.__setattr__(self, "fmin", float(self.fmin))
        object.__setattr__(self, "power", float(self.power))
        if self.power not in (1.0, 2.0):
            raise ValueError(f"FeatureConfig.power must be 1 (magnitude) or 2 (power), got {self.power}")
        if not 0.0 <= self.fmin < self.fmax <= self.sample_rate / 2.0:
            raise ValueError(
                f"FeatureConfig needs 0 <= fmin < fmax <= sample_rate / 2, got fmin={self.fmin}, "
                f"fmax={self.fmax}, sample_rate={self.sample_rate}"
            )
        if self.hop_length > self.n_fft:
            raise ValueError(f"hop_length ({self.hop_length}) must not exceed n_fft ({self.n_fft})")

    @classmethod
    def preset(cls, name: str) -> "FeatureConfig":
        """The paper's settings: 'sol' (44.1 kHz) or 'librispeech' (16 kHz)."""
        try:
            return cls(**PRESETS[name])
        except KeyError:
            raise ValueError(f"Unknown feature preset {name!r}; choose one of {sorted(PRESETS)}") from None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "FeatureConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - fields
        if unknown:
            raise ValueError(f"Unknown feature parameters {sorted(unknown)}; expected {sorted(fields)}")
        if "power" not in values:
            # Written before `power` existed, when features were magnitude log-Mels:
            # reading them as power would be a silent mismatch.
            raise ValueError(
                "feature parameters without 'power' come from an amych_tf that used the magnitude "
                "spectrogram; re-run data_tools.prepare (and retrain) with this version (power spectrogram)"
            )
        return cls(**dict(values))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def n_freq_bins(self) -> int:
        """Number of bins of the one-sided magnitude spectrum."""
        return self.n_fft // 2 + 1

    def num_frames(self, num_samples: int) -> int:
        """Frames produced from `num_samples` samples (no padding, no centring)."""
        return 0 if num_samples < self.n_fft else 1 + (num_samples - self.n_fft) // self.hop_length

    def num_samples(self, num_frames: int) -> int:
        """Fewest samples giving `num_frames` frames."""
        return self.n_fft + (num_frames - 1) * self.hop_length

    def mel_values(self) -> np.ndarray:
        """HTK mel value of the centre of each mel bin, shape [n_mels], float64.

        `tf.signal.linear_to_mel_weight_matrix` spaces n_mels + 2 band edges
        uniformly in mel between fmin and fmax; bin i is centred on edge i + 1.
        The pitch shift (eq. 2) works on these values.
        """
        edges = np.linspace(hz_to_mel(self.fmin), hz_to_mel(self.fmax), self.n_mels + 2)
        return edges[1:-1]

    def mel_frequencies(self) -> np.ndarray:
        """Centre frequency in Hz of each mel bin, shape [n_mels]."""
        return mel_to_hz(self.mel_values())

    def check_compatible(self, other: "FeatureConfig", *, what: str = "features") -> None:
        """Raise ValueError naming every parameter where `other` differs."""
        mine, theirs = self.to_dict(), other.to_dict()
        diffs = [
            f"{key}: {mine[key]!r} != {theirs[key]!r}"
            for key in mine
            if not math.isclose(float(mine[key]), float(theirs[key]), rel_tol=1e-9, abs_tol=1e-9)
        ]
        if diffs:
            raise ValueError(f"Feature parameters of {what} do not match: " + "; ".join(diffs))


def mel_weight_matrix(config: FeatureConfig, dtype=tf.float32) -> tf.Tensor:
    """HTK mel filterbank [n_freq_bins, n_mels] (triangles of peak 1, no area normalisation)."""
    return tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins=config.n_mels,
        num_spectrogram_bins=config.n_freq_bins,
        sample_rate=config.sample_rate,
        lower_edge_hertz=config.fmin,
        upper_edge_hertz=config.fmax,
        dtype=dtype,
    )


def scale_log(mel: tf.Tensor) -> tf.Tensor:
    """The paper's log scaling of a mel power: (log10(mel + 1e-10) + 10) / 17."""
    return (tf.math.log(mel + LOG_EPSILON) / math.log(10.0) + LOG_OFFSET) / LOG_RANGE


def unscale_log(log_mel):
    """Inverse of `scale_log` (NumPy), clipped at zero."""
    log_mel = np.asarray(log_mel, dtype=np.float64)
    return np.maximum(10.0 ** (log_mel * LOG_RANGE - LOG_OFFSET) - LOG_EPSILON, 0.0)


def log_mel(waveform: tf.Tensor, config: FeatureConfig) -> tf.Tensor:
    """Scaled log-Mel features of waveforms.

    Args:
      waveform: float [..., samples] at `config.sample_rate`.
      config: feature parameters.

    Returns:
      float32 [..., frames, n_mels] with frames = 1 + (samples - n_fft) // hop
      (zero frames if samples < n_fft). Runs in tf.function and under XLA.
    """
    waveform = tf.convert_to_tensor(waveform, dtype=tf.float32)
    stft = tf.signal.stft(
        waveform,
        frame_length=config.n_fft,
        frame_step=config.hop_length,
        fft_length=config.n_fft,
        window_fn=tf.signal.hann_window,  # periodic Hann, as librosa/scipy 'hann'
        pad_end=False,
    )
    spectrum = tf.abs(stft)
    if config.power == 2.0:
        spectrum = tf.square(spectrum)
    mel = tf.tensordot(spectrum, mel_weight_matrix(config), axes=1)
    # tensordot loses the static shape of the leading axes; restore it.
    mel.set_shape(spectrum.shape[:-1].concatenate([config.n_mels]))
    return scale_log(mel)


def inverse_log_mel(
    log_mel_features,
    config: FeatureConfig,
    *,
    n_iter: int = 64,
    seed: int = 0,
) -> np.ndarray:
    """Waveform whose log-Mel approximates `log_mel_features` (for listening).

    Undoes the log scaling, solves mel = M^T |X|^p for a non-negative linear
    spectrum |X|^p against this front end's own filterbank M (librosa's NNLS
    solver), takes the p-th root (p = config.power), and recovers phase with
    librosa's Griffin-Lim (momentum 0.99, seeded initial phase so the result
    is reproducible).

    Args:
      log_mel_features: [frames, n_mels] or [batch, frames, n_mels].
      config: the feature parameters the log-Mel was computed with.
      n_iter: Griffin-Lim iterations.
      seed: seed of the random initial phase.

    Returns:
      float32 waveform(s) [..., config.num_samples(frames)] at config.sample_rate.
    """
    import librosa  # heavy import kept out of the graph-building path

    features = np.asarray(log_mel_features, dtype=np.float64)
    if features.ndim == 3:
        return np.stack([inverse_log_mel(f, config, n_iter=n_iter, seed=seed) for f in features])
    if features.ndim != 2 or features.shape[-1] != config.n_mels:
        raise ValueError(
            f"inverse_log_mel expects [frames, {config.n_mels}] or [batch, frames, {config.n_mels}], "
            f"got shape {features.shape}"
        )
    mel = unscale_log(features).T  # [n_mels, frames]
    basis = mel_weight_matrix(config, dtype=tf.float64).numpy().T  # [n_mels, n_freq_bins]
    # librosa's NNLS (L-BFGS-B with bounds) can return -1e-23 where the answer is 0, depending on
    # the CPU's rounding; the power's root of that is NaN and Griffin-Lim refuses the input.
    magnitude = np.maximum(librosa.util.nnls(basis, mel), 0.0) ** (1.0 / config.power)  # [n_freq_bins, frames]
    # Our frame t is centred on sample t * hop + n_fft / 2. Griffin-Lim runs with
    # centred frames (librosa's center=True, frame t centred on t * hop) and the result
    # is shifted by n_fft / 2: uncentred inversion divides the first and last samples
    # by a near-zero window overlap, which left a spike at the clip's end that could
    # outweigh the sound itself (the louder with power features, whose square root
    # lifts the NNLS floor). The half-windows at both ends stay silent.
    half = config.n_fft // 2
    centred = librosa.griffinlim(
        magnitude,
        n_iter=n_iter,
        hop_length=config.hop_length,
        win_length=config.n_fft,
        n_fft=config.n_fft,
        window="hann",
        center=True,
        length=(features.shape[0] - 1) * config.hop_length + 1,
        random_state=np.random.RandomState(seed),
    )
    audio = np.zeros(config.num_samples(features.shape[0]), np.float32)
    audio[half: half + len(centred)] = centred
    return audio


@keras.saving.register_keras_serializable(package="amych_tf")
class LogMel(keras.layers.Layer):
    """Keras layer: waveform [batch, samples] -> scaled log-Mel [batch, frames, n_mels]."""

    def __init__(self, feature_config: FeatureConfig | Mapping[str, Any], **kwargs):
        super().__init__(**kwargs)
        if not isinstance(feature_config, FeatureConfig):
            feature_config = FeatureConfig.from_dict(feature_config)
        self.feature_config = feature_config

    def call(self, waveform):
        return log_mel(waveform, self.feature_config)

    def compute_output_shape(self, input_shape):
        samples = input_shape[-1]
        frames = None if samples is None else self.feature_config.num_frames(samples)
        return tuple(input_shape[:-1]) + (frames, self.feature_config.n_mels)

    def get_config(self):
        config = super().get_config()
        config["feature_config"] = self.feature_config.to_dict()
        return config
