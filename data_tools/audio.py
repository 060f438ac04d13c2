"""Source audio for data preparation: decode, mix to mono, resample, tile.

This module runs in the worker processes of `data_tools.conversion` and must
never import TensorFlow (TensorFlow is not fork-safe and takes seconds to
import); it uses only NumPy, soundfile and librosa.

Decisions:
  * Decoding is soundfile's (libsndfile): wav, flac, ogg and, with the
    libsndfile >= 1.1 bundled in soundfile >= 0.12 wheels, mp3.
  * Stereo and multichannel audio is mixed to mono by averaging the channels
    (as `librosa.to_mono`).
  * Resampling is `librosa.resample(res_type="soxr_hq")`: deterministic, and
    the same on every platform for a given soxr version.
  * A clip too short for `min_samples` is tiled: the waveform is repeated
    end to end (`np.resize`) and cut at exactly `min_samples`, so short clips
    become exactly the minimum length (NOTES.md: 16 frames).
  * Unusable input raises `UnusableAudio`, whose `kind` groups reasons in
    summaries and whose `detail` says what was found.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import librosa
import numpy as np
import soundfile

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
# A clip whose peak is below this (after mixing and resampling) is treated as
# silence: its log-Mel would be the constant floor of the log scaling.
SILENCE_PEAK = 1e-5


class UnusableAudio(Exception):
    """A source file that cannot become a clip.

    `kind` is a short category ("cannot open", "empty file", "not readable
    audio", "no samples", "non-finite samples", "silent"); `detail` adds what
    was found. The exception pickles (its args are exactly (kind, detail)), so
    it crosses process boundaries unchanged.
    """

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}" if self.detail else self.kind


class Clip(NamedTuple):
    """A decoded clip ready for the front end."""

    waveform: np.ndarray  # float32 [samples], mono, at the target rate, >= min_samples long
    source_duration: float  # seconds of source audio, before tiling


def is_audio_filename(name: str) -> bool:
    """Whether a file name has one of AUDIO_EXTENSIONS (case-insensitive)."""
    return name.lower().endswith(AUDIO_EXTENSIONS)


def read_audio(path: str) -> tuple[np.ndarray, int]:
    """Decode a file to float32 samples [frames, channels] and its sample rate.

    Raises:
      UnusableAudio: the path cannot be opened (permissions, dangling link),
        the file is empty, or libsndfile cannot decode it (not audio, corrupt).
    """
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise UnusableAudio("cannot open", error.strerror or str(error)) from None
    with handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise UnusableAudio("empty file", "0 bytes")
        try:
            samples, sample_rate = soundfile.read(handle, dtype="float32", always_2d=True)
        except soundfile.LibsndfileError as error:
            # Attributed, because some of libsndfile's messages mislead out of context
            # (random bytes can give "File does not exist or is not a regular file").
            raise UnusableAudio("not readable audio", f"libsndfile: {error.error_string.rstrip('.')}") from None
        except (RuntimeError, EOFError) as error:
            raise UnusableAudio("not readable audio", str(error)) from None
    return samples, sample_rate


def load_clip(path: str, sample_rate: int, min_samples: int) -> Clip:
    """Read `path` as a mono float32 clip at `sample_rate`, tiled to >= `min_samples`.

    Raises:
      UnusableAudio: see `read_audio`; also a file with no samples, with
        NaN/inf samples, or silent (peak below SILENCE_PEAK after mixing).
    """
    samples, source_rate = read_audio(path)
    if samples.shape[0] == 0:
        raise UnusableAudio("no samples", f"0 frames at {source_rate} Hz")
    if not np.all(np.isfinite(samples)):
        raise UnusableAudio("non-finite samples", "NaN or infinity in the audio")
    waveform = samples.mean(axis=1)
    if source_rate != sample_rate:
        waveform = librosa.resample(waveform, orig_sr=source_rate, target_sr=sample_rate, res_type="soxr_hq")
    peak = float(np.max(np.abs(waveform)))
    if peak < SILENCE_PEAK:
        raise UnusableAudio("silent", f"peak {peak:.1e} < {SILENCE_PEAK:.0e}")
    if waveform.shape[0] < min_samples:
        waveform = np.resize(waveform, min_samples)
    return Clip(waveform.astype(np.float32, copy=False), samples.shape[0] / source_rate)


def load_clip_or_reason(path: str, sample_rate: int, min_samples: int) -> Clip | UnusableAudio:
    """`load_clip`, returning the UnusableAudio instead of raising it.

    The worker-pool entry point: a bad file is an expected outcome, handed
    back in order like a good one, not an exception with a traceback.
    """
    try:
        return load_clip(path, sample_rate, min_samples)
    except UnusableAudio as reason:
        return reason


def header_durations(paths: list[str]) -> list[float]:
    """Duration in seconds of each file from its header (0.0 if unreadable).

    Ranks LibriSpeech speakers without decoding their audio; an unreadable
    file counts as no audio and is reported later if its speaker is kept.
    """
    durations = []
    for path in paths:
        try:
            durations.append(float(soundfile.info(path).duration))
        except (OSError, RuntimeError):
            durations.append(0.0)
    return durations
