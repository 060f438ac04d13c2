"""Evaluating a model on a split: OA, AA, L_rec, per-class accuracy, confusion matrix, hearing fidelity.

    from amych_tf import evaluation, registry
    model, config = registry.load_model("runs/sol_sup")          # best checkpoint
    summary = evaluation.evaluate_model(model, "data/sol", "test")
    evaluation.write_report(summary, "runs/sol_sup/eval-test.json", model.class_names)

(`python -m amych_tf.evaluate` does this from flags: amych_tf.cli.evaluate.)

* Prediction: the winning prototype argmin_k L_rec(x, k) on the full clip
  (baselines, `amych_tf.baselines`: their predicted class, or their K-means
  cluster when asked for clusters or when they only cluster).
* Supervised: prototype k is class k.
* Unsupervised: each prototype is mapped to the majority class of the
  training clips it wins (computed on the train split); prototypes that win
  nothing map to no class (their clips count as errors) and are listed in
  `unused_prototypes`. Clusters of baselines are mapped the same way.
* OA = accuracy over clips, AA = mean over classes of per-class accuracy,
  L_rec = mean reconstruction error of the winning prototype (null for
  baselines, which have no per-class reconstruction).
* Hearing fidelity (playable models, "fidelity" in the JSON; definitions in
  amych_tf.metrics): the fine structure of the inputs explained by the
  winners' reconstructions, each prototype's crispness against its class's
  average training spectrum (median, min), and pitch tracking (Pearson r and
  slope of the winner's pitch shift against the clip's MIDI note, medians over
  prototypes) where the data know the notes.
"""

from __future__ import annotations

import json
import os
import weakref


class EvaluationError(ValueError):
    """A model, checkpoint or dataset that cannot be evaluated; reported as one line."""


# One traced function per (model, purpose): report and compare evaluate the same
# model once per checkpoint, and a fresh tf.function each time would retrace.
_TRACED = weakref.WeakKeyDictionary()


def traced(model, name: str, function):
    """`function(model, features)` as a shape-generic tf.function, traced once per model and name.

    Evaluation batches are padded per batch, so their length varies: reduce_retracing.
    Variables are read at call time, so loading other weights into the model needs no
    retrace. The function holds the model weakly, so the cache does not keep it alive.
    """
    import tensorflow as tf

    functions = _TRACED.setdefault(model, {})
    if name not in functions:
        model_ref = weakref.ref(model)

        def call(features):
            return function(model_ref(), features)

        # No AutoGraph: the models branch on nothing but Python values (and it cannot
        # parse the source of these nested functions anyway).
        functions[name] = tf.function(call, reduce_retracing=True, autograph=False)
    return functions[name]


