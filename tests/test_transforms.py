"""The spectral transformations (eqs. 1-5) against independent NumPy versions of the paper's equations."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from amych_tf import spectral, transforms
from amych_tf.spectral import FeatureConfig
from helpers import harmonic_tone

A = 2595.0
CONFIG = FeatureConfig.preset("sol")
MEL = CONFIG.mel_values()
F = CONFIG.n_mels
RTOL = 1e-5
ATOL = 1e-7  # only matters for values within ~1e-2 of zero


# --- independent NumPy implementations of the paper's equations -------------------------

def np_phi(f, s):
    """Paper: Phi(f, s) = A log10(1 + s (10^(f/A) - 1))."""
    return A * np.log10(1.0 + s * (10.0 ** (f / A) - 1.0))


def np_pitch(m, s):
    """Eq. 2 with s as the frequency ratio: out[f] = m at mel Phi(mel_f, 1/s), linear, borders held."""
    out = np.empty(m.shape, dtype=np.float64)
    for index in np.ndindex(m.shape[:-1]):
        out[index] = np.interp(np_phi(MEL, 1.0 / s[index]), MEL, m[index])
    return out


def np_softplus10(z):
    return np.logaddexp(0.0, 10.0 * z) / 10.0


def np_low(m, slope, cutoff):
    u = np.arange(m.shape[-1]) / (m.shape[-1] - 1)
    return m + slope[..., None] * np_softplus10(-2.0 * (u - 0.5 + cutoff[..., None]))


def np_high(m, slope, cutoff):
    u = np.arange(m.shape[-1]) / (m.shape[-1] - 1)
    return m + slope[..., None] * np_softplus10(2.0 * (u - 0.5 + cutoff[..., None]))


def np_reconstruct(prototypes, p):
    """Eq. 5: high o low o pitch o gain, prototypes [K, F], parameters [B, T, K]."""
    m = np.broadcast_to(prototypes, p["gain_db"].shape + prototypes.shape[-1:]).astype(np.float64)
    m = m + p["gain_db"][..., None]
    m = np_pitch(m, p["pitch_ratio"])
    m = np_low(m, p["low_slope"], p["low_cutoff"])
    return np_high(m, p["high_slope"], p["high_cutoff"])


def random_parameters(rng, shape):
    return {
        "gain_db": (0.5 * np.tanh(rng.normal(size=shape))).astype(np.float32),
        "pitch_ratio": np.exp(np.tanh(rng.normal(size=shape))).astype(np.float32),
        "low_slope": (0.25 * np.tanh(rng.normal(size=shape))).astype(np.float32),
        "low_cutoff": (0.25 * np.tanh(rng.normal(size=shape))).astype(np.float32),
        "high_slope": (0.25 * np.tanh(rng.normal(size=shape))).astype(np.float32),
        "high_cutoff": (0.25 * np.tanh(rng.normal(size=shape))).astype(np.float32),
    }


def as64(parameters):
    return {key: value.astype(np.float64) for key, value in parameters.items()}


# --- eqs. 1-4 ---------------------------------------------------------------------------

def test_gain_adds_to_every_bin():
    rng = np.random.default_rng(0)
    m, g = rng.random((3, 4, F)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_allclose(transforms.gain(m, g), m + g[..., None], rtol=RTOL)


def test_pitch_shift_matches_numpy_including_fractional_shifts_and_both_borders():
    rng = np.random.default_rng(1)
    m = rng.random((64, F)).astype(np.float32)
    ratios = np.exp(rng.uniform(-1.2, 1.2, size=64)).astype(np.float32)
    # Fixed cases: strong shifts that read past the low border (s > 1) and past the high
    # border (s < 1), small non-integer shifts, and ratios just around 1.
    ratios[:6] = [3.3, 0.3, 1.0007, 0.9993, 1.5, 2.0 / 3.0]
    shifted = transforms.pitch_shift(m, ratios, MEL).numpy()
    expected = np_pitch(m.astype(np.float64), ratios.astype(np.float64))
    np.testing.assert_allclose(shifted, expected, rtol=RTOL, atol=ATOL)
    # Border values held: s = 3.3 reads below bin 0 at the low end, s = 0.3 beyond the top.
    assert shifted[0, 0] == m[0, 0] and shifted[1, -1] == m[1, -1]
    src_low = np_phi(MEL, 1.0 / 3.3)
    assert np.sum(src_low < MEL[0]) >= 3  # several bins really are past the border
    np.testing.assert_array_equal(shifted[0, src_low < MEL[0]], m[0, 0])
    assert np.sum(np_phi(MEL, 1.0 / 0.3) > MEL[-1]) >= 3


def test_pitch_shift_moves_a_spectral_peak_by_the_ratio():
    """A single peak at bin 60 reappears where Hz(bin) * s lands."""
    m = np.zeros((1, F), np.float32)
    m[0, 60] = 1.0
    for ratio in (1.5, 0.8):
        out = transforms.pitch_shift(m, np.array([ratio], np.float32), MEL).numpy()[0]
        target_mel = spectral.hz_to_mel(spectral.mel_to_hz(MEL[60]) * ratio)
        centroid = np.sum(out * MEL) / np.sum(out)
        assert abs(centroid - target_mel) < 0.5 * (MEL[1] - MEL[0])


def test_filters_match_numpy():
    rng = np.random.default_rng(2)
    m = rng.random((5, 7, F)).astype(np.float32)
    slope, cutoff = rng.normal(size=(2, 5, 7)).astype(np.float32) * 0.25
    np.testing.assert_allclose(
        transforms.low_filter(m, slope, cutoff), np_low(m.astype(np.float64), slope, cutoff), rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(
        transforms.high_filter(m, slope, cutoff), np_high(m.astype(np.float64), slope, cutoff), rtol=RTOL, atol=ATOL
    )
    # Shapes of the curves: a negative low slope attenuates low bins and leaves high bins alone.
    curve = transforms.low_filter_curve(tf.constant(-0.25), tf.constant(0.0), F).numpy()
    assert curve[0] < -0.2 and abs(curve[-1]) < 1e-4 and np.all(np.diff(curve) >= 0)
    curve = transforms.high_filter_curve(tf.constant(-0.25), tf.constant(0.0), F).numpy()
    assert curve[-1] < -0.2 and abs(curve[0]) < 1e-4 and np.all(np.diff(curve) <= 0)


# --- eq. 5 ------------------------------------------------------------------------------

def test_composition_broadcasts_prototypes_and_matches_numpy():
    rng = np.random.default_rng(3)
    prototypes = rng.random((4, F)).astype(np.float32)
    params = random_parameters(rng, (2, 6, 4))
    out = transforms.transform(prototypes, mel_values=MEL, **params).numpy()
    assert out.shape == (2, 6, 4, F)
    np.testing.assert_allclose(out, np_reconstruct(prototypes.astype(np.float64), as64(params)), rtol=RTOL, atol=ATOL)


def test_neutral_parameters_are_exactly_the_identity():
    rng = np.random.default_rng(4)
    m = rng.random((3, 5, F)).astype(np.float32)
    shape = (3, 5)
    rng_params = random_parameters(rng, shape)
    neutral = dict(rng_params, gain_db=np.zeros(shape, np.float32), pitch_ratio=np.ones(shape, np.float32),
                   low_slope=np.zeros(shape, np.float32), high_slope=np.zeros(shape, np.float32))
    out = transforms.transform(m, mel_values=MEL, **neutral).numpy()
    np.testing.assert_array_equal(out, m)
    # and with every stage switched off, whatever the parameters
    off = transforms.transform(m, mel_values=MEL, gates=[0.0, 0.0, 0.0, 0.0], **rng_params).numpy()
    np.testing.assert_array_equal(off, m)


@pytest.mark.parametrize("active", [("gain",), ("gain", "pitch"), ("gain", "pitch", "low"), transforms.STAGES])
def test_gates_switch_stages(active):
    rng = np.random.default_rng(5)
    prototypes = rng.random((3, F)).astype(np.float32)
    params = random_parameters(rng, (2, 4, 3))
    gates = [1.0 if stage in active else 0.0 for stage in transforms.STAGES]
    out = transforms.transform(prototypes, mel_values=MEL, gates=gates, **params).numpy()
    reference = as64(params)
    if "pitch" not in active:
        reference["pitch_ratio"][:] = 1.0
    for stage, key in (("gain", "gain_db"), ("low", "low_slope"), ("high", "high_slope")):
        if stage not in active:
            reference[key][:] = 0.0
    np.testing.assert_allclose(out, np_reconstruct(prototypes.astype(np.float64), reference), rtol=RTOL, atol=ATOL)


def test_layer_gates_change_the_compiled_step_without_retracing():
    rng = np.random.default_rng(6)
    layer = transforms.SpectralTransform(CONFIG, active_stages=())
    prototypes = tf.constant(rng.random((3, F)).astype(np.float32))
    params = {k: tf.constant(v) for k, v in random_parameters(rng, (2, 4, 3)).items()}
    step = tf.function(lambda: layer(prototypes, **params), jit_compile=True)
    outputs = [step().numpy()]
    np.testing.assert_array_equal(outputs[0], np.broadcast_to(prototypes.numpy(), (2, 4, 3, F)))
    for stage in transforms.STAGES:
        layer.set_stage_active(stage)
        outputs.append(step().numpy())
        assert np.abs(outputs[-1] - outputs[-2]).max() > 1e-3, stage
    assert layer.active_stages == transforms.STAGES
    assert step.experimental_get_tracing_count() == 1


# --- physics ----------------------------------------------------------------------------

def test_octave_shift_of_a_harmonic_tone_matches_the_tone_an_octave_up():
    """log-Mel(220 Hz tone) shifted by s = 2 vs log-Mel(440 Hz tone).

    Measured mean squared errors (power log-Mels, twice the log contrast of magnitude
    ones, hence four times the squared errors): 0.0075 after the shift, 0.056 without it.
    """
    sr = CONFIG.sample_rate
    low = spectral.log_mel(harmonic_tone(220.0, sr)[None], CONFIG)[0]
    high = spectral.log_mel(harmonic_tone(440.0, sr)[None], CONFIG)[0]
    shifted = transforms.pitch_shift(low, 2.0 * tf.ones(low.shape[:1]), MEL)
    error_shifted = float(tf.reduce_mean((shifted - high) ** 2))
    error_unshifted = float(tf.reduce_mean((low - high) ** 2))
    assert error_shifted < 0.01, error_shifted
    assert error_unshifted > 0.04, error_unshifted
    assert error_shifted < error_unshifted / 5
    # Shifting down by the inverse ratio undoes most of it, too.
    back = transforms.pitch_shift(high, 0.5 * tf.ones(low.shape[:1]), MEL)
    assert float(tf.reduce_mean((back - low) ** 2)) < error_unshifted / 5


# --- gradients, XLA ---------------------------------------------------------------------

def test_gradients_are_finite_and_nonzero_under_xla():
    rng = np.random.default_rng(7)
    prototypes = tf.Variable(rng.random((3, F)).astype(np.float32))
    params = {k: tf.Variable(v) for k, v in random_parameters(rng, (2, 5, 3)).items()}
    target = tf.constant(rng.random((2, 5, 3, F)).astype(np.float32))

    @tf.function(jit_compile=True)
    def gradients():
        with tf.GradientTape() as tape:
            out = transforms.transform(prototypes, mel_values=MEL, **params)
            loss = tf.reduce_mean((out - target) ** 2)
        return tape.gradient(loss, [prototypes] + list(params.values()))

    for name, grad in zip(["prototypes"] + list(params), gradients()):
        grad = grad.numpy()
        assert np.all(np.isfinite(grad)), name
        assert np.abs(grad).max() > 1e-6, name
    # A switched-off stage's parameters get exactly zero gradient.
    with tf.GradientTape() as tape:
        out = transforms.transform(prototypes, mel_values=MEL, gates=[1.0, 0.0, 1.0, 1.0], **params)
        loss = tf.reduce_mean((out - target) ** 2)
    assert float(tf.reduce_max(tf.abs(tape.gradient(loss, params["pitch_ratio"])))) == 0.0


# --- serialisation ----------------------------------------------------------------------

def test_layers_round_trip_config_and_keras_saving(tmp_path):
    for layer in (transforms.Gain(), transforms.PitchShift(CONFIG), transforms.LowFilter(), transforms.HighFilter(),
                  transforms.SpectralTransform(CONFIG, active_stages=("gain", "pitch"))):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()

    rng = np.random.default_rng(8)
    names = ["gain_db", "pitch_ratio", "low_slope", "low_cutoff", "high_slope", "high_cutoff"]
    m_in = keras.Input(shape=(5, F), name="m")
    param_in = {name: keras.Input(shape=(5,), name=name) for name in names}
    stage_layer = transforms.SpectralTransform(CONFIG, active_stages=("gain",))
    pitched = transforms.PitchShift(CONFIG)(m_in, param_in["pitch_ratio"])
    out = stage_layer(pitched, **param_in)
    model = keras.Model({"m": m_in, **param_in}, out)
    stage_layer.set_stage_active("high")  # state beyond the config: saved with the weights
    inputs = {"m": rng.random((2, 5, F)).astype(np.float32), **random_parameters(rng, (2, 5))}
    path = tmp_path / "transforms.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(inputs), model(inputs), rtol=1e-6)
    loaded_stage = [layer for layer in loaded.layers if isinstance(layer, transforms.SpectralTransform)][0]
    assert loaded_stage.active_stages == ("gain", "high")
