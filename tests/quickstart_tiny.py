"""The tiny quickstart the tests run (seconds, not minutes): one epoch on a few hundred images, no workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from traitlens.quickstart import QuickstartConfig


def tiny_quickstart_config(out: Path, **overrides: Any) -> QuickstartConfig:
    """A `QuickstartConfig` writing to `out` that runs in seconds; `overrides` replace fields.

    Defaults: 256 / 64 / 64 images, 1 epoch, 1 explained image, no leaderboard or same-model table, the
    by-design models (when asked for) on 64 images for 1 epoch.
    """
    fields: dict[str, Any] = dict(out=out, n_train=256, n_val=64, n_test=64, epochs=1, n_explain=1,
                                  interpretable_train=64, interpretable_epochs=1, leaderboard_images=0,
                                  same_model_images=0, atlas_per_class=0, num_workers=0,
                                  progress=False)
    fields.update(overrides)
    return QuickstartConfig(**fields)
