"""listen: prototype and reconstruction WAVs and figures from a model dir."""

import os

import numpy as np
import soundfile

from helpers import FEATURES, harmonic_tone, make_prepared_dir, write_model_dir

from amych_tf import listening, registry
from amych_tf.audio_io import safe_name


def dominant_frequency(audio, sample_rate):
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return np.fft.rfftfreq(len(audio), 1.0 / sample_rate)[spectrum.argmax()]


def test_listen_writes_playable_wavs_and_figures(tmp_path):
    model_dir, out_dir = str(tmp_path / "run"), str(tmp_path / "listen")
    write_model_dir(model_dir)
    model, _ = registry.load_model(model_dir)
    tone_path = str(tmp_path / "tone.wav")
    soundfile.write(tone_path, harmonic_tone(440.0, 16000, seconds=1.0, num_harmonics=1), 16000)

    paths = listening.listen_to_prototypes(model, out_dir, seconds=0.5, n_iter=16)
    assert [os.path.basename(p) for p in paths] == ["0-a_x.wav", "1-b.wav", "2-c.wav"]
    result = listening.listen_to_input(model, tone_path, out_dir, n_iter=32)
    directory = result["directory"]
    expected = {"input.wav", "grid.png", "explanation.png", f"winner-{result['winner']}-"
                f"{safe_name(model.class_names[result['winner']])}.wav"}
    expected |= {f"prototype-{k}-{safe_name(n)}.wav" for k, n in enumerate(model.class_names)}
    assert set(os.listdir(directory)) == expected
    assert os.path.getsize(os.path.join(out_dir, "prototype_gallery.png")) > 1000

    for path in paths + [os.path.join(directory, name) for name in expected if name.endswith(".wav")]:
        audio, rate = soundfile.read(path)
        assert rate == 16000 and np.all(np.isfinite(audio)) and np.abs(audio).max() > 0.1, path
    audio, _ = soundfile.read(paths[0])
    assert abs(len(audio) - 0.5 * 16000) <= FEATURES.n_fft  # --seconds long, up to one frame
    # The re-synthesised input is the input: same length (frames), same pitch.
    audio, _ = soundfile.read(os.path.join(directory, "input.wav"))
    frames = FEATURES.num_frames(16000)
    assert len(audio) == FEATURES.num_samples(frames)
    assert abs(dominant_frequency(audio, 16000) - 440.0) < 10.0


def test_class_averages_and_curriculum_stage_figures(tmp_path):
    lengths = {"train": [16, 20, 24, 28, 32, 36, 40], "validation": [], "test": []}
    make_prepared_dir(tmp_path / "data", lengths, num_mels=FEATURES.n_mels, sample_rate=FEATURES.sample_rate,
                      n_fft=FEATURES.n_fft, hop_length=FEATURES.hop_length)
    model_dir, out_dir = str(tmp_path / "run"), str(tmp_path / "listen")
    model = write_model_dir(model_dir, data_dir=str(tmp_path / "data"))
    # Stage checkpoints as the curriculum writes them: raw prototypes, + gain, + cross-entropy (whose
    # prototypes moved on from the gain stage's).
    gain_stage_prototypes = model.prototypes.numpy()
    for index, (stage, active) in enumerate([("raw", ()), ("gain", ("gain",)), ("ce", ("gain",))]):
        if stage == "ce":
            model.prototypes.assign(gain_stage_prototypes + 0.1)
        model.set_active_transformations(active)
        model.save_weights(os.path.join(model_dir, "checkpoints", f"stage-{index}-{stage}.weights.h5"))

    # Class k holds clips i = k, k + 3, ... (helpers.make_prepared_dir): a clip of n frames averages to
    # (n - 1) / 2 in every bin but bin 1, which holds i.
    means, _ = listening.class_means(model, str(tmp_path / "data"), batch_size=3)
    for k in range(3):
        clips = range(k, len(lengths["train"]), 3)
        expected = np.full(FEATURES.n_mels, np.mean([(lengths["train"][i] - 1) / 2 for i in clips]))
        expected[1] = np.mean(list(clips))
        np.testing.assert_allclose(means[k], expected, rtol=1e-6)
    assert os.path.getsize(listening.listen_to_class_averages(model, str(tmp_path / "data"), out_dir, 3,
                                                           model_dir)) > 1000
    # Figure 4's prototypes without cross-entropy are the stage before it's.
    np.testing.assert_array_equal(listening.prototypes_without_cross_entropy(model_dir), gain_stage_prototypes)

    tone_path = str(tmp_path / "tone.wav")
    soundfile.write(tone_path, harmonic_tone(330.0, 16000, seconds=0.6), 16000)
    figure = listening.listen_across_stages(model_dir, tone_path, out_dir, n_iter=8)
    directory = os.path.dirname(figure)
    assert os.path.getsize(figure) > 1000
    assert sorted(n for n in os.listdir(directory) if n.startswith("stage-")) == [
        "stage-0-raw.wav", "stage-1-gain.wav", "stage-2-ce.wav"]
    audio, rate = soundfile.read(os.path.join(directory, "stage-0-raw.wav"))
    assert rate == 16000 and np.all(np.isfinite(audio)) and np.abs(audio).max() > 0.1


def test_an_inputs_class_is_read_from_its_directories():
    names = ["Synth/Bowed", "Synth/Brass", "a"]
    assert listening.class_from_path("/audio/Synth/Brass/ordinario/Brass-A3-f.wav", names) == "Synth/Brass"
    assert listening.class_from_path("/audio/a/x.wav", names) == "a"
    assert listening.class_from_path("/audio/Brass/Synth/x.wav", names) is None  # parts out of order
    assert listening.input_title("/audio/other/x.wav", names) == "x.wav"
