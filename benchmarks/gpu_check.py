"""The prepared GPU check (docs/performance.md): explain speed and memory, training throughput, GPU maps = CPU maps.

Run:  bash benchmarks/gpu_check.sh                       # one CUDA GPU, under 8 minutes on an H200
      bash benchmarks/gpu_check.sh --device cpu --dry-run  # tiny sizes, seconds, no GPU needed

Three parts, each printed as a table and written to `--out` (JSON):
  1. explain: every ViT method at ViT-B/16, 224 px, 200 classes, batch 32: median time and peak memory
     (`torch.cuda.max_memory_allocated` on a GPU), plus the LRP/CDAM ratio in the same process;
  2. train: images/s and peak memory of full fine-tuning, Prompt-CAM, INTR and SCOUTER (ViT-B/16, 224 px,
     200 classes, batch 64, autocast as the trainer does it);
  3. maps: the same methods on 4 images in float32 (TF32 off) on the device and on the CPU; every map must agree
     to 1e-4 relative to its largest value;
  4. amp: every amp-safe method with `explain(..., amp=True)` (bf16 where the GPU has it, else fp16) against float32
     on the device, on a model whose attention scores are scaled to a trained ViT's spread (`peaked`): the error,
     max |amp − fp32| / range(fp32) per map, must stay within the method's registry `amp_tolerance`; plus the time
     of each at the batch of part 1 (speed-up over part 1's float32 time).
The exit status is 1 when part 3 or part 4 fails.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_explain
import bench_train

import traitlens as tl

#: P forwards (TAM) or many passes: left out of the timed table, their cost is a multiple of the others.
SKIP = ("tam", "integrated_gradients", "smoothgrad", "smooth_cdam", "integrated_cdam")
TOLERANCE = 1e-4


def sizes(dry_run: bool) -> dict[str, Any]:
    """Model and batch sizes: the real check, or a tiny ViT for the dry run."""
    if dry_run:
        return {"model": "vit_tiny_patch16_224", "img": 32, "classes": 10, "batch": 2, "train_batch": 2,
                "steps": 1, "repeats": 1, "map_batch": 2, "model_kwargs": {"patch_size": 8, "depth": 2}}
    return {"model": "vit_base_patch16_224", "img": 224, "classes": 200, "batch": 32, "train_batch": 64,
            "steps": 10, "repeats": 3, "map_batch": 4, "model_kwargs": {}}


def timed(fn: Any, repeats: int, device: str) -> float:
    """Median wall time after one warm-up call, synchronising the GPU around each call."""
    def run() -> None:
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def methods() -> list[str]:
    return [m.name for m in tl.list_methods(family="vit") if m.name not in SKIP]


def explain_part(cfg: dict[str, Any], device: str) -> dict[str, Any]:
    model, x = bench_explain.build(cfg["model"], cfg["img"], cfg["classes"], cfg["batch"], device,
                                   **cfg["model_kwargs"])
    rows = {}
    for name in methods():
        call = bench_explain.method_call(model, x, name)
        t = timed(call, cfg["repeats"], device)
        rows[name] = {"seconds": t, "peak_mb": bench_explain.peak_memory_mb(call, device)}
        print(f"  {name:24} {t * 1e3:9.1f} ms {rows[name]['peak_mb']:9.0f} MB", flush=True)
    ratio = rows["lrp"]["seconds"] / rows["cdam"]["seconds"]
    print(f"  lrp / cdam = {ratio:.2f} (same process, same input)")
    return {"batch": cfg["batch"], "methods": rows, "lrp_over_cdam": ratio}


def train_part(cfg: dict[str, Any], device: str) -> list[dict[str, Any]]:
    """In-process configurations: CUDA peak memory is reset per configuration (CPU RSS figures would mix)."""
    args = argparse.Namespace(model=cfg["model"], img=cfg["img"], classes=cfg["classes"], batch=cfg["train_batch"],
                              steps=cfg["steps"], threads=torch.get_num_threads(), device=device, amp=True)
    rows = []
    for mode in bench_train.MODES:
        r = bench_train.worker(mode, args)
        rows.append(r)
        print(f"  {mode:10} {r['images_per_s']:9.1f} img/s {r['peak_mb']:9.0f} MB ({r['amp']}, {r['memory']})",
              flush=True)
    return rows


def maps_part(cfg: dict[str, Any], device: str) -> dict[str, float]:
    """Max |device − CPU| / max |CPU| per method, float32 with TF32 off on both sides."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model, x = bench_explain.build(cfg["model"], cfg["img"], cfg["classes"], cfg["map_batch"], "cpu",
                                   **cfg["model_kwargs"])
    model_dev, x_dev = model.to(device), x.to(device)
    errors = {}
    for name in methods():
        options = bench_explain.STEP_OPTIONS.get(name, {})
        dev = tl.explain(model_dev, x_dev, method=name, normalize="none", **options)
        ref_model = model_dev.to("cpu")
        ref = tl.explain(ref_model, x, method=name, normalize="none", **options)
        model_dev = ref_model.to(device)
        scale = float(ref.patch_maps.abs().max()) or 1.0
        err = float((dev.patch_maps.cpu() - ref.patch_maps).abs().max()) / scale
        if not torch.equal(dev.targets.cpu(), ref.targets):
            err = float("inf")
        errors[name] = err
        print(f"  {name:24} rel. error {err:.2e} {'OK' if err <= TOLERANCE else 'FAIL'}", flush=True)
    return errors


