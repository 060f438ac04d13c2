r"""Train PlayablePrototypes on a prepared dataset.

    python -m amych_tf.train --flagfile=configs/demo.cfg
    python -m amych_tf.train --data_dir=DIR --model_dir=DIR --mode=unsupervised

Distribution: MultiWorkerMirroredStrategy when TF_CONFIG is set, otherwise
MirroredStrategy over the visible GPUs (or the CPU); `--devices` overrides the
device list. `--batch_size` is the global batch.

model_dir receives:
  flags.txt                 the flags of the run (usable as --flagfile)
  config.json               model, features and classes (evaluate/export read it)
  backup/                   training state at the last epoch end (amych_tf.resume): rerun the
                            same command to resume; deleted when metrics.json is written
  checkpoints/best.weights.h5     best validation loss (our model); baselines: best validation accuracy,
                                  or best validation OA after K-means for the autoencoder
  checkpoints/best_clustering.weights.h5   APNet: best validation OA of APNet + K-means
  checkpoints/latest.weights.h5   every --checkpoint_freq epochs
  checkpoints/stage-<i>-<name>.weights.h5   end of every curriculum stage
  logs/                     TensorBoard
  metrics.json, metrics.png test-split OA, AA, L_rec, confusion matrix of the best checkpoint
With --export_dir, the final model is also exported as a SavedModel (amych_tf.export).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define the command-line flags (once; importing this module defines none)."""
    if "curriculum_stop" in FLAGS:
        return
    # Flags shared with amych_tf.evaluate are defined by whichever module comes first
    # (both are imported in one process by the tests).
    if "data_dir" not in FLAGS:
        flags.DEFINE_string("data_dir", None, "Prepared dataset directory (data_tools.prepare).")
    if "model_dir" not in FLAGS:
        flags.DEFINE_string("model_dir", None, "Output directory; rerunning with the same one resumes.")
    flags.DEFINE_enum("model", "prototypes", ["prototypes", "direct", "autoencoder", "apnet", "vae"],
                      "prototypes: PlayablePrototypes; direct, autoencoder, apnet: the paper's baselines; vae: the "
                      "sounds thesis' waveform VAE (--mode: with or without its bottleneck classifier) "
                      "(amych_tf.baselines).")
    flags.DEFINE_enum("vae_architecture", "convolution", ["convolution", "dilation"],
                      "--model=vae: the thesis' convolution or dilation encoder/decoder (amych_tf.baselines.vae).")
    flags.DEFINE_enum("mode", "supervised", ["supervised", "unsupervised"],
                      "Training setting of --model=prototypes (sections 3.2/3.3); baselines have their own.")
    flags.DEFINE_integer("num_prototypes", 0, "K; 0 = the number of classes.")
    flags.DEFINE_integer("batch_size", 32, "Global batch size (split over replicas).")
    if "eval_batch_size" not in FLAGS:
        flags.DEFINE_integer("eval_batch_size", 32, "Global batch size of validation/test passes.")
    flags.DEFINE_integer("train_frames", 256, "Training crop length in frames (multiple of 2^n_pools).")
    flags.DEFINE_integer("epochs", 1000, "Maximum epochs; the curriculum usually ends training first.")
    flags.DEFINE_integer("patience", 10, "Epochs without training-loss improvement that end a curriculum stage; "
                         "baselines: epochs without a better validation accuracy that end training.")
    flags.DEFINE_float("cpu_budget", 0.0, "Baselines: train until the process has used this much CPU time (s), "
                       "then stop (early stopping off; --epochs still caps). 0: early stopping by --patience.")
    flags.DEFINE_integer("refine_epochs", 0, "APNet: after training, remove redundant prototypes (the APNet "
                         "paper's section 5.2.1) and train this many more epochs (paper: 20). 0: no refinement.")
    flags.DEFINE_integer("warmup_steps", 2000, "Batches of learning-rate warm-up after each activation.")
    flags.DEFINE_float("learning_rate", 1e-4, "Base learning rate (AdamW).")
    flags.DEFINE_float("weight_decay", 1e-6, "Weight decay of the networks (0 on prototypes and beta).")
    flags.DEFINE_float("lambda_ce", 0.01, "Weight of the cross-entropy term (eq. 9, supervised).")
    flags.DEFINE_float("beta_init", -4.0, "Initial free parameter of beta = softplus(.) (paper: -4). beta learns from "
                       "the curriculum's 'ce' stage at 5x the learning rate; a short run needs a larger start.")
    flags.DEFINE_enum("prototypes_learn_from", "raw", ["raw", "gain", "pitch", "filters", "ce", "lr_decay"],
                      "Curriculum stage from which the prototypes learn; before it they keep their initial values "
                      "(real clips). 'raw' is the paper's; README, 'Hearing fidelity', has the measurements.")
    flags.DEFINE_float("blur_bins", 0.0, "Coarse-to-fine training: until the pitch stage the loss compares input and "
                       "prototypes blurred by a Gaussian of this many mel bins, annealed to 0 after the pitch warm-up "
                       "(amych_tf.callbacks.Curriculum). 0 = the paper's training.", lower_bound=0.0)
    flags.DEFINE_integer("blur_anneal_steps", 0, "Batches over which --blur_bins falls to 0.", lower_bound=0)
    flags.DEFINE_enum("curriculum_stop", None, ["raw", "gain", "pitch", "filters", "ce", "lr_decay"],
                      "Stop training when this curriculum stage plateaus (Table 1 rows). Default: all stages.")
    if "seed" not in FLAGS:  # data_tools.prepare defines it too when both are imported (tests)
        flags.DEFINE_integer("seed", 0, "Seed of initialisation, shuffling and augmentation.")
    flags.DEFINE_boolean("augment", True, "Training-time augmentation (pitch, bias, noise).")
    flags.DEFINE_integer("init_examples", 2000, "Training clips, drawn uniformly, that initialise the prototypes "
                         "(supervised: each class's medoid; unsupervised: k-means++ seeding).")
    flags.DEFINE_integer("validation_freq", 1, "Validate on full clips every N epochs.")
    flags.DEFINE_integer("checkpoint_freq", 1, "Save checkpoints/latest.weights.h5 every N epochs.", lower_bound=1)
    flags.DEFINE_string("log_freq", "epoch", "TensorBoard scalar frequency: 'epoch' or a number of batches.")
    flags.DEFINE_integer("media_freq", 5, "TensorBoard images/audio/histograms every N epochs (0 = never).")
    flags.DEFINE_integer("media_examples", 4, "Validation clips shown in TensorBoard.")
    flags.DEFINE_integer("fidelity_freq", 1, "Hearing fidelity of the validation clips (val_fine_structure_explained, "
                         "val_crispness_*, val_pitch_*) every N epochs (0 = never).", lower_bound=0)
    flags.DEFINE_boolean("jit_compile", False, "Compile the train step with XLA. Off: on 2 CPU cores the step measured "
                         "1.75 s without XLA and 2.19 s with it (benchmarks/RESULTS-train.md).")
    flags.DEFINE_list("devices", None, "Devices for MirroredStrategy, e.g. /cpu:0,/cpu:1. Default: all GPUs, else CPU.")
    if "export_dir" not in FLAGS:  # amych_tf.export defines it too when both are imported
        flags.DEFINE_string("export_dir", None, "Also export the final model as a SavedModel to "
                            "<export_dir>/<next version>/ (amych_tf.export).")
    flags.DEFINE_integer("verbose", 1, "Keras progress output: 0 silent, 1 progress bar, 2 one line per epoch.")


