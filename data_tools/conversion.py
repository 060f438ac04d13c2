"""Converting an audio collection into a prepared dataset (the format of `amych_tf.data`).

`prepare_dataset` runs four steps:
  1. find the classes and their files (`data_tools.layouts`); for LibriSpeech,
     rank the speakers by total duration (read from file headers) and keep
     the top `num_classes`, labelled by that rank;
  2. split every class's files 70/10/20 (`assign_splits`);
  3. decode, mix to mono, resample and tile (`data_tools.audio`) in worker
     processes, streamed back in order, and compute the log-Mel in this
     process with `amych_tf.spectral.log_mel`, the front end the model uses;
  4. write the shards, manifest.csv, skipped.csv and dataset_info.json
     (`DatasetWriter`).
`data_tools.beam_prepare` runs step 3 as an Apache Beam pipeline and shares
steps 1, 2 and 4 and the per-clip encoding (`plan_clips`, `ClipEncoder`,
`commit_dataset`) with this module, so both write the same bytes.

Decisions:
  * Reproducible: files are sorted by relative path before anything random
    happens, and the split depends only on the seed and each class's files,
    so the output is byte-identical whatever `num_workers` or the order the
    filesystem lists files in, and on re-runs (dataset_info.json holds no
    timestamps).
  * Stratified split: within each class, files are shuffled by a generator
    seeded with (seed, CRC-32 of the class name), then cut 70/10/20 (rounded
    half up); a class of >= 3 files gets at least one validation and one test
    file. A class's split therefore does not change when other classes are
    added or dropped (e.g. another --num_classes). Files are split before they
    are decoded, so an unusable file leaves a gap in its split: counts are
    70/10/20 of the files found, up to skipped files.
  * Order: examples are stored by split, then by relative path; manifest.csv
    lists them in that order (the tf.data pipelines shuffle).
  * Workers are spawned, never forked (TensorFlow is not fork-safe) and import
    only `data_tools.audio`; at most a few clips per worker are in flight, so
    memory does not grow with the number of files. `num_workers=1` decodes in
    this process.
  * Bad files (unreadable, corrupt, empty, silent, not audio) are skipped and
    listed in skipped.csv; a run with no usable file, or with a class left with
    none, fails with a `PrepareError` subclass and writes nothing.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import csv
import dataclasses
import multiprocessing
import os
import re
import shutil
import sys
import time
import zlib
from typing import Callable, Iterable, Iterator

import librosa
import numpy as np
import soundfile
import soxr
import tensorflow as tf
from absl import logging

import amych_tf
from amych_tf import data, spectral
from amych_tf.spectral import FeatureConfig
from data_tools import audio, layouts

# Percent of each class's files per split (docs/DESIGN.md, section 2.1), in data.SPLITS order.
SPLIT_PERCENT = {"train": 70, "validation": 10, "test": 20}
MANIFEST_COLUMNS = ("split", "label", "class_name", "path", "duration", "num_frames", "midi_note")
SKIPPED_COLUMNS = ("path", "reason")
DEFAULT_LIBRISPEECH_CLASSES = 128
DEFAULT_SHARD_SIZE = 1000
# Clips decoded ahead per worker: keeps workers busy while bounding memory.
CLIPS_IN_FLIGHT_PER_WORKER = 4
# Files per header-reading task when ranking speakers (small results, so batch them).
HEADER_PATHS_PER_TASK = 256
_SHARD_NAME = re.compile(r"^(%s)-(\d+)-of-(\d+)\.tfrecord$" % "|".join(data.SPLITS))
# DatasetWriter's temporary files, suffixed with the writing process's id.
_TEMP_NAME = re.compile(
    r"^(?:(?:%s)-\d{5}\.tfrecord|%s|%s)\.tmp-(\d+)$"
    % ("|".join(data.SPLITS), re.escape(data.MANIFEST_FILENAME), re.escape(data.SKIPPED_FILENAME))
)
# The directory where a Beam run's workers stage shards (data_tools.beam_prepare),
# suffixed with the id of the process that launched the pipeline.
STAGING_DIR_PREFIX = ".staging.tmp-"
_STAGING_DIR_NAME = re.compile(r"^%s(\d+)$" % re.escape(STAGING_DIR_PREFIX))


class PrepareError(Exception):
    """A run that cannot produce a dataset; the message is one line meant for users."""


class NoUsableFilesError(PrepareError):
    """No audio file was found, or none of those found could be used."""


class EmptyClassError(PrepareError):
    """A class that should be in the dataset has no usable file."""


@dataclasses.dataclass(frozen=True)
class PlannedClip:
    """A source file and where it goes."""

    split: str
    label: int
    class_name: str
    path: str  # relative to the audio directory, '/'-separated


@dataclasses.dataclass
class PrepareSummary:
    """What a run did; `str()` gives the report printed at the end of the CLI."""

    out_dir: str
    layout: str
    features: FeatureConfig
    storage_dtype: str
    class_names: list[str]
    num_found: int
    num_ignored: int
    split_counts: dict[str, int]
    num_shards: dict[str, int]
    skipped_by_reason: dict[str, int]
    warnings: list[str]
    seconds: float

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped_by_reason.values())

    def __str__(self) -> str:
        f = self.features
        used = sum(self.split_counts.values())
        splits = ", ".join(f"{split} {self.split_counts[split]}" for split in data.SPLITS)
        skipped = f"{self.num_skipped}" + (
            f" ({_count_phrase(self.skipped_by_reason)}), listed in {data.SKIPPED_FILENAME}" if self.num_skipped else ""
        )
        lines = [
            f"Prepared {self.out_dir}",
            f"  layout:   {self.layout}; features {f.sample_rate} Hz, n_fft {f.n_fft}, hop {f.hop_length}, "
            f"{f.n_mels} mels, fmin {f.fmin:g}, fmax {f.fmax:g}; stored as {self.storage_dtype}",
            f"  classes:  {len(self.class_names)} ({_shorten(self.class_names)})",
            f"  found:    {self.num_found} audio files"
            + (f" (and {self.num_ignored} ignored outside the kept classes/layout)" if self.num_ignored else ""),
            f"  used:     {used}: {splits}; shards: "
            + ", ".join(f"{split} {self.num_shards[split]}" for split in data.SPLITS),
            f"  skipped:  {skipped}",
            *(f"  warning:  {warning}" for warning in self.warnings),
            f"  time:     {self.seconds:.1f} s ({self.num_found / max(self.seconds, 1e-9):.1f} files/s)",
        ]
        return "\n".join(lines)


def _count_phrase(counts: dict[str, int]) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _shorten(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f", ... {names[-1]}" if len(names) > limit else "")


def resolve_features(layout: str, preset: str | None = None, **overrides) -> FeatureConfig:
    """Feature parameters: `preset` (default: the layout's, see layouts.DEFAULT_PRESETS) with the
    FeatureConfig fields given in `overrides` (None = keep the preset's value)."""
    if layout not in layouts.LAYOUTS:
        raise PrepareError(f"--layout must be one of {', '.join(layouts.LAYOUTS)}, got {layout!r}")
    preset = preset or layouts.DEFAULT_PRESETS[layout]
    if preset not in spectral.PRESETS:
        raise PrepareError(f"unknown --preset {preset!r}; choose one of {', '.join(spectral.PRESETS)}")
    values = {**spectral.PRESETS[preset], **{name: value for name, value in overrides.items() if value is not None}}
    try:
        return FeatureConfig(**values)
    except (TypeError, ValueError) as error:
        raise PrepareError(f"invalid feature parameters: {error}") from None


def split_sizes(num_files: int) -> tuple[int, int, int]:
    """(train, validation, test) file counts for one class: SPLIT_PERCENT rounded half up, with at
    least one validation and one test file once the class has 3 files."""
    validation = (SPLIT_PERCENT["validation"] * num_files + 50) // 100
    test = (SPLIT_PERCENT["test"] * num_files + 50) // 100
    if num_files >= 3:
        validation, test = max(validation, 1), max(test, 1)
    return num_files - validation - test, validation, test


def assign_splits(discovery: layouts.Discovery, seed: int) -> list[PlannedClip]:
    """Every file of `discovery` in exactly one split (stratified, see the module docstring),
    ordered by split (data.SPLITS order), then path."""
    planned = []
    for label, class_name in enumerate(discovery.class_names):
        paths = sorted(discovery.files[class_name])  # the shuffle must not see the listing order
        generator = np.random.default_rng([seed, zlib.crc32(class_name.encode("utf-8"))])
        num_train, num_validation, _ = split_sizes(len(paths))
        for rank, index in enumerate(generator.permutation(len(paths))):
            split = "train" if rank < num_train else "validation" if rank < num_train + num_validation else "test"
            planned.append(PlannedClip(split, label, class_name, paths[index]))
    split_order = {split: position for position, split in enumerate(data.SPLITS)}
    return sorted(planned, key=lambda clip: (split_order[clip.split], clip.path))


class _Progress:
    """One progress line on stderr: rewritten in place on a terminal, a new line every 10 s otherwise."""

    def __init__(self, what: str, total: int, enabled: bool):
        self.what, self.total, self.enabled = what, total, enabled and total > 0
        self.interactive = sys.stderr.isatty()
        self.done = 0
        self.start = self.last_shown = time.monotonic()

    def advance(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.enabled and (now - self.last_shown >= (0.5 if self.interactive else 10.0) or self.done == self.total):
            self.last_shown = now
            rate = self.done / max(now - self.start, 1e-9)
            line = (
                f"{self.what}: {self.done}/{self.total} ({100 * self.done // self.total}%), "
                f"{rate:.1f}/s, {(self.total - self.done) / max(rate, 1e-9):.0f} s left"
            )
            sys.stderr.write(f"\r{line}\033[K" if self.interactive else line + "\n")
            if self.interactive and self.done == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


@contextlib.contextmanager
def _worker_pool(num_workers: int) -> Iterator[concurrent.futures.Executor | None]:
    """Decoding processes, or None (decode in this process) for one worker.

    'spawn' start method: TensorFlow, already loaded here, is not fork-safe;
    spawned workers import only data_tools.audio (and what it needs).
    """
    if num_workers == 1:
        yield None
        return
    pool = concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _map_in_order(
    function: Callable, argument_tuples: Iterable[tuple], pool: concurrent.futures.Executor | None, in_flight: int
) -> Iterator:
    """function(*arguments) for each tuple, in input order, with at most `in_flight` pending in `pool`."""
    if pool is None:
        for arguments in argument_tuples:
            yield function(*arguments)
        return
    pending = collections.deque()
    for arguments in argument_tuples:
        pending.append(pool.submit(function, *arguments))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class DatasetWriter:
    """Writes a prepared dataset directory; nothing appears under its final name before it is complete.

    Shards are written as `<split>-<index>.tfrecord.tmp-<pid>` (their final names
    carry the shard count, known only at the end). `commit` first deletes the
    dataset_info.json of an earlier run, then renames the shards to
    `data.shard_filename(...)`, writes manifest.csv and skipped.csv through temp
    files, dataset_info.json last (readers check it), and only then deletes the
    shards of an earlier run that this run did not produce. So a process killed
    at any point leaves either the earlier dataset whole or no dataset_info.json
    (readers refuse the directory), never an info file over shards of another
    run. `discard` (call it in a `finally`) closes and deletes whatever temp
    files are left; the temp files of a killed run are deleted by the next
    writer of the directory.
    """

    def __init__(self, out_dir: str, shard_size: int):
        _remove_files_of_dead_writers(out_dir)
        self.out_dir = out_dir
        self.shard_size = shard_size
        self._temp_suffix = f".tmp-{os.getpid()}"
        self._shards: dict[str, list[str]] = {split: [] for split in data.SPLITS}
        self._counts = {split: 0 for split in data.SPLITS}
        self._writers: dict[str, tf.io.TFRecordWriter] = {}
        self._temp_paths: list[str] = []
        self._staging_dirs: list[str] = []

    @property
    def num_shards(self) -> dict[str, int]:
        return {split: len(paths) for split, paths in self._shards.items()}

    def _temp_path(self, name: str) -> str:
        path = os.path.join(self.out_dir, name + self._temp_suffix)
        self._temp_paths.append(path)
        return path

    def staging_dir(self) -> str:
        """A directory inside `out_dir` for shards written by other processes (Beam workers); created
        here, deleted by `discard` (and by the next writer of `out_dir` if this process is killed)."""
        path = os.path.join(self.out_dir, f"{STAGING_DIR_PREFIX}{os.getpid()}")
        os.makedirs(path)
        self._staging_dirs.append(path)
        return path

    def add_staged_shard(self, split: str, path: str) -> None:
        """Take the complete shard file `path` as the next shard of `split` (renamed by `commit`)."""
        self._shards[split].append(path)
        self._temp_paths.append(path)

    def write(self, split: str, serialized_example: bytes) -> None:
        """Append one example to `split`, starting a new shard every `shard_size` examples."""
        if self._counts[split] % self.shard_size == 0:
            self._close(split)
            path = self._temp_path(f"{split}-{len(self._shards[split]):05d}.tfrecord")
            self._shards[split].append(path)
            self._writers[split] = tf.io.TFRecordWriter(path)
        self._writers[split].write(serialized_example)
        self._counts[split] += 1

    def _close(self, split: str) -> None:
        writer = self._writers.pop(split, None)
        if writer is not None:
            writer.close()

    def _write_csv(self, filename: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
        temp = self._temp_path(filename)
        with open(temp, "w", newline="", encoding="utf-8") as f:
            table = csv.writer(f, lineterminator="\n")
            table.writerow(columns)
            table.writerows(rows)
        os.replace(temp, os.path.join(self.out_dir, filename))

    def commit(self, info: data.DatasetInfo, manifest_rows: list[tuple], skipped_rows: list[tuple]) -> None:
        for split in data.SPLITS:
            self._close(split)
        # From here until the new dataset_info.json is in place the directory is no
        # dataset: shards renamed below may replace those the earlier info lists.
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(self.out_dir, data.INFO_FILENAME))
        final_names = set()
        for split, temps in self._shards.items():
            for index, temp in enumerate(temps):
                name = data.shard_filename(split, index, len(temps))
                os.replace(temp, os.path.join(self.out_dir, name))
                final_names.add(name)
        self._write_csv(data.MANIFEST_FILENAME, MANIFEST_COLUMNS, manifest_rows)
        self._write_csv(data.SKIPPED_FILENAME, SKIPPED_COLUMNS, skipped_rows)
        self._temp_paths.append(os.path.join(self.out_dir, data.INFO_FILENAME + ".tmp"))  # DatasetInfo.save's temp
        info.save(self.out_dir)
        for name in os.listdir(self.out_dir):
            match = _SHARD_NAME.match(name)
            is_shard = match and name == data.shard_filename(match[1], int(match[2]), int(match[3]))
            if is_shard and name not in final_names:
                os.remove(os.path.join(self.out_dir, name))

    def discard(self) -> None:
        for split in data.SPLITS:
            self._close(split)
        for path in self._temp_paths:
            if os.path.exists(path):
                os.remove(path)
        for path in self._staging_dirs:
            shutil.rmtree(path, ignore_errors=True)


def _remove_files_of_dead_writers(out_dir: str) -> None:
    """Delete the temp files that a DatasetWriter killed in `out_dir` (e.g. SIGKILL) could not discard."""
    if not os.path.isdir(out_dir):
        return
    for name in os.listdir(out_dir):
        match = _TEMP_NAME.match(name)
        dead = match and not _is_running(int(match[1]))
        if dead or name == data.INFO_FILENAME + ".tmp":  # DatasetInfo.save's temp, renamed at once when complete
            os.remove(os.path.join(out_dir, name))
        match = _STAGING_DIR_NAME.match(name)
        if match and not _is_running(int(match[1])):
            shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def library_versions() -> dict[str, str]:
    """Versions of everything that shapes the stored bytes (no timestamps: re-runs are identical)."""
    return {
        "amych_tf": amych_tf.__version__,
        "tensorflow": tf.__version__,
        "librosa": librosa.__version__,
        "soxr": soxr.__version__,
        "soundfile": soundfile.__version__,
        "libsndfile": soundfile.__libsndfile_version__,
        "numpy": np.__version__,
    }


def check_arguments(
    audio_dir, out_dir, layout, num_classes, sol_classes, seed, num_workers, shard_size, storage_dtype
) -> None:
    """Raise PrepareError on any invalid argument, before any work is done."""
    if layout not in layouts.LAYOUTS:
        raise PrepareError(f"--layout must be one of {', '.join(layouts.LAYOUTS)}, got {layout!r}")
    if not os.path.exists(audio_dir):
        raise PrepareError(f"--audio_dir {audio_dir!r} does not exist")
    if not os.path.isdir(audio_dir):
        raise PrepareError(f"--audio_dir {audio_dir!r} is not a directory")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise PrepareError(f"--out_dir {out_dir!r} exists and is not a directory")
    if num_classes is not None and layout != "librispeech":
        raise PrepareError("--num_classes applies to --layout=librispeech only")
    if num_classes is not None and num_classes < 1:
        raise PrepareError(f"--num_classes must be at least 1, got {num_classes}")
    if sol_classes not in layouts.SOL_CLASS_CHOICES:
        raise PrepareError(f"--sol_classes must be one of {', '.join(layouts.SOL_CLASS_CHOICES)}, got {sol_classes!r}")
    if seed < 0:
        raise PrepareError(f"--seed must be >= 0, got {seed}")
    if num_workers < 1:
        raise PrepareError(f"--num_workers must be at least 1, got {num_workers}")
    if shard_size < 1:
        raise PrepareError(f"--shard_size must be at least 1, got {shard_size}")
    if storage_dtype not in data.STORAGE_DTYPES:
        raise PrepareError(f"--storage_dtype must be one of {', '.join(data.STORAGE_DTYPES)}, got {storage_dtype!r}")


def _keep_top_speakers(discovery, audio_dir, num_classes, pool, num_workers, show_progress) -> layouts.Discovery:
    """LibriSpeech: the `num_classes` speakers with the most audio (header durations), labelled by rank."""
    owners = [(speaker, path) for speaker in discovery.class_names for path in discovery.files[speaker]]
    chunks = [owners[i : i + HEADER_PATHS_PER_TASK] for i in range(0, len(owners), HEADER_PATHS_PER_TASK)]
    tasks = (([os.path.join(audio_dir, path) for _, path in chunk],) for chunk in chunks)
    totals = dict.fromkeys(discovery.class_names, 0.0)
    progress = _Progress("reading durations", len(chunks), show_progress)
    for chunk, durations in zip(chunks, _map_in_order(audio.header_durations, tasks, pool, 2 * num_workers)):
        for (speaker, _), duration in zip(chunk, durations):
            totals[speaker] += duration
        progress.advance()
    kept = discovery.keep(layouts.rank_speakers(totals, num_classes))
    if len(kept.class_names) < num_classes:
        kept.warnings.append(f"asked for {num_classes} speakers, found {len(kept.class_names)}: keeping all")
    return kept


class Converted:
    """What the conversion produced, for the manifest, skipped.csv and dataset_info.json."""

    def __init__(self, class_names: list[str]):
        self.manifest_rows: list[tuple] = []
        self.skipped_rows: list[tuple] = []
        self.class_counts = {split: dict.fromkeys(class_names, 0) for split in data.SPLITS}  # split -> class -> examples
        self.skipped_per_class = {name: collections.Counter() for name in class_names}  # class -> reason kind -> files

    def add_example(self, clip: PlannedClip, manifest_row: tuple) -> None:
        self.manifest_rows.append(manifest_row)
        self.class_counts[clip.split][clip.class_name] += 1

    def add_skipped(self, clip: PlannedClip, kind: str, reason: str) -> None:
        self.skipped_rows.append((clip.path, reason))
        self.skipped_per_class[clip.class_name][kind] += 1

    @property
    def skipped_by_reason(self) -> collections.Counter:
        return sum(self.skipped_per_class.values(), collections.Counter())


class ClipEncoder:
    """A decoded clip -> its serialized tf.train.Example and manifest.csv row.

    The one place where stored log-Mels are computed, with `spectral.log_mel`
    (the model's front end), for the local path and the Beam pipeline
    (data_tools.beam_prepare) alike.
    """

    def __init__(self, features: FeatureConfig, storage_dtype: str, waveform: dict[str, int] | None = None):
        """`waveform` ({"sample_rate", "num_samples"} or None): also store each clip's
        `audio.fixed_length_waveform`, from its samples before tiling."""
        self.storage_dtype = storage_dtype
        self.sample_rate = features.sample_rate
        self.waveform = waveform

        # One trace for every clip length. A closure, not functools.partial: a partial's
        # keyword (the config) becomes part of the call signature and is re-hashed per call.
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)], autograph=False)
        def compute_log_mel(waveform):
            return spectral.log_mel(waveform, features)

        self._compute_log_mel = compute_log_mel

    def __call__(self, clip: PlannedClip, loaded: audio.Clip) -> tuple[bytes, tuple]:
        log_mel = self._compute_log_mel(loaded.waveform).numpy()
        midi_note = layouts.midi_note_from_filename(clip.path)
        fixed_waveform = None
        if self.waveform is not None:
            untiled = loaded.waveform[: max(1, round(loaded.source_duration * self.sample_rate))]
            fixed_waveform = audio.fixed_length_waveform(
                untiled, self.sample_rate, self.waveform["sample_rate"], self.waveform["num_samples"]
            )
        example = data.encode_example(
            log_mel, label=clip.label, class_name=clip.class_name, path=clip.path, storage_dtype=self.storage_dtype,
            midi_note=midi_note, waveform=fixed_waveform,
        )
        manifest_row = (
            clip.split, clip.label, clip.class_name, clip.path, f"{loaded.source_duration:.6f}", log_mel.shape[0],
            midi_note,
        )
        return example, manifest_row


