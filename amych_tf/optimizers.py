"""AdamW with parameter groups: one learning-rate scale and weight decay per group.

The paper's training needs per-group learning rates that change during
training: beta learns at 5x the base rate, a decoder does not learn before its
curriculum stage, and at each activation the new decoder and the encoder warm
up from 0.001x. Keras optimizers have one learning rate, so `GroupedAdamW`
multiplies it, per variable, by its group's scale (a variable of the
optimizer: saved with checkpoints, set by callbacks between steps without
retracing) and applies decoupled weight decay with the group's own rate (and
the scaled learning rate, so a group at scale 0 neither learns nor decays).

Groups are matched by regular expression on `variable.path`; every trainable
variable must match exactly one group.

Adam's bias correction uses the optimizer's global step, as in Keras: a group
that starts learning late starts with zero moments, which the warm-up covers.
"""

from __future__ import annotations

import re
from typing import Sequence

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="amych_tf")
class GroupedAdamW(keras.optimizers.Adam):
    """Adam with decoupled weight decay and a learning-rate scale per group of variables.

    Args:
      groups: sequence of (name, path_regex, weight_decay, initial_scale).
      other arguments as keras.optimizers.Adam.
    """

    def __init__(self, groups: Sequence[Sequence], learning_rate=1e-4, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.groups = [(str(n), str(p), float(wd), float(s)) for n, p, wd, s in groups]
        self.group_names = [g[0] for g in self.groups]
        if len(set(self.group_names)) != len(self.group_names):
            raise ValueError(f"Group names must be unique, got {self.group_names}")
        self._group_index = {}

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.group_scales = self.add_variable(
            shape=(len(self.groups),), initializer="zeros", dtype="float32", name="group_scales"
        )
        self.group_scales.assign(np.array([g[3] for g in self.groups], np.float32))
        for variable in var_list:
            matches = [i for i, (_, pattern, _, _) in enumerate(self.groups) if re.search(pattern, variable.path)]
            if len(matches) != 1:
                raise ValueError(
                    f"Variable {variable.path!r} matches {len(matches)} optimizer groups "
                    f"({[self.group_names[i] for i in matches]}); it must match exactly one"
                )
            self._group_index[self._var_key(variable)] = matches[0]

    def group_of(self, variable) -> str:
        return self.group_names[self._group_index[self._var_key(variable)]]

    def set_group_scale(self, name: str, scale: float) -> None:
        values = np.array(self.group_scales.numpy())
        values[self.group_names.index(name)] = scale
        self.group_scales.assign(values)

    def get_group_scale(self, name: str) -> float:
        return float(self.group_scales.numpy()[self.group_names.index(name)])

    def moments(self, variable):
        """Adam's first and second moment variables of `variable`."""
        index = self._get_variable_index(variable)
        return self._momentums[index], self._velocities[index]

    def update_step(self, gradient, variable, learning_rate):
        group = self._group_index[self._var_key(variable)]
        lr = keras.ops.cast(learning_rate, variable.dtype) * keras.ops.cast(self.group_scales[group], variable.dtype)
        weight_decay = self.groups[group][2]
        if weight_decay:
            self.assign_sub(variable, variable * (weight_decay * lr))
        super().update_step(gradient, variable, lr)

    def get_config(self):
        return {**super().get_config(), "groups": [list(g) for g in self.groups]}
