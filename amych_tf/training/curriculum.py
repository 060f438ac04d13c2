"""The curriculum's stages (paper section 3.4; docs/DESIGN.md, section 2.4), in one table.

    raw prototypes -> + gain -> + pitch -> + filters -> (supervised: + CE, beta learns) -> learning rate / 10

`callbacks.Curriculum` moves a model through them, `reporting` names Table 1's rows
after them, listening and the listening page label the stage checkpoints with them,
and the command line's stage flags (--curriculum_stop, --prototypes_learn_from)
choose among them.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Stage:
    """One curriculum stage.

    name: its identifier (flags, checkpoint file names `stage-<i>-<name>.weights.h5`);
    row: its row in the paper's Table 1;
    transformations: the transformations (`transforms.SpectralTransform` gates) it switches on;
    decoder: the decoder that starts learning (and warms up) with it, or None;
    supervised_only: a stage of supervised training only.
    """

    name: str
    row: str
    transformations: tuple[str, ...] = ()
    decoder: str | None = None
    supervised_only: bool = False


STAGES = (
    Stage("raw", "raw prototypes"),
    Stage("gain", "+ gain", ("gain",), "gain_decoder"),
    Stage("pitch", "+ pitch", ("pitch",), "pitch_decoder"),
    Stage("filters", "+ filters", ("low", "high"), "filters_decoder"),
    Stage("ce", "+ CE (beta learns)", supervised_only=True),
    Stage("lr_decay", "+ learning rate / 10"),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)
ROW_NAMES = {stage.name: stage.row for stage in STAGES}
TRANSFORMATION_STAGES = {stage.name: stage.transformations for stage in STAGES if stage.transformations}
DECODER_OF_STAGE = {stage.name: stage.decoder for stage in STAGES if stage.decoder}

# The learning-rate scale a new decoder and the encoder start their warm-up from.
WARMUP_START = 1e-3
# beta learns at this multiple of the base learning rate from the "ce" stage on (the authors').
BETA_LEARNING_RATE_SCALE = 5.0
# The learning-rate stage waits this many times --patience (the authors').
LAST_STAGE_PATIENCE_FACTOR = 2
# Layout of the model's `curriculum_state` weight.
STAGE, WAIT, BEST, WARMUP = range(4)


def stages(mode: str) -> tuple[str, ...]:
    """The stage names of a training mode ("supervised" or "unsupervised"), in order."""
    return tuple(stage.name for stage in STAGES if mode == "supervised" or not stage.supervised_only)


def row_name(stage: str) -> str:
    """Table 1's row of a stage (the name itself for a stage this table does not know)."""
    return ROW_NAMES.get(stage, stage)