def _convert(plan, class_names, audio_dir, features, storage_dtype, writer, pool, num_workers, show_progress,
             waveform=None):
    """Decode every planned file (in `pool`), compute its log-Mel here and write it to `writer`."""
    encode = ClipEncoder(features, storage_dtype, waveform)
    converted = Converted(class_names)
    min_samples = features.num_samples(data.MIN_FRAMES)
    tasks = ((os.path.join(audio_dir, clip.path), features.sample_rate, min_samples) for clip in plan)
    outcomes = _map_in_order(audio.load_clip_or_reason, tasks, pool, CLIPS_IN_FLIGHT_PER_WORKER * num_workers)
    progress = _Progress("preparing", len(plan), show_progress)
    for clip, outcome in zip(plan, outcomes):
        progress.advance()
        if isinstance(outcome, audio.UnusableAudio):
            converted.add_skipped(clip, outcome.kind, str(outcome))
            continue
        example, manifest_row = encode(clip, outcome)
        writer.write(clip.split, example)
        converted.add_example(clip, manifest_row)
    return converted


def check_usable(converted: Converted, num_planned: int) -> None:
    """Raise if nothing, or nothing of some class, could be used."""
    if not converted.manifest_rows:
        raise NoUsableFilesError(
            f"none of the {num_planned} audio files found could be used ({_count_phrase(converted.skipped_by_reason)})"
        )
    empty = [
        name
        for name in converted.skipped_per_class
        if all(converted.class_counts[split][name] == 0 for split in data.SPLITS)
    ]
    if empty:
        details = "; ".join(
            f"{name!r} (all {sum(converted.skipped_per_class[name].values())} skipped: "
            f"{_count_phrase(converted.skipped_per_class[name])})"
            for name in empty
        )
        raise EmptyClassError(f"{len(empty)} class(es) have no usable audio file: {details}")


