"""Faithfulness by perturbation (metrics.md §1), one module per family, all importable from here:
RISE deletion/insertion (`rise_curves`), MoRF/LeRF AOPC with the 'samek' and 'chefer' presets (`aopc_curves`),
ABPC with 'agcam' and 'iba' (`abpc_curves`), ROAD (`remove_and_debias`, imputation in `traitlens.ops.imputation`)
and agreement with token ablation (`token_ablation`).
"""

from traitlens.metrics.abpc_curves import ABPC_PRESETS, abpc
from traitlens.metrics.aopc_curves import (
    AOPC_PRESETS,
    aopc,
    aopc_lerf,
    aopc_morf,
    chefer_negative,
    chefer_perturbation,
    chefer_positive,
)
from traitlens.metrics.remove_and_debias import road
from traitlens.metrics.rise_curves import deletion, insertion
from traitlens.metrics.token_ablation import tam_agreement
from traitlens.ops.imputation import noisy_linear_impute

__all__ = [
    "ABPC_PRESETS",
    "AOPC_PRESETS",
    "abpc",
    "aopc",
    "aopc_lerf",
    "aopc_morf",
    "chefer_negative",
    "chefer_perturbation",
    "chefer_positive",
    "deletion",
    "insertion",
    "noisy_linear_impute",
    "road",
    "tam_agreement",
]