def collect_rec_errors(model, dataset):
    """(rec_errors [N, K], labels [N]) over batches of (features, labels), in dataset order.

    A plain loop on this process rather than `model.predict`: under
    MultiWorkerMirroredStrategy predict would shard the data over workers.
    """
    import numpy as np

    if hasattr(model, "rec_errors_from_table"):
        # The prototypes' pitch table depends on the weights alone: once per pass, not per batch.
        table = traced(model, "pitch_table", lambda m, _: m.pitch_table())(())
        from_table = traced(model, "rec_errors_from_table", lambda m, inputs: m.rec_errors_from_table(*inputs))

        def rec_errors_of(features):
            return from_table((features, table))
    else:
        rec_errors_of = traced(model, "rec_errors", lambda m, features: m(features, training=False)["rec_errors"])
    rec_errors, labels = [], []
    for features, batch_labels in dataset:
        rec_errors.append(rec_errors_of(features).numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(rec_errors), np.concatenate(labels)


def prototype_classes(model, data_dir: str | None = None, batch_size: int = 32):
    """Class of each prototype [K] (int, -1 = none): k itself when supervised, else the train-split majority."""
    import numpy as np

    from amych_tf import data, metrics

    if model.mode == "supervised":
        k = np.arange(model.num_prototypes)
        return np.where(k < model.num_classes, k, -1)
    if not data_dir:
        raise EvaluationError("an unsupervised model needs --data_dir to name its prototypes (train-split majority)")
    try:
        info = data.load_dataset_info(data_dir, expected_features=model.feature_config)
    except (FileNotFoundError, ValueError) as error:
        raise EvaluationError(str(error)) from None
    rec_errors, labels = collect_rec_errors(
        model, data.evaluation_dataset(data_dir, "train", batch_size=batch_size, info=info))
    return metrics.majority_mapping(labels, rec_errors.argmin(1), model.num_prototypes)


def collect_predictions(model, dataset, clustering: bool = False):
    """(winners [N], L_rec of the winner [N] or None, labels [N]) over a dataset, in order.

    Winners: the prototype argmin_k L_rec (playable models), else the
    baseline's class, or its cluster when `clustering`.
    """
    import numpy as np

    if model.playable:
        rec_errors, labels = collect_rec_errors(model, dataset)
        winners = rec_errors.argmin(1)
        return winners, rec_errors[np.arange(len(winners)), winners], labels
    name = "predict_clusters" if clustering else "predict_classes"
    predict = traced(model, name, lambda m, features: getattr(m, name)(features))
    winners, labels = [], []
    for features, batch_labels in dataset:
        winners.append(predict(features).numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(winners), None, np.concatenate(labels)


def class_average_spectra(data_dir: str, info, batch_size: int = 32):
    """Average training spectrum of each class over its real frames, [C, F] (for crispness)."""
    from amych_tf import data, metrics

    averages = metrics.ClassAverageSpectra(info.num_classes, info.features.n_mels)
    for features, labels in data.evaluation_dataset(data_dir, "train", batch_size=batch_size, info=info):
        averages.update(features["log_mel"].numpy(), features["mask"].numpy(), labels.numpy())
    return averages.result()


def collect_explanations(model, dataset) -> dict:
    """One pass of a PlayablePrototypes model over batches of (features with metadata, labels).

    Returns rec_errors [N, K], labels [N], midi_notes [N] (-1 unknown), the
    winner's pitch shift per clip in semitones [N] (`metrics.pitch_semitones`)
    and the split's `metrics.FineStructureExplained` of the winners' reconstructions.
    """
    import numpy as np

    from amych_tf import metrics

    explain = traced(model, "explain_winner", lambda m, features: m.explain_winner(features))
    fine = metrics.FineStructureExplained()
    rec_errors, labels, notes, semitones = [], [], [], []
    for features, batch_labels in dataset:
        outputs = explain({"log_mel": features["log_mel"], "mask": features["mask"]})
        mask = features["mask"].numpy()
        fine.update(features["log_mel"].numpy(), outputs["reconstruction"].numpy(), mask)
        rec_errors.append(outputs["rec_errors"].numpy())
        labels.append(batch_labels.numpy())
        notes.append(features["midi_note"].numpy())
        semitones.append(metrics.pitch_semitones(outputs["pitch_ratio"].numpy(), mask))
    return {"rec_errors": np.concatenate(rec_errors), "labels": np.concatenate(labels),
            "midi_notes": np.concatenate(notes), "semitones": np.concatenate(semitones), "fine_structure": fine}


def fidelity_summary(model, explanations: dict, class_averages, classes) -> dict:
    """The hearing-fidelity metrics (amych_tf.metrics) of one pass of `collect_explanations`.

    `classes` [K]: the class of each prototype (-1: none), which picks the class
    average each prototype's crispness is measured against.
    """
    from amych_tf import metrics

    names = model.prototype_names()
    winners = explanations["rec_errors"].argmin(1)
    return {
        "fine_structure_explained": explanations["fine_structure"].result(),
        "prototype_crispness": metrics.prototype_crispness(
            model.prototypes.numpy(), class_averages, classes, names),
        "pitch_tracking": metrics.pitch_tracking(
            winners, explanations["semitones"], explanations["midi_notes"], model.num_prototypes, names),
    }


def evaluate_model(model, data_dir: str, split: str = "test", batch_size: int = 32, info=None,
                   clustering: bool | None = None, class_averages=None) -> dict:
    """The metrics of `model` on a split (see the module docstring).

    `clustering` (baselines with K-means): evaluate clusters mapped to classes
    by the training majority; default: only for models that do not classify.
    Playable models also get their hearing fidelity ("fidelity": fine
    structure explained, prototype crispness, pitch tracking; amych_tf.metrics);
    `class_averages` ([C, F], `class_average_spectra`) spares a pass over the
    train split when the caller evaluates several checkpoints.
    """
    import numpy as np

    from amych_tf import data, metrics

    info = info or data.load_dataset_info(data_dir, expected_features=model.feature_config)
    if model.reads_waveforms:  # waveforms in, its own metrics (amych_tf.contract)
        from amych_tf import registry

        return registry.pipeline(model.registry_name).evaluate(model, data_dir, split, batch_size, info=info)
    clustering = model.mode == "unsupervised" if clustering is None else clustering
    if clustering and not (model.playable or model.clusters):
        raise EvaluationError(f"{type(model).__name__} has no clusters to evaluate")
    num_winners = model.num_prototypes

    def split_data(name, with_metadata=False):
        return data.evaluation_dataset(data_dir, name, batch_size=batch_size, info=info, with_metadata=with_metadata)

    explanations = None
    if model.playable:
        explanations = collect_explanations(model, split_data(split, with_metadata=True))
        labels, rec_errors = explanations["labels"], explanations["rec_errors"]
        winners = rec_errors.argmin(1)
        rec_of_winner = rec_errors[np.arange(len(winners)), winners]
    else:
        winners, rec_of_winner, labels = collect_predictions(model, split_data(split), clustering)
    mapping = None
    if clustering:
        train_winners, _, train_labels = collect_predictions(model, split_data("train"), clustering)
        mapping = metrics.majority_mapping(train_labels, train_winners, num_winners)
    summary = metrics.summarise(labels, winners, rec_of_winner, info.num_classes, mapping=mapping,
                                class_names=info.class_names)
    summary.update(split=split, mode="unsupervised" if clustering else "supervised", num_prototypes=num_winners,
                   model=type(model).__name__)
    if explanations is not None:
        classes = mapping if mapping is not None else np.where(np.arange(num_winners) < info.num_classes,
                                                               np.arange(num_winners), -1)
        if class_averages is None:
            class_averages = class_average_spectra(data_dir, info, batch_size)
        summary["fidelity"] = fidelity_summary(model, explanations, class_averages, classes)
    return summary


def write_report(summary: dict, output: str, class_names) -> None:
    """The JSON at `output` and the confusion matrix as `<output without .json>.png`."""
    from amych_tf import plots

    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    tmp = output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:  # written then renamed: a kill leaves no half-written JSON
        json.dump(summary, f, indent=2)
    os.replace(tmp, output)
    figure = plots.confusion_figure(summary["confusion_matrix"], class_names)
    png = os.path.splitext(output)[0] + ".png"
    with open(png + ".tmp", "wb") as f:  # written then renamed: a kill leaves no half-written PNG
        f.write(plots.figure_to_png(figure))
    os.replace(png + ".tmp", png)


def fidelity_line(fidelity: dict) -> str:
    """fine structure explained, crispness median/min, pitch tracking r/slope medians, on one line."""
    def number(value, digits=2):
        return "n/a" if value is None else f"{value:.{digits}f}"

    crisp, pitch = fidelity["prototype_crispness"], fidelity["pitch_tracking"]
    return (f"fine structure {number(fidelity['fine_structure_explained'])}  "
            f"crispness {number(crisp['median'])} (min {number(crisp['min'])})  "
            f"pitch r {number(pitch['r_median'])} slope {number(pitch['slope_median'])}")


def summary_line(summary: dict, model=None) -> str:
    """The metrics on one line (and fidelity on a second); `model` picks the line of a model with its own
    pipeline."""
    if model is not None and model.reads_waveforms:
        from amych_tf import registry

        return registry.pipeline(model.registry_name).summary_line(summary)
    rec = "" if summary["rec_error"] is None else f"L_rec {summary['rec_error']:.4f}  "
    line = (f"{summary['split']} OA {100 * summary['overall_accuracy']:.1f}%  "
            f"AA {100 * summary['average_accuracy']:.1f}%  {rec}({summary['num_examples']} clips)")
    if "fidelity" in summary:
        line += "\n" + f"{summary['split']} " + fidelity_line(summary["fidelity"])
    return line


def default_data_dir(config_json: dict) -> str:
    """The dataset a run was trained on, from its config.json (the TrainConfig saved there)."""
    from amych_tf.training.config import read_train_config

    return read_train_config(config_json).data_dir


def evaluate_run(model_dir: str, split: str = "test", *, data_dir: str | None = None, checkpoint: str | None = None,
                 clustering: bool = False, batch_size: int = 32) -> tuple[dict, object, object]:
    """Evaluate a training run's model (amych_tf.rundir) on a split; returns (summary, DatasetInfo, model).

    `checkpoint`: best (default, else latest), latest, stage-<i>-<name> or a file;
    with `clustering` and no checkpoint, APNet's own best_clustering checkpoint when
    the run has one. `data_dir` defaults to the run's dataset. Raises
    EvaluationError or rundir.RunDirError.
    """
    from amych_tf import data, registry
    from amych_tf.rundir import RunDir

    if not checkpoint and clustering and os.path.isfile(RunDir(model_dir).checkpoint("best_clustering")):
        checkpoint = "best_clustering"  # APNet + K-means was selected on its own (amych_tf.training)
    model, config = registry.load_model(model_dir, checkpoint)
    data_dir = data_dir or default_data_dir(config)
    try:
        info = data.load_dataset_info(data_dir, expected_features=model.feature_config)
    except (FileNotFoundError, ValueError) as error:
        raise EvaluationError(str(error)) from None
    if info.split_counts.get(split, 0) == 0:
        raise EvaluationError(f"dataset {data_dir!r} has no {split} clips")
    summary = evaluate_model(model, data_dir, split, batch_size, info=info, clustering=clustering or None)
    return summary, info, model