def prepare_dataset(
    audio_dir: str,
    out_dir: str,
    *,
    layout: str,
    features: FeatureConfig,
    num_classes: int | None = None,
    sol_classes: str = "paper",
    seed: int = 0,
    num_workers: int = 1,
    shard_size: int = DEFAULT_SHARD_SIZE,
    storage_dtype: str = "float32",
    show_progress: bool = False,
    waveform: dict[str, int] | None = None,
) -> PrepareSummary:
    """Convert the audio under `audio_dir` into a prepared dataset in `out_dir`.

    Args:
      audio_dir: the collection, in `layout`.
      out_dir: the dataset directory (created if needed; an earlier dataset there is replaced).
      layout: one of layouts.LAYOUTS: "sol", "librispeech" or "folders".
      features: log-Mel parameters (see `resolve_features`).
      num_classes: LibriSpeech only: keep the speakers with the most audio
        (default DEFAULT_LIBRISPEECH_CLASSES).
      sol_classes: SOL only: "paper" (the 33 classes of docs/DESIGN.md) or "discovered".
      seed: seed of the split.
      num_workers: decoding processes (1: decode in this process).
      shard_size: examples per shard.
      storage_dtype: "float32" or "float16".
      show_progress: draw a progress line on stderr.
      waveform: {"sample_rate": Hz, "num_samples": n} to also store each clip's waveform,
        resampled, cut or zero-padded to n samples (the waveform VAE's input), recorded in
        dataset_info.json; None (default) stores the log-Mel only.

    Raises:
      PrepareError: invalid arguments (before any work is done);
      NoUsableFilesError, EmptyClassError: nothing written in that case.
    """
    start = time.monotonic()
    check_arguments(audio_dir, out_dir, layout, num_classes, sol_classes, seed, num_workers, shard_size, storage_dtype)
    waveform = checked_waveform(waveform)
    with _worker_pool(num_workers) as pool:
        discovery, plan = plan_clips(
            audio_dir, layout, num_classes=num_classes, sol_classes=sol_classes, seed=seed, pool=pool,
            num_workers=num_workers, show_progress=show_progress,
        )
        with dataset_writer(out_dir, shard_size) as writer:
            converted = _convert(
                plan, discovery.class_names, audio_dir, features, storage_dtype,
                writer, pool, num_workers, show_progress, waveform=waveform,
            )
            return commit_dataset(
                writer, converted, discovery, plan, layout=layout, features=features, seed=seed,
                storage_dtype=storage_dtype, versions=library_versions(), start=start, waveform=waveform,
            )


