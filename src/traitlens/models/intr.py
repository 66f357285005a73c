"""INTR, the INterpretable TRansformer (Paul et al., ICLR 2024, arXiv 2311.04157; models.md §2).

DETR (Carion et al., ECCV 2020) with one decoder query per class and one shared presence vector: the only
class-dependent quantity in s_c is where query c looks, so the last decoder layer's cross-attention per head
is the native map. Module names follow DETR (`transformer.encoder.layers.i.self_attn`, `query_embed`,
`input_proj`, ...) so a local DETR checkpoint loads with `load_detr_checkpoint`.

Example:
    >>> net = INTR("resnet50", num_classes=200)  # doctest: +SKIP
    >>> logits = net.eval()(x)  # [B,200]  # doctest: +SKIP
    >>> out = net.forward_maps(x)  # out.logits [B,200], out.maps [B,200,8,h,w]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from traitlens.backbones.loading import ModelLoadError, load_state_dict_file
from traitlens.models.backbone import (
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

__all__ = ["INTR", "resize_queries", "similar_class_targets"]

log = logging.getLogger(__name__)

DETR_QUERIES = 100


class TransformerEncoderLayer(nn.Module):
    """DETR's post-norm encoder layer: position added to Q and K, not V (models.md §2.1 step 4)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, key_padding_mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        q = k = src + pos
        src = self.norm1(src + self.dropout1(self.self_attn(q, k, src, key_padding_mask=key_padding_mask,
                                                             need_weights=False)[0]))
        return self.norm2(src + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(src))))))


class TransformerDecoderLayer(nn.Module):
    """DETR's post-norm decoder layer; cross-attention keys carry no position unless `key_pos` (§2.1 step 5)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, key_pos: bool) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.key_pos = key_pos

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, key_padding_mask: torch.Tensor, pos: torch.Tensor,
                query_pos: torch.Tensor, need_weights: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt, need_weights=False)[0]))
        key = memory + pos if self.key_pos else memory  # INTR drops the key position (decoder_key_pos=False)
        # Per-head weights computed once (the reference calls the attention twice, doubling the cost).
        out, weights = self.multihead_attn(tgt + query_pos, key, memory, key_padding_mask=key_padding_mask,
                                           need_weights=need_weights, average_attn_weights=False)
        tgt = self.norm2(tgt + self.dropout2(out))
        tgt = self.norm3(tgt + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(tgt))))))
        return tgt, weights


class _Stack(nn.Module):
    def __init__(self, layers: list[nn.Module], norm: nn.Module | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        if norm is not None:
            self.norm = norm


class Transformer(nn.Module):
    """Encoder–decoder with DETR's parameter names (`encoder.layers`, `decoder.layers`, `decoder.norm`)."""

    def __init__(self, d_model: int, nhead: int, num_encoder_layers: int, num_decoder_layers: int,
                 dim_feedforward: int, dropout: float, decoder_key_pos: bool) -> None:
        super().__init__()
        self.d_model, self.nhead = d_model, nhead
        self.encoder = _Stack([TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout)
                               for _ in range(num_encoder_layers)])
        self.decoder = _Stack([TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, decoder_key_pos)
                               for _ in range(num_decoder_layers)], nn.LayerNorm(d_model))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)  # DETR's init of every transformer matrix


