"""Recipes for `linear` probing and `finetune` of timm classifiers (docs/recipes.md, "Linear probe and fine-tuning").

`FitConfig()`'s defaults (lr 2e-3, one-cycle, 10 epochs) are for the tiny from-scratch ViTs of the quickstart. A
pretrained backbone needs gentler ones: the linear probe follows DINO's linear-evaluation protocol
(`facebookresearch/dino`, `eval_linear.py`), fine-tuning keeps the pretrained weights at a low learning rate
while the new classifier learns at a higher one. `traitlens.models.recommended_fit_config(mode, recipe,
pretrained=...)` returns these for the modes "linear" and "finetune".
"""

from __future__ import annotations

from dataclasses import replace

from traitlens.train.trainer import FitConfig

__all__ = ["CLASSIFIER_MODES", "FINETUNE_PRETRAINED", "LINEAR_PRETRAINED", "classifier_fit_config"]

CLASSIFIER_MODES = ("linear", "finetune")

#: DINO's linear evaluation: SGD momentum 0.9, lr 1e-3 per 256 images (linear scaling), no weight decay, cosine
#: annealing to 0 per epoch over 100 epochs, no label smoothing; train random crop + flip, eval Resize 256 →
#: CenterCrop 224.
LINEAR_PRETRAINED = FitConfig(
    mode="linear", epochs=100, optimizer="sgd", lr=1e-3, weight_decay=0.0, schedule="cosine", schedule_per="epoch",
    batch_size=256, label_smoothing=0.0, augment_flip=True, augment_crop=True, eval_crop=True,
)

#: Fine-tuning a pretrained ViT: AdamW, the backbone at 5e-5 and the new classifier at 1e-3, weight decay 0.05,
#: one warm-up epoch then cosine per batch, 30 epochs of batch 64, label smoothing 0.1, gradient clip 1.0;
#: train random crop + flip, eval centre crop (traitlens's own choice; no paper prescribes it).
FINETUNE_PRETRAINED = FitConfig(
    mode="finetune", epochs=30, optimizer="adamw", lr=1e-3, backbone_lr=5e-5, weight_decay=0.05, schedule="cosine",
    warmup_epochs=1.0, batch_size=64, label_smoothing=0.1, grad_clip=1.0, augment_flip=True, augment_crop=True,
    eval_crop=True,
)


def classifier_fit_config(mode: str, pretrained: bool) -> FitConfig:
    """The `FitConfig` for `linear` / `finetune` of a timm classifier.

    Args:
        mode: "linear" or "finetune".
        pretrained: the backbone came with published weights (a hub model, a downloaded checkpoint) →
            `LINEAR_PRETRAINED` / `FINETUNE_PRETRAINED`; False (random init, the tiny quickstart ViTs) →
            `FitConfig(mode=mode)`, the defaults `traitlens train` always used.

    Raises:
        ValueError: another mode.
    """
    if mode not in CLASSIFIER_MODES:
        raise ValueError(f"unknown classifier mode '{mode}'; choose 'linear' or 'finetune'")
    if not pretrained:
        return FitConfig(mode=mode)
    return replace(LINEAR_PRETRAINED if mode == "linear" else FINETUNE_PRETRAINED)