def checked_waveform(waveform: dict[str, int] | None) -> dict[str, int] | None:
    """The `waveform` argument of prepare_dataset, as ints; PrepareError if not positive."""
    if waveform is None:
        return None
    waveform = {"sample_rate": int(waveform["sample_rate"]), "num_samples": int(waveform["num_samples"])}
    if waveform["sample_rate"] < 1 or waveform["num_samples"] < 1:
        raise PrepareError(f"the stored waveform needs a positive sample rate and length, got {waveform}")
    return waveform


def plan_clips(
    audio_dir: str, layout: str, *, num_classes, sol_classes, seed, pool=None, num_workers=1, show_progress=False
) -> tuple[layouts.Discovery, list[PlannedClip]]:
    """Discover the classes and files (LibriSpeech: keep the top speakers) and split them: steps 1-2."""
    discovery = layouts.discover(layout, audio_dir, sol_classes=sol_classes)
    if discovery.num_files == 0:
        for warning in discovery.warnings:
            logging.warning(warning)
        ignored = f"; {discovery.num_ignored} other audio file(s) ignored, see the warnings" if discovery.num_ignored else ""
        raise NoUsableFilesError(
            f"no audio files ({', '.join(audio.AUDIO_EXTENSIONS)}) found under {audio_dir!r} in the {layout} layout "
            f"({layouts.LAYOUT_DESCRIPTIONS[layout]}){ignored}"
        )
    if layout == "librispeech":
        discovery = _keep_top_speakers(
            discovery, audio_dir, num_classes or DEFAULT_LIBRISPEECH_CLASSES, pool, num_workers, show_progress
        )
    for warning in discovery.warnings:
        logging.warning(warning)
    return discovery, assign_splits(discovery, seed)


