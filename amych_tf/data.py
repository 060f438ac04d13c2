"""Prepared datasets: the TFRecord schema, dataset_info.json, and the tf.data pipelines.

A prepared dataset directory (written by `python -m data_tools.prepare`) holds

    dataset_info.json                 feature parameters, classes, counts, versions
    manifest.csv                      split,label,class_name,path,duration,num_frames,midi_note
    skipped.csv                       path,reason (files that could not be used)
    train-00000-of-00004.tfrecord     shards per split, examples in manifest order
    validation-00000-of-00001.tfrecord
    test-00000-of-00001.tfrecord

Each tf.train.Example holds:
    log_mel      bytes   raw little-endian [num_frames, num_mels] in `storage_dtype`
    num_frames   int64
    num_mels     int64
    label        int64   class index into dataset_info.class_names
    class_name   bytes
    path         bytes   source file, relative to the audio directory
    midi_note    int64   the note played (MIDI number, from the file name), -1 if unknown
    waveform     bytes   only when dataset_info.json has `waveform` (prepare --waveform): raw
                         little-endian float32 [num_samples] at its `sample_rate`, the input of
                         the waveform VAE (amych_tf.baselines.vae)

Format version 2: power log-Mels (`FeatureConfig.power`) and `midi_note`.
Version 1 directories (magnitude log-Mels) are refused: re-run prepare.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from amych_tf import transforms
from amych_tf.spectral import FeatureConfig

FORMAT_VERSION = 2
SPLITS = ("train", "validation", "test")
INFO_FILENAME = "dataset_info.json"
MANIFEST_FILENAME = "manifest.csv"
SKIPPED_FILENAME = "skipped.csv"
STORAGE_DTYPES = ("float32", "float16")
# NOTES.md: clips shorter than this are tiled (repeated) up to it.
MIN_FRAMES = 16


def shard_filename(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


@dataclasses.dataclass
class DatasetInfo:
    """Contents of dataset_info.json: what training and evaluation need to trust a directory."""

    features: FeatureConfig
    class_names: list[str]
    split_counts: dict[str, int]
    num_shards: dict[str, int]
    storage_dtype: str = "float32"
    layout: str = "folders"
    seed: int = 0
    min_frames: int = MIN_FRAMES
    class_counts: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    num_skipped: int = 0
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    # {"sample_rate": Hz, "num_samples": n} when the examples also hold the waveform
    # (data_tools.prepare --waveform), None otherwise.
    waveform: dict[str, int] | None = None

    def __post_init__(self):
        if self.storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage_dtype must be one of {STORAGE_DTYPES}, got {self.storage_dtype!r}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["features"] = self.features.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "DatasetInfo":
        values = dict(values)
        if values.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"dataset format_version {values.get('format_version')!r} is not supported "
                f"(this amych_tf reads version {FORMAT_VERSION}); re-run data_tools.prepare"
            )
        values["features"] = FeatureConfig.from_dict(values["features"])
        return cls(**values)

    def save(self, directory: str) -> None:
        """Write dataset_info.json atomically (temp file, then rename)."""
        path = os.path.join(directory, INFO_FILENAME)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, directory: str) -> "DatasetInfo":
        path = os.path.join(directory, INFO_FILENAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{directory!r} is not a prepared dataset: {INFO_FILENAME} is missing "
                "(create it with `python -m data_tools.prepare`)"
            )
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def shard_paths(self, directory: str, split: str) -> list[str]:
        if split not in SPLITS:
            raise ValueError(f"Unknown split {split!r}; splits are {SPLITS}")
        count = self.num_shards.get(split, 0)
        return [os.path.join(directory, shard_filename(split, i, count)) for i in range(count)]


def encode_example(
    log_mel: np.ndarray, *, label: int, class_name: str, path: str, storage_dtype: str = "float32",
    midi_note: int = -1, waveform: np.ndarray | None = None,
) -> bytes:
    """Serialise one clip's log-Mel [frames, mels] and its metadata as a tf.train.Example.

    `midi_note`: the note the clip plays (MIDI number), -1 when unknown.
    `waveform`: optional float32 samples [num_samples], stored as float32 whatever `storage_dtype`.
    """
    log_mel = np.asarray(log_mel)
    if log_mel.ndim != 2:
        raise ValueError(f"log_mel must be [frames, mels], got shape {log_mel.shape}")
    raw = log_mel.astype(np.dtype(storage_dtype).newbyteorder("<")).tobytes()

    def int_feature(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    def bytes_feature(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "log_mel": bytes_feature(raw),
                "num_frames": int_feature(log_mel.shape[0]),
                "num_mels": int_feature(log_mel.shape[1]),
                "label": int_feature(label),
                "class_name": bytes_feature(class_name.encode("utf-8")),
                "path": bytes_feature(path.encode("utf-8")),
                "midi_note": int_feature(midi_note),
                **({} if waveform is None else {"waveform": bytes_feature(
                    np.asarray(waveform, np.dtype("float32").newbyteorder("<")).reshape(-1).tobytes())}),
            }
        )
    )
    # deterministic: map fields (Features.feature) otherwise serialise in a per-process
    # hash order, and re-running data preparation must give byte-identical shards.
    return example.SerializeToString(deterministic=True)


FEATURE_SPEC = {
    "log_mel": tf.io.FixedLenFeature([], tf.string),
    "num_frames": tf.io.FixedLenFeature([], tf.int64),
    "num_mels": tf.io.FixedLenFeature([], tf.int64),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "class_name": tf.io.FixedLenFeature([], tf.string),
    "path": tf.io.FixedLenFeature([], tf.string),
    "midi_note": tf.io.FixedLenFeature([], tf.int64),
}


def parse_example(serialized: tf.Tensor, *, num_mels: int, storage_dtype: str = "float32") -> dict[str, tf.Tensor]:
    """Inverse of `encode_example` for one serialised example (graph-friendly).

    Returns log_mel float32 [frames, num_mels], num_frames int32, label int32,
    class_name and path strings, midi_note int32 (-1: unknown).
    """
    parsed = tf.io.parse_single_example(serialized, FEATURE_SPEC)
    values = tf.io.decode_raw(parsed["log_mel"], tf.dtypes.as_dtype(storage_dtype), little_endian=True)
    num_frames = tf.cast(parsed["num_frames"], tf.int32)
    log_mel = tf.reshape(tf.cast(values, tf.float32), [num_frames, num_mels])
    return {
        "log_mel": log_mel,
        "num_frames": num_frames,
        "label": tf.cast(parsed["label"], tf.int32),
        "class_name": parsed["class_name"],
        "path": parsed["path"],
        "midi_note": tf.cast(parsed["midi_note"], tf.int32),
    }


# ---------------------------------------------------------------------------
# tf.data pipelines
#
# Every element is `(features, labels)`: features = {"log_mel": float32
# [B, T, F], "mask": float32 [B, T] (1 = real frame, 0 = padding)}, labels =
# int32 [B]. `evaluation_dataset(..., with_metadata=True)` adds "path"
# (string [B]), "num_frames" (int32 [B]), "midi_note" (int32 [B], -1 unknown)
# and "index" (int32 [B], the clip's position in the split) to the features.
#
# Randomness (training only) is reproducible: with the same `seed` (and the
# same TensorFlow global seed, if one is set) the same directory gives the
# same stream of batches in every run. Three streams are derived from `seed`
# by numpy's SeedSequence: the order of the shards, the shuffle buffer of
# records (both reshuffled at each iteration of the dataset, i.e. each Keras
# epoch) and a per-element pair of stateless seeds drawn by
# `tf.data.Dataset.random(rerandomize_each_iteration=True)`. The crop offset
# and the augmentation are stateless ops keyed by that pair, so they do not
# depend on how many map calls run in parallel. Iteration k of a dataset object
# is reproducible; a fresh dataset object starts again at the stream of the
# first epoch (resuming mid-training does not continue the sequence).

# NOTES.md, training-time augmentation (standard deviations).
PITCH_LOG_STD = 0.15
BIAS_STD = 0.05
NOISE_STD = 0.01
# Evaluation batches are padded to a multiple of 2 ** n_pools frames (n_pools = 4).
DEFAULT_MULTIPLE_OF = 16
# Serialised records held by the training shuffle buffer (shards store clips by
# class, so the buffer plus interleaving every shard is what mixes classes).
DEFAULT_SHUFFLE_BUFFER = 2048


def load_dataset_info(data_dir: str, expected_features: FeatureConfig | None = None) -> DatasetInfo:
    """Read and validate a prepared dataset directory.

    Checks that `data_dir` exists, that dataset_info.json is present and well
    formed, that every shard it lists exists, and (if `expected_features` is
    given, e.g. a model's or a config's) that the dataset's feature parameters
    match.

    Raises:
      FileNotFoundError: the directory, dataset_info.json or a shard is missing.
      ValueError: dataset_info.json is malformed or of another format version,
        or the features differ from `expected_features` (the message names
        every differing parameter).
    """
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"dataset directory {data_dir!r} does not exist")
    try:
        info = DatasetInfo.load(data_dir)
    except json.JSONDecodeError as error:
        raise ValueError(f"{os.path.join(data_dir, INFO_FILENAME)} is not valid JSON: {error}") from None
    except (KeyError, TypeError) as error:
        raise ValueError(
            f"{os.path.join(data_dir, INFO_FILENAME)} is malformed ({type(error).__name__}: {error}); "
            "re-run data_tools.prepare"
        ) from None
    for split in SPLITS:
        if info.split_counts.get(split, 0) > 0 and info.num_shards.get(split, 0) == 0:
            raise ValueError(
                f"dataset {data_dir!r} counts {info.split_counts[split]} {split} examples but lists no {split} shard"
            )
        missing = [path for path in info.shard_paths(data_dir, split) if not os.path.isfile(path)]
        if missing:
            raise FileNotFoundError(
                f"dataset {data_dir!r}: {len(missing)} of {info.num_shards[split]} {split} shard(s) are missing: "
                + ", ".join(os.path.basename(path) for path in missing[:5])
                + (", ..." if len(missing) > 5 else "")
            )
    if expected_features is not None:
        expected_features.check_compatible(info.features, what=f"dataset {data_dir}")
    return info


def steps_per_epoch(info: DatasetInfo, split: str, global_batch_size: int, *, drop_remainder: bool = True) -> int:
    """Batches (global steps) in one pass over `split` at `global_batch_size`.

    `drop_remainder=True` matches `training_dataset`, False matches
    `evaluation_dataset`, for a single input pipeline (one worker, any number
    of replicas). With several workers sharding by files, shards of unequal
    length make the per-worker count differ from this.
    """
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
    count = info.split_counts.get(split, 0)
    return count // global_batch_size if drop_remainder else -(-count // global_batch_size)


def crop_indices(num_frames: tf.Tensor, length: int, seed: tf.Tensor) -> tf.Tensor:
    """Frame indices int32 [length] of a random training crop of a clip of `num_frames`.

    A clip at least `length` long gets a uniformly drawn window
    `[offset, offset + length)`, offset in [0, num_frames - length]. A shorter
    clip is tiled (repeated along time, NOTES.md) and cropped at a uniformly
    drawn phase: indices `(offset + t) % num_frames`, offset in
    [0, num_frames - 1]. Branch-free; `seed` is a stateless seed [2].
    """
    num_frames = tf.cast(num_frames, tf.int32)
    max_offset = tf.where(num_frames >= length, num_frames - length, num_frames - 1)
    offset = tf.random.stateless_uniform([], seed, minval=0, maxval=max_offset + 1, dtype=tf.int32)
    return (offset + tf.range(length, dtype=tf.int32)) % num_frames


def augment_log_mel(log_mel: tf.Tensor, seed: tf.Tensor, mel_values) -> tf.Tensor:
    """The training augmentation of NOTES.md on one clip's log-Mel [T, F].

    In this order, each drawn from the stateless `seed` [2]:
      * pitch: `transforms.pitch_shift` by the ratio exp(0.15 N(0, 1)) on the
        dataset's mel grid `mel_values` (FeatureConfig.mel_values()), border
        values held;
      * bias: 0.05 N(0, 1) added to the whole spectrogram;
      * noise: 0.01 N(0, 1) added to each bin.
    """
    pitch_seed, bias_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    ratio = tf.exp(PITCH_LOG_STD * tf.random.stateless_normal([], pitch_seed))
    log_mel = transforms.pitch_shift(log_mel, ratio, mel_values)
    log_mel = log_mel + BIAS_STD * tf.random.stateless_normal([], bias_seed)
    return log_mel + NOISE_STD * tf.random.stateless_normal(tf.shape(log_mel), noise_seed)


def tile_pad(log_mel: tf.Tensor, num_frames: tf.Tensor, multiple_of: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Pad a batch of clips along time by tiling each clip; return (log_mel, mask).

    `log_mel` [B, T0, F] holds clip b in its first `num_frames[b]` frames
    (anything after is ignored). The result has T frames, the longest clip
    rounded up to a multiple of `multiple_of`; frame t of clip b is its frame
    `t % num_frames[b]`, so the encoder sees the clip itself as context rather
    than zeros (training crops of short clips are tiled the same way). `mask`
    float32 [B, T] is 1 on the real frames (t < num_frames[b]), 0 on the
    padding. Branch-free.
    """
    num_frames = tf.cast(num_frames, tf.int32)
    padded_length = (tf.reduce_max(num_frames) + multiple_of - 1) // multiple_of * multiple_of
    frames = tf.range(padded_length, dtype=tf.int32)
    indices = frames[tf.newaxis, :] % num_frames[:, tf.newaxis]
    mask = tf.cast(frames[tf.newaxis, :] < num_frames[:, tf.newaxis], tf.float32)
    return tf.gather(log_mel, indices, batch_dims=1), mask


