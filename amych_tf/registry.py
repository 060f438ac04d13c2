"""The models `--model=NAME` names, and loading a trained one from its run directory.

To add a model: write a registered-serializable keras.Model deriving
`model.PrebuiltModel` (hence `contract.ModelContract`), set its `registry_name`
and capabilities, and add a line to `MODELS` (and to `PIPELINES` when it reads
waveforms). Classes are imported when asked
for, so listing the names (flag definitions, --help) imports no TensorFlow.
"""

from __future__ import annotations

import importlib

from amych_tf.rundir import RunDir

# name -> (module, class)
MODELS = {
    "prototypes": ("amych_tf.model", "PlayablePrototypes"),
    "direct": ("amych_tf.baselines.direct", "DirectClassifier"),
    "autoencoder": ("amych_tf.baselines.autoencoder", "ConvAutoencoder"),
    "apnet": ("amych_tf.baselines.apnet", "APNet"),
    "vae": ("amych_tf.baselines.vae", "WaveformVAE"),
}
# The modules of the models whose data, training, metrics and listening are their own
# (`reads_waveforms`; contract.py lists what such a module offers).
PIPELINES = {"vae": "amych_tf.baselines.vae_run"}
DEFAULT_MODEL = "prototypes"


def names() -> tuple[str, ...]:
    return tuple(MODELS)


def model_class(name: str):
    """The class of --model=name."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {names()}")
    module, attribute = MODELS[name]
    return getattr(importlib.import_module(module), attribute)


def pipeline(name: str):
    """The pipeline module of a `reads_waveforms` model."""
    return importlib.import_module(PIPELINES[name])


def load_model(model_dir: str, checkpoint: str | None = None):
    """The model of a training run with the weights of `checkpoint` (`RunDir.resolve_checkpoint`: best,
    latest, stage-<i>-<name> or a file); returns (model, config.json as a dict). RunDirError if either is missing."""
    run_dir = RunDir(model_dir)
    config = run_dir.read_config()
    model = model_class(config.get("model_name", DEFAULT_MODEL)).from_config(config["model"])
    model.build_for_frames()
    model.load_weights(run_dir.resolve_checkpoint(checkpoint))
    return model, config
