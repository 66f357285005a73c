"""Explainer speed relative to the model's own forward (and forward+backward), per posthoc.md §0 costs.

Run:  python benchmarks/bench_explain.py [--model vit_small_patch16_224] [--batch 8] [--repeats 3]
      python benchmarks/bench_explain.py --preset vitb14reg4-518 --batch 1 --methods 'cdam' --pair lrp:cdam
      python benchmarks/bench_explain.py --preset vitb16-224 --memory      # peak memory per method too

Presets: `vitb16-224` (ViT-B/16, 224 px) and `vitb14reg4-518` (DINOv2-style ViT-B/14 with 4 registers, 518 px,
1374 tokens), both with 200 classes. `--memory` runs every method once more in a fresh subprocess and prints its
peak memory: `torch.cuda.max_memory_allocated` on a GPU, the growth of the peak RSS (VmHWM) over the RSS after
building the model and input on a CPU. `--pair A:B` times A and B alternately in this one process
on the same input and prints the ratio of their medians (what docs/performance.md reports).

Prints, for a randomly initialised ViT (weights do not change the cost):
  * every registered ViT method: time / plain forward (no grad) and time / (forward + backward to the pixels);
  * CDAM with 1 and 5 targets per image;
  * Grad-CAM (token variant) with 5 targets per image vs pytorch-grad-cam computing the same maps.
Goals from the issue: CDAM top-1 ≤ 1.2× forward, top-5 ≤ 1.5×; AGCAM and gradient rollout (GAE) ≤ 1.15×
forward+backward; Grad-CAM 5 targets ≤ 0.4× pytorch-grad-cam.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import timm
import torch
from rss import peak_rss_mb, rss_mb

import traitlens as tl

# Methods whose cost is m passes: run them with fewer steps and say so, the ratio scales linearly.
STEP_OPTIONS = {"integrated_gradients": {"n_steps": 10}, "smoothgrad": {"n_samples": 10},
                "smooth_cdam": {"n_samples": 10}, "integrated_cdam": {"n_steps": 10}}


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `fn` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


PRESETS = {"vitb16-224": ("vit_base_patch16_224", 224), "vitb14reg4-518": ("vit_base_patch14_reg4_dinov2", 518)}


def build(model_name: str, img: int, classes: int, batch: int, device: str, **kwargs: object
          ) -> tuple[torch.nn.Module, torch.Tensor]:
    """A randomly initialised timm ViT in eval mode and a random batch (weights do not change the cost)."""
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, img_size=img, num_classes=classes, **kwargs)
    return model.to(device).eval(), torch.randn(batch, 3, img, img, device=device)


def peak_memory_mb(fn: Callable[[], object], device: str) -> float:
    """Peak memory of one call of `fn` in MB (see the module docstring; on a CPU call it in a fresh process)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base = rss_mb()
    fn()
    return max(peak_rss_mb() - base, 0.0)



def method_call(model: torch.nn.Module, x: torch.Tensor, name: str, target: str = "top1") -> Callable[[], object]:
    options = STEP_OPTIONS.get(name, {})
    return lambda: tl.explain(model, x, method=name, target=target, **options)


def memory_in_subprocess(args: argparse.Namespace, name: str) -> float:
    """Peak memory of one call of method `name`, measured in a fresh Python process."""
    cmd = [sys.executable, __file__, "--memory-worker", name, "--model", args.model, "--img", str(args.img),
           "--batch", str(args.batch), "--classes", str(args.classes), "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"])


