"""The prepared GPU check runs end to end on the CPU with tiny sizes (`--device cpu --dry-run`)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check

    return gpu_check


def test_dry_run_on_the_cpu(gpu_check, tmp_path):
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--device", "cpu", "--dry-run", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["dry_run"] and res["maps_ok"]
    names = set(res["explain"]["methods"])
    assert {"cdam", "gae", "lrp", "agcam", "rollout"} <= names == set(res["maps"])
    # CPU against CPU: the same maps exactly
    assert all(err == 0.0 for err in res["maps"].values())
    assert res["explain"]["lrp_over_cdam"] == pytest.approx(
        res["explain"]["methods"]["lrp"]["seconds"] / res["explain"]["methods"]["cdam"]["seconds"])
    assert [r["mode"] for r in res["train"]] == ["finetune", "promptcam", "intr", "scouter"]
    assert all(r["images_per_s"] > 0 and r["trainable"] > 0 for r in res["train"])
    # Prompt-CAM trains only its prompts and scorer: far fewer parameters than full fine-tuning
    assert res["train"][1]["trainable"] < res["train"][0]["trainable"] / 10
    # amp part: every amp-safe timed method, within its tolerance (bf16 on a CPU with bf16 units, else float32)
    amp = res["amp"]
    assert res["amp_ok"] and set(amp) == {m for m in names if gpu_check.tl.get_method(m).amp_tolerance is not None}
    assert {"cdam", "gae", "rollout"} <= set(amp) and "lrp" not in amp and "tam" not in amp
    for row in amp.values():
        assert row["error"] <= row["tolerance"] and row["seconds"] > 0 and row["dtype"] in ("bfloat16", "float32")
        assert (row["error"] > 0) == (row["dtype"] == "bfloat16")  # bf16 moves the maps, float32 does not


def test_cuda_requested_without_a_gpu_is_refused(gpu_check, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--device", "cuda"]) == 2
    assert "--dry-run" in capsys.readouterr().err


def test_shell_wrapper_is_valid_bash_and_forwards_arguments():
    script = ROOT / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert 'gpu_check.py" "$@"' in text and "src" in text
