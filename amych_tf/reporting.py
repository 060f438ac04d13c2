"""The paper's Table 1 for one run: metrics at the end of every curriculum stage.

    from amych_tf import reporting
    rows, mode = reporting.table_rows("runs/sol_sup", split="validation")
    print(reporting.markdown(rows, mode, "validation"))

(`python -m amych_tf.report` writes it from flags: amych_tf.cli.report.)
Training saves `checkpoints/stage-<i>-<name>.weights.h5` when a curriculum stage
ends (amych_tf.training.callbacks.Curriculum). Each row evaluates one of them
with amych_tf.evaluation: the model with transformations up to that stage, i.e.
the paper's rows "raw prototypes", "+ gain", "+ pitch", "+ filters", "+ CE"
(supervised) and the final learning-rate decay (training/curriculum.py names
them). Stages the run did not reach (or stopped before, --curriculum_stop) are
absent. Beside OA, AA and L_rec each row has the hearing fidelity
(amych_tf.metrics): fine structure explained, prototype crispness (median, min)
and pitch tracking (r and slope medians; "—" where the data know no notes or
the pitch stage is off).
"""

from __future__ import annotations

import json
import os

from amych_tf.rundir import RunDir
from amych_tf.training.curriculum import row_name


def table_rows(model_dir: str, data_dir: str | None = None, split: str = "validation", batch_size: int = 32):
    """The rows of Table 1 (one per stage checkpoint, in curriculum order) and the run's mode."""
    from amych_tf import data, evaluation, registry

    run_dir = RunDir(model_dir)
    checkpoints = run_dir.stage_checkpoints()
    if not checkpoints:
        raise evaluation.EvaluationError(f"no stage checkpoints in {run_dir.checkpoints}")
    model, config = registry.load_model(model_dir, checkpoints[0][2])
    data_dir = data_dir or evaluation.default_data_dir(config)
    info = data.load_dataset_info(data_dir, expected_features=model.feature_config)
    averages = evaluation.class_average_spectra(data_dir, info, batch_size)  # the same for every stage
    rows = []
    for index, stage, path in checkpoints:
        model.load_weights(path)
        summary = evaluation.evaluate_model(model, data_dir, split, batch_size, info=info, class_averages=averages)
        fidelity = summary["fidelity"]
        rows.append({"stage": index, "name": stage, "row": row_name(stage),
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


def write_table1(model_dir: str, output: str | None = None, data_dir: str | None = None, split: str = "validation",
                 batch_size: int = 32) -> tuple[str, str]:
    """Table 1 of a run as Markdown at `output` (default `<model_dir>/table1-<split>.md`) and its rows as
    JSON beside it; returns (the table, the Markdown file's path)."""
    rows, mode = table_rows(model_dir, data_dir, split, batch_size)
    table = markdown(rows, mode, split)
    output = output or RunDir(model_dir).table1(split)
    with open(output, "w", encoding="utf-8") as f:
        f.write(table)
    with open(os.path.splitext(output)[0] + ".json", "w", encoding="utf-8") as f:
        json.dump({"mode": mode, "split": split, "rows": rows}, f, indent=2)
    return table, output