def peaked(model: torch.nn.Module, x: torch.Tensor, score_std: float = 2.0) -> torch.nn.Module:
    """Scale the q and k rows of every block's qkv (first block first) so that its attention scores have standard
    deviation `score_std` on `x`, about a trained ViT's. Random weights give near-uniform attention, whose maps have
    almost no contrast and lose it in any half precision; trained models do not look like that."""
    from traitlens.backbones.probe import AttentionProbe

    for i, blk in enumerate(model.blocks):
        with torch.no_grad(), AttentionProbe(model, blocks=[i], capture=("q", "k")) as probe:
            model(x)
            factor = (score_std / float(probe.scores(i).float().std())) ** 0.5
            D = blk.attn.qkv.in_features
            blk.attn.qkv.weight[: 2 * D] *= factor
            if blk.attn.qkv.bias is not None:
                blk.attn.qkv.bias[: 2 * D] *= factor
    return model


def range_error(amp: torch.Tensor, ref: torch.Tensor) -> float:
    """Max over maps of max |amp − ref| / (max ref − min ref); maps constant in float32 are left out."""
    a, r = amp.flatten(2).double(), ref.flatten(2).double()
    span = r.amax(-1) - r.amin(-1)
    live = span > 0
    return float(((a - r).abs().amax(-1)[live] / span[live]).max()) if bool(live.any()) else 0.0


def amp_part(cfg: dict[str, Any], device: str, fp32_rows: dict[str, Any]) -> dict[str, Any]:
    """amp against float32 maps on `device` per amp-safe method, and the amp time at the batch of part 1."""
    model, x = bench_explain.build(cfg["model"], cfg["img"], cfg["classes"], cfg["map_batch"], device,
                                   **cfg["model_kwargs"])
    peaked(model, x)
    x_big = torch.randn(cfg["batch"], *x.shape[1:], device=device)
    rows = {}
    for name in methods():
        tol = tl.get_method(name).amp_tolerance
        if tol is None:
            continue
        options = bench_explain.STEP_OPTIONS.get(name, {})
        torch.manual_seed(0)
        ref = tl.explain(model, x, method=name, target="topk:3", normalize="none", **options)
        torch.manual_seed(0)
        got = tl.explain(model, x, method=name, target=ref.targets, normalize="none", amp=True, **options)
        err = range_error(got.patch_maps, ref.patch_maps)
        t = timed(lambda n=name, o=options: tl.explain(model, x_big, method=n, amp=True, **o), cfg["repeats"], device)
        speedup = fp32_rows[name]["seconds"] / t if name in fp32_rows else float("nan")
        rows[name] = {"error": err, "tolerance": tol, "ok": err <= tol, "dtype": got.extras.get("amp", "float32"),
                      "seconds": t, "speedup": speedup}
        print(f"  {name:24} {rows[name]['dtype']:9} error {err:.2e} (tol {tol}) {'OK' if err <= tol else 'FAIL'}"
              f"  {t * 1e3:9.1f} ms ({speedup:.2f}x float32)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) | cuda:i | cpu")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, to check the script itself")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here; run with --device cpu --dry-run for a dry run", file=sys.stderr)
        return 2
    cfg = sizes(args.dry_run)
    t0 = time.perf_counter()
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    print(f"device {args.device} ({name}), torch {torch.__version__}, {cfg['model']} @ {cfg['img']} px")
    print(f"1. explain, batch {cfg['batch']}")
    results: dict[str, Any] = {"device": args.device, "device_name": name, "dry_run": args.dry_run,
                               "explain": explain_part(cfg, args.device)}
    print(f"2. training, batch {cfg['train_batch']}, {cfg['classes']} classes")
    results["train"] = train_part(cfg, args.device)
    print(f"3. maps on {args.device} vs CPU, float32, {cfg['map_batch']} images")
    results["maps"] = maps_part(cfg, args.device)
    print(f"4. amp against float32 on {args.device}, {cfg['map_batch']} images (timed at batch {cfg['batch']})")
    results["amp"] = amp_part(cfg, args.device, results["explain"]["methods"])
    results["seconds"] = time.perf_counter() - t0
    maps_ok = all(err <= TOLERANCE for err in results["maps"].values())
    amp_ok = all(r["ok"] for r in results["amp"].values())
    results["maps_ok"], results["amp_ok"] = maps_ok, amp_ok
    ok = maps_ok and amp_ok
    print(f"done in {results['seconds']:.0f} s; maps {'agree' if maps_ok else 'DISAGREE'} to {TOLERANCE}; "
          f"amp maps {'within' if amp_ok else 'BEYOND'} their tolerances")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
