"""Prompt-CAM head ranking by blurring (models.md §1.5): which of prompt c's heads carry its evidence."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from traitlens.backbones.introspect import vit_layout
from traitlens.models.promptcam import BLURS, PromptCAM

__all__ = ["CRITERIA", "STOPS", "SURVIVOR_ORDERS", "HeadRanking", "rank_heads"]

CRITERIA = ("prob", "logit")
STOPS = ("keep_k", "until_misclassified")
SURVIVOR_ORDERS = ("scores", "reference")


@dataclass
class HeadRanking:
    """Result of `rank_heads`.

    Attributes:
        order: [B,R] head indices, most important first (survivors by last-round score ascending, then the
            removed heads in reverse removal order).
        num_kept: [B] survivors per image (k for 'keep_k'; variable for 'until_misclassified').
        removal_scores: per image, the criterion value of each removal round's winner (the score with it blurred).
        evaluations: number of candidate evaluations run (Σ_{j=k+1..R} j for 'keep_k').
    """

    order: torch.Tensor
    num_kept: torch.Tensor
    removal_scores: list[list[float]]
    evaluations: int

    def top(self, k: int | None = None) -> list[list[int]]:
        """The top-k heads per image (default: the survivors)."""
        return [self.order[b, : (k if k is not None else int(self.num_kept[b]))].tolist()
                for b in range(self.order.shape[0])]


@torch.no_grad()
def rank_heads(
    net: PromptCAM,
    images: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor,
    k: int = 4,
    blur: str = "all",
    criterion: str = "prob",
    stop: str = "keep_k",
    survivor_order: str = "scores",
) -> HeadRanking:
    """Rank the last block's heads for class `target` by progressive blurring (models.md §1.5).

    Greedy: while more than k heads remain, score every remaining head r with blurred ∪ {r} and blur the one
    whose loss hurts least (highest score; ties to the lower index). Importance = reverse removal order, survivors
    ordered by their last-round scores, lowest first. The last block's input is computed once; each round is one
    batched pass of row c only. The winner is chosen on s_c for both criteria: blurring row c changes only s_c
    and p_c is strictly increasing in s_c, so 'prob' and 'logit' rank identically (§1.10.5) and float saturation
    of p_c cannot create false ties.

    Args:
        net: a Prompt-CAM model (eval mode recommended).
        images: [B,3,H,W] in the model's input space.
        target: class per image (int, list or [B] tensor).
        k: survivors for `stop='keep_k'` (reference `top_traits`, default 4).
        blur: "all" (reference: row uniform over all keys) or "patches" (paper: uniform 1/M over patches).
        criterion: "prob" (reference) or "logit" (paper); the scores reported in `removal_scores`.
        stop: "keep_k" (reference) or "until_misclassified" (paper: stop before the prediction would leave c).
        survivor_order: how the survivors are ordered among themselves. "scores" (default): by their own
            last-round scores. "reference": as the reference's display does (`visualize_run.py`), which pairs the
            last removal round's scores, listed over the heads *before* that removal, with the survivors *after* it,
            position by position, so every survivor behind the removed head takes its left neighbour's score. The
            kept set and the removal order are the same either way.

    Returns:
        A `HeadRanking`.
    """
    for name, value, allowed in (("blur", blur, BLURS), ("criterion", criterion, CRITERIA), ("stop", stop, STOPS),
                                 ("survivor_order", survivor_order, SURVIVOR_ORDERS)):
        if value not in allowed:
            raise ValueError(f"unknown {name} '{value}'; choose from {allowed}")
    if not isinstance(net, PromptCAM):
        raise TypeError(f"rank_heads needs a PromptCAM model, not {type(net).__name__}")
    if images.dim() == 3:
        images = images[None]
    B = images.shape[0]
    tgt = torch.as_tensor(target, device=images.device).reshape(-1).long().expand(B).contiguous()
    x = net.last_block_input(images)
    n_p = vit_layout(net.backbone, (images.shape[-2], images.shape[-1])).num_prefix_tokens
    R = net.vit.blocks[-1].attn.num_heads
    if not 0 <= k <= R:
        raise ValueError(f"k must be in 0..{R}, got {k}")
    # The other logits never change (only row c is blurred): compute them once with the exact block.
    base = net.score(net._finish_block(x, *_softmaxed(net, x)))  # [B,C]
    orders, kept, removal_scores, evaluations = [], [], [], 0
    for b in range(B):
        c = int(tgt[b])
        others = torch.cat([base[b, :c], base[b, c + 1 :]])
        xb, tb = x[b : b + 1], tgt[b : b + 1]
        remaining, removed, scores_b = list(range(R)), list[int](), list[float]()
        last_scores: dict[int, float] = {}
        stale: dict[int, float] | None = None  # the reference's pairing, set by a round that removed a head
        min_keep = k if stop == "keep_k" else 1
        while len(remaining) > min_keep:
            cand = torch.zeros(len(remaining), 1, R, dtype=torch.bool, device=x.device)
            cand[:, :, removed] = True
            cand[torch.arange(len(remaining)), 0, remaining] = True
            s_c = net.class_row_scores(xb, tb, cand, n_p, blur)[:, 0]  # [n_cand]
            evaluations += len(remaining)
            last_scores = {r: float(v) for r, v in zip(remaining, s_c.tolist(), strict=True)}
            stale = None  # a round that stops without removing keeps its scores aligned
            win = int(torch.argmax(s_c))  # first maximum = lower head index on ties
            if stop == "until_misclassified":
                changed = base[b].clone()
                changed[c] = s_c[win]
                if int(changed.argmax()) != c:
                    break  # blurring even the least useful head would lose class c: keep the rest
            r_star = remaining.pop(win)
            stale = {r: float(v) for r, v in zip(remaining, s_c.tolist(), strict=False)}
            removed.append(r_star)
            scores_b.append(_criterion(s_c[win], others, criterion))
        if not last_scores and remaining:
            # No round ran (k = R): score the survivors once to order them.
            cand = torch.zeros(len(remaining), 1, R, dtype=torch.bool, device=x.device)
            cand[:, :, removed] = True
            cand[torch.arange(len(remaining)), 0, remaining] = True
            s_c = net.class_row_scores(xb, tb, cand, n_p, blur)[:, 0]
            evaluations += len(remaining)
            last_scores = {r: float(v) for r, v in zip(remaining, s_c.tolist(), strict=True)}
        paired = stale if survivor_order == "reference" and stale is not None else last_scores
        survivors = sorted(remaining, key=lambda r: (paired[r], r))
        orders.append(survivors + removed[::-1])
        kept.append(len(survivors))
        removal_scores.append(scores_b)
    return HeadRanking(torch.tensor(orders, dtype=torch.long), torch.tensor(kept), removal_scores, evaluations)


def _softmaxed(net: PromptCAM, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y, s, v = net._qkv(x)
    return y, s.softmax(-1), v


def _criterion(s_c: torch.Tensor, others: torch.Tensor, criterion: str) -> float:
    if criterion == "logit":
        return float(s_c)
    return float(torch.sigmoid(s_c - torch.logsumexp(others, 0))) if others.numel() else 1.0
