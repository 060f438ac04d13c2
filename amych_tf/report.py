r"""The paper's Table 1 for one run: validation metrics at the end of every curriculum stage.

    python -m amych_tf.report --model_dir=runs/sol_sup [--split=validation] [--output=FILE.md]

Training saves `checkpoints/stage-<i>-<name>.weights.h5` when a curriculum stage
ends (amych_tf.callbacks.Curriculum). Each row evaluates one of them with
amych_tf.evaluate: the model with transformations up to that stage, i.e. the
paper's rows "raw prototypes", "+ gain", "+ pitch", "+ filters", "+ CE"
(supervised) and the final learning-rate decay. Stages the run did not reach
(or stopped before, --curriculum_stop) are absent. Beside OA, AA and L_rec each
row has the hearing fidelity (amych_tf.metrics): fine structure explained,
prototype crispness (median, min) and pitch tracking (r and slope medians; "—"
where the data know no notes or the pitch stage is off).

Writes a Markdown table (`--output`, default `<model_dir>/table1-<split>.md`)
and the same rows as JSON beside it; prints the table.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
STAGE_CHECKPOINT = re.compile(r"stage-(\d+)-(\w+)\.weights\.h5$")
ROW_NAMES = {"raw": "raw prototypes", "gain": "+ gain", "pitch": "+ pitch", "filters": "+ filters",
             "ce": "+ CE (beta learns)", "lr_decay": "+ learning rate / 10"}


def define_flags() -> None:
    """Define the command-line flags (once; importing this module defines none)."""
    from amych_tf import evaluate

    evaluate.define_flags()  # model_dir, data_dir, eval_batch_size, split, checkpoint, output
    FLAGS.set_default("split", "validation")


def stage_checkpoints(model_dir: str) -> list[tuple[int, str, str]]:
    """(stage index, stage name, path) of the run's stage checkpoints, in curriculum order."""
    found = []
    for path in glob.glob(os.path.join(model_dir, "checkpoints", "stage-*.weights.h5")):
        match = STAGE_CHECKPOINT.search(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), match.group(2), path))
    return sorted(found)


def table_rows(model_dir: str, data_dir: str | None = None, split: str = "validation", batch_size: int = 32):
    from amych_tf import data, evaluate

    checkpoints = stage_checkpoints(model_dir)
    if not checkpoints:
        raise evaluate.EvaluationError(f"no stage checkpoints in {os.path.join(model_dir, 'checkpoints')}")
    model, config = evaluate.load_model(model_dir, checkpoints[0][2])
    data_dir = data_dir or config["dataset"]["data_dir"]
    info = data.load_dataset_info(data_dir, expected_features=model.feature_config)
    averages = evaluate.class_average_spectra(data_dir, info, batch_size)  # the same for every stage
    rows = []
    for index, stage, path in checkpoints:
        model.load_weights(path)
        summary = evaluate.evaluate_model(model, data_dir, split, batch_size, info=info, class_averages=averages)
        fidelity = summary["fidelity"]
        rows.append({"stage": index, "name": stage, "row": ROW_NAMES.get(stage, stage),
                     "overall_accuracy": summary["overall_accuracy"],
                     "average_accuracy": summary["average_accuracy"], "rec_error": summary["rec_error"],
                     "fine_structure_explained": fidelity["fine_structure_explained"],
                     "crispness_median": fidelity["prototype_crispness"]["median"],
                     "crispness_min": fidelity["prototype_crispness"]["min"],
                     "pitch_r_median": fidelity["pitch_tracking"]["r_median"],
                     "pitch_slope_median": fidelity["pitch_tracking"]["slope_median"],
                     "checkpoint": os.path.relpath(path, model_dir)})
    return rows, config["model"]["mode"]


def _number(value, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(rows, mode: str, split: str) -> str:
    lines = [f"Table 1 ({mode}, {split} split)", "",
             "| curriculum stage | OA (%) | AA (%) | L_rec | fine structure | crispness median | crispness min "
             "| pitch r | pitch slope |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['row']} | {100 * row['overall_accuracy']:.1f} | {100 * row['average_accuracy']:.1f} "
                     f"| {row['rec_error']:.4f} | {_number(row['fine_structure_explained'])} "
                     f"| {_number(row['crispness_median'])} | {_number(row['crispness_min'])} "
                     f"| {_number(row['pitch_r_median'])} | {_number(row['pitch_slope_median'])} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    from amych_tf import evaluate

    try:
        if not FLAGS.model_dir:
            raise evaluate.EvaluationError("--model_dir is required")
        rows, mode = table_rows(FLAGS.model_dir, FLAGS.data_dir, FLAGS.split, FLAGS.eval_batch_size)
    except (evaluate.EvaluationError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    table = markdown(rows, mode, FLAGS.split)
    output = FLAGS.output or os.path.join(FLAGS.model_dir, f"table1-{FLAGS.split}.md")
    with open(output, "w", encoding="utf-8") as f:
        f.write(table)
    with open(os.path.splitext(output)[0] + ".json", "w", encoding="utf-8") as f:
        json.dump({"mode": mode, "split": FLAGS.split, "rows": rows}, f, indent=2)
    print(table, end="")


def console_main():
    define_flags()
    app.run(main)


if __name__ == "__main__":
    console_main()