class FlagError(ValueError):
    """A flag value that makes the run impossible; reported as one line before any work."""


def check_flags(info_loader=None):
    """Validate flags against each other and the dataset; return the DatasetInfo."""
    from amych_tf import data

    if not FLAGS.data_dir:
        raise FlagError("--data_dir is required")
    if not FLAGS.model_dir:
        raise FlagError("--model_dir is required")
    info_path = os.path.join(FLAGS.data_dir, data.INFO_FILENAME)
    try:
        info = (info_loader or data.load_dataset_info)(FLAGS.data_dir)
    except FileNotFoundError as error:
        raise FlagError(str(error)) from None
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        # A truncated, hand-edited or foreign file: say which file, whatever failed on it.
        message = str(error) if data.INFO_FILENAME in str(error) else f"{info_path} is unusable: {error}"
        raise FlagError(message) from None
    malformed = _malformed_dataset_info(info)
    if malformed:
        raise FlagError(f"{info_path} is malformed ({malformed}); re-run data_tools.prepare")
    if os.path.isfile(os.path.join(FLAGS.model_dir, "config.json")):
        _check_resumed_run(info)
    num_prototypes = FLAGS.num_prototypes or info.num_classes
    if FLAGS.refine_epochs and FLAGS.model != "apnet":
        raise FlagError("--refine_epochs refines APNet's prototypes; it needs --model=apnet")
    if FLAGS.model != "prototypes" and FLAGS.export_dir:
        raise FlagError("--export_dir exports PlayablePrototypes only (amych_tf.export); baselines are not served")
    if FLAGS.model == "vae" and not info.waveform:  # the VAE's hook (amych_tf.baselines.vae_run)
        from amych_tf.baselines.vae_run import check_waveform_data

        try:
            check_waveform_data(info, FLAGS.data_dir)
        except ValueError as error:
            raise FlagError(str(error)) from None
    if FLAGS.model in ("direct", "apnet") and FLAGS.mode == "unsupervised":
        raise FlagError(f"--model={FLAGS.model} is a supervised baseline; --mode=unsupervised applies to prototypes")
    if FLAGS.model == "prototypes" and FLAGS.mode == "supervised" and num_prototypes < info.num_classes:
        raise FlagError(
            f"--num_prototypes={num_prototypes} is smaller than the {info.num_classes} classes of the dataset; "
            "supervised mode ties prototype k to class k"
        )
    from amych_tf.callbacks import curriculum_stages

    if FLAGS.prototypes_learn_from not in curriculum_stages(FLAGS.mode):
        raise FlagError(f"--prototypes_learn_from={FLAGS.prototypes_learn_from} is not a stage of {FLAGS.mode} "
                        f"training: {', '.join(curriculum_stages(FLAGS.mode))}")
    multiple = 2**4
    if FLAGS.train_frames < multiple or FLAGS.train_frames % multiple:
        raise FlagError(f"--train_frames={FLAGS.train_frames} must be a positive multiple of {multiple} (2^n_pools)")
    if FLAGS.batch_size < 1 or FLAGS.eval_batch_size < 1:
        raise FlagError("--batch_size and --eval_batch_size must be positive")
    if not (0 < FLAGS.learning_rate < math.inf):
        raise FlagError(f"--learning_rate must be positive and finite, got {FLAGS.learning_rate}")
    if not (0 <= FLAGS.weight_decay < math.inf):
        raise FlagError(f"--weight_decay must be >= 0 and finite, got {FLAGS.weight_decay}")
    if info.split_counts.get("train", 0) < FLAGS.batch_size:
        raise FlagError(
            f"the train split has {info.split_counts.get('train', 0)} examples, fewer than one batch "
            f"(--batch_size={FLAGS.batch_size})"
        )
    if FLAGS.log_freq != "epoch" and not FLAGS.log_freq.isdigit():
        raise FlagError(f"--log_freq must be 'epoch' or a number of batches, got {FLAGS.log_freq!r}")
    longest = None if FLAGS.model == "vae" else _longest_train_clip(FLAGS.data_dir)  # the VAE takes no crops
    if longest is not None and FLAGS.train_frames > longest:
        # Not an error: crops of clips shorter than --train_frames repeat the clip
        # (data.crop_indices), the paper's tiling of short clips; but every crop then does.
        logging.warning("--train_frames=%d is longer than every training clip (the longest has %d frames): "
                        "every crop repeats (tiles) its clip to %d frames", FLAGS.train_frames, longest,
                        FLAGS.train_frames)
    return info, num_prototypes


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


