"""Least-similar-class targets (metrics.md §6; models.md §3.3): each rule checked by hand on tiny data."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from traitlens.backbones import normalize
from traitlens.data.traitshapes import class_traits
from traitlens.evaluation import cli_evaluate, evaluate, least_similar_classes, lsc_targets
from traitlens.evaluation.cli import parse_lsc
from traitlens.explain import Explanation

# constant colours; the model's logits are (mean R, mean G, mean B, 0.5), so the lowest logit is known by hand
COLOURS = [(0.9, 0.2, 0.6), (0.1, 0.3, 0.3), (0.5, 0.5, 0.5), (0.8, 0.9, 0.7)]
MIN_LOGIT = [1, 0, 0, 3]  # (0.5, 0.5, 0.5, 0.5) ties everywhere: the lowest class index wins


class ChannelMeans(nn.Module):
    """logits = (mean R, mean G, mean B, 0.5) of the image; identity normalisation."""

    num_classes = 4

    def __init__(self) -> None:
        super().__init__()
        self.pretrained_cfg = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "input_size": (3, 8, 8)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((2, 3))
        return torch.cat([m, torch.full_like(m[:, :1], 0.5)], 1)


class Colours(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return len(COLOURS)

    def __getitem__(self, i: int) -> dict:
        image = torch.tensor(COLOURS[i]).view(3, 1, 1).expand(3, 8, 8).clone()
        return {"image": image, "label": torch.tensor(i), "index": i}


def recorder(seen: list):
    """An explainer that records the targets it is asked for (maps: the image's channel mean)."""

    def run(m, x, target):
        tgt = torch.as_tensor(target).view(len(x), -1)
        seen.append(tgt.cpu())
        maps = x.mean(1, keepdim=True).expand(-1, tgt.shape[1], -1, -1) + torch.linspace(0, 1, x.shape[-1])
        return Explanation(maps=maps, patch_maps=F.adaptive_avg_pool2d(maps, (2, 2)), targets=tgt, method="rec")

    return run


def run_rule(lsc, **kw) -> list[int]:
    seen: list = []
    evaluate(ChannelMeans(), Colours(), ["rec"], ["gini"], explainers={"rec": recorder(seen)}, target="lsc", lsc=lsc,
             progress=False, n_boot=0, **kw)
    return torch.cat(seen)[:, 0].tolist()


def test_least_similar_classes_by_hand():
    table = [(0, 0, 0), (0, 0, 1), (1, 1, 1), (1, 1, 0), (0, 1, 1)]
    # distances from class 4: to 0 → 2, 1 → 1, 2 → 1, 3 → 2: a tie between 0 and 3 goes to the lower index
    assert least_similar_classes(table) == [2, 3, 0, 1, 0]
    with pytest.raises(ValueError, match="two classes"):
        least_similar_classes([(0, 1)])


def test_min_logit_and_mapping_rules_by_hand():
    assert run_rule("min_logit") == MIN_LOGIT
    assert run_rule(None) == MIN_LOGIT  # the default rule
    assert run_rule({0: 3, 1: 2, 2: 0, 3: 1}) == [3, 2, 0, 1]
    assert run_rule({"0": "2", 1: 3, 2: 1, 3: 0}, batch_size=3) == [2, 3, 1, 0]  # string ids from JSON; 2 batches
    x = normalize(ChannelMeans(), torch.stack([Colours()[i]["image"] for i in range(4)]))
    assert lsc_targets(ChannelMeans(), x).tolist() == MIN_LOGIT


def test_bad_rules_fail_with_a_clear_message():
    with pytest.raises(ValueError, match="WordNet corpus"):
        run_rule("wordnet")
    with pytest.raises(ValueError, match="unknown lsc rule"):
        run_rule("similarity")
    with pytest.raises(ValueError, match="needs a TraitShapes dataset"):
        run_rule("traits")
    with pytest.raises(ValueError, match=r"no entry for true classes \[1, 2, 3\]"):
        run_rule({0: 3})
    with pytest.raises(ValueError, match="to themselves"):
        run_rule({0: 0, 1: 2, 2: 1, 3: 1})
    with pytest.raises(ValueError, match="only used with target='lsc'"):
        evaluate(ChannelMeans(), Colours(), ["rec"], ["gini"], explainers={"rec": recorder([])}, lsc="min_logit",
                 progress=False)


def test_traits_rule_on_traitshapes_and_the_written_reading(tmp_path, setup_factory):
    model, data = setup_factory(n=8, num_classes=6, slots=("head_colour", "wing_pattern", "tail_shape"))
    table = class_traits(data.config)

    def lsc_by_loop(c: int) -> int:  # independent of least_similar_classes: strict > keeps the lowest index
        best, best_d = -1, -1
        for o, row in enumerate(table):
            d = sum(a != b for a, b in zip(table[c], row, strict=True))
            if o != c and d > best_d:
                best, best_d = o, d
        return best

    labels = [int(data[i]["label"]) for i in range(len(data))]
    seen: list = []
    res = evaluate(model, data, ["rec"], ["gini", "pointing_game"], explainers={"rec": recorder(seen)}, target="lsc",
                   lsc="traits", out=tmp_path, progress=False, n_boot=0, plots=False)
    assert torch.cat(seen)[:, 0].tolist() == [lsc_by_loop(c) for c in labels]
    assert len(set(labels)) > 2  # more than one class, so the rule is exercised
    assert res.config["target"] == "lsc" and res.config["lsc"] == "traits"
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["config"]["target"] == "lsc" and doc["config"]["lsc"] == "traits"
    md = (tmp_path / "results.md").read_text()
    assert "least similar class (lsc = traits)" in md
    assert "high localisation score for the LSC is bad" in md and '"why not" evidence' in md
    # a real method: the explained class is the image's least similar class by the lowest logit
    res = evaluate(model, data, ["cdam"], ["pointing_game"], target="lsc", progress=False, n_boot=0)
    with torch.no_grad():
        want = model(normalize(model, torch.stack([data[i]["image"] for i in range(len(data))]))).argmin(-1)
    assert res.results[("cdam", "pointing_game")].extras["classes"][:, 0].tolist() == want.tolist()


def test_cache_is_keyed_by_the_lsc_rule(tmp_path):
    seen: list = []
    kw = dict(explainers={"rec": recorder(seen)}, target="lsc", out=tmp_path, progress=False, n_boot=0, plots=False)
    evaluate(ChannelMeans(), Colours(), ["rec"], ["gini"], lsc="min_logit", **kw)
    evaluate(ChannelMeans(), Colours(), ["rec"], ["gini"], lsc={0: 3, 1: 2, 2: 0, 3: 1}, **kw)
    evaluate(ChannelMeans(), Colours(), ["rec"], ["gini"], lsc="min_logit", **kw)  # cached: not explained again
    assert [t[:, 0].tolist() for t in seen] == [MIN_LOGIT, [3, 2, 0, 1]]


def test_cli_lsc_option(tmp_path, micro_setup):
    mapping = tmp_path / "lsc.json"
    mapping.write_text(json.dumps({"0": 1, "1": 0}))
    assert parse_lsc(str(mapping)) == {0: 1, 1: 0}
    assert parse_lsc("0:3, 1:2") == {0: 3, 1: 2}
    assert parse_lsc("traits") == "traits" and parse_lsc("") is None and parse_lsc(None) is None
    with pytest.raises(ValueError, match="TRUE:LSC"):
        parse_lsc("0:red")
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        parse_lsc(str(tmp_path / "nope.json"))
    model, data = micro_setup
    res = cli_evaluate(model, data, methods="rollout", metrics="gini", out=tmp_path / "eval", target="lsc",
                       lsc=str(mapping), progress=False)
    doc = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert doc["config"]["lsc"] == {"0": 1, "1": 0} and res.config["lsc"] == {0: 1, 1: 0}
    assert "least similar class (lsc = mapping)" in (tmp_path / "eval" / "results.md").read_text()
