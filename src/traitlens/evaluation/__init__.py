"""Evaluation: score explanation methods over datasets (`evaluate`), the TraitShapes leaderboard, the same-model
table, "why A, not B" contrast maps and trait reports (api.md `tl.evaluate`; metrics.md; datasets.md "TraitShapes")."""

from traitlens.evaluation.atlas import Atlas, ClassAtlas, ConfusedPair, Exemplar, atlas, confused_pairs, part_evidence
from traitlens.evaluation.atlas_state import AtlasResumeError
from traitlens.evaluation.cli import DEFAULT_METRICS, cli_evaluate, open_dataset
from traitlens.evaluation.contrast import ContrastScores, contrast_explanation, score_contrast
from traitlens.evaluation.evaluate import MASK_SOURCES, TARGETS, EvalResults, bootstrap_ci, evaluate, model_fingerprint
from traitlens.evaluation.leaderboard import (
    COLUMNS,
    OTHER_SOURCE_COLOUR,
    PEER_METHODS,
    SOURCE_COLOURS,
    Leaderboard,
    leaderboard,
    leaderboard_small,
    leaderboard_table,
    list_peer_methods,
    peer_explainer,
)
from traitlens.evaluation.lsc import LSC_RULES, least_similar_classes, lsc_targets
from traitlens.evaluation.same_model import SameModelRow, SameModelTable, same_model_rows, same_model_table
from traitlens.evaluation.trait_report import TraitReport, part_disks, trait_report

__all__ = [
    "COLUMNS",
    "DEFAULT_METRICS",
    "LSC_RULES",
    "MASK_SOURCES",
    "OTHER_SOURCE_COLOUR",
    "PEER_METHODS",
    "SOURCE_COLOURS",
    "TARGETS",
    "Atlas",
    "AtlasResumeError",
    "ClassAtlas",
    "ConfusedPair",
    "ContrastScores",
    "EvalResults",
    "Exemplar",
    "Leaderboard",
    "SameModelRow",
    "SameModelTable",
    "TraitReport",
    "atlas",
    "bootstrap_ci",
    "cli_evaluate",
    "confused_pairs",
    "contrast_explanation",
    "evaluate",
    "leaderboard",
    "leaderboard_small",
    "leaderboard_table",
    "least_similar_classes",
    "list_peer_methods",
    "lsc_targets",
    "model_fingerprint",
    "open_dataset",
    "part_disks",
    "part_evidence",
    "peer_explainer",
    "same_model_rows",
    "same_model_table",
    "score_contrast",
    "trait_report",
]