def _check_resumed_run(info) -> None:
    """A model_dir that holds a run already: its features and classes must be the dataset's."""
    from amych_tf.spectral import FeatureConfig

    with open(os.path.join(FLAGS.model_dir, "config.json"), encoding="utf-8") as f:
        previous = json.load(f)
    try:
        FeatureConfig.from_dict(previous["model"]["feature_config"]).check_compatible(
            info.features, what=f"dataset {FLAGS.data_dir} and the model in {FLAGS.model_dir}")
    except ValueError as error:
        raise FlagError(str(error)) from None
    previous_classes = previous.get("dataset", {}).get("class_names")
    if previous_classes is not None and previous_classes != info.class_names:
        raise FlagError(
            f"the run in {FLAGS.model_dir} was trained on other classes ({len(previous_classes)}) than dataset "
            f"{FLAGS.data_dir} has ({info.num_classes}); use another --model_dir")


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


def make_strategy():
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.MirroredStrategy(devices=FLAGS.devices or None)


def is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)


def worker_dir(model_dir: str, strategy) -> str:
    """Where this worker writes: model_dir for the chief, a private folder for the others."""
    if is_chief(strategy):
        return model_dir
    resolver = strategy.cluster_resolver
    return os.path.join(model_dir, "workers", f"{resolver.task_type}-{resolver.task_id}")