def resize_queries(weight: torch.Tensor, num_classes: int, noise_frac: float = 0.1,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """DETR's 100 query rows → C rows, INTR's rule (models.md §2.2).

    C ≤ 100: the first C rows. Otherwise the 100 rows tiled ⌊C/100⌋ times, then the first (C mod 100) rows, and
    N(0,1)·`noise_frac` added to every row from index 100 on.
    """
    n = weight.shape[0]
    if num_classes <= n:
        return weight[:num_classes].clone()
    reps, rest = divmod(num_classes, n)
    out = torch.cat([weight.repeat(reps, 1), weight[:rest]]).clone()
    noise = torch.randn(out[n:].shape, generator=generator, dtype=out.dtype)
    out[n:] += noise_frac * noise.to(out.device)
    return out


def similar_class_targets(logits: torch.Tensor, labels: torch.Tensor | None = None, top_q: int = 5) -> torch.Tensor:
    """INTR's read-out targets (models.md §2.3): the GT class (or the prediction) first, then "similar" classes.

    The top `top_q` logits with the GT class forced in: [B, top_q] class ids, usable as `explain(..., target=...)`
    so per-head maps of similar classes can be compared (the paper's Fig. 1 style).
    """
    top = logits.topk(min(top_q, logits.shape[-1]), dim=-1).indices
    first = top[:, :1] if labels is None else labels.to(top.device).view(-1, 1).long()
    rows = []
    for f, t in zip(first, top, strict=True):
        rest = t[t != f][: top.shape[1] - 1]
        rows.append(torch.cat([f, rest]))
    return torch.stack(rows)


@register_model_kind(
    "intr",
    summary="one decoder query per class; query c's cross-attention is class c's map, per head",
    recipes={
        # The reference (§2.4; `main.py` defaults, every value in docs/recipes.md): AdamW lr 5e-5, backbone 1e-5,
        # wd 1e-6 on every parameter, StepLR ×0.1 after epoch 80, 140 epochs, batch 12 × 4 GPUs, grad clip 0.1; train
        # h-flip and random crops (its multi-scale resizing needs variable-size batches); it keeps the last epoch.
        "reference": FitConfig(epochs=140, mode="model", optimizer="adamw", lr=5e-5, backbone_lr=1e-5,
                               weight_decay=1e-6, weight_decay_all=True, schedule="steplr", step_size=80, gamma=0.1,
                               batch_size=48, label_smoothing=0.0, grad_clip=0.1, seed=42, selection="last",
                               augment_flip=True, augment_crop=True),
        "quick": FitConfig(epochs=4, mode="model", optimizer="adamw", lr=1e-3, weight_decay=1e-6,
                           schedule="onecycle", batch_size=64, label_smoothing=0.0, grad_clip=0.1, seed=0,
                           selection="val"),
    },
    # Small heads for a CPU: the reference's DETR-sized transformer costs ~50× a tiny ViT.
    quick_options={"hidden_dim": 64, "nheads": 4, "enc_layers": 2, "dec_layers": 2, "dim_feedforward": 256},
    # The paper-size transformer (the constructor's defaults, written out so the recipe says it).
    reference_options={"hidden_dim": 256, "nheads": 8, "enc_layers": 6, "dec_layers": 6, "dim_feedforward": 2048,
                       "dropout": 0.1},
    variants={"reference": (
        RecipeVariant(("*dinov2*",), options={"backbone_args": {"img_size": 224}}, note="DINOv2 at 224 px, not 518"),
    )},
    notes=(
        "reference trains at variable sizes (short side 480-800, max 1333, half the time after a random 384-600 crop) "
        "and evaluates at short side 800 with padding masks; traitlens trains fixed-size batches: Resize → RandomCrop "
        "to the backbone's input size (800 for detr_r50)",
        "reference starts from the DETR-R50 COCO checkpoint (--finetune, which also unfreezes the stem and layer1); "
        "pass init_checkpoint=detr-r50-e632da11.pth for detr_r50",
        "reference drops the last incomplete batch of each epoch (drop_last=True); traitlens trains on it",
    ),
)
class INTR(InterpretableModel):
    """INTR: one decoder query per class, a shared presence vector, per-head cross-attention maps (models.md §2).

    Args:
        backbone: a timm CNN (last feature map), a timm ViT (last block's patch tokens as NCHW, prefix dropped),
            `"detr_r50"` (reference: torchvision ResNet-50 with FrozenBatchNorm, layer4), a preset, a traitlens
            model directory or a module. A ViT backbone is allowed but is not the reference (§2.5).
        num_classes: C = the number of queries (read from the dataset; never hard-coded).
        hidden_dim: d (reference 256). nheads: R (8). enc_layers / dec_layers: 6 / 6. dim_feedforward: 2048.
        dropout: 0.1.
        decoder_key_pos: add the position encoding to the cross-attention keys (DETR); INTR: False.
        return_all_layers: also return every decoder layer's cross-attention in `aux["all_layer_maps"]`.
        init_checkpoint: a local DETR checkpoint (`detr-r50-e632da11.pth`) to initialise from (§2.2).
        noise_frac: noise on queries past index 100 when resizing DETR's queries.
        frozen_stages: backbone stages to freeze (0 = train all, −1 = freeze all); see `freeze_stages`.
            `detr_r50` always freezes its stem and layer1, as DETR does.
        backbone_lr_scale: backbone lr = scale × lr in `param_groups` (reference 1e-5 / 5e-5 = 0.2).
        vit_final_norm: apply the ViT's final norm to the patch tokens.
        vit_block: the ViT block whose patch tokens feed the encoder (-1: the last). Under class-token pooling
            the last block's patch outputs never reach the classification loss, so -2 gives trained features.
        pretrained: fetch published weights for a timm name.
        backbone_args: extra `timm.create_model` arguments.
        class_names: names of the C classes.
    """

    reference_selection = "last"
    #: "cnn": `forward_features` → the backbone map [B,C_b,h,w], `forward_head` → logits (classic Grad-CAM).
    traitlens_families = ("native", "logits", "cnn")

    def __init__(
        self,
        backbone: str | Path | nn.Module | dict[str, Any],
        num_classes: int,
        hidden_dim: int = 256,
        nheads: int = 8,
        enc_layers: int = 6,
        dec_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        decoder_key_pos: bool = False,
        return_all_layers: bool = False,
        init_checkpoint: str | Path | None = None,
        noise_frac: float = 0.1,
        frozen_stages: int = 0,
        backbone_lr_scale: float = 0.2,
        vit_final_norm: bool = False,
        vit_block: int = -1,
        pretrained: bool = True,
        backbone_args: dict[str, Any] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if dec_layers < 1:
            raise ValueError("INTR needs at least one decoder layer")
        module, spec, _ = build_backbone(backbone, pretrained, backbone_args)
        self.backbone = module
        freeze_stages(self.backbone, frozen_stages)
        self.num_classes = int(num_classes)
        self.vit_final_norm = vit_final_norm
        self.vit_block = int(vit_block)
        check_vit_block(self.backbone, self.vit_block)
        self.return_all_layers = return_all_layers
        self.backbone_lr_scale = backbone_lr_scale
        self.input_proj = nn.Conv2d(backbone_channels(module), hidden_dim, kernel_size=1)
        self.transformer = Transformer(hidden_dim, nheads, enc_layers, dec_layers, dim_feedforward, dropout,
                                       decoder_key_pos)
        self.query_embed = nn.Embedding(self.num_classes, hidden_dim)  # N(0,1), as nn.Embedding initialises
        self.presence_vector = nn.Linear(hidden_dim, 1)
        nn.init.xavier_uniform_(self.presence_vector.weight)
        nn.init.zeros_(self.presence_vector.bias)
        ref = next(module.parameters())
        self.to(device=ref.device, dtype=ref.dtype)  # the new layers follow the backbone's dtype and device
        options = {"hidden_dim": hidden_dim, "nheads": nheads, "enc_layers": enc_layers, "dec_layers": dec_layers,
                   "dim_feedforward": dim_feedforward, "dropout": dropout, "decoder_key_pos": decoder_key_pos,
                   "return_all_layers": return_all_layers, "noise_frac": noise_frac, "frozen_stages": frozen_stages,
                   "backbone_lr_scale": backbone_lr_scale, "vit_final_norm": vit_final_norm,
                   "vit_block": vit_block}
        self._init_common(spec, options, class_names)
        if init_checkpoint is not None:
            self.load_detr_checkpoint(init_checkpoint, noise_frac=noise_frac)

    # -- forward -------------------------------------------------------------------------------------------------
    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone feature map F [B,C_b,h,w] (§2.1 step 1); also what classic Grad-CAM differentiates."""
        return backbone_features(self.backbone, images, self.vit_final_norm, self.vit_block)

    def forward_transformer(self, features: torch.Tensor, mask: torch.Tensor | None = None,
                            return_maps: bool = True) -> ModelOutput:
        """input_proj → encoder → class-query decoder → presence vector (§2.1 steps 2–7).

        Args:
            features: [B,C_b,h,w].
            mask: bool [B,h,w], True on padded cells (their attention is 0 and they do not change the logits).
            return_maps: read the last decoder layer's per-head cross-attention.

        Returns:
            `ModelOutput(logits [B,C], maps [B,C,R,h,w])`; each per-head map sums to 1 over valid cells.
        """
        B, _, h, w = features.shape
        src = self.input_proj(features)
        if mask is None:
            mask = torch.zeros(B, h, w, dtype=torch.bool, device=features.device)
        pos = sine_position_encoding(mask, src.shape[1]).to(src.dtype)
        src = src.flatten(2).permute(2, 0, 1)  # [HW,B,d], sequence first as in DETR
        pos = pos.flatten(2).permute(2, 0, 1)
        key_padding_mask = mask.flatten(1)
        for layer in self.transformer.encoder.layers:
            src = layer(src, key_padding_mask, pos)
        query_pos = self.query_embed.weight.unsqueeze(1).expand(-1, B, -1)  # [C,B,d]
        tgt = torch.zeros_like(query_pos)
        layers = self.transformer.decoder.layers
        all_maps = []
        for i, layer in enumerate(layers):
            need = return_maps and (i == len(layers) - 1 or self.return_all_layers)
            tgt, weights = layer(tgt, src, key_padding_mask, pos, query_pos, need)
            if need:
                all_maps.append(weights.permute(0, 2, 1, 3).reshape(B, self.num_classes, -1, h, w))  # [B,C,R,h,w]
        hs = self.transformer.decoder.norm(tgt).transpose(0, 1)  # [B,C,d], last layer only (no auxiliary losses)
        logits = self.presence_vector(hs).squeeze(-1)
        out = ModelOutput(logits=logits)
        if return_maps:
            out.maps = all_maps[-1]
            if self.return_all_layers:
                out.aux["all_layer_maps"] = torch.stack(all_maps, 1)  # [B,layers,C,R,h,w]
        return out

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from a feature map (for post-hoc methods such as classic Grad-CAM)."""
        return self.forward_transformer(features, return_maps=False).logits

    def forward_output(self, images: torch.Tensor, return_maps: bool | None = None,
                       mask: torch.Tensor | None = None) -> ModelOutput:
        """Logits [B,C] and, in eval mode or when asked, per-head maps [B,C,R,h,w] on the backbone grid.

        Args:
            images: [B,3,H,W] in the backbone's input space.
            return_maps: None = only in eval mode.
            mask: bool [B,H,W] pixel padding mask (True = padding), resized to the grid with nearest.
        """
        want = (not self.training) if return_maps is None else return_maps
        feats = self.forward_features(images)
        if mask is not None:
            mask = F.interpolate(mask[:, None].float(), size=feats.shape[-2:], mode="nearest")[:, 0].bool()
        return self.forward_transformer(feats, mask, want)

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B,C] (`mask` as in `forward_output`); the maps are not computed."""
        return self.forward_output(images, return_maps=False, mask=mask).logits

    def forward_maps(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> ModelOutput:
        """Logits and the per-head maps of all C classes, in any mode (`mask` as in `forward_output`)."""
        return self.forward_output(images, return_maps=True, mask=mask)

    # -- training ------------------------------------------------------------------------------------------------
    def param_groups(self, cfg: Any) -> list[dict[str, Any]]:
        """Optimizer groups for `cfg` (a `FitConfig`: `lr`, `weight_decay`, `backbone_lr`, `weight_decay_all`) (§2.4).

        The backbone trains at `cfg.backbone_lr` when set (the reference recipe: 1e-5), else at
        `backbone_lr_scale`·lr; the rest at lr. 1-D parameters get no weight decay unless `cfg.weight_decay_all`
        (the reference decays every parameter), as in the trainer's own groups.
        """
        lr, weight_decay = float(cfg.lr), float(cfg.weight_decay)
        backbone_lr = getattr(cfg, "backbone_lr", None)
        wd_1d = weight_decay if getattr(cfg, "weight_decay_all", False) else 0.0
        groups = []
        for in_backbone in (True, False):
            named = [(n, p) for n, p in self.named_parameters()
                     if p.requires_grad and n.startswith("backbone.") == in_backbone]
            if not in_backbone:
                group_lr = lr
            elif backbone_lr is not None:
                group_lr = float(backbone_lr)
            else:
                group_lr = lr * self.backbone_lr_scale
            for decay in (True, False):
                ps = [p for _, p in named if (p.ndim > 1) == decay]
                if ps:
                    groups.append({"params": ps, "lr": group_lr, "weight_decay": weight_decay if decay else wd_1d})
        return groups

    def load_detr_checkpoint(self, path: str | Path, noise_frac: float = 0.1, seed: int = 42) -> list[str]:
        """Initialise from a local DETR checkpoint (§2.2): transformer, input_proj, DETR-R50 backbone, queries.

        The 100 queries are resized to C with `resize_queries`; DETR's class and box heads are dropped; the
        presence vector keeps its Xavier init. Returns the loaded keys.

        Raises:
            ModelLoadError: unreadable file or shapes that do not match (e.g. another hidden_dim).
        """
        state = load_state_dict_file(path)
        own = self.state_dict()
        new: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if key.startswith(("class_embed.", "bbox_embed.")):
                continue
            name = key.replace("backbone.0.body.", "backbone.body.", 1) if key.startswith("backbone.0.") else key
            if name == "query_embed.weight":
                g = torch.Generator().manual_seed(seed)
                value = resize_queries(value, self.num_classes, noise_frac, generator=g)
            if name not in own:
                log.debug("DETR key %s has no counterpart here; skipped", key)
                continue
            if own[name].shape != value.shape:
                raise ModelLoadError(f"DETR checkpoint {path}: '{key}' has shape {tuple(value.shape)}, this INTR "
                                     f"expects {tuple(own[name].shape)}")
            new[name] = value
        self.load_state_dict(new, strict=False)
        log.info("loaded %d tensors from DETR checkpoint %s", len(new), path)
        return sorted(new)
