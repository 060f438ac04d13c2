"""From log-Mel spectrograms to sound and back: WAV files, held prototypes, input files.

Spectrograms become audio through the inverse front end
(`amych_tf.spectral.inverse_log_mel`: NNLS mel -> linear, then Griffin-Lim);
audio files are read as data_tools.prepare reads them.
"""

from __future__ import annotations

import re


def safe_name(name: str) -> str:
    """`name` with every run of characters unsafe in a file name replaced by one underscore."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def to_audio(log_mel, config, n_iter: int = 64):
    """Waveforms of log-Mels [..., frames, mels] (inverse front end), each scaled to a peak of 0.9."""
    import numpy as np

    from amych_tf import spectral

    audio = spectral.inverse_log_mel(np.asarray(log_mel), config, n_iter=n_iter)
    peak = np.maximum(np.abs(audio).max(axis=-1, keepdims=True), 1e-6)
    return (0.9 * audio / peak).astype(np.float32)


def held_prototypes(prototypes, config, seconds: float = 1.0):
    """Each prototype [K, mels] repeated over the frames of `seconds`: [K, frames, mels]."""
    import numpy as np

    frames = max(1, config.num_frames(int(seconds * config.sample_rate)))
    return np.repeat(np.asarray(prototypes)[:, None, :], frames, axis=1)


def write_wav(path: str, audio, sample_rate: int) -> None:
    import soundfile

    soundfile.write(path, audio, sample_rate, subtype="PCM_16")


def input_log_mel(path: str, config, multiple_of: int = 16):
    """(log-Mel padded by tiling to a multiple of `multiple_of` frames, number of real frames)."""
    import numpy as np

    from amych_tf import data, spectral
    from data_tools import audio

    clip = audio.load_clip(path, config.sample_rate, config.num_samples(data.MIN_FRAMES))
    log_mel = spectral.log_mel(clip.waveform[None], config)[0].numpy()
    frames = log_mel.shape[0]
    padded = -(-frames // multiple_of) * multiple_of
    return np.resize(log_mel, (padded, log_mel.shape[1])) if padded != frames else log_mel, frames


