"""Training a model on a prepared dataset: `check` the options against the data, then `train`.

    from amych_tf.training.config import TrainConfig
    from amych_tf.training import trainer
    config = TrainConfig(data_dir="demo/prepared", model_dir="demo/run")
    summary = trainer.train(config, trainer.check(config))

(`python -m amych_tf.train` is the same with the options as flags: amych_tf.cli.train.)

Distribution: MultiWorkerMirroredStrategy when TF_CONFIG is set, otherwise
MirroredStrategy over the visible GPUs (or the CPU); `devices` overrides the
device list. `batch_size` is the global batch. The run directory's layout is
amych_tf.rundir's; with `export_dir`, the final model is also exported as a
SavedModel (amych_tf.serving).
"""

from __future__ import annotations

import os
import time

from absl import logging

from amych_tf.rundir import RunDir, checkpoint_file, write_json
from amych_tf.training.config import ConfigError, TrainConfig


def check(config: TrainConfig):
    """Validate `config` on its own and against its dataset and run directory; return the DatasetInfo.

    Raises ConfigError (naming the option or file) before any work.
    """
    from amych_tf import data

    if not config.data_dir:
        raise ConfigError("--data_dir is required")
    if not config.model_dir:
        raise ConfigError("--model_dir is required")
    info_path = os.path.join(config.data_dir, data.INFO_FILENAME)
    try:
        info = data.load_dataset_info(config.data_dir)
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        # A truncated, hand-edited or foreign file: say which file, whatever failed on it.
        message = str(error) if data.INFO_FILENAME in str(error) else f"{info_path} is unusable: {error}"
        raise ConfigError(message) from None
    malformed = _malformed_dataset_info(info)
    if malformed:
        raise ConfigError(f"{info_path} is malformed ({malformed}); re-run data_tools.prepare")
    run_dir = RunDir(config.model_dir)
    if os.path.isfile(run_dir.config):
        _check_resumed_run(config, run_dir, info)
    config.check()
    config.check_dataset(info)
    if config.model_class.reads_waveforms:
        from amych_tf import registry

        try:
            registry.pipeline(config.model).check_data(info, config.data_dir)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        return info  # no crops: nothing to warn about
    longest = _longest_train_clip(config.data_dir)
    if longest is not None and config.train_frames > longest:
        # Not an error: crops of clips shorter than train_frames repeat the clip
        # (data.crop_indices), the paper's tiling of short clips; but every crop then does.
        logging.warning("--train_frames=%d is longer than every training clip (the longest has %d frames): "
                        "every crop repeats (tiles) its clip to %d frames", config.train_frames, longest,
                        config.train_frames)
    return info


def _malformed_dataset_info(info) -> str | None:
    """What is wrong with the fields of a dataset_info.json that training reads, or None."""
    if not isinstance(info.class_names, list) or not all(isinstance(name, str) for name in info.class_names):
        return "class_names must be a list of strings"
    for field in ("split_counts", "num_shards"):
        values = getattr(info, field)
        if not isinstance(values, dict) or not all(isinstance(count, int) and count >= 0
                                                   for count in values.values()):
            return f"{field} must map splits to non-negative integers"
    return None


def _check_resumed_run(config: TrainConfig, run_dir: RunDir, info) -> None:
    """A model_dir that holds a run already: its features and classes must be the dataset's."""
    from amych_tf.spectral import FeatureConfig

    previous = run_dir.read_config()
    try:
        FeatureConfig.from_dict(previous["model"]["feature_config"]).check_compatible(
            info.features, what=f"dataset {config.data_dir} and the model in {config.model_dir}")
    except ValueError as error:
        raise ConfigError(str(error)) from None
    previous_classes = previous.get("dataset", {}).get("class_names")
    if previous_classes is not None and previous_classes != info.class_names:
        raise ConfigError(
            f"the run in {config.model_dir} was trained on other classes ({len(previous_classes)}) than dataset "
            f"{config.data_dir} has ({info.num_classes}); use another --model_dir")


def _longest_train_clip(data_dir: str) -> int | None:
    """Frames of the longest train clip, from manifest.csv (None without one)."""
    import csv

    from amych_tf import data

    path = os.path.join(data_dir, data.MANIFEST_FILENAME)
    if not os.path.isfile(path):
        return None
    with open(path, newline="", encoding="utf-8") as f:
        try:
            frames = [int(row["num_frames"]) for row in csv.DictReader(f) if row["split"] == "train"]
        except (KeyError, ValueError):  # a manifest of another format: nothing to warn about
            return None
    return max(frames, default=None)