def pair_ratio(model: torch.nn.Module, x: torch.Tensor, a: str, b: str, repeats: int) -> tuple[float, float]:
    """Median times of methods a and b, run alternately (after one warm-up each) in this process."""
    fa, fb = method_call(model, x, a), method_call(model, x, b)
    fa(), fb()
    ta, tb = [], []
    for _ in range(repeats):
        for fn, out in ((fa, ta), (fb, tb)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--img", type=int, default=224)
    parser.add_argument("--preset", choices=sorted(PRESETS), help="sets --model and --img")
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--memory", action="store_true", help="peak memory per method (fresh subprocess each)")
    parser.add_argument("--pair", default="", help="A:B, e.g. lrp:cdam: both timed in one process, ratio A/B")
    parser.add_argument("--no-peer", action="store_true", help="skip the pytorch-grad-cam comparison")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default="*", help="glob over method names")
    parser.add_argument("--skip", default="", help="comma-separated methods to leave out (e.g. tam: P forwards)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--markdown", action="store_true", help="also print the method table as Markdown")
    args = parser.parse_args()
    if args.preset:
        args.model, args.img = PRESETS[args.preset]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, x = build(args.model, args.img, args.classes, args.batch, device)
    if args.memory_worker:
        print(json.dumps({"peak_mb": peak_memory_mb(method_call(model, x, args.memory_worker), device)}))
        return
    if args.pair:
        a, b = args.pair.split(":")
        ta, tb = pair_ratio(model, x, a, b, args.repeats)
        print(f"{args.model} @ {args.img}px, batch {args.batch}, {device}, threads {torch.get_num_threads()}: "
              f"{a} {ta:.2f} s, {b} {tb:.2f} s, ratio {a}/{b} = {ta / tb:.2f} (same process, same input)")
        if args.methods == "":
            return

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def forward_backward() -> None:
        xg = x.clone().requires_grad_()
        model(xg).max(-1).values.sum().backward()
        model.zero_grad(set_to_none=True)

    t_fwd = timed(forward, args.repeats)
    t_fb = timed(forward_backward, args.repeats)
    print(f"model {args.model} @ {args.img}px, batch {args.batch}, device {device}, threads {torch.get_num_threads()}")
    print(f"plain forward {t_fwd * 1e3:.0f} ms, forward+backward {t_fb * 1e3:.0f} ms\n")
    print(f"{'method':28} {'targets':>7} {'ms':>9} {'÷ fwd':>7} {'÷ fwd+bwd':>9} {'peak MB':>8}  note")
    rows: dict[str, float] = {}
    table: list[str] = []
    skip = set(filter(None, args.skip.split(",")))
    for info in tl.list_methods(args.methods, family="vit"):
        if info.name in skip:
            continue
        options = STEP_OPTIONS.get(info.name, {})
        for target in (("top1", "topk:5") if info.name in ("cdam", "gradcam_vit", "agcam", "gae") else ("top1",)):
            t = timed(lambda info=info, target=target, options=options: tl.explain(
                model, x, method=info.name, target=target, **options), args.repeats)
            rows[f"{info.name}/{target}"] = t
            note = ", ".join(f"{k}={v}" for k, v in options.items())
            mem = memory_in_subprocess(args, info.name) if args.memory and target == "top1" else float("nan")
            print(f"{info.name:28} {target:>7} {t * 1e3:9.0f} {t / t_fwd:7.2f} {t / t_fb:9.2f} {mem:8.0f}  {note}")
            table.append(f"| {info.name} | {target} | {t:.2f} | {t / t_fwd:.2f} | {t / t_fb:.2f} | "
                         f"{'' if mem != mem else f'{mem:.0f}'} | {note} |")
    if args.markdown:
        print(f"\n{args.model} at {args.img} px, {args.classes} classes, batch {args.batch}, {device}, "
              f"{torch.get_num_threads()} thread(s): forward {t_fwd:.2f} s, forward+backward {t_fb:.2f} s\n")
        print("| method | targets | s | ×forward | ×(forward+backward) | peak MB | options |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(table))

    if not args.no_peer and fnmatch.fnmatch("gradcam", args.methods) and "gradcam" not in skip:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        layout = tl.backbones.vit_layout(model, (args.img, args.img))

        def reshape(t: torch.Tensor) -> torch.Tensor:
            return t[:, layout.num_prefix_tokens:].reshape(t.shape[0], *layout.grid, t.shape[-1]).permute(0, 3, 1, 2)

        with torch.no_grad():
            top5 = model(x).topk(5, dim=-1).indices

        def ours() -> None:
            tl.explain(model, x, method="gradcam", target=top5)

        def theirs() -> None:
            with GradCAM(model=model, target_layers=[model.blocks[-1].norm1], reshape_transform=reshape) as cam:
                for k in range(5):  # pytorch-grad-cam takes one target per image per call
                    cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in top5[:, k]])

        t_ours, t_theirs = timed(ours, args.repeats), timed(theirs, args.repeats)
        print(f"\nGrad-CAM, 5 targets/image: traitlens {t_ours * 1e3:.0f} ms, "
              f"pytorch-grad-cam {t_theirs * 1e3:.0f} ms, ratio {t_ours / t_theirs:.2f} (goal ≤ 0.4)")
    for key, goal, base, label in (("cdam/top1", 1.2, t_fwd, "fwd"), ("cdam/topk:5", 1.5, t_fwd, "fwd"),
                                   ("agcam/top1", 1.15, t_fb, "fwd+bwd"), ("gae/top1", 1.15, t_fb, "fwd+bwd")):
        if key in rows:
            ratio = rows[key] / base
            print(f"goal {key}: {ratio:.2f}× {label} (goal ≤ {goal}) {'OK' if ratio <= goal else 'MISSED'}")


if __name__ == "__main__":
    main()
