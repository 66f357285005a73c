"""Explainer speed relative to the model's own forward (and forward+backward), per posthoc.md §0 costs.

Run:  python benchmarks/bench_explain.py [--model vit_small_patch16_224] [--batch 8] [--repeats 3]

Prints, for a randomly initialised ViT (weights do not change the cost):
  * every registered ViT method: time / plain forward (no grad) and time / (forward + backward to the pixels);
  * CDAM with 1 and 5 targets per image;
  * Grad-CAM (token variant) with 5 targets per image vs pytorch-grad-cam computing the same maps.
Goals from the issue: CDAM top-1 ≤ 1.2× forward, top-5 ≤ 1.5×; AGCAM and gradient rollout (GAE) ≤ 1.15×
forward+backward; Grad-CAM 5 targets ≤ 0.4× pytorch-grad-cam.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import timm
import torch

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--img", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default="*", help="glob over method names")
    parser.add_argument("--skip", default="", help="comma-separated methods to leave out (e.g. tam: P forwards)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False, img_size=args.img).to(device).eval()
    x = torch.randn(args.batch, 3, args.img, args.img, device=device)

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
    print(f"{'method':28} {'targets':>7} {'ms':>9} {'÷ fwd':>7} {'÷ fwd+bwd':>9}  note")
    rows: dict[str, float] = {}
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
            print(f"{info.name:28} {target:>7} {t * 1e3:9.0f} {t / t_fwd:7.2f} {t / t_fb:9.2f}  {note}")

    if "gradcam" in {m.name for m in tl.list_methods()}:
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