def train_split_range(info) -> tuple[float, float]:
    """(min, max) of the train split's log-Mel values over real frames: APNet's min-max scaling."""
    import numpy as np

    from amych_tf import data

    low, high = np.inf, -np.inf
    for features, _ in data.evaluation_dataset(FLAGS.data_dir, "train", batch_size=FLAGS.eval_batch_size, info=info):
        real = features["log_mel"].numpy()[features["mask"].numpy() > 0]
        low, high = min(low, float(real.min())), max(high, float(real.max()))
    return low, high


def compile_baseline(model, strategy) -> None:
    with strategy.scope():
        model.compile(optimizer=model.default_optimizer(FLAGS.learning_rate), jit_compile=FLAGS.jit_compile)
        # Built here, in the strategy's scope: built lazily inside fit, Keras' Adam
        # fails under MirroredStrategy with more than one replica.
        model.optimizer.build(model.trainable_variables)


def build_model(info, num_prototypes, strategy):
    import keras

    from amych_tf import baselines
    from amych_tf.model import PlayablePrototypes, optimizer_groups
    from amych_tf.optimizers import GroupedAdamW

    keras.utils.set_random_seed(FLAGS.seed)  # before the weights are created
    if FLAGS.model != "prototypes":
        extra = {}
        if FLAGS.model == "apnet":
            low, high = train_split_range(info)
            extra = {"num_frames": FLAGS.train_frames, "input_min": low, "input_max": high}
        with strategy.scope():
            model = baselines.model_class(FLAGS.model)(info.features, info.num_classes,
                                                        class_names=info.class_names, **extra)
            model.build_for_frames(FLAGS.train_frames)
        compile_baseline(model, strategy)
        return model
    with strategy.scope():
        model = PlayablePrototypes(
            info.features, num_prototypes, mode=FLAGS.mode, num_classes=info.num_classes,
            class_names=info.class_names, lambda_ce=FLAGS.lambda_ce, beta_init=FLAGS.beta_init,
        )
        model.build_for_frames(FLAGS.train_frames)
        optimizer = GroupedAdamW(optimizer_groups(FLAGS.weight_decay), learning_rate=FLAGS.learning_rate)
        model.compile(optimizer=optimizer, jit_compile=FLAGS.jit_compile)
        optimizer.build(model.trainable_variables)
    return model


def write_run_files(model_dir, model, info):
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "flags.txt"), "w", encoding="utf-8") as f:
        f.write(FLAGS.flags_into_string())
    config = {
        "model_name": FLAGS.model,
        "model": model.get_config(),
        "dataset": {"data_dir": os.path.abspath(FLAGS.data_dir), "class_names": info.class_names},
        "train": {"mode": FLAGS.mode, "train_frames": FLAGS.train_frames, "batch_size": FLAGS.batch_size},
    }
    tmp = os.path.join(model_dir, "config.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    os.replace(tmp, os.path.join(model_dir, "config.json"))


def baseline_selection_callbacks(model, info, validation_data, checkpoints: str) -> list:
    """Model selection and stopping for a baseline (amych_tf.baselines.selection).

    Classifiers keep the weights of best validation accuracy (best.weights.h5);
    clustering models (the autoencoder: best.weights.h5; APNet + K-means:
    best_clustering.weights.h5) those of best validation OA after K-means and the
    majority mapping. Training stops at --cpu_budget of process CPU time when it
    is set, else after --patience epochs without a better selection metric.
    """
    import keras

    from amych_tf import data
    from amych_tf.baselines import selection

    if validation_data is None:  # nothing to select on: the training loss decides when to stop
        return [keras.callbacks.EarlyStopping(monitor="loss", patience=FLAGS.patience)]
    result = []
    classifies = model.mode == "supervised"
    if hasattr(model, "fit_clusters"):
        splits = [data.evaluation_dataset(FLAGS.data_dir, split, batch_size=FLAGS.eval_batch_size, info=info)
                  for split in ("train", "validation")]
        name = "best_clustering" if classifies else "best"
        result.append(selection.ClusteringSelection(*splits, os.path.join(checkpoints, f"{name}.weights.h5"),
                                                    seed=FLAGS.seed))
    monitor = "val_accuracy" if classifies else selection.CLUSTER_ACCURACY
    if classifies:
        result.append(selection.BestValidation(os.path.join(checkpoints, "best.weights.h5"), monitor=monitor))
    if FLAGS.cpu_budget:
        result.append(selection.CPUBudget(FLAGS.cpu_budget))
    else:
        result.append(keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=FLAGS.patience))
    return result