def _derived_seeds(seed: int, count: int) -> list[int]:
    """`count` independent op seeds (non-negative int32) derived from one integer seed."""
    return [int(value) for value in np.random.SeedSequence(seed).generate_state(count) >> 1]


def _input_pipelines(input_context: tf.distribute.InputContext | None) -> tuple[int, int, int]:
    """(number of input pipelines, this pipeline's id, replicas fed by each pipeline)."""
    if input_context is None:
        return 1, 0, 1
    pipelines = input_context.num_input_pipelines
    return pipelines, input_context.input_pipeline_id, max(input_context.num_replicas_in_sync // pipelines, 1)


def _split_shards(info: DatasetInfo, data_dir: str, split: str) -> list[str]:
    paths = info.shard_paths(data_dir, split)
    if not paths or info.split_counts.get(split, 0) == 0:
        raise ValueError(f"dataset {data_dir!r} has no {split} examples")
    return paths


def training_dataset(
    data_dir: str,
    *,
    batch_size: int,
    train_frames: int,
    seed: int,
    augment: bool = True,
    input_context: tf.distribute.InputContext | None = None,
    info: DatasetInfo | None = None,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    cycle_length: int | None = None,
) -> tf.data.Dataset:
    """One epoch of shuffled, cropped and (optionally) augmented training batches.

    Pipeline: shard files -> shuffle files -> parallel interleave of the
    TFRecord shards (deterministic) -> [shard examples] -> shuffle records ->
    parse, crop to `train_frames` (`crop_indices`), augment (`augment_log_mel`) ->
    batch (drop_remainder) -> prefetch. Not repeated: one pass is one epoch,
    and each new iteration (each Keras epoch) reshuffles and redraws the crops
    and augmentation. The comment opening this section says how the seeds work.

    Args:
      data_dir: a prepared dataset directory; reads its train split.
      batch_size: examples per batch; with `input_context`, the per-replica
        batch size (`input_context.get_per_replica_batch_size(global)`).
      train_frames: frames per training crop (256 for SOL, 192 for LibriSpeech).
      seed: seed of the shuffles, crops and augmentation.
      augment: apply the pitch / bias / noise augmentation.
      input_context: from `strategy.distribute_datasets_from_function`. The
        input is sharded across input pipelines (workers): by files when
        there are at least as many train shards as pipelines, otherwise by
        examples. When one pipeline feeds r replicas (MirroredStrategy), it
        batches r * batch_size examples with drop_remainder and splits them
        into r per-replica batches, so every step gives every replica a full
        batch.
      info: the directory's DatasetInfo, if already loaded (and validated).
      shuffle_buffer: serialised records in the shuffle buffer.
      cycle_length: shards read concurrently; default all of this pipeline's
        shards, so that every shard contributes throughout the epoch.

    Returns:
      A dataset of ({"log_mel": float32 [batch_size, train_frames, F],
      "mask": float32 [batch_size, train_frames] (all ones)}, int32 labels
      [batch_size]). Its cardinality is known unless sharded by files.
    """
    if batch_size < 1 or train_frames < 1 or shuffle_buffer < 1:
        raise ValueError(
            f"batch_size, train_frames and shuffle_buffer must be positive, got {batch_size}, "
            f"{train_frames}, {shuffle_buffer}"
        )
    info = info if info is not None else load_dataset_info(data_dir)
    paths = _split_shards(info, data_dir, "train")
    num_pipelines, pipeline_id, replicas_per_pipeline = _input_pipelines(input_context)
    examples_per_step = batch_size * replicas_per_pipeline
    if info.split_counts["train"] < examples_per_step * num_pipelines:
        raise ValueError(
            f"dataset {data_dir!r} has {info.split_counts['train']} train examples, fewer than one global batch "
            f"of {examples_per_step * num_pipelines}: an epoch would have no batch"
        )
    file_seed, record_seed, element_seed = _derived_seeds(seed, 3)
    shard_by_files = len(paths) >= num_pipelines
    if shard_by_files:
        paths = paths[pipeline_id::num_pipelines]
    files = tf.data.Dataset.from_tensor_slices(paths).shuffle(
        len(paths), seed=file_seed, reshuffle_each_iteration=True
    )
    records = files.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(cycle_length or len(paths), len(paths)),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if not shard_by_files:
        records = records.shard(num_pipelines, pipeline_id)
    # Examples this pipeline reads, known unless sharded by files (shard sizes are not recorded).
    pipeline_count = None
    if num_pipelines == 1 or not shard_by_files:
        pipeline_count = len(range(pipeline_id, info.split_counts["train"], num_pipelines))
        records = records.apply(tf.data.experimental.assert_cardinality(pipeline_count))
    records = records.shuffle(shuffle_buffer, seed=record_seed, reshuffle_each_iteration=True)
    element_seeds = tf.data.Dataset.random(seed=element_seed, rerandomize_each_iteration=True).batch(2)
    num_mels, storage_dtype = info.features.n_mels, info.storage_dtype
    mel_values = info.features.mel_values()

    def make_example(serialized, element_seed):
        example = parse_example(serialized, num_mels=num_mels, storage_dtype=storage_dtype)
        crop_seed, augment_seed = tf.unstack(tf.random.experimental.stateless_split(element_seed, 2))
        log_mel = tf.gather(example["log_mel"], crop_indices(example["num_frames"], train_frames, crop_seed))
        if augment:
            log_mel = augment_log_mel(log_mel, augment_seed, mel_values)
        return {"log_mel": log_mel, "mask": tf.ones([train_frames], tf.float32)}, example["label"]

    dataset = tf.data.Dataset.zip(records, element_seeds).map(
        make_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    dataset = dataset.batch(examples_per_step, drop_remainder=True)
    if replicas_per_pipeline > 1:
        dataset = dataset.rebatch(batch_size, drop_remainder=True)
        if pipeline_count is not None:  # rebatch forgets the cardinality
            num_batches = pipeline_count // examples_per_step * replicas_per_pipeline
            dataset = dataset.apply(tf.data.experimental.assert_cardinality(num_batches))
    return dataset.prefetch(tf.data.AUTOTUNE)


def evaluation_dataset(
    data_dir: str,
    split: str,
    *,
    batch_size: int,
    multiple_of: int = DEFAULT_MULTIPLE_OF,
    with_metadata: bool = False,
    input_context: tf.distribute.InputContext | None = None,
    info: DatasetInfo | None = None,
) -> tf.data.Dataset:
    """Every full-length clip of `split`, in batches of clips of one padded length.

    Each clip is padded along time to its own length rounded up to a multiple
    of `multiple_of` (2 ** n_pools, so the encoder's pooling divides it) by
    tiling (`tile_pad`); `mask` marks the real frames. Batches hold clips of
    the same padded length (`tf.data.Dataset.group_by_window`), so what the
    model sees of a clip, and hence its result, does not depend on the batch
    size or on the clips beside it. (Padding every clip of a batch to the
    batch's longest made results change with --eval_batch_size: the convolutions
    near a clip's end saw more or less of its tiled continuation and of the
    reflected border.) It also saves the work of padding short clips to long
    ones.

    Several input pipelines (multi-worker training's validation) are the
    exception: there every pipeline must give the same number of batches (the
    workers' collective ops run in step), which grouping by length cannot
    promise, so consecutive clips are batched and padded to the batch's
    longest, as before. `evaluate`, `report` and training's final test run on
    one pipeline and are unaffected.

    Order: deterministic. A batch is emitted when `batch_size` clips of one
    padded length have arrived, and the incomplete batches at the end of the
    split; within a padded length, clips keep the split's file order
    (manifest order). `with_metadata` gives each clip's "index" in file order
    for callers that need it.

    Args:
      data_dir: a prepared dataset directory.
      split: "train", "validation" or "test".
      batch_size: clips per batch; with `input_context`, per replica.
      multiple_of: each clip's padded length is the next multiple of this.
      with_metadata: also return "path" (string [B]), "num_frames" (int32 [B]),
        "midi_note" (int32 [B], -1 unknown) and "index" (int32 [B]) in the
        features.
      input_context: from `strategy.distribute_datasets_from_function`. With
        several input pipelines (workers) the clips are sharded by examples
        (clip i goes to pipeline i % num_input_pipelines), so every pipeline
        gets work whatever the number of shards. A pipeline feeding several
        replicas deals its consecutive batches to them in turn.
      info: the directory's DatasetInfo, if already loaded (and validated).

    Returns:
      A dataset of ({"log_mel": float32 [B, T, F], "mask": float32 [B, T]
      [, "path", "num_frames", "midi_note", "index"]}, int32 labels [B]).
    """
    if batch_size < 1 or multiple_of < 1:
        raise ValueError(f"batch_size and multiple_of must be positive, got {batch_size} and {multiple_of}")
    info = info if info is not None else load_dataset_info(data_dir)
    paths = _split_shards(info, data_dir, split)
    num_pipelines, pipeline_id, _ = _input_pipelines(input_context)
    records = tf.data.TFRecordDataset(paths).enumerate()
    if num_pipelines > 1:
        records = records.shard(num_pipelines, pipeline_id)
    pipeline_count = len(range(pipeline_id, info.split_counts[split], num_pipelines))
    records = records.apply(tf.data.experimental.assert_cardinality(pipeline_count))
    num_mels, storage_dtype = info.features.n_mels, info.storage_dtype

    def parse(index, serialized):
        example = parse_example(serialized, num_mels=num_mels, storage_dtype=storage_dtype)
        clip = {key: example[key] for key in ("log_mel", "num_frames", "label", "path", "midi_note")}
        return {**clip, "index": tf.cast(index, tf.int32)}

    def padded_length_bucket(clip):
        return tf.cast((clip["num_frames"] + multiple_of - 1) // multiple_of, tf.int64)

    def pad(batch):
        log_mel, mask = tile_pad(batch["log_mel"], batch["num_frames"], multiple_of)
        features = {"log_mel": log_mel, "mask": mask}
        if with_metadata:
            features.update({key: batch[key] for key in ("path", "num_frames", "midi_note", "index")})
        return features, batch["label"]

    dataset = records.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if num_pipelines > 1:
        dataset = dataset.padded_batch(batch_size)
    else:
        dataset = dataset.group_by_window(
            padded_length_bucket, lambda _, clips: clips.padded_batch(batch_size), window_size=batch_size)
    dataset = dataset.map(pad, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _per_replica_batch_size(strategy: tf.distribute.Strategy, global_batch_size: int) -> int:
    replicas = strategy.num_replicas_in_sync
    if global_batch_size < 1 or global_batch_size % replicas:
        raise ValueError(
            f"global_batch_size ({global_batch_size}) must be a positive multiple of the number of replicas "
            f"({replicas})"
        )
    return global_batch_size // replicas


def distributed_training_dataset(
    strategy: tf.distribute.Strategy,
    data_dir: str,
    *,
    global_batch_size: int,
    train_frames: int,
    seed: int,
    augment: bool = True,
    info: DatasetInfo | None = None,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    cycle_length: int | None = None,
) -> tf.distribute.DistributedDataset:
    """`training_dataset` through `strategy.distribute_datasets_from_function`.

    Each replica receives batches of global_batch_size / num_replicas_in_sync
    (ValueError if that does not divide). Keras 3 `fit` accepts the result.
    """
    per_replica = _per_replica_batch_size(strategy, global_batch_size)
    info = info if info is not None else load_dataset_info(data_dir)
    return strategy.distribute_datasets_from_function(
        lambda input_context: training_dataset(
            data_dir,
            batch_size=per_replica,
            train_frames=train_frames,
            seed=seed,
            augment=augment,
            input_context=input_context,
            info=info,
            shuffle_buffer=shuffle_buffer,
            cycle_length=cycle_length,
        )
    )


def distributed_evaluation_dataset(
    strategy: tf.distribute.Strategy,
    data_dir: str,
    split: str,
    *,
    global_batch_size: int,
    multiple_of: int = DEFAULT_MULTIPLE_OF,
    with_metadata: bool = False,
    info: DatasetInfo | None = None,
) -> tf.distribute.DistributedDataset:
    """`evaluation_dataset` through `strategy.distribute_datasets_from_function`.

    Each replica receives batches of global_batch_size / num_replicas_in_sync
    (ValueError if that does not divide); the last step may give some
    replicas a smaller or an empty batch, and every clip is seen exactly once.
    """
    per_replica = _per_replica_batch_size(strategy, global_batch_size)
    info = info if info is not None else load_dataset_info(data_dir)
    return strategy.distribute_datasets_from_function(
        lambda input_context: evaluation_dataset(
            data_dir,
            split,
            batch_size=per_replica,
            multiple_of=multiple_of,
            with_metadata=with_metadata,
            input_context=input_context,
            info=info,
        )
    )