def make_strategy(devices=None):
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.MirroredStrategy(devices=list(devices) if devices else None)


def is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)


def worker_run_dir(model_dir: str, strategy) -> RunDir:
    """Where this worker writes: model_dir for the chief, a private folder for the others."""
    run_dir = RunDir(model_dir)
    if is_chief(strategy):
        return run_dir
    resolver = strategy.cluster_resolver
    return run_dir.worker(resolver.task_type, resolver.task_id)


def compile_model(model, config: TrainConfig, strategy) -> None:
    with strategy.scope():
        model.compile(optimizer=model.training_optimizer(config), jit_compile=config.jit_compile)
        # Built here, in the strategy's scope: built lazily inside fit, Keras' Adam
        # fails under MirroredStrategy with more than one replica.
        model.optimizer.build(model.trainable_variables)


def build_model(config: TrainConfig, info, strategy):
    """A new model of `config.model` (amych_tf.registry), built and compiled in the strategy's scope."""
    import keras

    model_class = config.model_class
    keras.utils.set_random_seed(config.seed)  # before the weights are created
    prepared = model_class.prepare_construction(config, info)
    with strategy.scope():
        model = model_class.from_train_config(config, info, **prepared)
        model.build_for_frames(config.train_frames)
    compile_model(model, config, strategy)
    return model


def write_run_files(run_dir: RunDir, config: TrainConfig, model, info, flags_text: str | None = None) -> None:
    """config.json (the model's config, the dataset, the TrainConfig) and, from the command line, flags.txt."""
    os.makedirs(run_dir.path, exist_ok=True)
    if flags_text is not None:
        with open(run_dir.flags, "w", encoding="utf-8") as f:
            f.write(flags_text)
    write_json(run_dir.config, {
        "model_name": config.model,
        "model": model.get_config(),
        "dataset": {"data_dir": os.path.abspath(config.data_dir), "class_names": info.class_names},
        "train": config.to_dict(),
    })


def baseline_selection_callbacks(model, config: TrainConfig, info, validation_data, checkpoint_dir: str) -> list:
    """Model selection and stopping for a baseline (amych_tf.baselines.selection).

    Classifiers keep the weights of best validation accuracy (best.weights.h5);
    clustering models (the autoencoder: best.weights.h5; APNet + K-means:
    best_clustering.weights.h5) those of best validation OA after K-means and the
    majority mapping. Training stops at `cpu_budget` of process CPU time when it
    is set, else after `patience` epochs without a better selection metric.
    `checkpoint_dir`: where the selected weights go.
    """
    import keras

    from amych_tf import data
    from amych_tf.baselines import selection

    if validation_data is None:  # nothing to select on: the training loss decides when to stop
        return [keras.callbacks.EarlyStopping(monitor="loss", patience=config.patience)]
    result = []
    if model.clusters:
        splits = [data.evaluation_dataset(config.data_dir, split, batch_size=config.eval_batch_size, info=info)
                  for split in ("train", "validation")]
        name = "best_clustering" if model.classifies else "best"
        result.append(selection.ClusteringSelection(*splits, checkpoint_file(checkpoint_dir, name), seed=config.seed))
    monitor = "val_accuracy" if model.classifies else selection.CLUSTER_ACCURACY
    if model.classifies:
        result.append(selection.BestValidation(checkpoint_file(checkpoint_dir, "best"), monitor=monitor))
    result += learning_rate_plateau(config, monitor)
    if config.cpu_budget:
        result.append(selection.CPUBudget(config.cpu_budget))
    else:
        result.append(keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=config.patience))
    return result


def learning_rate_plateau(config: TrainConfig, monitor: str) -> list:
    """[ReduceLROnPlateau on the selection metric `monitor`] if --lr_plateau_patience, else [].

    Placed after the selection callbacks, which write a clustering metric into the epoch's logs.
    The floor, 1/100 of --learning_rate, keeps a long run from stalling at zero.
    """
    import keras

    if not config.lr_plateau_patience:
        return []
    return [keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode="max", factor=config.lr_plateau_factor,
                                              patience=config.lr_plateau_patience,
                                              min_lr=config.learning_rate / 100, verbose=1)]


