"""Prepared datasets: the TFRecord schema, dataset_info.json, and the tf.data pipelines.

A prepared dataset directory (written by `python -m data_tools.prepare`) holds

    dataset_info.json                 feature parameters, classes, counts, versions
    manifest.csv                      split,label,class_name,path,duration,num_frames
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
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from amych_tf.spectral import FeatureConfig

FORMAT_VERSION = 1
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
    log_mel: np.ndarray, *, label: int, class_name: str, path: str, storage_dtype: str = "float32"
) -> bytes:
    """Serialise one clip's log-Mel [frames, mels] and its metadata as a tf.train.Example."""
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
            }
        )
    )
    return example.SerializeToString()


FEATURE_SPEC = {
    "log_mel": tf.io.FixedLenFeature([], tf.string),
    "num_frames": tf.io.FixedLenFeature([], tf.int64),
    "num_mels": tf.io.FixedLenFeature([], tf.int64),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "class_name": tf.io.FixedLenFeature([], tf.string),
    "path": tf.io.FixedLenFeature([], tf.string),
}


def parse_example(serialized: tf.Tensor, *, num_mels: int, storage_dtype: str = "float32") -> dict[str, tf.Tensor]:
    """Inverse of `encode_example` for one serialised example (graph-friendly).

    Returns log_mel float32 [frames, num_mels], num_frames int32, label int32,
    class_name and path strings.
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
    }
