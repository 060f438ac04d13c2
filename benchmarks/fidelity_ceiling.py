r"""How much fine structure could a run's prototypes explain with a perfect pitch shift?

    python benchmarks/fidelity_ceiling.py --model_dir=RUN [--data_dir=DIR] [--split=test]

For every clip of the split, every real frame is compared with the clip's
winning prototype shifted to each ratio of a grid (0.1 semitone steps over
+-24 semitones), and the shift whose fine structure (amych_tf.metrics) is
closest to the frame's is kept. The fine structure explained by those
best-shifted prototypes is the ceiling the prototypes allow when the pitch
decoder is exact (gain and filters are smooth in frequency and add no fine
structure). Prints JSON: the model's own `fine_structure_explained`, the
`ceiling`, the median distance in semitones between the model's per-frame
shift and the best one (`median_shift_error_semitones`), and the fine structure
explained when each clip's shift is held at its median over the clip
(`steady_shift`: is frame-to-frame jitter what costs?).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from amych_tf import data, metrics, registry, transforms  # noqa: E402

flags.DEFINE_string("model_dir", None, "A training run of PlayablePrototypes.")
flags.DEFINE_string("data_dir", None, "Prepared dataset (default: the run's).")
flags.DEFINE_string("split", "test", "Split to measure.")
flags.DEFINE_float("max_semitones", 24.0, "The grid of shifts spans +- this many semitones.")
FLAGS = flags.FLAGS
GRID_STEP_SEMITONES = 0.1


def main(argv):
    del argv
    model, config = registry.load_model(FLAGS.model_dir)
    data_dir = FLAGS.data_dir or config["dataset"]["data_dir"]
    info = data.load_dataset_info(data_dir, expected_features=model.feature_config)
    grid = np.arange(-FLAGS.max_semitones, FLAGS.max_semitones + 1e-9, GRID_STEP_SEMITONES)
    ratios = (2.0 ** (grid / 12.0)).astype(np.float32)
    prototypes = model.prototypes.numpy()
    shifted_fine = [metrics.fine_structure(transforms.pitch_shift(
        np.repeat(prototypes[k][None], len(grid), 0), ratios, model.mel_values).numpy()) for k in
        range(model.num_prototypes)]  # each [G, F]
    own, ceiling, steady, shift_errors = (metrics.FineStructureExplained(), metrics.FineStructureExplained(),
                                          metrics.FineStructureExplained(), [])
    for features, _ in data.evaluation_dataset(data_dir, FLAGS.split, batch_size=32, info=info):
        outputs = {name: value.numpy() for name, value in model.explain_winner(features).items()}
        log_mel, mask = features["log_mel"].numpy(), features["mask"].numpy()
        own.update(log_mel, outputs["reconstruction"], mask)
        log_ratio = np.where(mask > 0, np.log(outputs["pitch_ratio"]), np.nan)
        steady_ratio = np.broadcast_to(np.exp(np.nanmedian(log_ratio, axis=1, keepdims=True)), log_ratio.shape)
        steady.update(log_mel, transforms.transform(
            prototypes[outputs["winner"]][:, None, :], gain_db=outputs["gain"],
            pitch_ratio=steady_ratio.astype(np.float32), low_slope=outputs["low_slope"],
            low_cutoff=outputs["low_cutoff"], high_slope=outputs["high_slope"], high_cutoff=outputs["high_cutoff"],
            mel_values=model.mel_values).numpy(), mask)
        for i, winner in enumerate(outputs["winner"]):
            frames = int(mask[i].sum())
            fine = metrics.fine_structure(log_mel[i, :frames])  # [T, F]
            errors = ((fine[:, None, :] - shifted_fine[winner][None]) ** 2).sum(-1)  # [T, G]
            best = errors.argmin(1)
            ceiling.residual += float(errors[np.arange(frames), best].sum())
            ceiling.energy += float((fine**2).sum())
            model_shift = 12.0 * np.log2(outputs["pitch_ratio"][i, :frames])
            shift_errors.append(np.abs(model_shift - grid[best]))
    json.dump({"model_dir": FLAGS.model_dir, "split": FLAGS.split,
               "fine_structure_explained": own.result(), "ceiling": ceiling.result(), "steady_shift": steady.result(),
               "median_shift_error_semitones": float(np.median(np.concatenate(shift_errors)))},
              sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    flags.mark_flag_as_required("model_dir")
    app.run(main)