def selected_epochs(selection_callbacks) -> dict:
    """{selection metric: the epoch (1-based) whose weights were kept} of baseline_selection_callbacks."""
    from amych_tf.baselines import selection

    return {callback.monitor: callback.best_epoch for callback in selection_callbacks
            if isinstance(callback, (selection.ClusteringSelection, selection.BestValidation))}


def refine(model, config: TrainConfig, strategy, train_data, validation_data, info, run_dir: RunDir):
    """APNet's prototype refinement: best weights, remove redundant prototypes, train `refine_epochs` more.

    Selection as in training (best validation accuracy; APNet + K-means on its
    own checkpoint); the refined model and its checkpoints replace the
    unrefined ones only when its best validation accuracy is higher, so
    refinement cannot lose what training selected. Returns (the model, a record
    for metrics.json).
    """
    from amych_tf.baselines import selection

    if os.path.exists(run_dir.checkpoint("best")):
        model.load_weights(run_dir.checkpoint("best"))
    before = model.evaluate(validation_data, verbose=0, return_dict=True)["accuracy"]
    with strategy.scope():
        refined, kept = model.refined_copy()
    compile_model(refined, config, strategy)
    os.makedirs(run_dir.refined_checkpoints, exist_ok=True)
    # The same selection, for exactly refine_epochs epochs (no stopping callback).
    refine_callbacks = [callback for callback in baseline_selection_callbacks(
        refined, config, info, validation_data, run_dir.refined_checkpoints)
        if isinstance(callback, (selection.ClusteringSelection, selection.BestValidation))]
    refined.fit(train_data, epochs=config.refine_epochs, validation_data=validation_data, shuffle=False,
                callbacks=refine_callbacks, verbose=config.verbose)
    after = next(callback for callback in refine_callbacks if isinstance(callback, selection.BestValidation)).best
    record = {"prototypes_before": model.num_prototypes_latent, "prototypes_after": len(kept),
              "epochs": config.refine_epochs, "validation_accuracy_before": float(before),
              "validation_accuracy_after": float(after), "used": bool(after > before),
              "selected_epoch": selected_epochs(refine_callbacks)}
    if not record["used"]:
        return model, record
    # APNet + K-means follows the refined model too: its clustering checkpoint must fit its shapes.
    for name in ("best", "best_clustering"):
        os.replace(checkpoint_file(run_dir.refined_checkpoints, name), run_dir.checkpoint(name))
    return refined, record


def training_callbacks(model, config: TrainConfig, info, run_dir: RunDir, validation_data) -> tuple[list, list]:
    """(every callback of `fit`, in order, with the training backup last; the baseline selection callbacks)."""
    import keras

    from amych_tf import data, evaluation
    from amych_tf.baselines import selection
    from amych_tf.training import callbacks, resume

    def validation_split(with_metadata=False):
        return data.evaluation_dataset(config.data_dir, "validation", batch_size=config.eval_batch_size, info=info,
                                       with_metadata=with_metadata)

    # Order matters at epoch end: the curriculum and reassignment change the model
    # before the checkpoints and the backup (last) save it.
    run_callbacks = [callbacks.NonFiniteGuard()]
    baseline_selection = [] if model.playable else baseline_selection_callbacks(
        model, config, info, validation_data, run_dir.checkpoints)
    if model.playable:
        if validation_data is not None and config.fidelity_freq > 0:
            run_callbacks.append(callbacks.FidelityMetrics(
                validation_split(with_metadata=True),
                evaluation.class_average_spectra(config.data_dir, info, config.eval_batch_size),
                config.fidelity_freq))
        run_callbacks.append(callbacks.Curriculum(
            config.mode, config.learning_rate, patience=config.patience, warmup_steps=config.warmup_steps,
            stop_stage=config.curriculum_stop, checkpoint_dir=run_dir.checkpoints,
            prototypes_from=config.prototypes_learn_from, blur_bins=config.blur_bins,
            blur_anneal_steps=config.blur_anneal_steps))
        if config.mode == "unsupervised":
            run_callbacks.append(callbacks.Reassignment(seed=config.seed))
        run_callbacks.append(callbacks.TrainingScalars(run_dir.log_dir("train")))
    else:
        run_callbacks += baseline_selection
    run_callbacks += [
        keras.callbacks.TensorBoard(run_dir.logs, update_freq=config.log_update_freq),
        keras.callbacks.ModelCheckpoint(
            run_dir.checkpoint("latest"), save_weights_only=True,
            save_freq=config.checkpoint_freq * data.steps_per_epoch(info, "train", config.batch_size)),
    ]
    if validation_data is not None and model.playable:
        run_callbacks.append(keras.callbacks.ModelCheckpoint(
            run_dir.checkpoint("best"), save_weights_only=True, save_best_only=True, monitor="val_loss",
            mode="min"))
        if config.media_freq > 0:
            run_callbacks.append(callbacks.TensorBoardMedia(
                run_dir.log_dir("media"), validation_split(), info, every_epochs=config.media_freq,
                num_examples=config.media_examples))
    run_callbacks.append(resume.TrainingBackup(run_dir.backup, tracked=[
        callback for callback in run_callbacks
        if isinstance(callback, (keras.callbacks.ModelCheckpoint, keras.callbacks.EarlyStopping,
                                 keras.callbacks.ReduceLROnPlateau, selection.ClusteringSelection,
                                 selection.BestValidation))]))
    return run_callbacks, baseline_selection