def selected_epochs(selection_callbacks) -> dict:
    """{selection metric: the epoch (1-based) whose weights were kept} of baseline_selection_callbacks."""
    from amych_tf.baselines import selection

    return {callback.monitor: callback.best_epoch for callback in selection_callbacks
            if isinstance(callback, (selection.ClusteringSelection, selection.BestValidation))}


def refine_apnet(model, strategy, train_data, validation_data, info, checkpoints: str):
    """APNet's prototype refinement: best weights, remove redundant prototypes, train --refine_epochs more.

    Selection as in training (best validation accuracy; APNet + K-means on its
    own checkpoint); the refined model and its checkpoints replace the
    unrefined ones only when its best validation accuracy is higher, so
    refinement cannot lose what training selected. Returns (the model, a record
    for metrics.json).
    """
    import keras

    from amych_tf.baselines import selection

    best = os.path.join(checkpoints, "best.weights.h5")
    if os.path.exists(best):
        model.load_weights(best)
    before = model.evaluate(validation_data, verbose=0, return_dict=True)["accuracy"]
    with strategy.scope():
        refined, kept = model.refined_copy()
    compile_baseline(refined, strategy)
    refined_checkpoints = os.path.join(checkpoints, "refined")
    os.makedirs(refined_checkpoints, exist_ok=True)
    # The same selection, for exactly --refine_epochs epochs (no stopping callback).
    refine_callbacks = [callback for callback in baseline_selection_callbacks(
        refined, info, validation_data, refined_checkpoints)
        if isinstance(callback, (selection.ClusteringSelection, selection.BestValidation))]
    refined.fit(train_data, epochs=FLAGS.refine_epochs, validation_data=validation_data, shuffle=False,
                callbacks=refine_callbacks, verbose=FLAGS.verbose)
    after = next(callback for callback in refine_callbacks if isinstance(callback, selection.BestValidation)).best
    record = {"prototypes_before": model.num_prototypes_latent, "prototypes_after": len(kept),
              "epochs": FLAGS.refine_epochs, "validation_accuracy_before": float(before),
              "validation_accuracy_after": float(after), "used": bool(after > before),
              "selected_epoch": selected_epochs(refine_callbacks)}
    if not record["used"]:
        return model, record
    # APNet + K-means follows the refined model too: its clustering checkpoint must fit its shapes.
    for name in ("best", "best_clustering"):
        os.replace(os.path.join(refined_checkpoints, f"{name}.weights.h5"),
                   os.path.join(checkpoints, f"{name}.weights.h5"))
    return refined, record


