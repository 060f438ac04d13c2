"""The waveform VAE of the sounds thesis: shapes, config and weights round trips, the ELBO
against NumPy, waveforms in prepared data, the MFCC-DTW distance, and a tiny end-to-end run
(train, evaluate, listen)."""

import functools
import json
import os

import keras
import numpy as np
import pytest
import soundfile
from absl import flags
from absl.testing import flagsaver

from helpers import class_coded_log_mel, make_prepared_dir

from amych_tf import data, evaluation, registry
from amych_tf.cli import train
from amych_tf.registry import model_class
from amych_tf.training import trainer
from amych_tf.training.config import ConfigError
from amych_tf.baselines import vae_run
from amych_tf.baselines.vae import WaveformVAE, augment_waveform, kl_divergence
from amych_tf.spectral import FeatureConfig
from data_tools import audio

FLAGS = flags.FLAGS
train.define_flags()
NUM_CLASSES = 3
# A short waveform (the thesis' is 4096 samples at 8 kHz) keeps the full-width network fast.
WAVEFORM = {"sample_rate": 2000, "num_samples": 256}
FEATURES = FeatureConfig(sample_rate=16000, n_fft=1024, hop_length=512, n_mels=32)
CLASS_HZ = (150.0, 400.0, 800.0)
# Narrow layers for speed, the thesis' kernels and strides (the default is Table 4.1's widths).
NARROW = {"conv_layers": [(8, 5), (8, 4), (16, 4), (16, 4), (32, 4)], "dilation_layers": 2}


def class_tone(index, split="train"):
    """Clip i: a sine of its class' frequency (i % 3), amplitude and phase varying with i."""
    rng = np.random.default_rng(1000 * data.SPLITS.index(split) + index)
    t = np.arange(WAVEFORM["num_samples"]) / WAVEFORM["sample_rate"]
    amplitude = 0.3 + 0.2 * rng.random()
    return (amplitude * np.sin(2 * np.pi * CLASS_HZ[index % NUM_CLASSES] * t + rng.uniform(0, 2 * np.pi))
            ).astype(np.float32)


@pytest.fixture(scope="module")
def waveform_data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vae_prepared")
    make_prepared_dir(directory, {"train": [20] * 12, "validation": [20] * 6, "test": [20] * 6}, num_mels=32,
                      num_classes=NUM_CLASSES, spectrogram=class_coded_log_mel, waveform=(WAVEFORM, class_tone))
    return str(directory)


def small_vae(**kwargs):
    keras.utils.set_random_seed(0)
    model = WaveformVAE(FEATURES, NUM_CLASSES, class_names=["a", "b", "c"], waveform=WAVEFORM, seed=0,
                        **{**NARROW, **kwargs})
    model.build_for_frames()
    return model


def batch(size=4):
    return {"waveform": np.stack([class_tone(i) for i in range(size)])}, np.arange(size) % NUM_CLASSES


