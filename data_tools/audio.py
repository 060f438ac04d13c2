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
import stat
import struct
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

    `kind` is a short category ("cannot open", "not a regular file", "empty
    file", "truncated", "not readable audio", "no samples", "non-finite
    samples", "silent"); `detail` adds what was found. The exception pickles (its args are exactly (kind, detail)), so
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


def _wav_shortfall(handle) -> str | None:
    """For a RIFF/WAVE file whose data chunk is shorter than its header declares, what is missing.

    libsndfile reads such a file without complaint, as the samples that are there:
    a download or copy cut short would become a clip missing its end, so it is
    reported instead. A size of 0xFFFFFFFF (written by streaming writers that
    cannot seek back) declares nothing. Leaves `handle` at its start.
    """
    size = os.fstat(handle.fileno()).st_size
    header = handle.read(12)
    position, shortfall = 12, None
    if len(header) == 12 and header[:4] == b"RIFF" and header[8:] == b"WAVE":
        while position + 8 <= size:
            handle.seek(position)
            chunk_id, chunk_size = struct.unpack("<4sI", handle.read(8))
            if chunk_id == b"data":
                present = size - position - 8
                if chunk_size != 0xFFFFFFFF and chunk_size > present:
                    shortfall = f"data chunk of {chunk_size} bytes declared, {present} present"
                break
            position += 8 + chunk_size + (chunk_size & 1)  # chunks are padded to an even size
    handle.seek(0)
    return shortfall


def read_audio(path: str) -> tuple[np.ndarray, int]:
    """Decode a file to float32 samples [frames, channels] and its sample rate.

    Raises:
      UnusableAudio: the path cannot be opened (permissions, dangling link,
        a directory), is not a regular file (a named pipe, a device), the
        file is empty, a WAV file is cut short, or libsndfile cannot decode
        it (not audio, corrupt).
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None  # open() below says why
    # Checked before opening: opening a named pipe waits for a writer, forever.
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise UnusableAudio("not a regular file", "a named pipe" if stat.S_ISFIFO(mode) else "a device or socket")
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise UnusableAudio("cannot open", error.strerror or str(error)) from None
    with handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise UnusableAudio("empty file", "0 bytes")
        shortfall = _wav_shortfall(handle)
        if shortfall:
            raise UnusableAudio("truncated", shortfall)
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


def fixed_length_waveform(waveform: np.ndarray, sample_rate: int, target_rate: int, num_samples: int) -> np.ndarray:
    """The waveform VAE's input (vae-sounds-thesis2018, section 5.1): resampled, cut or zero-padded.

    Resampled from `sample_rate` to `target_rate` (soxr_hq, as every resampling here),
    then the first `num_samples` kept, or zeros appended up to `num_samples`. The thesis
    zero-pads its spoken digits (all shorter than 4096 samples at 8 kHz); a longer clip
    keeps its start, where a note's onset is.
    """
    if sample_rate != target_rate:
        waveform = librosa.resample(np.asarray(waveform, np.float32), orig_sr=sample_rate, target_sr=target_rate,
                                    res_type="soxr_hq")
    fixed = np.zeros(num_samples, np.float32)
    kept = min(num_samples, waveform.shape[0])
    fixed[:kept] = waveform[:kept]
    return fixed

