"""SCOUTER, the slot-attention classifier (Li et al., ICCV 2021, arXiv 2009.06138; models.md §3).

Implemented from the spec only (the reference repository has no licence). One learned slot per class (or k),
sigmoid attention over the backbone grid, and a logit that is the attention-weighted feature mass:
o_c = (e/d)·Σ_l A_c[l]·Σ_j V[l,j], so A_c is literally the evidence behind o_c. e = +1 explains "why c",
e = −1 "why not c". The grid is read from the backbone output at run time (never 9×9).

Example:
    >>> net = SCOUTER("resnet18", num_classes=10, e=-1, lambda_area=1.5)  # doctest: +SKIP
    >>> logits = net.eval()(x)  # [B,10]  # doctest: +SKIP
    >>> out = net.forward_maps(x)  # out.logits [B,10], out.maps [B,10,h,w]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from traitlens.models.backbone import (
    accepts_any_size,
    backbone_channels,
    backbone_features,
    build_backbone,
    check_vit_block,
    freeze_stages,
)
from traitlens.models.base import InterpretableModel
from traitlens.models.outputs import ModelOutput
from traitlens.models.position import sine_position_encoding
from traitlens.models.registry import RecipeVariant, register_model_kind
from traitlens.train import FitConfig

__all__ = ["SCOUTER", "XSlotAttention", "area_size", "least_similar_class", "normalize_class_maps"]

log = logging.getLogger(__name__)

Q_PROJ = ("identity", "linear")
RENORMS = ("reference", "abs", "none")
MAP_NORMS = ("joint", "per_class", "none")
EPS = 1e-6


class XSlotAttention(nn.Module):
    """xSlot attention (models.md §3.1 steps 3–5): learned slots, sigmoid attention, GRU updates.

    Args:
        num_slots: S = n·k.
        dim: d.
        iterations: T (reference 3).
        to_k_layers: Linear(d, d) layers in the key MLP, ReLU between them (reference 1; 3 for ImageNet/CUB).
        q_proj: "identity" (reference: Q = slots) or "linear" (paper Fig. 2).
        renorm: "reference" (D̂ = D·ΣD / row sum, ε-guarded), "abs" (|D| in the sums, as BotCL) or "none".
        generator: RNG for the slot init (μ, σ ~ N(0, I_d); slots ~ N(μ, |σ|²), sampled once).
    """

    def __init__(self, num_slots: int, dim: int, iterations: int = 3, to_k_layers: int = 1,
                 q_proj: str = "identity", renorm: str = "reference", generator: torch.Generator | None = None
                 ) -> None:
        super().__init__()
        if q_proj not in Q_PROJ:
            raise ValueError(f"unknown q_proj '{q_proj}'; choose from {Q_PROJ}")
        if renorm not in RENORMS:
            raise ValueError(f"unknown renorm '{renorm}'; choose from {RENORMS}")
        if iterations < 1 or to_k_layers < 1:
            raise ValueError("iterations and to_k_layers must be >= 1")
        self.num_slots, self.dim, self.iterations = num_slots, dim, iterations
        self.q_proj, self.renorm = q_proj, renorm
        mu = torch.randn(dim, generator=generator)
        sigma = torch.randn(dim, generator=generator).abs()  # |σ|: torch rejects a negative std
        self.initial_slots = nn.Parameter(mu + sigma * torch.randn(1, num_slots, dim, generator=generator))
        layers: list[nn.Module] = []
        for i in range(to_k_layers):
            if i:
                layers.append(nn.ReLU(inplace=False))
            layers.append(nn.Linear(dim, dim))
        self.to_k = nn.Sequential(*layers)
        self.to_q = nn.Linear(dim, dim) if q_proj == "linear" else None
        self.gru = nn.GRUCell(dim, dim)

    def renormalise(self, dots: torch.Tensor) -> torch.Tensor:
        """D̂[s,l] = D[s,l]·(Σ_{s′,l′} D)/(Σ_{l′} D[s,l′]) per image, row sums with |·| < ε replaced by ε·sign."""
        if self.renorm == "none":
            return dots
        base = dots.abs() if self.renorm == "abs" else dots
        row = base.sum(-1, keepdim=True)
        total = base.sum((-2, -1), keepdim=True)
        sign = torch.where(row < 0, -torch.ones_like(row), torch.ones_like(row))  # sign(0) = +1
        row = torch.where(row.abs() < EPS, EPS * sign, row)
        return dots * total / row

    def forward(self, keys_in: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """keys_in = flatten(F′+P), values = flatten(F′), both [B,L,d] → last iteration's (A [B,S,L], U [B,S,d])."""
        B = keys_in.shape[0]
        k = self.to_k(keys_in)
        slots = self.initial_slots.expand(B, -1, -1).to(keys_in.dtype)
        attn = updates = torch.empty(0)  # iterations >= 1 (checked in __init__)
        for t in range(self.iterations):
            q = self.to_q(slots) if self.to_q is not None else slots
            dots = q @ k.transpose(-2, -1) / math.sqrt(self.dim)  # [B,S,L]
            attn = torch.sigmoid(self.renormalise(dots))  # sigmoid: slots do not compete for locations
            updates = attn @ values / self.dim  # [B,S,d]
            if t < self.iterations - 1:  # the final GRU output is never read
                slots = self.gru(updates.reshape(-1, self.dim), slots.reshape(-1, self.dim)).view(B, -1, self.dim)
        return attn, updates


