"""The options of a training run, typed and checked in one place: `TrainConfig`.

`amych_tf.cli.train` defines one flag per field (name, default, help and bounds
come from here) and builds the config from the parsed flags; Python callers
build it directly. `check` validates the fields against each other,
`check_dataset` against the dataset, each raising `ConfigError` with a message
that names the option. Training saves the config in the run's config.json
("train"), and evaluation, listening, export and the report read it back with
`read_train_config` instead of parsing flag files.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from amych_tf import registry
from amych_tf.contract import MODES
from amych_tf.training import curriculum

# Crops must be a multiple of the encoder's pooling factor, 2^n_pools.
FRAME_MULTIPLE = 2**4


class ConfigError(ValueError):
    """Options that make the run impossible; reported as one line before any work."""


def _option(default, kind: str, help: str, **flag_arguments) -> Any:
    """A field with what its command-line flag needs: absl's DEFINE_<kind>, help, enum values, bounds."""
    return dataclasses.field(default=default, metadata={"flag": kind, "help": help, **flag_arguments})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every option of `amych_tf.training.trainer.train`; field names are the flag names."""

    data_dir: str | None = _option(None, "string", "Prepared dataset directory (data_tools.prepare).")
    model_dir: str | None = _option(None, "string", "Output directory; rerunning with the same one resumes.")
    model: str = _option(registry.DEFAULT_MODEL, "enum",
                         "prototypes: PlayablePrototypes; direct, autoencoder, apnet: the paper's baselines; vae: the "
                         "sounds thesis' waveform VAE (--mode: with or without its bottleneck classifier) "
                         "(amych_tf.baselines).", enum_values=registry.names())
    # The choices are amych_tf.baselines.vae.ARCHITECTURES (not imported here: it needs TensorFlow).
    vae_architecture: str = _option("convolution", "enum", "--model=vae: the thesis' convolution or dilation "
                                    "encoder/decoder (amych_tf.baselines.vae).",
                                    enum_values=("convolution", "dilation"))
    mode: str = _option("supervised", "enum", "Training setting of --model=prototypes (sections 3.2/3.3); "
                        "baselines have their own.", enum_values=MODES)
    num_prototypes: int = _option(0, "integer", "K; 0 = the number of classes.")
    batch_size: int = _option(32, "integer", "Global batch size (split over replicas).")
    eval_batch_size: int = _option(32, "integer", "Global batch size of validation/test passes.")
    train_frames: int = _option(256, "integer", "Training crop length in frames (multiple of 2^n_pools).")
    epochs: int = _option(1000, "integer", "Maximum epochs; the curriculum usually ends training first.")
    patience: int = _option(10, "integer", "Epochs without training-loss improvement that end a curriculum stage; "
                            "baselines: epochs without a better validation accuracy that end training.")
    cpu_budget: float = _option(0.0, "float", "Baselines: train until the process has used this much CPU time (s), "
                                "then stop (early stopping off; --epochs still caps). 0: early stopping by "
                                "--patience.")
    refine_epochs: int = _option(0, "integer", "APNet: after training, remove redundant prototypes (the APNet "
                                 "paper's section 5.2.1) and train this many more epochs (paper: 20). 0: no "
                                 "refinement.")
    lr_plateau_patience: int = _option(0, "integer", "Baselines: multiply the learning rate by --lr_plateau_factor "
                                       "after this many validations without a better selection metric "
                                       "(keras.callbacks.ReduceLROnPlateau; down to 1/100 of --learning_rate). 0: "
                                       "a constant learning rate.", lower_bound=0)
    lr_plateau_factor: float = _option(0.5, "float", "Factor of each --lr_plateau_patience reduction.")
    warmup_steps: int = _option(2000, "integer", "Batches of learning-rate warm-up after each activation.")
    learning_rate: float = _option(1e-4, "float", "Base learning rate (AdamW).")
    weight_decay: float = _option(1e-6, "float", "Weight decay of the networks (0 on prototypes and beta).")
    lambda_ce: float = _option(0.01, "float", "Weight of the cross-entropy term (eq. 9, supervised).")
    beta_init: float = _option(-4.0, "float", "Initial free parameter of beta = softplus(.) (paper: -4). beta learns "
                               "from the curriculum's 'ce' stage at 5x the learning rate; a short run needs a larger "
                               "start.")
    prototypes_learn_from: str = _option(
        "raw", "enum", "Curriculum stage from which the prototypes learn; before it they keep their initial values "
        "(real clips). 'raw' is the paper's; README, 'Hearing fidelity', has the measurements.",
        enum_values=curriculum.STAGE_NAMES)
    blur_bins: float = _option(0.0, "float", "Coarse-to-fine training: until the pitch stage the loss compares input "
                               "and prototypes blurred by a Gaussian of this many mel bins, annealed to 0 after the "
                               "pitch warm-up (amych_tf.training.callbacks.Curriculum). 0 = the paper's training.",
                               lower_bound=0.0)
    blur_anneal_steps: int = _option(0, "integer", "Batches over which --blur_bins falls to 0.", lower_bound=0)
    curriculum_stop: str | None = _option(None, "enum", "Stop training when this curriculum stage plateaus (Table 1 "
                                          "rows). Default: all stages.", enum_values=curriculum.STAGE_NAMES)
    seed: int = _option(0, "integer", "Seed of initialisation, shuffling and augmentation.")
    augment: bool = _option(True, "boolean", "Training-time augmentation (pitch, bias, noise; --model=vae: "
                          "polarity, amych_tf.baselines.vae.augment_waveform).")
    init_examples: int = _option(2000, "integer", "Training clips, drawn uniformly, that initialise the prototypes "
                                 "(supervised: each class's medoid; unsupervised: k-means++ seeding).")
    validation_freq: int = _option(1, "integer", "Validate on full clips every N epochs.")
    checkpoint_freq: int = _option(1, "integer", "Save checkpoints/latest.weights.h5 every N epochs.", lower_bound=1)
    log_freq: str = _option("epoch", "string", "TensorBoard scalar frequency: 'epoch' or a number of batches.")
    media_freq: int = _option(5, "integer", "TensorBoard images/audio/histograms every N epochs (0 = never).")
    media_examples: int = _option(4, "integer", "Validation clips shown in TensorBoard.")
    fidelity_freq: int = _option(1, "integer", "Hearing fidelity of the validation clips "
                                 "(val_fine_structure_explained, val_crispness_*, val_pitch_*) every N epochs "
                                 "(0 = never).", lower_bound=0)
    jit_compile: bool = _option(False, "boolean", "Compile the train step with XLA. Off: on 2 CPU cores the step "
                                "measured 1.75 s without XLA and 2.19 s with it (benchmarks/RESULTS-train.md).")
    devices: tuple[str, ...] | None = _option(None, "list", "Devices for MirroredStrategy, e.g. /cpu:0,/cpu:1. "
                                              "Default: all GPUs, else CPU.")
    export_dir: str | None = _option(None, "string", "Also export the final model as a SavedModel to "
                                     "<export_dir>/<next version>/ (amych_tf.serving).")
    verbose: int = _option(1, "integer", "Keras progress output: 0 silent, 1 progress bar, 2 one line per epoch.")

    def __post_init__(self):
        if self.devices is not None:  # a list from flags or JSON; a tuple keeps the config hashable
            object.__setattr__(self, "devices", tuple(self.devices))

    @property
    def model_class(self):
        return registry.model_class(self.model)

    @property
    def log_update_freq(self) -> str | int:
        """Keras TensorBoard's update_freq of --log_freq."""
        return "epoch" if self.log_freq == "epoch" else int(self.log_freq)

    def check(self) -> None:
        """Options inconsistent with each other: ConfigError naming the option."""
        if not self.data_dir:
            raise ConfigError("--data_dir is required")
        if not self.model_dir:
            raise ConfigError("--model_dir is required")
        if self.model not in registry.names():
            raise ConfigError(f"--model={self.model} is not one of {', '.join(registry.names())}")
        model_class = self.model_class
        if self.refine_epochs and not model_class.refinable:
            raise ConfigError("--refine_epochs refines APNet's prototypes; it needs --model=apnet")
        if self.lr_plateau_patience and model_class.playable:
            raise ConfigError("--lr_plateau_patience applies to the baselines; PlayablePrototypes' learning rate "
                              "follows its curriculum (warm-ups)")
        if not 0 < self.lr_plateau_factor < 1:
            raise ConfigError(f"--lr_plateau_factor must be in (0, 1), got {self.lr_plateau_factor}")
        if self.export_dir and not model_class.exportable:
            raise ConfigError("--export_dir exports PlayablePrototypes only (amych_tf.serving); baselines are not "
                              "served")
        if self.mode not in model_class.modes:
            raise ConfigError(f"--model={self.model} is a supervised baseline; --mode={self.mode} applies to "
                              "prototypes")
        stages = curriculum.stages(self.mode)
        if self.prototypes_learn_from not in stages:
            raise ConfigError(f"--prototypes_learn_from={self.prototypes_learn_from} is not a stage of {self.mode} "
                              f"training: {', '.join(stages)}")
        if self.curriculum_stop is not None and self.curriculum_stop not in stages:
            raise ConfigError(f"--curriculum_stop={self.curriculum_stop} is not a stage of {self.mode} training: "
                              f"{', '.join(stages)}")
        if self.train_frames < FRAME_MULTIPLE or self.train_frames % FRAME_MULTIPLE:
            raise ConfigError(f"--train_frames={self.train_frames} must be a positive multiple of {FRAME_MULTIPLE} "
                              "(2^n_pools)")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("--batch_size and --eval_batch_size must be positive")
        if not (0 < self.learning_rate < math.inf):
            raise ConfigError(f"--learning_rate must be positive and finite, got {self.learning_rate}")
        if not (0 <= self.weight_decay < math.inf):
            raise ConfigError(f"--weight_decay must be >= 0 and finite, got {self.weight_decay}")
        if self.log_freq != "epoch" and not self.log_freq.isdigit():
            raise ConfigError(f"--log_freq must be 'epoch' or a number of batches, got {self.log_freq!r}")
        for field in dataclasses.fields(self):
            bound = field.metadata.get("lower_bound")
            if bound is not None and getattr(self, field.name) < bound:
                raise ConfigError(f"--{field.name} must be >= {bound}, got {getattr(self, field.name)}")

    def check_dataset(self, info) -> None:
        """Options the dataset (a data.DatasetInfo) cannot serve: ConfigError naming the option."""
        num_prototypes = self.num_prototypes or info.num_classes
        if self.model_class.playable and self.mode == "supervised" and num_prototypes < info.num_classes:
            raise ConfigError(
                f"--num_prototypes={num_prototypes} is smaller than the {info.num_classes} classes of the dataset; "
                "supervised mode ties prototype k to class k")
        if info.split_counts.get("train", 0) < self.batch_size:
            raise ConfigError(
                f"the train split has {info.split_counts.get('train', 0)} examples, fewer than one batch "
                f"(--batch_size={self.batch_size})")

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["devices"] = list(self.devices) if self.devices is not None else None
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """From `to_dict`'s output; unknown keys are an error, missing ones take their defaults."""
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown training options {unknown}")
        return cls(**values)


def read_train_config(config_json: dict) -> TrainConfig:
    """The TrainConfig of a run from its config.json (`rundir.RunDir.read_config`).

    Runs written before the whole config was saved there have only mode,
    train_frames and batch_size under "train": the other options take their
    defaults, the data and the model come from "dataset" and "model_name".
    """
    train = dict(config_json.get("train", {}))
    train.setdefault("data_dir", config_json.get("dataset", {}).get("data_dir"))
    train.setdefault("model", config_json.get("model_name", registry.DEFAULT_MODEL))
    return TrainConfig.from_dict(train)
