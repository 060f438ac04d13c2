"""Examples per second delivered by the training input pipeline (amych_tf.data.training_dataset).

    python benchmarks/pipeline_throughput.py --data_dir=DIR [--batch_size=32] [--train_frames=256]
        [--num_batches=200] [--warmup_batches=20] [--augment] [--append_results]
    python benchmarks/pipeline_throughput.py --data_dir=DIR --make_synthetic  # write a synthetic dataset first

Iterates the pipeline epoch after epoch as Keras `fit` would (a new iterator
per epoch), discards the first `--warmup_batches` batches (thread pools,
autotuning, file caches) and times the next `--num_batches`, touching each
batch on the host. Prints one line; `--append_results` adds a row to
benchmarks/RESULTS-pipeline.md.

`--make_synthetic` first writes a prepared directory of random log-Mels
(`--synthetic_clips` clips of 100-300 frames, 128 mels, the 'sol' feature
preset, shards of 100) with `amych_tf.data.encode_example`; the figures it
gives are labelled "synthetic".
"""

from __future__ import annotations

import datetime
import os
import platform
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from amych_tf import data
from amych_tf.spectral import FeatureConfig

RESULTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS-pipeline.md")
RESULTS_HEADER = (
    "# Training input pipeline throughput (benchmarks/pipeline_throughput.py)\n\n"
    "| date | dataset | train clips | storage | batch | frames | augment | examples/s | machine | TensorFlow |\n"
    "|---|---|---|---|---|---|---|---|---|---|\n"
)

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Prepared dataset directory.", required=True)
flags.DEFINE_integer("batch_size", 32, "Examples per batch.", lower_bound=1)
flags.DEFINE_integer("train_frames", 256, "Frames per training crop (256: SOL rate; 192: LibriSpeech).", lower_bound=1)
flags.DEFINE_integer("num_batches", 200, "Batches timed after warm-up.", lower_bound=1)
flags.DEFINE_integer("warmup_batches", 20, "Batches discarded before timing.", lower_bound=0)
flags.DEFINE_integer("seed", 0, "Pipeline seed.")
flags.DEFINE_boolean("augment", True, "Pitch / bias / noise augmentation on.")
flags.DEFINE_boolean("append_results", False, f"Append a row to {RESULTS_PATH}.")
flags.DEFINE_boolean("make_synthetic", False, "Write a synthetic prepared dataset to --data_dir first.")
flags.DEFINE_integer("synthetic_clips", 500, "Train clips of the synthetic dataset.", lower_bound=1)


def make_synthetic_dataset(directory: str, num_clips: int, seed: int = 0, shard_size: int = 100) -> None:
    """Random log-Mels of 100-300 frames x 128 mels (train split only), as prepared data."""
    features = FeatureConfig.preset("sol")
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    num_shards = -(-num_clips // shard_size)
    for shard in range(num_shards):
        path = os.path.join(directory, data.shard_filename("train", shard, num_shards))
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(shard * shard_size, min((shard + 1) * shard_size, num_clips)):
                log_mel = rng.random((int(rng.integers(100, 301)), features.n_mels), dtype=np.float32)
                writer.write(data.encode_example(log_mel, label=i % 33, class_name=f"class{i % 33}",
                                                 path=f"synthetic/{i:05d}.wav"))
    data.DatasetInfo(
        features=features,
        class_names=[f"class{k}" for k in range(33)],
        split_counts={"train": num_clips, "validation": 0, "test": 0},
        num_shards={"train": num_shards, "validation": 0, "test": 0},
        layout="synthetic",
    ).save(directory)


def measure(dataset: tf.data.Dataset, num_batches: int, warmup_batches: int) -> tuple[float, int]:
    """(seconds, examples) for `num_batches` batches after `warmup_batches`, re-iterating per epoch."""
    seen, examples, start = 0, 0, None
    while seen < warmup_batches + num_batches:
        for features, labels in dataset:
            if seen == warmup_batches:
                start = time.perf_counter()
            features["log_mel"].numpy()
            if seen >= warmup_batches:
                examples += int(labels.shape[0])
            seen += 1
            if seen == warmup_batches + num_batches:
                break
    return time.perf_counter() - start, examples


def main(argv):
    del argv
    if FLAGS.make_synthetic:
        make_synthetic_dataset(FLAGS.data_dir, FLAGS.synthetic_clips, FLAGS.seed)
    info = data.load_dataset_info(FLAGS.data_dir)
    dataset = data.training_dataset(FLAGS.data_dir, batch_size=FLAGS.batch_size, train_frames=FLAGS.train_frames,
                                    seed=FLAGS.seed, augment=FLAGS.augment, info=info)
    seconds, examples = measure(dataset, FLAGS.num_batches, FLAGS.warmup_batches)
    rate = examples / seconds
    label = ("synthetic " if info.layout == "synthetic" else "") + os.path.basename(os.path.normpath(FLAGS.data_dir))
    machine = f"{os.cpu_count()} CPU, {platform.machine()}"
    print(
        f"pipeline throughput: {rate:.0f} examples/s ({examples} examples in {seconds:.2f} s; {label}, "
        f"{info.split_counts['train']} train clips, {info.storage_dtype}, batch {FLAGS.batch_size}, "
        f"{FLAGS.train_frames} frames x {info.features.n_mels} mels, augment {FLAGS.augment}; {machine})"
    )
    if FLAGS.append_results:
        if not os.path.exists(RESULTS_PATH):
            with open(RESULTS_PATH, "w", encoding="utf-8") as f:
                f.write(RESULTS_HEADER)
        with open(RESULTS_PATH, "a", encoding="utf-8") as f:
            f.write(
                f"| {datetime.date.today().isoformat()} | {label} | {info.split_counts['train']} | "
                f"{info.storage_dtype} | {FLAGS.batch_size} | {FLAGS.train_frames} | {FLAGS.augment} | {rate:.0f} | "
                f"{machine} | {tf.__version__} |\n"
            )


if __name__ == "__main__":
    app.run(main)
