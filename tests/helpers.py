"""Tiny audio, datasets and models made by the tests themselves (nothing is downloaded)."""

import json
import os

import numpy as np

from amych_tf.spectral import FeatureConfig

# Features of the small models of write_model_dir: 16 frames = 4864 samples (0.3 s).
FEATURES = FeatureConfig(sample_rate=16000, n_fft=1024, hop_length=256, n_mels=64)


def harmonic_tone(f0, sample_rate, seconds=1.0, num_harmonics=10, amplitude=0.2):
    """A tone with partials h * f0 of amplitude 1 / h (those below Nyquist)."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    partials = [np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, num_harmonics + 1) if f0 * h < sample_rate / 2]
    return (amplitude * np.sum(partials, axis=0)).astype(np.float32)


def frame_coded_log_mel(clip_index, num_frames, num_mels):
    """log_mel[t, f] = t in every bin but bin 1, which holds the clip index (exact in float16)."""
    log_mel = np.repeat(np.arange(num_frames, dtype=np.float32)[:, None], num_mels, axis=1)
    log_mel[:, 1] = clip_index
    return log_mel


def class_coded_log_mel(clip_index, num_frames, num_mels, num_classes=3):
    """Class k = clip_index % num_classes: a peak at bin 4 + 8k over a low floor, with a little texture."""
    rng = np.random.default_rng(clip_index)
    log_mel = 0.1 + 0.02 * rng.random((num_frames, num_mels))
    log_mel[:, 4 + 8 * (clip_index % num_classes)] += 0.5
    return log_mel.astype(np.float32)


def make_prepared_dir(
    directory,
    lengths,
    *,
    num_mels=16,
    num_classes=3,
    shard_size=4,
    storage_dtype="float32",
    spectrogram=frame_coded_log_mel,
    sample_rate=16000,
    n_fft=1024,
    hop_length=512,
    midi_note=lambda index: -1,
    waveform=None,
):
    """Write a tiny prepared dataset (the schema of amych_tf.data) without data_tools.prepare.

    `waveform`: optional ({"sample_rate", "num_samples"}, function(clip index, split) -> samples)
    to store waveforms too (prepare --waveform).

    `lengths`: frames per clip, one list used for every split, or a dict split -> list.
    Clip i of a split has label i % num_classes, path "<split>/clip-<i>.wav" and
    log-Mel `spectrogram(i, num_frames, num_mels)` and note `midi_note(i)`; shards hold `shard_size`
    clips in order, and manifest.csv lists them. Returns the DatasetInfo.
    """
    import os

    import tensorflow as tf

    from amych_tf import data
    from amych_tf.spectral import FeatureConfig

    directory = str(directory)
    os.makedirs(directory, exist_ok=True)
    per_split = lengths if isinstance(lengths, dict) else {split: lengths for split in data.SPLITS}
    class_names = [f"class{k}" for k in range(num_classes)]
    num_shards, split_counts, manifest = {}, {}, ["split,label,class_name,path,duration,num_frames"]
    for split in data.SPLITS:
        clips = list(per_split.get(split, []))
        split_counts[split] = len(clips)
        num_shards[split] = -(-len(clips) // shard_size)
        for shard in range(num_shards[split]):
            path = os.path.join(directory, data.shard_filename(split, shard, num_shards[split]))
            with tf.io.TFRecordWriter(path) as writer:
                for i in range(shard * shard_size, min((shard + 1) * shard_size, len(clips))):
                    label, clip_path = i % num_classes, f"{split}/clip-{i:04d}.wav"
                    writer.write(
                        data.encode_example(
                            spectrogram(i, clips[i], num_mels),
                            label=label,
                            class_name=class_names[label],
                            path=clip_path,
                            storage_dtype=storage_dtype,
                            midi_note=midi_note(i),
                            waveform=None if waveform is None else waveform[1](i, split),
                        )
                    )
                    manifest.append(f"{split},{label},{class_names[label]},{clip_path},1.0,{clips[i]}")
    with open(os.path.join(directory, data.MANIFEST_FILENAME), "w", encoding="utf-8") as f:
        f.write("\n".join(manifest) + "\n")
    info = data.DatasetInfo(
        features=FeatureConfig(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=num_mels),
        class_names=class_names,
        split_counts=split_counts,
        num_shards=num_shards,
        storage_dtype=storage_dtype,
        waveform=None if waveform is None else dict(waveform[0]),
    )
    info.save(directory)
    return info


def write_model_dir(directory, mode="supervised", data_dir="unused", seed=0):
    """A small untrained model (3 prototypes, distinct smooth spectra) saved the way amych_tf.train saves one."""
    import keras

    from amych_tf.model import PlayablePrototypes

    keras.utils.set_random_seed(seed)
    model = PlayablePrototypes(FEATURES, 3, mode=mode, class_names=["a/x", "b", "c"], start_width=4,
                               bottleneck_width=16, decoder_width=8)
    model.build_for_frames(32)
    bins = np.linspace(0.0, 1.0, FEATURES.n_mels)
    model.prototypes.assign(np.stack([0.5 + 0.1 * np.cos(2 * np.pi * (k + 1) * bins) for k in range(3)]).astype(np.float32))
    model.set_active_transformations(("gain", "pitch", "low", "high"))
    os.makedirs(os.path.join(directory, "checkpoints"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({"model": model.get_config(), "dataset": {"data_dir": data_dir}}, f)
    model.save_weights(os.path.join(directory, "checkpoints", "latest.weights.h5"))
    return model


def run_command_main(command, args, capsys, defined_by=None):
    """`python -m amych_tf.<command> ARGS` in this process: the command's flags parsed from ARGS and its
    main() run, without a new interpreter's start-up (seconds of TensorFlow import each). Returns
    (exit status, stdout, stderr). `defined_by`: a flag whose presence means the command's flags are
    defined already (define_flags of some commands may run only once per process)."""
    from absl import flags
    from absl.testing import flagsaver

    values = flags.FLAGS
    if defined_by is None or defined_by not in values:
        command.define_flags()
    capsys.readouterr()
    status = 0
    with flagsaver.flagsaver():
        values.unparse_flags()
        values([command.__name__, *args])
        try:
            command.main([])
        except SystemExit as stop:
            status = stop.code
        finally:
            values.unparse_flags()
    out, err = capsys.readouterr()
    return status, out, err