def run(info, num_prototypes) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from amych_tf import callbacks, data, evaluate, initialization, resume

    if FLAGS.model == "vae":  # waveforms in, its own pipeline and metrics (amych_tf.baselines.vae_run)
        from amych_tf.baselines import vae_run

        return vae_run.train(info)

    strategy = make_strategy()
    out_dir = worker_dir(FLAGS.model_dir, strategy)
    strategy_name = ("MultiWorkerMirroredStrategy" if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
                     else type(strategy).__name__)
    logging.info("%s with %d replica(s); writing to %s", strategy_name, strategy.num_replicas_in_sync, out_dir)
    if FLAGS.batch_size % strategy.num_replicas_in_sync:
        raise FlagError(f"--batch_size={FLAGS.batch_size} is not divisible by "
                        f"{strategy.num_replicas_in_sync} replicas")
    model = build_model(info, num_prototypes, strategy)
    write_run_files(out_dir, model, info)

    train_data = data.distributed_training_dataset(
        strategy, FLAGS.data_dir, global_batch_size=FLAGS.batch_size, train_frames=FLAGS.train_frames,
        seed=FLAGS.seed, augment=FLAGS.augment, info=info)
    validation_data = None
    if info.split_counts.get("validation", 0):
        validation_data = data.distributed_evaluation_dataset(
            strategy, FLAGS.data_dir, "validation", global_batch_size=FLAGS.eval_batch_size, info=info)

    playable = FLAGS.model == "prototypes"
    train_split = data.evaluation_dataset(FLAGS.data_dir, "train", batch_size=FLAGS.eval_batch_size, info=info)
    if playable:
        initialization.initialise_prototypes(model, train_split, max_examples=FLAGS.init_examples, seed=FLAGS.seed)

    checkpoints = os.path.join(out_dir, "checkpoints")
    os.makedirs(checkpoints, exist_ok=True)
    # Order matters at epoch end: the curriculum and reassignment change the model
    # before the checkpoints and the backup (last) save it.
    run_callbacks = [callbacks.NonFiniteGuard()]
    baseline_selection = None if playable else baseline_selection_callbacks(model, info, validation_data,
                                                                           checkpoints)
    if playable and validation_data is not None and FLAGS.fidelity_freq > 0:
        run_callbacks.append(callbacks.FidelityMetrics(
            data.evaluation_dataset(FLAGS.data_dir, "validation", batch_size=FLAGS.eval_batch_size, info=info,
                                    with_metadata=True),
            evaluate.class_average_spectra(FLAGS.data_dir, info, FLAGS.eval_batch_size), FLAGS.fidelity_freq))
    if playable:
        run_callbacks.append(callbacks.Curriculum(
            FLAGS.mode, FLAGS.learning_rate, patience=FLAGS.patience, warmup_steps=FLAGS.warmup_steps,
            stop_stage=FLAGS.curriculum_stop, checkpoint_dir=checkpoints, prototypes_from=FLAGS.prototypes_learn_from,
            blur_bins=FLAGS.blur_bins, blur_anneal_steps=FLAGS.blur_anneal_steps))
        if FLAGS.mode == "unsupervised":
            run_callbacks.append(callbacks.Reassignment(seed=FLAGS.seed))
    else:
        run_callbacks += baseline_selection
    if playable:
        run_callbacks.append(callbacks.TrainingScalars(os.path.join(out_dir, "logs", "train")))
    run_callbacks += [
        keras.callbacks.TensorBoard(
            os.path.join(out_dir, "logs"),
            update_freq="epoch" if FLAGS.log_freq == "epoch" else int(FLAGS.log_freq)),
        keras.callbacks.ModelCheckpoint(
            os.path.join(checkpoints, "latest.weights.h5"), save_weights_only=True,
            save_freq=FLAGS.checkpoint_freq * data.steps_per_epoch(info, "train", FLAGS.batch_size)),
    ]
    if validation_data is not None and playable:
        run_callbacks.append(keras.callbacks.ModelCheckpoint(
            os.path.join(checkpoints, "best.weights.h5"), save_weights_only=True, save_best_only=True,
            monitor="val_loss", mode="min"))
        if FLAGS.media_freq > 0:
            media_data = data.evaluation_dataset(FLAGS.data_dir, "validation", batch_size=FLAGS.eval_batch_size,
                                                 info=info)
            run_callbacks.append(callbacks.TensorBoardMedia(
                os.path.join(out_dir, "logs", "media"), media_data, info, every_epochs=FLAGS.media_freq,
                num_examples=FLAGS.media_examples))

    from amych_tf.baselines import selection

    backup = resume.TrainingBackup(os.path.join(out_dir, "backup"), tracked=[
        callback for callback in run_callbacks
        if isinstance(callback, (keras.callbacks.ModelCheckpoint, keras.callbacks.EarlyStopping,
                                 selection.ClusteringSelection, selection.BestValidation))])
    run_callbacks.append(backup)

    start = time.time()
    history = model.fit(train_data, epochs=FLAGS.epochs, validation_data=validation_data, shuffle=False,
                        validation_freq=FLAGS.validation_freq, callbacks=run_callbacks, verbose=FLAGS.verbose)
    train_seconds = time.time() - start
    budget = {"max_epochs": FLAGS.epochs, "epochs_run": len(history.history.get("loss", [])),
              "cpu_seconds_at_end_of_training": round(time.process_time(), 1)}
    if playable:
        budget["curriculum_patience"] = FLAGS.patience
    elif FLAGS.cpu_budget:
        budget["cpu_budget_seconds"] = FLAGS.cpu_budget
    else:
        budget["patience"] = FLAGS.patience

    best = os.path.join(checkpoints, "best.weights.h5")
    best_clustering = os.path.join(checkpoints, "best_clustering.weights.h5")
    if not playable:
        budget["selected_epoch"] = selected_epochs(baseline_selection)
    if FLAGS.refine_epochs:
        model, budget["refinement"] = refine_apnet(model, strategy, train_data, validation_data, info, checkpoints)
        write_run_files(out_dir, model, info)  # config.json must describe the model the checkpoints hold
    if os.path.exists(best):
        model.load_weights(best)
    if hasattr(model, "fit_clusters") and not os.path.exists(best if model.mode == "unsupervised" else best_clustering):
        # No validation split to select on: K-means on the train split's embeddings of the
        # final model, stored in the model's weights (best and latest checkpoints).
        from amych_tf.baselines.selection import embeddings_and_labels

        model.fit_clusters(embeddings_and_labels(model, train_split)[0], seed=FLAGS.seed)
        for name in ("best", "latest"):
            model.save_weights(os.path.join(checkpoints, f"{name}.weights.h5"))
    summary = evaluate.evaluate_model(model, FLAGS.data_dir, "test", FLAGS.eval_batch_size, info=info)
    summary.update(train_seconds=round(train_seconds, 1), checkpoint="best" if os.path.exists(best) else "last",
                   num_parameters=int(model.count_params()), budget=budget)
    if playable:
        summary["curriculum_stage"] = callbacks.curriculum_stages(FLAGS.mode)[int(model.curriculum_state.numpy()[0])]
    elif hasattr(model, "fit_clusters") and model.mode == "supervised":  # apnet: also APNet + K-means
        if os.path.exists(best_clustering):
            model.load_weights(best_clustering)
        clusters = evaluate.evaluate_model(model, FLAGS.data_dir, "test", FLAGS.eval_batch_size, info=info,
                                           clustering=True)
        summary["clustering"] = {key: clusters[key] for key in (
            "overall_accuracy", "average_accuracy", "per_class_accuracy", "prototype_classes", "unused_prototypes")}
        summary["clustering"]["checkpoint"] = "best_clustering" if os.path.exists(best_clustering) else "best"
        if os.path.exists(best):
            model.load_weights(best)
    evaluate.write_report(summary, os.path.join(out_dir, "metrics.json"), info.class_names)
    backup.discard()  # kept until now: a kill during the evaluation resumes after training
    print(f"{evaluate.summary_line(summary)}, trained {train_seconds:.0f} s")
    if FLAGS.export_dir and is_chief(strategy) and playable:
        from amych_tf import export

        classes = summary.get("prototype_classes")  # the unsupervised mapping evaluate just computed
        path = export.export_model(
            model, FLAGS.export_dir, classes=classes,
            source={"model_dir": os.path.abspath(FLAGS.model_dir), "checkpoint": summary["checkpoint"]})
        print(f"exported {path}")
    return summary


def main(argv):
    del argv
    try:
        info, num_prototypes = check_flags()
        run(info, num_prototypes)
    except FlagError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except Exception as error:  # noqa: BLE001 - one readable line for known failure kinds
        from amych_tf.callbacks import NonFiniteLossError

        if isinstance(error, NonFiniteLossError):
            print(f"error: {error} {_non_finite_data_report(info)}", file=sys.stderr)
            sys.exit(3)
        raise


def _non_finite_data_report(info, shown: int = 5) -> str:
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
            records = tf.data.TFRecordDataset(info.shard_paths(FLAGS.data_dir, split))
            for paths, finite in records.map(is_finite).batch(256).as_numpy_iterator():
                found += [f"{path.decode()} ({split})" for path in paths[~finite]]
    if not found:
        return "Every stored log-Mel is finite: the optimisation diverged (lower --learning_rate)."
    more = f" and {len(found) - shown} more" if len(found) > shown else ""
    return (f"{len(found)} stored example(s) have NaN or Inf log-Mel values: {', '.join(found[:shown])}{more}; "
            "prepare the dataset again (data_tools.prepare refuses non-finite audio).")


def console_main():
    define_flags()
    app.run(main)


if __name__ == "__main__":
    console_main()