def fit_with_budget(model, config: TrainConfig, train_data, validation_data, callbacks) -> tuple[float, dict]:
    """`model.fit` as the config says; returns (wall seconds of fit, metrics.json's "budget" record).

    The record says what the run was allowed (a curriculum's patience, a CPU budget or
    early stopping's patience) and what it used (epochs, process CPU time).
    """
    start = time.time()
    history = model.fit(train_data, epochs=config.epochs, validation_data=validation_data, shuffle=False,
                        validation_freq=config.validation_freq, callbacks=callbacks, verbose=config.verbose)
    train_seconds = time.time() - start
    budget = {"max_epochs": config.epochs, "epochs_run": len(history.history.get("loss", [])),
              "cpu_seconds_at_end_of_training": round(time.process_time(), 1)}
    if model.playable:
        budget["curriculum_patience"] = config.patience
    elif config.cpu_budget:
        budget["cpu_budget_seconds"] = config.cpu_budget
    else:
        budget["patience"] = config.patience
    return train_seconds, budget


def train(config: TrainConfig, info, flags_text: str | None = None) -> dict:
    """Train `config.model` on `config.data_dir` into `config.model_dir`; evaluate the selected checkpoint
    on the test split (metrics.json) and return that summary.

    `info`: the DatasetInfo `check` returned. `flags_text`: the command line's
    flags, written to flags.txt. Rerunning with the same model_dir resumes.
    """
    import tensorflow as tf

    from amych_tf import data, evaluation, initialization, registry
    from amych_tf.training import curriculum

    if config.model_class.reads_waveforms:  # waveforms in: its own pipeline (amych_tf.contract)
        return registry.pipeline(config.model).train(config, info, flags_text)
    strategy = make_strategy(config.devices)
    run_dir = worker_run_dir(config.model_dir, strategy)
    strategy_name = ("MultiWorkerMirroredStrategy" if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
                     else type(strategy).__name__)
    logging.info("%s with %d replica(s); writing to %s", strategy_name, strategy.num_replicas_in_sync, run_dir.path)
    if config.batch_size % strategy.num_replicas_in_sync:
        raise ConfigError(f"--batch_size={config.batch_size} is not divisible by "
                          f"{strategy.num_replicas_in_sync} replicas")
    model = build_model(config, info, strategy)
    write_run_files(run_dir, config, model, info, flags_text)

    train_data = data.distributed_training_dataset(
        strategy, config.data_dir, global_batch_size=config.batch_size, train_frames=config.train_frames,
        seed=config.seed, augment=config.augment, info=info)
    validation_data = None
    if info.split_counts.get("validation", 0):
        validation_data = data.distributed_evaluation_dataset(
            strategy, config.data_dir, "validation", global_batch_size=config.eval_batch_size, info=info)

    train_split = data.evaluation_dataset(config.data_dir, "train", batch_size=config.eval_batch_size, info=info)
    if model.playable:
        initialization.initialise_prototypes(model, train_split, max_examples=config.init_examples,
                                             seed=config.seed)
    os.makedirs(run_dir.checkpoints, exist_ok=True)
    run_callbacks, baseline_selection = training_callbacks(model, config, info, run_dir, validation_data)
    backup = run_callbacks[-1]

    train_seconds, budget = fit_with_budget(model, config, train_data, validation_data, run_callbacks)

    best, best_clustering = run_dir.checkpoint("best"), run_dir.checkpoint("best_clustering")
    if not model.playable:
        budget["selected_epoch"] = selected_epochs(baseline_selection)
    if config.refine_epochs:
        model, budget["refinement"] = refine(model, config, strategy, train_data, validation_data, info, run_dir)
        write_run_files(run_dir, config, model, info)  # config.json must describe the model the checkpoints hold
    if os.path.exists(best):
        model.load_weights(best)
    if model.clusters and not os.path.exists(best_clustering if model.classifies else best):
        # No validation split to select on: K-means on the train split's embeddings of the
        # final model, stored in the model's weights (best and latest checkpoints).
        from amych_tf.baselines.selection import embeddings_and_labels

        model.fit_clusters(embeddings_and_labels(model, train_split)[0], seed=config.seed)
        for name in ("best", "latest"):
            model.save_weights(run_dir.checkpoint(name))
    summary = evaluation.evaluate_model(model, config.data_dir, "test", config.eval_batch_size, info=info)
    summary.update(train_seconds=round(train_seconds, 1), checkpoint="best" if os.path.exists(best) else "last",
                   num_parameters=int(model.count_params()), budget=budget)
    if model.playable:
        summary["curriculum_stage"] = curriculum.stages(config.mode)[int(model.curriculum_state.numpy()[0])]
    elif model.clusters and model.classifies:  # apnet: also APNet + K-means
        if os.path.exists(best_clustering):
            model.load_weights(best_clustering)
        clusters = evaluation.evaluate_model(model, config.data_dir, "test", config.eval_batch_size, info=info,
                                             clustering=True)
        summary["clustering"] = {key: clusters[key] for key in (
            "overall_accuracy", "average_accuracy", "per_class_accuracy", "prototype_classes", "unused_prototypes")}
        summary["clustering"]["checkpoint"] = "best_clustering" if os.path.exists(best_clustering) else "best"
        if os.path.exists(best):
            model.load_weights(best)
    evaluation.write_report(summary, run_dir.metrics, info.class_names)
    backup.discard()  # kept until now: a kill during the evaluation resumes after training
    print(f"{evaluation.summary_line(summary)}, trained {train_seconds:.0f} s")
    if config.export_dir and is_chief(strategy) and model.exportable:
        from amych_tf import serving

        classes = summary.get("prototype_classes")  # the unsupervised mapping evaluation just computed
        path = serving.export_model(
            model, config.export_dir, classes=classes,
            source={"model_dir": os.path.abspath(config.model_dir), "checkpoint": summary["checkpoint"]})
        print(f"exported {path}")
    return summary


