"""traitlens.ops: imputation's per-batch `generator`, dilation, components, and the old import paths."""

from __future__ import annotations

import pytest
import torch

from traitlens.ops import component_boxes, connected_components, dilate, noisy_linear_impute


def _holes(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, 2, 12, 12, generator=g), torch.rand(3, 12, 12, generator=g) > 0.6


def test_generator_draws_one_batch_tensor_in_the_image_dtype():
    x, m = _holes()
    clean = noisy_linear_impute(x, m, noise=0.0)
    out = noisy_linear_impute(x, m, noise=0.01, generator=torch.Generator().manual_seed(5))
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    expect = torch.where(m[:, None], clean.double() + 0.01 * eps.double(), x.double()).to(x.dtype)
    assert out.dtype == x.dtype
    assert torch.allclose(out, expect, atol=1e-7, rtol=0)
    assert torch.equal(out[~m[:, None].expand_as(x)], x[~m[:, None].expand_as(x)])  # kept pixels untouched
    with pytest.raises(ValueError, match="not both"):
        noisy_linear_impute(x, m, generator=torch.Generator(), generators=[torch.Generator()] * 3)


def test_per_image_generators_do_not_depend_on_batching():
    x, m = _holes(1)
    gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
    whole = noisy_linear_impute(x.double(), m, generators=gens)
    last = noisy_linear_impute(x[2:].double(), m[2:], generators=[torch.Generator().manual_seed(12)])
    assert torch.allclose(whole[2:], last, atol=1e-12)


def test_dilate_is_a_strict_disk():
    m = torch.zeros(1, 7, 7, dtype=torch.bool)
    m[0, 3, 3] = True
    assert torch.equal(dilate(m, 0), m)
    assert int(dilate(m, 1).sum()) == 1  # squared distance strictly < 1: the pixel itself
    assert int(dilate(m, 1.5).sum()) == 9  # 3×3: d² ∈ {0, 1, 2} < 2.25
    assert int(dilate(m, 2).sum()) == 9  # d² = 4 is not < 4
    assert int(dilate(m, 2.01).sum()) == 13


def test_components_and_boxes():
    b = torch.zeros(1, 5, 6, dtype=torch.bool)
    b[0, 0, 0] = b[0, 1, 1] = True  # diagonal: one 8-component, two 4-components
    b[0, 3:5, 3:6] = True
    assert connected_components(b).unique().numel() == 3
    assert connected_components(b, connectivity=4).unique().numel() == 4
    owner, boxes = component_boxes(connected_components(b))
    assert owner.tolist() == [0, 0]
    assert boxes.tolist() == [[0, 0, 1, 1, 2], [3, 3, 5, 4, 6]]


def test_old_import_paths_are_the_ops_functions():
    import traitlens.metrics as metrics
    from traitlens.metrics.faithfulness import noisy_linear_impute as from_faithfulness
    from traitlens.metrics.localisation import component_boxes as from_localisation

    assert from_faithfulness is noisy_linear_impute is metrics.noisy_linear_impute
    assert from_localisation is component_boxes
    assert metrics.connected_components is connected_components and metrics.dilate is dilate
