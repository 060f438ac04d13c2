"""The paper's spectral transformations (section 3.1, eqs. 1-5).

Each acts on log-Mel spectra `m` of shape [..., F] (F mel bins) with one
parameter value per spectrum, shape [...]; `m` and the parameters broadcast
against each other, so prototypes [K, F] combine with parameters
[batch, time, K] into reconstructions [batch, time, K, F].

Pure functions here, thin Keras layers at the bottom of the module.

Conventions (decisions, see also README):
- Pitch: `s` is the frequency ratio applied to the spectrum: with s = 2 every
  partial of the result sits one octave above the input's. The paper writes
  eq. 2 as T(m)[f] = m[Phi(f, s)], which reads the input at s times the
  output's frequency and so moves content by 1/s; we apply Phi(f, 1/s) so that
  `s` means what its name says. Phi acts on the HTK mel value of each bin (not
  on a [0, 1] axis), with linear interpolation between bins and the border
  values held.
- Filters: the smooth-hinge form of the authors' code on the normalised axis
  u = bin / (F - 1), softplus_10(z) = log(1 + exp(10 z)) / 10:
      low[u]  = slope_l * softplus_10(-2 (u - 0.5 + cutoff_l))
      high[u] = slope_h * softplus_10( 2 (u - 0.5 + cutoff_h))
- Every transformation is exactly the identity at its neutral parameters
  (g = 0, s = 1, slopes 0), and a stage switched off by its gate is given its
  neutral parameters, so the composition never retraces to change stages.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf

from amych_tf.spectral import MEL_A, FeatureConfig

STAGES = ("gain", "pitch", "low", "high")
FILTER_SHARPNESS = 10.0


def gain(m: tf.Tensor, g: tf.Tensor) -> tf.Tensor:
    """Eq. 1: add the gain `g` [...] to every bin of `m` [..., F]."""
    return m + tf.expand_dims(g, -1)


def mel_grid_step(mel_values) -> float:
    """Spacing of a uniform mel grid; raises if the grid is not uniform."""
    mel_values = np.asarray(mel_values, dtype=np.float64)
    if mel_values.ndim != 1 or mel_values.size < 2:
        raise ValueError(f"mel_values must be a 1-D grid of at least 2 bins, got shape {mel_values.shape}")
    steps = np.diff(mel_values)
    if not np.allclose(steps, steps[0], rtol=1e-6) or steps[0] <= 0:
        raise ValueError("mel_values must be increasing and uniformly spaced (an HTK mel filterbank)")
    return float(steps[0])


def pitch_source_position(s: tf.Tensor, mel_values) -> tuple[tf.Tensor, tf.Tensor]:
    """Where output bin f reads from: (whole bins, fraction), float32 [..., F].

    Output bin f (mel value mu_f) reads the input at Phi(mu_f, 1/s), the mel
    value of the frequency hz(mu_f) / s. With e_f = 10^(-mu_f / A),
        Phi(mu, 1/s) - mu = (A / ln 10) * (log1p((s - 1) e_f) - log s),
    which is exactly zero at s = 1, so the identity is exact.

    The displacement is computed in float64 and split into whole bins and a
    fraction before returning to float32: a shift of 40 bins computed in
    float32 is only good to ~1e-5 bin, float64 keeps the fraction exact to
    float32 precision (the tests compare against NumPy at rtol 1e-5).
    """
    mel_values = np.asarray(mel_values, dtype=np.float64)
    bins_per_log_unit = MEL_A / math.log(10.0) / mel_grid_step(mel_values)
    decay = tf.constant(10.0 ** (-mel_values / MEL_A), dtype=tf.float64)  # e_f
    bins = tf.range(mel_values.size, dtype=tf.float64)
    ratio = tf.expand_dims(tf.cast(s, tf.float64), -1)
    shift_in_bins = bins_per_log_unit * (tf.math.log1p((ratio - 1.0) * decay) - tf.math.log(ratio))
    whole_bins = tf.floor(shift_in_bins)
    fraction = tf.cast(shift_in_bins - whole_bins, tf.float32)
    return tf.cast(bins + whole_bins, tf.float32), fraction


def border_positions(lower: tf.Tensor, fraction: tf.Tensor, num_bins: int) -> tuple[tf.Tensor, tf.Tensor]:
    """(lower bin int32, fraction) of `interpolate_bins`, positions outside [0, F - 1] at the border.

    Below the grid: hold m[0] (fraction 0 at bin 0); at or above the last bin:
    hold m[F-1] (fraction 1 between bins F-2 and F-1).
    """
    fraction = tf.where(lower < 0.0, 0.0, tf.where(lower >= num_bins - 1.0, 1.0, fraction))
    return tf.cast(tf.clip_by_value(lower, 0.0, num_bins - 2.0), tf.int32), fraction


def interpolate_bins(m: tf.Tensor, lower: tf.Tensor, fraction: tf.Tensor) -> tf.Tensor:
    """Linear interpolation of `m` [..., F] at positions lower + fraction [..., F'].

    `lower` holds whole (float) bin indices, `fraction` values in [0, 1);
    positions outside [0, F - 1] take the border value. `m` broadcasts
    against the positions.
    """
    num_bins = m.shape[-1]
    shape = tf.broadcast_dynamic_shape(tf.shape(m)[:-1], tf.shape(lower)[:-1])
    m = tf.broadcast_to(m, tf.concat([shape, [num_bins]], 0))
    lower = tf.broadcast_to(lower, tf.concat([shape, tf.shape(lower)[-1:]], 0))
    fraction = tf.broadcast_to(fraction, tf.shape(lower))
    lower, fraction = border_positions(lower, fraction, num_bins)
    batch_dims = lower.shape.rank - 1
    below = tf.gather(m, lower, batch_dims=batch_dims)
    above = tf.gather(m, lower + 1, batch_dims=batch_dims)
    # (1 - w) a + w b (not a + w (b - a)): exact at w = 0 and at w = 1.
    return (1.0 - fraction) * below + fraction * above


def pitch_shift(m: tf.Tensor, s: tf.Tensor, mel_values) -> tf.Tensor:
    """Eq. 2: shift `m` [..., F] in pitch by the frequency ratio `s` [...] > 0.

    `mel_values` [F] are the HTK mel values of the bins (FeatureConfig.mel_values()).
    """
    lower, fraction = pitch_source_position(s, mel_values)
    return interpolate_bins(m, lower, fraction)


def softplus_sharp(z: tf.Tensor) -> tf.Tensor:
    """softplus_10(z) = log(1 + exp(10 z)) / 10, a smooth hinge max(z, 0)."""
    return tf.math.softplus(FILTER_SHARPNESS * z) / FILTER_SHARPNESS


def normalised_frequency(num_bins: int) -> tf.Tensor:
    """u = bin / (F - 1), shape [F]."""
    return tf.linspace(0.0, 1.0, num_bins)


def low_filter_curve(slope: tf.Tensor, cutoff: tf.Tensor, num_bins: int) -> tf.Tensor:
    """L[u] = slope * softplus_10(-2 (u - 0.5 + cutoff)), shape [..., F]."""
    u = normalised_frequency(num_bins)
    return tf.expand_dims(slope, -1) * softplus_sharp(-2.0 * (u - 0.5 + tf.expand_dims(cutoff, -1)))


def high_filter_curve(slope: tf.Tensor, cutoff: tf.Tensor, num_bins: int) -> tf.Tensor:
    """H[u] = slope * softplus_10(2 (u - 0.5 + cutoff)), shape [..., F]."""
    u = normalised_frequency(num_bins)
    return tf.expand_dims(slope, -1) * softplus_sharp(2.0 * (u - 0.5 + tf.expand_dims(cutoff, -1)))


def low_filter(m: tf.Tensor, slope: tf.Tensor, cutoff: tf.Tensor) -> tf.Tensor:
    """Eq. 3: add the low-frequency filter L to `m` [..., F]."""
    return m + low_filter_curve(slope, cutoff, m.shape[-1])


def high_filter(m: tf.Tensor, slope: tf.Tensor, cutoff: tf.Tensor) -> tf.Tensor:
    """Eq. 4: add the high-frequency filter H to `m` [..., F]."""
    return m + high_filter_curve(slope, cutoff, m.shape[-1])


def gate_parameters(gates, *, gain_db, pitch_ratio, low_slope, high_slope):
    """(gain_db, pitch_ratio, low_slope, high_slope) with switched-off stages at their neutral values.

    `gates` [4] (float, 1 = on, 0 = off, in the order of STAGES): g -> 0, s -> 1,
    slopes -> 0, which makes each switched-off transformation exactly the identity.
    """
    gates = tf.convert_to_tensor(gates, dtype=tf.float32)
    return gates[0] * gain_db, tf.pow(pitch_ratio, gates[1]), gates[2] * low_slope, gates[3] * high_slope


def transform(
    m: tf.Tensor,
    *,
    gain_db: tf.Tensor,
    pitch_ratio: tf.Tensor,
    low_slope: tf.Tensor,
    low_cutoff: tf.Tensor,
    high_slope: tf.Tensor,
    high_cutoff: tf.Tensor,
    mel_values,
    gates=(1.0, 1.0, 1.0, 1.0),
) -> tf.Tensor:
    """Eq. 5: high o low o pitch o gain applied to `m` [..., F].

    `gates` [4] (float, 1 = on, 0 = off, in the order of STAGES) may be a
    tf.Variable: a stage that is off gets its neutral parameters, so the
    compiled graph reads the gate and never has to be retraced. Gradients of
    a switched-off stage's parameters are zero.

    `gain_db` is the additive gain g of eq. 1 in log-Mel units (the name keeps
    it apart from the `gain` function).
    """
    gain_db, pitch_ratio, low_slope, high_slope = gate_parameters(
        gates, gain_db=gain_db, pitch_ratio=pitch_ratio, low_slope=low_slope, high_slope=high_slope)
    m = gain(m, gain_db)
    m = pitch_shift(m, pitch_ratio, mel_values)
    m = low_filter(m, low_slope, low_cutoff)
    return high_filter(m, high_slope, high_cutoff)


# ---------------------------------------------------------------------------
# Keras layers


def _feature_config(value) -> FeatureConfig:
    return value if isinstance(value, FeatureConfig) else FeatureConfig.from_dict(value)


@keras.saving.register_keras_serializable(package="amych_tf")
class Gain(keras.layers.Layer):
    """Eq. 1 as a layer: call(m [..., F], g [...])."""

    def call(self, m, g):
        return gain(m, g)


@keras.saving.register_keras_serializable(package="amych_tf")
class PitchShift(keras.layers.Layer):
    """Eq. 2 as a layer: call(m [..., F], s [...]) on the mel grid of `feature_config`."""

    def __init__(self, feature_config: FeatureConfig | Mapping[str, Any], **kwargs):
        super().__init__(**kwargs)
        self.feature_config = _feature_config(feature_config)
        self.mel_values = self.feature_config.mel_values()

    def call(self, m, s):
        return pitch_shift(m, s, self.mel_values)

    def get_config(self):
        return {**super().get_config(), "feature_config": self.feature_config.to_dict()}


@keras.saving.register_keras_serializable(package="amych_tf")
class LowFilter(keras.layers.Layer):
    """Eq. 3 as a layer: call(m [..., F], slope [...], cutoff [...])."""

    def call(self, m, slope, cutoff):
        return low_filter(m, slope, cutoff)


@keras.saving.register_keras_serializable(package="amych_tf")
class HighFilter(keras.layers.Layer):
    """Eq. 4 as a layer: call(m [..., F], slope [...], cutoff [...])."""

    def call(self, m, slope, cutoff):
        return high_filter(m, slope, cutoff)


@keras.saving.register_keras_serializable(package="amych_tf")
class SpectralTransform(keras.layers.Layer):
    """Eq. 5 as a layer, with one on/off gate per stage held in a variable.

    call(m, gain_db=..., pitch_ratio=..., low_slope=..., low_cutoff=...,
    high_slope=..., high_cutoff=...). The gates are a non-trainable weight, so
    they are saved with checkpoints, and `set_stage_active` flips them between
    steps of a compiled training loop without retracing.
    """

    def __init__(self, feature_config: FeatureConfig | Mapping[str, Any], active_stages=STAGES, **kwargs):
        super().__init__(**kwargs)
        self.feature_config = _feature_config(feature_config)
        self.mel_values = self.feature_config.mel_values()
        unknown = set(active_stages) - set(STAGES)
        if unknown:
            raise ValueError(f"Unknown stages {sorted(unknown)}; stages are {STAGES}")
        self.initial_active_stages = tuple(stage for stage in STAGES if stage in active_stages)
        self.gates = self.add_weight(
            name="stage_gates",
            shape=(len(STAGES),),
            initializer=keras.initializers.Constant(
                [1.0 if stage in self.initial_active_stages else 0.0 for stage in STAGES]
            ),
            trainable=False,
            dtype="float32",
        )

    def set_stage_active(self, stage: str, active: bool = True) -> None:
        if stage not in STAGES:
            raise ValueError(f"Unknown stage {stage!r}; stages are {STAGES}")
        index = STAGES.index(stage)
        values = np.array(self.gates.numpy()).copy()
        values[index] = 1.0 if active else 0.0
        self.gates.assign(values)

    @property
    def active_stages(self) -> tuple[str, ...]:
        values = np.array(self.gates.numpy())
        return tuple(stage for stage, on in zip(STAGES, values) if on > 0.5)

    def call(self, m, *, gain_db, pitch_ratio, low_slope, low_cutoff, high_slope, high_cutoff):
        return transform(
            m,
            gain_db=gain_db,
            pitch_ratio=pitch_ratio,
            low_slope=low_slope,
            low_cutoff=low_cutoff,
            high_slope=high_slope,
            high_cutoff=high_cutoff,
            mel_values=self.mel_values,
            gates=self.gates,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "feature_config": self.feature_config.to_dict(),
            "active_stages": list(self.initial_active_stages),
        }