@contextlib.contextmanager
def dataset_writer(out_dir: str, shard_size: int) -> Iterator[DatasetWriter]:
    """A DatasetWriter for `out_dir` (created if needed) whose temp files are deleted when the block
    ends; a block that fails before `commit` in a directory it created leaves no directory."""
    created_out_dir = not os.path.isdir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    writer = DatasetWriter(out_dir, shard_size)
    try:
        yield writer
    finally:
        writer.discard()
        if created_out_dir and not os.listdir(out_dir):
            os.rmdir(out_dir)  # a failed first run leaves no trace


def commit_dataset(
    writer: DatasetWriter,
    converted: Converted,
    discovery: layouts.Discovery,
    plan: list[PlannedClip],
    *,
    layout: str,
    features: FeatureConfig,
    seed: int,
    storage_dtype: str,
    versions: dict[str, str],
    start: float,
    waveform: dict[str, int] | None = None,
) -> PrepareSummary:
    """Check that every class has a usable file, then commit the shards, manifest.csv, skipped.csv
    and dataset_info.json: step 4. `converted.manifest_rows` must be in plan order."""
    check_usable(converted, len(plan))
    split_counts = {split: sum(counts.values()) for split, counts in converted.class_counts.items()}
    info = data.DatasetInfo(
        features=features,
        class_names=list(discovery.class_names),
        split_counts=split_counts,
        num_shards=writer.num_shards,
        storage_dtype=storage_dtype,
        layout=layout,
        seed=seed,
        class_counts=converted.class_counts,
        num_skipped=len(converted.skipped_rows),
        versions=versions,
        waveform=waveform,
    )
    writer.commit(info, converted.manifest_rows, sorted(converted.skipped_rows))
    return PrepareSummary(
        out_dir=writer.out_dir,
        layout=layout,
        features=features,
        storage_dtype=storage_dtype,
        class_names=list(discovery.class_names),
        num_found=len(plan),
        num_ignored=discovery.num_ignored,
        split_counts=split_counts,
        num_shards=writer.num_shards,
        skipped_by_reason=dict(converted.skipped_by_reason),
        warnings=list(discovery.warnings),
        seconds=time.monotonic() - start,
    )
