"""The colour-histogram baseline: how far colour statistics alone get on a dataset (datasets.md)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from traitlens.data.traitshapes.dataset import InMemoryDataset

__all__ = ["colour_histogram_baseline"]


def _image_batches(dataset: Dataset, batch_size: int = 512) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(float images in [0,1], labels) batches; an untransformed InMemoryDataset skips its masks."""
    if isinstance(dataset, InMemoryDataset) and dataset.transform is None:
        for i in range(0, len(dataset), batch_size):
            yield dataset.images[i : i + batch_size].float() / 255.0, dataset.labels[i : i + batch_size]
        return
    for batch in DataLoader(dataset, batch_size=batch_size, num_workers=0):
        yield batch["image"], batch["label"]


def _histograms(dataset: Dataset, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel colour histograms (3·bins, each channel summing to 1) and labels."""
    feats, labels = [], []
    for img, label in _image_batches(dataset):
        q = (img * bins).long().clamp_(0, bins - 1) + torch.arange(3).view(1, 3, 1, 1) * bins
        q = q.flatten(1)
        h = torch.zeros(img.shape[0], 3 * bins).scatter_add_(1, q, torch.ones(q.shape))
        feats.append(h / (img.shape[-1] * img.shape[-2]))
        labels.append(label)
    return torch.cat(feats), torch.cat(labels)


def colour_histogram_baseline(
    train_ds: Dataset, test_ds: Dataset, bins: int = 8, weight_decay: float = 1e-4, max_iter: int = 300
) -> float:
    """Test accuracy of multinomial logistic regression on per-channel colour histograms.

    The "not solvable from colour histograms alone" check of datasets.md: a good fine-grained
    set leaves this far below a ViT. Trained full-batch with L-BFGS on standardised features.

    Args:
        train_ds: items with ``image`` float [3,H,W] in [0,1] and ``label``.
        test_ds: held-out items.
        bins: histogram bins per channel.
        weight_decay: L2 penalty on the weights.
        max_iter: L-BFGS iterations.

    Returns:
        Accuracy on ``test_ds`` in [0, 1].
    """
    x_tr, y_tr = _histograms(train_ds, bins)
    x_te, y_te = _histograms(test_ds, bins)
    mean, std = x_tr.mean(0), x_tr.std(0).clamp_min(1e-6)
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    n_classes = int(max(y_tr.max(), y_te.max())) + 1
    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(x_tr.shape[1], n_classes)
    torch.nn.init.normal_(linear.weight, std=0.01, generator=gen)
    torch.nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(x_tr), y_tr) + weight_decay * linear.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((linear(x_te).argmax(1) == y_te).float().mean())
