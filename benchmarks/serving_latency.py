"""Latency of an exported model (amych_tf.serving) on one clip, loaded with plain TensorFlow.

    python benchmarks/serving_latency.py --saved_model=saved_models/demo/1 [--seconds=1] [--calls=100]
    python benchmarks/serving_latency.py --preset=sol --num_prototypes=33 [--append_results]

With --saved_model, times that export; otherwise exports an untrained model of
the paper's size (--preset features, K=--num_prototypes; latency does not
depend on the weights) to a temporary directory first. Loads it with
`tf.saved_model.load` in this process (no amych_tf code on the call path),
makes `--warmup` calls, then times `--calls` calls of the `serving_default`
signature on one clip of `--seconds` of noise at the model's sample rate
(batch 1): p50, p90 and mean in milliseconds. This is the model's own compute
through the SavedModel's signature, as TF Serving runs it, without the
server's request handling (no TF Serving binary or Docker engine here).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

RESULTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS-serving.md")
RESULTS_HEADER = (
    "# Serving latency (benchmarks/serving_latency.py)\n\n"
    "`serving_default` of an exported SavedModel, one clip per call (batch 1), loaded with plain\n"
    "`tf.saved_model.load`; 2 CPU cores.\n\n"
    "| date | model | sample rate | K | mels | clip (s) | frames | calls | p50 (ms) | p90 (ms) | mean (ms) "
    "| machine | TensorFlow |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)

FLAGS = flags.FLAGS
flags.DEFINE_string("saved_model", None, "An exported version directory (saved_models/NAME/<version>).")
flags.DEFINE_enum("preset", "sol", ["sol", "librispeech"], "Features of the untrained model (no --saved_model).")
flags.DEFINE_integer("num_prototypes", 33, "K of the untrained model (no --saved_model).")
flags.DEFINE_float("seconds", 1.0, "Clip length.")
flags.DEFINE_integer("calls", 100, "Timed calls.")
flags.DEFINE_integer("warmup", 5, "Untimed calls first.")
flags.DEFINE_string("name", None, "Name of the model in the results row (default: its path).")
flags.DEFINE_boolean("append_results", False, f"Append a row to {os.path.basename(RESULTS_PATH)}.")


def untrained_export(directory: str) -> str:
    from amych_tf import serving
    from amych_tf.model import PlayablePrototypes
    from amych_tf.spectral import FeatureConfig

    model = PlayablePrototypes(FeatureConfig.preset(FLAGS.preset), FLAGS.num_prototypes,
                               class_names=[f"class{k}" for k in range(FLAGS.num_prototypes)])
    model.build_for_frames(16)
    model.set_active_transformations(("gain", "pitch", "low", "high"))
    return serving.export_model(model, directory)


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as scratch:
        path = FLAGS.saved_model or untrained_export(os.path.join(scratch, "model"))
        with open(os.path.join(path, "assets.extra", "amych_tf.json"), encoding="utf-8") as f:
            metadata = json.load(f)
        serve = tf.saved_model.load(path).signatures["serving_default"]
        features = metadata["feature_config"]
        rate = features["sample_rate"]
        waveform = tf.constant(0.1 * np.random.default_rng(0).standard_normal((1, int(FLAGS.seconds * rate)))
                               .astype(np.float32))
        for _ in range(FLAGS.warmup):
            serve(waveform=waveform)["class_id"].numpy()
        times = []
        for _ in range(FLAGS.calls):
            start = time.perf_counter()
            serve(waveform=waveform)["class_id"].numpy()
            times.append(1000 * (time.perf_counter() - start))
    p50, p90, mean = np.percentile(times, 50), np.percentile(times, 90), float(np.mean(times))
    frames = 1 + (int(FLAGS.seconds * rate) - features["n_fft"]) // features["hop_length"]
    name = FLAGS.name or FLAGS.saved_model or f"untrained, {FLAGS.preset}"
    print(f"{name}: K={metadata['num_prototypes']} {frames} frames: p50 {p50:.1f} ms, p90 {p90:.1f} ms, "
          f"mean {mean:.1f} ms over {FLAGS.calls} calls")
    if FLAGS.append_results:
        if not os.path.exists(RESULTS_PATH):
            with open(RESULTS_PATH, "w", encoding="utf-8") as f:
                f.write(RESULTS_HEADER)
        with open(RESULTS_PATH, "a", encoding="utf-8") as f:
            f.write(f"| {datetime.date.today()} | {name} | {rate} | {metadata['num_prototypes']} "
                    f"| {features['n_mels']} | {FLAGS.seconds:g} | {frames} | {FLAGS.calls} | {p50:.1f} | {p90:.1f} "
                    f"| {mean:.1f} | {platform.machine()}, {os.cpu_count()} cores | {tf.__version__} |\n")


if __name__ == "__main__":
    app.run(main)
