"""Log-Mel front end: parameters, agreement with librosa, XLA, inverse, serialisation."""

import librosa
import keras
import numpy as np
import pytest
import tensorflow as tf

from amych_tf import spectral
from amych_tf.spectral import FeatureConfig, LogMel
from helpers import harmonic_tone


def librosa_log_mel(waveform, config):
    """Independent reference: librosa's HTK mel spectrogram of |X|^power (no centring)."""
    spectrum = np.abs(
        librosa.stft(waveform, n_fft=config.n_fft, hop_length=config.hop_length, window="hann", center=False)
    ) ** config.power
    basis = librosa.filters.mel(
        sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels,
        fmin=config.fmin, fmax=config.fmax, htk=True, norm=None,
    )
    return ((np.log10(basis @ spectrum + 1e-10) + 10.0) / 17.0).T


def test_presets_hold_the_papers_settings():
    sol = FeatureConfig.preset("sol")
    assert (sol.sample_rate, sol.n_fft, sol.hop_length, sol.n_mels) == (44100, 2048, 512, 128)
    assert (sol.fmin, sol.fmax) == (0.0, 22050.0)
    libri = FeatureConfig.preset("librispeech")
    assert (libri.sample_rate, libri.n_fft, libri.hop_length, libri.n_mels) == (16000, 1024, 512, 128)
    with pytest.raises(ValueError, match="Unknown feature preset"):
        FeatureConfig.preset("timit")


def test_config_round_trips_and_reports_mismatches():
    config = FeatureConfig.preset("sol")
    assert FeatureConfig.from_dict(config.to_dict()) == config
    other = FeatureConfig(sample_rate=16000, n_fft=2048, hop_length=256)
    with pytest.raises(ValueError, match=r"dataset.*sample_rate: 44100 != 16000.*hop_length: 512 != 256"):
        config.check_compatible(other, what="dataset")
    config.check_compatible(FeatureConfig.from_dict(config.to_dict()))
    with pytest.raises(ValueError, match="fmax"):
        FeatureConfig(sample_rate=16000, n_fft=1024, hop_length=512, fmax=9000)
    with pytest.raises(ValueError, match="Unknown feature parameters"):
        FeatureConfig.from_dict({**config.to_dict(), "window": "hann"})
    # Parameters written before `power` existed describe magnitude features: an error, not a default.
    with pytest.raises(ValueError, match="magnitude spectrogram; re-run data_tools.prepare"):
        FeatureConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "power"})
    with pytest.raises(ValueError, match=r"power: 2.0 != 1.0"):
        config.check_compatible(FeatureConfig(**{**config.to_dict(), "power": 1}), what="dataset")


@pytest.mark.parametrize("preset,power", [("sol", 2.0), ("librispeech", 2.0), ("librispeech", 1.0)])
def test_log_mel_matches_librosa_htk(preset, power):
    """Broadband noise plus a tone, so every mel band carries energy.

    Tolerance: 1e-3 in scaled units (0.017 in log10, i.e. 4% in mel magnitude);
    measured differences are below 2e-4, from float32 arithmetic and TF building
    the triangles on the mel axis where librosa builds them on the Hz axis.
    """
    config = FeatureConfig(**{**spectral.PRESETS[preset], "power": power})
    rng = np.random.default_rng(1)
    waveform = 0.05 * rng.normal(size=config.sample_rate).astype(np.float32)
    waveform += harmonic_tone(330.0, config.sample_rate)
    ours = spectral.log_mel(waveform[None], config).numpy()[0]
    expected = librosa_log_mel(waveform, config)
    assert ours.shape == expected.shape == (config.num_frames(config.sample_rate), 128)
    np.testing.assert_allclose(ours, expected, atol=1e-3, rtol=0)


def test_mel_values_are_the_filterbank_centres():
    config = FeatureConfig.preset("sol")
    centres_hz = librosa.mel_frequencies(config.n_mels + 2, fmin=config.fmin, fmax=config.fmax, htk=True)[1:-1]
    np.testing.assert_allclose(config.mel_frequencies(), centres_hz, rtol=1e-9)
    np.testing.assert_allclose(config.mel_values(), librosa.hz_to_mel(centres_hz, htk=True), rtol=1e-9)
    # Each triangle of the TF filterbank peaks at the FFT bin nearest its centre.
    weights = spectral.mel_weight_matrix(config).numpy()
    fft_hz = np.arange(config.n_freq_bins) * config.sample_rate / config.n_fft
    peaks = fft_hz[weights.argmax(axis=0)]
    upper = config.mel_frequencies() > 200  # above where bands are narrower than an FFT bin
    assert np.all(np.abs(peaks - config.mel_frequencies())[upper] <= config.sample_rate / config.n_fft)