def normalize_class_maps(maps: torch.Tensor, mode: str = "joint") -> torch.Tensor:
    """Normalise SCOUTER maps [B,C,h,w] (models.md §3.3).

    'joint' (reference visualisation): one min and max over all classes of each image, so maps of different
    classes are comparable; 'per_class' min-max; 'none'. A constant map becomes zeros.
    """
    if mode not in MAP_NORMS:
        raise ValueError(f"unknown normalisation '{mode}'; choose from {MAP_NORMS}")
    if mode == "none":
        return maps
    dims = (-3, -2, -1) if mode == "joint" else (-2, -1)
    lo = maps.amin(dim=dims, keepdim=True)
    hi = maps.amax(dim=dims, keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (maps - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.zeros_like(maps))


def area_size(maps: torch.Tensor) -> torch.Tensor:
    """Area size (reference `test.py`, metrics.md §3.5): the mean of a normalised map [...,h,w] → [...]."""
    return maps.float().mean((-2, -1))


def least_similar_class(logits: torch.Tensor, labels: torch.Tensor,
                        mapping: dict[int, int] | str = "min_logit") -> torch.Tensor:
    """The class whose SCOUTER₋ map is shown (models.md §3.3): [B] class ids.

    `mapping`: a user dict {label: least similar class} (e.g. from WordNet Wu–Palmer similarity, as the paper and
    `kayatb/reproduce_SCOUTER` do), "min_logit" (our option: the class the model finds least likely), or
    "label+1" (the reference `test.py` quirk: (label + 1) mod n). `lsc='wordnet'` itself needs WordNet data,
    which traitlens does not ship.
    """
    if isinstance(mapping, dict):
        return torch.tensor([mapping[int(y)] for y in labels], dtype=torch.long)
    if mapping == "min_logit":
        return logits.argmin(-1)
    if mapping == "label+1":
        return (labels.long() + 1) % logits.shape[-1]
    raise ValueError(f"unknown mapping '{mapping}'; pass a dict, 'min_logit' or 'label+1'")


@register_model_kind(
    "scouter",
    summary="class slots with positive (e=+1) or negative (e=-1) evidence and an area loss",
    recipes={
        # The reference's CUB-200 recipe for SCOUTER₊ (§3.4; `train.py` and the README's CUB command, every value in
        # docs/recipes.md): AdamW lr 1e-4 with weight decay 0.01 on every parameter (AdamW's default, which it really
        # uses), StepLR ×0.1 after epoch 70, batch 64, 150 epochs, no augmentation, last epoch kept.
        "reference": FitConfig(epochs=150, mode="model", optimizer="adamw", lr=1e-4, weight_decay=0.01,
                               weight_decay_all=True, schedule="steplr", step_size=70, gamma=0.1, batch_size=64,
                               label_smoothing=0.0, seed=42, selection="last"),
        "quick": FitConfig(epochs=4, mode="model", optimizer="adamw", lr=1e-3, weight_decay=0.01,
                           schedule="onecycle", batch_size=64, label_smoothing=0.0, seed=0, selection="val"),
    },
    # Both slot renormalisations scale the dot products by about the slot count, which saturates the sigmoid from
    # the start on a small backbone (docs/history.md, "SCOUTER in short runs").
    quick_options={"renorm": "none"},
    # CUB SCOUTER₊: 5 slots per class, λ 10, p 2, a 3-layer key MLP, d 64, 260 px square inputs (the README's
    # `--slots_per_class 5 --lambda_value 10 --power 2 --to_k_layer 3`, `--img_size` 260 by default).
    reference_options={"slots_per_class": 5, "lambda_area": 10.0, "power": 2.0, "to_k_layers": 3, "hidden_dim": 64,
                       "e": 1, "input_size": 260},
    variants={"reference": (
        # A ViT keeps its own input size (224; 260 is not a multiple of 14 or 16), DINOv2's resampled from 518.
        RecipeVariant(("*vit*", "*deit*", "*eva*"), options={"input_size": None}, note="ViT backbones: 224 px"),
        RecipeVariant(("*dinov2*",), options={"backbone_args": {"img_size": 224}}, note="DINOv2 at 224 px, not 518"),
    )},
    notes=(
        "reference pre-trains the FC baseline (timm model + linear head) first and starts SCOUTER from it (use_pre): "
        "train `finetune` first and pass its folder as the backbone",
        "reference CUB runs use the first 25 classes; SCOUTER₋ on CUB: e=-1, slots_per_class=3, lambda_area=1",
        "reference keeps the last epoch plus one every 10 epochs (selection='reference')",
        "reference drops the last incomplete batch of each epoch (drop_last=True); traitlens trains on it",
    ),
)
class SCOUTER(InterpretableModel):
    """SCOUTER₊ / SCOUTER₋: xSlot classifier on a timm CNN or ViT backbone (models.md §3).

    Args:
        backbone: timm CNN (pool and fc removed; last feature map) or timm ViT (patch grid), preset, traitlens
            model directory or module.
        num_classes: n.
        slots_per_class: k (default 1 here; reference CLI default 3, per-recipe 1–5, §3.4).
        e: +1 positive explanations ("why c"), −1 negative ("why not c"): the `loss_status` of the reference.
        lambda_area: λ of the area loss (reference 1.0). power: p (reference 2).
        hidden_dim: d (reference 64). iterations: T (3). to_k_layers: 1 (3 for ImageNet/CUB recipes).
        q_proj: "identity" (reference) | "linear" (paper). renorm: "reference" | "abs" | "none".
        frozen_stages: backbone stages frozen (see `freeze_stages`); None = 2 (stem + layer1 + layer2) when the
            backbone came with weights (pretrained name, directory or module) and 0 for a random timm name.
        input_size: the square side images are resized to (`data_config(net)["input_size"]`; reference 260); None
            keeps the backbone's. A fixed-size ViT only accepts its own size.
        vit_final_norm: apply a ViT backbone's final norm to its patch tokens.
        vit_block: the ViT block whose patch tokens feed the slots (-1: the last). Under class-token pooling
            the last block's patch outputs never reach the classification loss, so -2 gives trained features.
        slot_seed: seed of the slot init (reproducible); None uses the global RNG.
        pretrained: fetch published weights for a timm name.
        backbone_args: extra `timm.create_model` arguments.
        class_names: names of the n classes.
    """

    reference_selection = "last+every10"
    #: "cnn": `forward_features` → the backbone map [B,C_b,h,w], `forward_head` → logits (classic Grad-CAM).
    traitlens_families = ("native", "logits", "cnn")

    def __init__(
        self,
        backbone: str | Path | nn.Module | dict[str, Any],
        num_classes: int,
        slots_per_class: int = 1,
        e: int = 1,
        lambda_area: float = 1.0,
        power: float = 2.0,
        hidden_dim: int = 64,
        iterations: int = 3,
        to_k_layers: int = 1,
        q_proj: str = "identity",
        renorm: str = "reference",
        frozen_stages: int | None = None,
        vit_final_norm: bool = False,
        vit_block: int = -1,
        slot_seed: int | None = None,
        input_size: int | None = None,
        pretrained: bool = True,
        backbone_args: dict[str, Any] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if e not in (1, -1):
            raise ValueError(f"e (loss_status) must be +1 or -1, got {e}")
        if num_classes < 1 or slots_per_class < 1:
            raise ValueError("num_classes and slots_per_class must be positive")
        if hidden_dim % 2:
            raise ValueError(f"hidden_dim must be even (sine position encoding), got {hidden_dim}")
        module, spec, with_weights = build_backbone(backbone, pretrained, backbone_args)
        self.backbone = module
        if frozen_stages is None:
            frozen_stages = 2 if with_weights else 0
        freeze_stages(self.backbone, frozen_stages)
        self.num_classes = int(num_classes)
        self.slots_per_class = int(slots_per_class)
        self.e = int(e)
        self.lambda_area, self.power = float(lambda_area), float(power)
        self.hidden_dim = int(hidden_dim)
        self.vit_final_norm = vit_final_norm
        self.vit_block = int(vit_block)
        check_vit_block(self.backbone, self.vit_block)
        self.conv1x1 = nn.Conv2d(backbone_channels(module), hidden_dim, kernel_size=1)
        gen = torch.Generator().manual_seed(slot_seed) if slot_seed is not None else None
        self.slot_attention = XSlotAttention(self.num_classes * self.slots_per_class, hidden_dim, iterations,
                                             to_k_layers, q_proj, renorm, generator=gen)
        ref = next(module.parameters())
        self.to(device=ref.device, dtype=ref.dtype)  # the new layers follow the backbone's dtype and device
        options = {"slots_per_class": slots_per_class, "e": e, "lambda_area": lambda_area, "power": power,
                   "hidden_dim": hidden_dim, "iterations": iterations, "to_k_layers": to_k_layers,
                   "q_proj": q_proj, "renorm": renorm, "frozen_stages": frozen_stages,
                   "vit_final_norm": vit_final_norm, "vit_block": vit_block}
        if input_size is not None:
            options["input_size"] = int(input_size)
        self._init_common(spec, options, class_names)
        if input_size is not None:
            self._set_input_size(int(input_size))

    def _set_input_size(self, side: int) -> None:
        """Record the input size the model is trained and explained at (the reference's `--img_size`)."""
        current = tuple(self.pretrained_cfg["input_size"][1:])
        if side < 1:
            raise ValueError(f"input_size must be positive, got {side}")
        if not accepts_any_size(self.backbone) and current != (side, side):
            raise ValueError(f"input_size={side}: this ViT backbone takes {current[0]}x{current[1]} images only; "
                             "pass backbone_args={'img_size': ...} or leave input_size unset")
        self.pretrained_cfg["input_size"] = (3, side, side)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone feature map F [B,C_b,h,w] (§3.1 step 1); also what classic Grad-CAM differentiates."""
        return backbone_features(self.backbone, images, self.vit_final_norm, self.vit_block)

    def forward_slots(self, features: torch.Tensor) -> ModelOutput:
        """Steps 2–6 of §3.1 from a feature map; maps are always returned (they are the slot attention itself).

        Returns:
            `ModelOutput(logits [B,n], maps [B,n,h,w] = A_c, aux={"slot_attention": A [B,S,L],
            "values": V [B,L,d], "grid": (h, w)})`.
        """
        B, _, h, w = features.shape
        f = F.relu(self.conv1x1(features))  # F′ ≥ 0, so V ≥ 0 and the logit is an attention-weighted mass
        pos = sine_position_encoding(torch.zeros(B, h, w, dtype=torch.bool, device=f.device), self.hidden_dim)
        keys_in = (f + pos.to(f.dtype)).flatten(2).transpose(1, 2)  # keys see position, values do not
        values = f.flatten(2).transpose(1, 2)
        attn, updates = self.slot_attention(keys_in, values)
        n, k = self.num_classes, self.slots_per_class
        logits = self.e * updates.view(B, n, k, -1).sum(2).sum(-1)  # o_c = e·Σ_j U_c[j]
        maps = attn.view(B, n, k, h, w).sum(2)  # A_c = Σ_{s∈c} A_s, values in (0, k)
        return ModelOutput(logits=logits, maps=maps, aux={"slot_attention": attn, "values": values, "grid": (h, w)})

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from a feature map (for post-hoc methods such as classic Grad-CAM)."""
        return self.forward_slots(features).logits

    def forward_output(self, images: torch.Tensor, return_maps: bool | None = None) -> ModelOutput:
        """Logits [B,n] and maps [B,n,h,w]. The maps cost nothing extra, so they are always returned.

        Args:
            images: [B,3,H,W] in the backbone's input space, any size the backbone accepts.
            return_maps: accepted for the common interface; False drops `maps` from the output.
        """
        out = self.forward_slots(self.forward_features(images))
        if return_maps is False:
            out.maps = None
        return out

    def area_loss(self, attn: torch.Tensor) -> torch.Tensor:
        """ℓ_area = (mean over batch, slots and positions of A)^p (reference mean-then-power, §3.2)."""
        return attn.mean() ** self.power

    def loss(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        """L = CE(log_softmax(o), y) + λ·ℓ_area (§3.2)."""
        ce = F.cross_entropy(output.logits, labels)
        return ce + self.lambda_area * self.area_loss(output.aux["slot_attention"])
