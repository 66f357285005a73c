"""HF ViTForImageClassification → timm: identical logits, methods run, save/load round trip (no download)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")

from traitlens.backbones import AttentionProbe, ModelLoadError, load_model, save_model  # noqa: E402
from traitlens.backbones.hf import from_hf_vit  # noqa: E402
from traitlens.explain import explain  # noqa: E402


def _hf_model():
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 image_size=32, patch_size=8, num_labels=3,
                                 id2label={0: "cat", 1: "dog", 2: "owl"}, label2id={"cat": 0, "dog": 1, "owl": 2})
    return transformers.ViTForImageClassification(cfg).eval()


def test_converted_model_gives_identical_logits_and_attention() -> None:
    hf = _hf_model()
    hf.config._attn_implementation = "eager"  # so HF returns its attention probabilities
    model = from_hf_vit(hf)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), AttentionProbe(model, blocks="all", capture=("attn",)) as probe:
        logits = model(x)
        out = hf(pixel_values=x, output_attentions=True)
    assert torch.allclose(logits, out.logits, atol=1e-5)
    for i, hf_attn in enumerate(out.attentions):
        assert torch.allclose(probe.attn[i], hf_attn, atol=1e-5)
    assert model.class_names == ["cat", "dog", "owl"]
    exp = explain(model, x, method="raw_attention", target="owl")
    assert exp.targets.tolist() == [[2], [2]]
    assert torch.allclose(exp.patch_maps[:, 0].flatten(1), out.attentions[-1][:, :, 0, 1:].mean(1), atol=1e-5)


def test_saved_conversion_reloads_without_transformers_download(tmp_path) -> None:
    model = from_hf_vit(_hf_model())
    save_model(model, tmp_path / "hf")
    again = load_model(tmp_path / "hf")
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(again(x), model(x))


def test_wrong_model_type_and_offline_hub_are_clear_errors(monkeypatch, tmp_path) -> None:
    from tests.backbones.hubtools import fake_hub

    with pytest.raises(TypeError, match="ViTForImageClassification"):
        from_hf_vit(torch.nn.Linear(2, 2))
    fake_hub(monkeypatch, reachable=False, cache=tmp_path / "hub")
    with pytest.raises(ModelLoadError, match=r"cannot load the HF model 'this-org-does-not-exist/nor-this-model': "
                                             r"huggingface\.co:443 cannot be reached and no copy is in the Hugging "
                                             r"Face cache"):
        load_model("hf:this-org-does-not-exist/nor-this-model")