def non_finite_data_report(data_dir: str, info, shown: int = 5) -> str:
    """Which stored examples hold NaN or Inf log-Mel values, read after a non-finite loss stopped training.

    Decision: such an example stops the run (it is not skipped). data_tools.prepare
    never writes one (it refuses audio with non-finite samples), so one means a
    damaged or foreign dataset, to be prepared again; skipping it silently would
    train on a dataset other than the one described by dataset_info.json. The scan
    reads the whole dataset once, only on this failure path.
    """
    import tensorflow as tf

    from amych_tf import data

    def is_finite(record):
        example = data.parse_example(record, num_mels=info.features.n_mels, storage_dtype=info.storage_dtype)
        return example["path"], tf.reduce_all(tf.math.is_finite(example["log_mel"]))

    found = []
    for split in data.SPLITS:
        if info.split_counts.get(split, 0):
            records = tf.data.TFRecordDataset(info.shard_paths(data_dir, split))
            for paths, finite in records.map(is_finite).batch(256).as_numpy_iterator():
                found += [f"{path.decode()} ({split})" for path in paths[~finite]]
    if not found:
        return "Every stored log-Mel is finite: the optimisation diverged (lower --learning_rate)."
    more = f" and {len(found) - shown} more" if len(found) > shown else ""
    return (f"{len(found)} stored example(s) have NaN or Inf log-Mel values: {', '.join(found[:shown])}{more}; "
            "prepare the dataset again (data_tools.prepare refuses non-finite audio).")
