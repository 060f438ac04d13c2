"""Clips per second of amych_tf.evaluation's inference path on full-length clips of mixed lengths.

    python benchmarks/eval_throughput.py [--num_clips=512] [--min_frames=50] [--max_frames=150]
        [--batch_size=32] [--num_prototypes=33]

The SOL preset (128 mels), K=33, an untrained PlayablePrototypes whose decoders
are given random output weights (so every transformation depends on the input,
as in a trained model). A small prepared dataset is synthesised in a temporary
directory with the tests' own writer (tests/helpers.make_prepared_dir; nothing
is downloaded): clip lengths uniform in [min_frames, max_frames]. It runs
`evaluation.collect_rec_errors` over `data.evaluation_dataset` (clips grouped by
padded length, as evaluate does) once to trace and compile, then times a second
pass. Prints one JSON line: clips_per_s, frames_per_s, clips_per_cpu_s, mean_frames, peak_rss_gb
(the process's ru_maxrss, TensorFlow included) and the settings.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from amych_tf.memory import limit_heap_growth  # noqa: E402

limit_heap_growth()  # as the command-line tools do, before TensorFlow starts its threads
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_clips", 512, "Clips in the synthetic split.")
flags.DEFINE_integer("min_frames", 50, "Shortest clip (frames).")
flags.DEFINE_integer("max_frames", 150, "Longest clip (frames).")
flags.DEFINE_integer("batch_size", 32, "Clips per evaluation batch (--eval_batch_size).")
flags.DEFINE_integer("num_prototypes", 33, "K.")


def main(argv):
    del argv
    import keras

    from amych_tf import data, evaluation
    from amych_tf.model import PlayablePrototypes
    from amych_tf.spectral import FeatureConfig
    from helpers import make_prepared_dir

    features = FeatureConfig.preset("sol")
    rng = np.random.default_rng(0)
    lengths = rng.integers(FLAGS.min_frames, FLAGS.max_frames + 1, FLAGS.num_clips).tolist()

    def spectrogram(index, num_frames, num_mels):
        return np.random.default_rng(index).uniform(0.2, 0.8, (num_frames, num_mels)).astype(np.float32)

    keras.utils.set_random_seed(0)
    model = PlayablePrototypes(features, FLAGS.num_prototypes)
    model.build_for_frames()
    model.set_active_transformations(("gain", "pitch", "low", "high"))
    for name in ("gain", "pitch", "filters"):
        kernel = model.decoder(name).output_conv.kernel
        kernel.assign(rng.normal(0.0, 0.3, kernel.shape).astype(np.float32))

    with tempfile.TemporaryDirectory() as directory:
        make_prepared_dir(directory, {"train": [], "validation": [], "test": lengths}, num_mels=features.n_mels,
                          num_classes=FLAGS.num_prototypes, shard_size=64, spectrogram=spectrogram,
                          sample_rate=features.sample_rate, n_fft=features.n_fft, hop_length=features.hop_length)
        info = data.load_dataset_info(directory)
        split = data.evaluation_dataset(directory, "test", batch_size=FLAGS.batch_size, info=info).cache()
        evaluation.collect_rec_errors(model, split)  # traces, compiles, fills the cache
        start, cpu_start = time.perf_counter(), time.process_time()
        rec_errors, _ = evaluation.collect_rec_errors(model, split)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    assert rec_errors.shape == (FLAGS.num_clips, FLAGS.num_prototypes) and np.all(np.isfinite(rec_errors))
    print(json.dumps({
        "clips_per_s": round(FLAGS.num_clips / seconds, 1),
        "frames_per_s": round(sum(lengths) / seconds),
        # Clips per CPU-second of this process: what the pass costs when other jobs share the cores.
        "clips_per_cpu_s": round(FLAGS.num_clips / cpu_seconds, 1),
        "mean_frames": round(float(np.mean(lengths)), 1),
        "num_clips": FLAGS.num_clips, "batch_size": FLAGS.batch_size, "num_prototypes": FLAGS.num_prototypes,
        "n_mels": features.n_mels,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
        "cpus": len(os.sched_getaffinity(0)),
    }))


if __name__ == "__main__":
    app.run(main)
