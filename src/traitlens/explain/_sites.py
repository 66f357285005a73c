"""The last ViT block of a "prompted_vit" model (Prompt-CAM), where CDAM and Grad-CAM-ViT read it.

For a timm ViT the last-block methods use the trunk split (`backbones.trunk`). A prompted ViT puts Q class tokens
in front of the backbone's tokens and reads logit c from token c after the last block (models.md §1.2), so the same
methods run on it through a `LastBlock`: the tokens entering the block (no grad), the block → scorer function, and
the offset Q of the backbone's own tokens. The maths of each method is unchanged; only where the tokens come from
and where the logits are read differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn as nn

from traitlens.backbones.introspect import ViTLayout
from traitlens.backbones.protocols import ViTBlock, as_vit
from traitlens.explain._compat import PromptedViT, prompted_backbone

__all__ = ["LastBlock", "prompted_site"]


@dataclass(frozen=True)
class LastBlock:
    """A model's last ViT block as the last-block methods see it.

    Attributes:
        vit: the timm ViT whose `blocks[-1]` is hooked (`AttentionProbe` target).
        num_queries: Q, the class tokens in front of the ViT's prefix tokens; token c is logit c's read-out.
        trunk: images → tokens entering the last block [B, Q+n_p+P, D], computed without grad.
        head: those tokens → logits [B, C], with grad as enabled.
    """

    vit: nn.Module
    num_queries: int
    trunk: Callable[[torch.Tensor], torch.Tensor]
    head: Callable[[torch.Tensor], torch.Tensor]

    @property
    def block(self) -> ViTBlock:
        """The last block."""
        return as_vit(self.vit).blocks[-1]

    def patch_start(self, layout: ViTLayout) -> int:
        """Index of the first patch token: Q + n_p."""
        return self.num_queries + layout.num_prefix_tokens


def prompted_site(model: nn.Module) -> LastBlock | None:
    """The `LastBlock` of a "prompted_vit" model, or None for any other model (plain ViTs use the trunk split)."""
    backbone = prompted_backbone(model)
    if backbone is None:
        return None
    net = cast(PromptedViT, model)
    Q = int(net.num_classes)
    block = as_vit(backbone).blocks[-1]

    def trunk(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net.last_block_input(images)

    def head(tokens: torch.Tensor) -> torch.Tensor:
        return net.score(block(tokens)[:, :Q])

    return LastBlock(backbone, Q, trunk, head)
