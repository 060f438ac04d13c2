r"""Train a model on a prepared dataset.

    python -m amych_tf.train --flagfile=configs/demo.cfg
    python -m amych_tf.train --data_dir=DIR --model_dir=DIR --mode=unsupervised

One flag per field of `amych_tf.training.config.TrainConfig` (its name, default,
help and bounds); the options are checked before any work (one `error:` line,
exit status 2), a non-finite loss stops training with exit status 3. The run
directory's layout: amych_tf.rundir. The loop: amych_tf.training.trainer.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from amych_tf.cli.common import FLAGS, fail
from amych_tf.training.config import ConfigError, TrainConfig

_DEFINE = {"string": flags.DEFINE_string, "integer": flags.DEFINE_integer, "float": flags.DEFINE_float,
           "boolean": flags.DEFINE_boolean, "list": flags.DEFINE_list}


def define_flags(flag_values=FLAGS) -> None:
    """One flag per TrainConfig field (once; importing this module defines none). A flag another command
    of the same process defined already (--data_dir, --seed of data_tools.prepare, ...) is shared."""
    if "curriculum_stop" in flag_values:
        return
    for field in dataclasses.fields(TrainConfig):
        if field.name in flag_values:
            continue
        options = field.metadata
        bounds = {"lower_bound": options["lower_bound"]} if "lower_bound" in options else {}
        if options["flag"] == "enum":
            flags.DEFINE_enum(field.name, field.default, list(options["enum_values"]), options["help"],
                              flag_values=flag_values)
        else:
            _DEFINE[options["flag"]](field.name, field.default, options["help"], flag_values=flag_values, **bounds)


def config_from_flags(flag_values=FLAGS) -> TrainConfig:
    return TrainConfig(**{field.name: flag_values[field.name].value for field in dataclasses.fields(TrainConfig)})


def main(argv):
    del argv
    from amych_tf.training import trainer

    config, info = config_from_flags(), None
    try:
        info = trainer.check(config)
        trainer.train(config, info, flags_text=FLAGS.flags_into_string())
    except ConfigError as error:
        fail(error)
    except Exception as error:  # noqa: BLE001 - one readable line for known failure kinds
        from amych_tf.training.callbacks import NonFiniteLossError

        if isinstance(error, NonFiniteLossError):
            fail(f"{error} {trainer.non_finite_data_report(config.data_dir, info)}", status=3)
        raise


def console_main():
    define_flags()
    app.run(main)