def test_shapes_of_both_architectures_and_the_thesis_layers():
    features, _ = batch()
    for architecture in ("convolution", "dilation"):
        model = small_vae(architecture=architecture)
        mean, log_var = model.encode(features)
        assert mean.shape == log_var.shape == (4, 20)
        assert model(features).shape == (4, 256)
        assert model.classify(mean).shape == (4, NUM_CLASSES)
        assert np.all(np.abs(model(features).numpy()) <= 1.0)  # tanh output, a waveform
    assert model_class("vae") is WaveformVAE
    thesis = WaveformVAE(FEATURES, NUM_CLASSES)  # Table 4.1 (layers only constructed, not built)
    assert [(c.filters, c.kernel_size[0], c.strides[0]) for c in thesis.encoder.body[0].convolutions] == [
        (128, 5, 2), (128, 4, 2), (256, 4, 2), (512, 4, 2), (1024, 4, 2)]
    assert [(c.filters, c.kernel_size[0]) for c in thesis.decoder.body[0].convolutions] == [
        (1024, 4), (512, 4), (256, 4), (128, 4), (128, 5)]
    assert thesis.latent_dim == 20 and len(thesis.encoder.body) == 1
    assert WaveformVAE(FEATURES, NUM_CLASSES, architecture="dilation").encoder.body[1].num_layers == 50
    convolution = small_vae()
    assert convolution.encoder(features["waveform"]).shape == (4, 256 // 32)  # the 1x1 collapse
    with pytest.raises(ValueError, match="no bottleneck classifier"):
        small_vae(supervised=False).classify(mean)


def test_the_tanh_offset_breaks_the_odd_symmetry_of_the_fresh_encoder():
    """With beta = 0 the freshly built tanh network is odd (features flip sign with the waveform), so
    random-phase notes give it nothing to learn from; the default offset 0.5 gives it an even part."""
    features, _ = batch()
    inverted = {"waveform": -features["waveform"]}
    odd = small_vae(tanh_offset=0.0)
    np.testing.assert_allclose(odd.embed(inverted).numpy(), -odd.embed(features).numpy(), atol=1e-5)
    model = small_vae()
    assert {float(v) for norm in model.encoder.body[0].norms for v in norm.beta.numpy()} == {0.5}
    even_part = model.embed(features).numpy() + model.embed(inverted).numpy()
    assert np.abs(even_part).max() > 0.05


def test_peak_normalisation_makes_the_latent_blind_to_the_clip_level():
    features, _ = batch()
    quieter = {"waveform": 0.1 * features["waveform"]}
    model = small_vae()
    np.testing.assert_allclose(np.abs(model.input_waveform(features).numpy()).max(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(model.embed(quieter).numpy(), model.embed(features).numpy(), rtol=1e-4, atol=1e-5)
    assert not np.any(model.input_waveform({"waveform": np.zeros((1, 256), np.float32)}).numpy())  # silence: 0
    raw = small_vae(peak_normalise=False)
    assert not np.allclose(raw.embed(quieter).numpy(), raw.embed(features).numpy(), atol=1e-3)
    np.testing.assert_array_equal(raw.input_waveform(features).numpy(), features["waveform"])


def test_augmentation_inverts_half_the_clips_reproducibly():
    waveform = class_tone(0)
    signs = []
    for draw in range(40):
        augmented = augment_waveform(waveform, np.array([7, draw])).numpy()
        np.testing.assert_array_equal(augmented, augment_waveform(waveform, np.array([7, draw])))
        sign = np.sign(augmented[0] * waveform[0])
        np.testing.assert_array_equal(augmented, sign * waveform)
        signs.append(sign)
    assert 10 < signs.count(-1.0) < 30 and 10 < signs.count(1.0) < 30


def test_config_and_weights_round_trip_rebuild_the_same_model(tmp_path):
    model = small_vae(architecture="dilation")
    model.cluster_centres.assign(np.arange(NUM_CLASSES * 20, dtype=np.float32).reshape(NUM_CLASSES, 20))
    path = str(tmp_path / "vae.weights.h5")
    model.save_weights(path)
    config = json.loads(json.dumps(model.get_config()))
    rebuilt = WaveformVAE.from_config(config)
    rebuilt.build_for_frames()
    rebuilt.load_weights(path)
    features, _ = batch()
    np.testing.assert_allclose(rebuilt(features).numpy(), model(features).numpy(), atol=1e-6)
    np.testing.assert_array_equal(rebuilt.cluster_centres.numpy(), model.cluster_centres.numpy())
    assert rebuilt.architecture == "dilation" and rebuilt.waveform == WAVEFORM
    assert keras.saving.get_registered_object("amych_tf>WaveformVAE") is WaveformVAE


def test_elbo_and_cross_entropy_match_numpy():
    model = small_vae()
    features, labels = batch()
    losses = model.per_example_losses(features, labels, training=False)  # z = mean: deterministic
    mean, log_var = (t.numpy().astype(np.float64) for t in model.encode(features, training=False))
    decoded = model.decode(mean.astype(np.float32), training=False).numpy().astype(np.float64)
    logits = model.classify(mean.astype(np.float32)).numpy().astype(np.float64)
    # The target is the clip divided by its peak (the model's input_waveform).
    target = features["waveform"] / np.abs(features["waveform"]).max(axis=1, keepdims=True)
    rec = ((decoded - target) ** 2).sum(1)
    kl_dimensions = 0.5 * (np.exp(log_var) + mean ** 2 - 1 - log_var)
    kl = kl_dimensions.sum(1)
    ce = np.log(np.exp(logits).sum(1)) - logits[np.arange(4), labels]
    np.testing.assert_allclose(losses["rec"].numpy(), rec, rtol=1e-4)
    np.testing.assert_allclose(losses["kl"].numpy(), kl, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(losses["ce"].numpy(), ce, rtol=1e-4, atol=1e-5)
    # Trained with free bits: a dimension below model.free_bits nats costs model.free_bits.
    free_bits_kl = np.maximum(kl_dimensions, model.free_bits).sum(1)
    assert model.free_bits == 0.5 and np.any(kl_dimensions < 0.5) and np.any(kl_dimensions > 0.5)
    np.testing.assert_allclose(losses["elbo"].numpy(), rec + free_bits_kl, rtol=1e-4)
    np.testing.assert_allclose(losses["loss"].numpy(), rec + free_bits_kl + ce, rtol=1e-4)
    without = small_vae(free_bits=0.0).per_example_losses(features, labels, training=False)
    np.testing.assert_allclose(without["loss"].numpy(), rec + kl + ce, rtol=1e-4)
    # KL is 0 at the prior and grows with the distance from it.
    assert kl_divergence(np.zeros((1, 20), np.float32), np.zeros((1, 20), np.float32)).numpy()[0] == 0.0
    # Training draws z ~ N(mean, exp(log_var)): the reconstruction term changes, the KL does not.
    sampled = model.per_example_losses(features, labels, training=True)
    assert not np.allclose(sampled["rec"].numpy(), losses["rec"].numpy())


def test_fixed_length_waveform_resamples_keeps_the_start_and_zero_pads():
    sample_rate = 16000
    t = np.arange(sample_rate) / sample_rate
    tone = np.sin(2 * np.pi * 440.0 * t).astype(np.float32)
    fixed = audio.fixed_length_waveform(tone, sample_rate, 8000, 4096)
    assert fixed.shape == (4096,) and fixed.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(fixed * np.hanning(4096)))
    assert abs(np.argmax(spectrum) * 8000 / 4096 - 440.0) < 2.0  # still 440 Hz at 8 kHz
    short = audio.fixed_length_waveform(tone[:1600], sample_rate, 8000, 4096)  # 0.1 s -> 800 samples
    assert np.any(short[:790]) and not np.any(short[800:])


def test_prepare_stores_the_waveform_and_the_vae_refuses_data_without_it(tmp_path):
    from data_tools import conversion

    audio_dir = tmp_path / "audio"
    for name, hz in (("low", 220.0), ("high", 880.0)):
        os.makedirs(audio_dir / name)
        for i in range(3):
            t = np.arange(int(16000 * (0.3 + 0.2 * i))) / 16000
            soundfile.write(str(audio_dir / name / f"{name}-{i}.wav"), 0.3 * np.sin(2 * np.pi * hz * t), 16000)
    out_dir = str(tmp_path / "prepared")
    conversion.prepare_dataset(str(audio_dir), out_dir, layout="folders", features=FEATURES,
                               waveform={"sample_rate": 8000, "num_samples": 4096})
    info = data.load_dataset_info(out_dir)
    assert info.waveform == {"sample_rate": 8000, "num_samples": 4096}
    stored = {}
    for split in data.SPLITS:
        for features, _ in vae_run.waveform_dataset(out_dir, split, 8, info, with_metadata=True):
            stored.update(zip((p.decode() for p in features["path"].numpy()), features["waveform"].numpy()))
    assert len(stored) == 6
    for path, waveform in stored.items():
        samples, rate = soundfile.read(str(audio_dir / path), dtype="float32")
        np.testing.assert_allclose(waveform, audio.fixed_length_waveform(samples, rate, 8000, 4096), atol=1e-6)
    # Prepared without --waveform: a clear error before any work.
    plain = str(tmp_path / "plain")
    make_prepared_dir(plain, [20] * 6, num_mels=32)
    FLAGS.unparse_flags()
    FLAGS(["train"])
    with flagsaver.flagsaver(model="vae", data_dir=plain, model_dir=str(tmp_path / "run"), batch_size=2):
        with pytest.raises(ConfigError, match="--waveform"):
            trainer.check(train.config_from_flags())


def test_mfcc_dtw_is_zero_on_itself_and_smaller_for_the_same_sound():
    rate = 8000
    t = np.arange(4096) / rate
    a = np.sin(2 * np.pi * 300 * t) * np.exp(-3 * t)
    delayed = np.concatenate([np.zeros(200), a[:-200]])
    other = np.sin(2 * np.pi * 900 * t) * np.exp(-3 * t)
    mfcc = [vae_run.thesis_mfcc(x, rate) for x in (a, delayed, other)]
    assert mfcc[0].shape[0] == 12  # 13 coefficients, the energy one dropped
    assert vae_run.mfcc_dtw_distance(mfcc[0], mfcc[0]) == 0.0
    assert vae_run.mfcc_dtw_distance(mfcc[0], mfcc[1]) < vae_run.mfcc_dtw_distance(mfcc[0], mfcc[2])


def test_tiny_run_trains_evaluates_and_listens(waveform_data, tmp_path, monkeypatch):
    model_dir = str(tmp_path / "run")
    FLAGS.unparse_flags()
    FLAGS(["train"])
    with monkeypatch.context() as patch, flagsaver.flagsaver(
            model="vae", data_dir=waveform_data, model_dir=model_dir, batch_size=6, eval_batch_size=6, epochs=2,
            patience=5, learning_rate=1e-3, verbose=0):
        original = WaveformVAE.from_train_config.__func__
        patch.setattr(WaveformVAE, "from_train_config", classmethod(  # the run builds the model through it
            lambda cls, config, info, **prepared: original(functools.partial(cls, **NARROW), config, info)))
        config = train.config_from_flags()
        summary = trainer.train(config, trainer.check(config))
    with open(os.path.join(model_dir, "metrics.json")) as f:
        written = json.load(f)
    assert written["overall_accuracy"] == summary["overall_accuracy"]
    for key in ("latent_1nn_accuracy", "rec_error"):
        assert 0.0 <= written[key] and np.isfinite(written[key])
    assert set(written["clustering"]) >= {"overall_accuracy", "average_accuracy", "prototype_classes"}
    assert written["mfcc_dtw"]["clips"] == 6 and written["budget"]["epochs_run"] == 2
    assert os.path.isfile(os.path.join(model_dir, "checkpoints", "best.weights.h5"))

    model, config = registry.load_model(model_dir)
    assert config["model_name"] == "vae" and model.conv_layers == NARROW["conv_layers"]
    again = evaluation.evaluate_model(model, waveform_data, "test", 6)
    assert again["overall_accuracy"] == written["overall_accuracy"]
    assert again["latent_1nn_accuracy"] == written["latent_1nn_accuracy"]

    input_path = str(tmp_path / "input.wav")
    soundfile.write(input_path, class_tone(0), WAVEFORM["sample_rate"])
    out_dir = str(tmp_path / "listen")
    written_files = vae_run.listen(model, waveform_data, out_dir, inputs=[input_path], morph=("class2", "class0"),
                                   batch_size=6)
    assert len(written_files["centres"]) == NUM_CLASSES and len(written_files["morph"]) == vae_run.MORPH_STEPS
    samples, rate = soundfile.read(written_files["morph"][0])
    assert rate == WAVEFORM["sample_rate"] and samples.shape == (WAVEFORM["num_samples"],)
    for name in ("centres.png", "morph.png", "inputs/input/strip.png", "inputs/input/reconstruction.wav"):
        assert os.path.isfile(os.path.join(out_dir, name))
    with pytest.raises(ValueError, match="not a class"):
        vae_run.listen(model, waveform_data, out_dir, morph=("nope", "class0"), batch_size=6)


def test_compare_adds_the_vae_run_on_data_with_waveforms_and_its_rows(waveform_data, tmp_path):
    from amych_tf import comparison

    plain = str(tmp_path / "plain")
    make_prepared_dir(plain, [20] * 3, num_mels=32)
    assert "vae" in comparison.default_runs(waveform_data) and "vae" not in comparison.default_runs(plain)
    assert comparison.budget_flags("vae", {"sup": {"cpu_seconds": 10.0}, "unsup": {"cpu_seconds": 20.5}}) == [
        "--cpu_budget=21"]
    run = {"overall_accuracy": 0.9, "average_accuracy": 0.8, "num_parameters": 5, "mode": "supervised",
           "clustering": {"overall_accuracy": 0.5, "average_accuracy": 0.4}}
    out_dir = str(tmp_path / "tables")
    os.makedirs(out_dir)
    comparison.write_tables(out_dir, {"vae": run}, waveform_data)
    for name, method, accuracy in (("table2", "vae_kmeans", 0.5), ("table3", "vae", 0.9)):
        with open(os.path.join(out_dir, f"{name}.json")) as f:
            rows = json.load(f)["rows"]
        assert [(row["method"], row["overall_accuracy"]) for row in rows] == [(method, accuracy)]
    # An unsupervised VAE only clusters: no classification row.
    os.remove(os.path.join(out_dir, "table3.json"))
    comparison.write_tables(out_dir, {"vae": {**run, "mode": "unsupervised"}}, waveform_data)
    assert not os.path.exists(os.path.join(out_dir, "table3.json"))


def test_supervised_step_moves_the_classifier_by_its_own_adam_and_the_decoder_by_the_elbo():
    model = small_vae()
    model.compile(optimizer=model.default_optimizer(1e-2))
    model.optimizer.build(model.trainable_variables)
    assert model.classification_optimizer is not model.optimizer
    features, labels = batch(6)
    decoder_before = [v.numpy().copy() for v in model.decoder.trainable_variables]
    classifier_before = [v.numpy().copy() for layer in model.classifier for v in layer.trainable_variables]
    logs = model.train_step((features, labels))
    assert {"loss", "rec", "kl", "ce", "accuracy"} <= set(logs)
    assert any(not np.allclose(a, v.numpy()) for a, v in zip(decoder_before, model.decoder.trainable_variables))
    after = [v.numpy() for layer in model.classifier for v in layer.trainable_variables]
    assert all(not np.allclose(a, b) for a, b in zip(classifier_before, after))
    # The first Adam step moves every weight by about the learning rate: the classifier's
    # weights got a full step of their own, not one scaled down by the ELBO's gradients.
    assert np.max(np.abs(after[0] - classifier_before[0])) == pytest.approx(1e-2, rel=0.05)


def test_a_plateau_halves_the_learning_rate_of_both_adam_steps():
    model = small_vae()
    model.compile(optimizer=model.default_optimizer(1e-2))
    FLAGS.unparse_flags()
    FLAGS(["train"])
    with flagsaver.flagsaver(model="vae", data_dir="unused", model_dir="unused", learning_rate=1e-2,
                             lr_plateau_patience=2):
        config = train.config_from_flags()
    [plateau] = trainer.learning_rate_plateau(config, "val_accuracy")
    plateau.set_model(model)
    plateau.on_train_begin()
    for epoch, accuracy in enumerate((0.5, 0.6, 0.6, 0.55)):  # two validations without a better one
        plateau.on_epoch_end(epoch, {"val_accuracy": accuracy})
    assert float(model.optimizer.learning_rate) == pytest.approx(5e-3)
    assert float(model.classification_optimizer.learning_rate) == pytest.approx(5e-3)
    assert plateau.min_lr == pytest.approx(1e-4)
    with flagsaver.flagsaver(model="prototypes", data_dir="unused", model_dir="unused", lr_plateau_patience=2):
        with pytest.raises(ConfigError, match="curriculum"):
            train.config_from_flags().check()