def test_log_mel_shapes_scaling_and_xla():
    config = FeatureConfig.preset("librispeech")
    batch = np.stack([harmonic_tone(f, config.sample_rate, seconds=0.5) for f in (200.0, 300.0, 450.0)])
    eager = spectral.log_mel(batch, config).numpy()
    assert eager.shape == (3, config.num_frames(batch.shape[1]), 128) and eager.dtype == np.float32
    assert config.num_frames(config.num_samples(7)) == 7
    silent = spectral.log_mel(np.zeros((1, config.n_fft), np.float32), config).numpy()
    np.testing.assert_allclose(silent, 0.0, atol=1e-6)  # log10(1e-10) + 10 = 0
    compiled = tf.function(lambda w: spectral.log_mel(w, config), jit_compile=True)
    np.testing.assert_allclose(compiled(batch).numpy(), eager, atol=1e-5)


def dominant_pitch(waveform, sample_rate):
    f0 = librosa.yin(waveform, fmin=80, fmax=1000, sr=sample_rate, frame_length=2048)
    return float(np.median(f0))


@pytest.mark.parametrize("f0", [220.0, 440.0])  # not 392: NNLS (L-BFGS-B) there took ~5x the CPU
def test_inverse_of_a_tone_is_a_tone_at_the_same_pitch(f0):
    config = FeatureConfig.preset("librispeech")
    tone = harmonic_tone(f0, config.sample_rate, seconds=0.5)  # NNLS's time grows with the frames
    features = spectral.log_mel(tone[None], config).numpy()[0]
    audio = spectral.inverse_log_mel(features, config, n_iter=32)
    assert audio.dtype == np.float32 and audio.shape == (config.num_samples(features.shape[0]),)
    assert np.all(np.isfinite(audio)) and np.abs(audio).max() > 0.01
    assert abs(dominant_pitch(audio, config.sample_rate) / f0 - 1.0) < 0.02
    # and its log-Mel resembles the input's (Griffin-Lim is approximate); a power
    # log-Mel has twice the log contrast of a magnitude one, hence the tolerance.
    again = spectral.log_mel(audio[None], config).numpy()[0]
    assert np.mean(np.abs(again - features)) < 0.05 * config.power
    batch = spectral.inverse_log_mel(np.stack([features, features]), config, n_iter=4)
    assert batch.shape == (2, audio.shape[0])


def test_inverse_survives_nnls_returning_tiny_negative_magnitudes(monkeypatch):
    """On some CPUs librosa's NNLS returns -1e-23 for a zero magnitude; its root was NaN and Griffin-Lim
    raised (TensorBoard's prototype audio and `listen` crashed on such machines)."""
    config = FeatureConfig.preset("librispeech")
    features = spectral.log_mel(harmonic_tone(220.0, config.sample_rate)[None], config).numpy()[0][:8]
    nnls = librosa.util.nnls
    monkeypatch.setattr(librosa.util, "nnls", lambda basis, mel: np.where(
        nnls(basis, mel) == 0.0, -1.3e-23, nnls(basis, mel)))
    audio = spectral.inverse_log_mel(features, config, n_iter=2)
    assert np.all(np.isfinite(audio)) and np.abs(audio).max() > 0.0


def test_log_mel_layer_serialises(tmp_path):
    config = FeatureConfig.preset("librispeech")
    layer = LogMel(config)
    restored = LogMel.from_config(layer.get_config())
    assert restored.feature_config == config
    inputs = keras.Input(shape=(config.num_samples(20),))
    model = keras.Model(inputs, LogMel(config)(inputs))
    assert model.output_shape == (None, 20, 128)
    path = tmp_path / "front_end.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    waveform = harmonic_tone(300.0, config.sample_rate, seconds=0.7)[None, : config.num_samples(20)]
    np.testing.assert_allclose(loaded(waveform), model(waveform), atol=1e-6)
    assert loaded.layers[-1].feature_config == config
