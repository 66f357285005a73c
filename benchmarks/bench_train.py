"""Training cost of the by-design models (Prompt-CAM, INTR, SCOUTER) vs full fine-tuning of the same ViT.

Run:  python benchmarks/bench_train.py [--model vit_base_patch16_224] [--img 224] [--classes 200]
                                       [--batch 8] [--steps 3] [--threads 1] [--modes finetune,promptcam,...]

Each configuration runs in a fresh subprocess (so the peak-memory high-water marks do not mix) on a randomly
initialised ViT (weights do not change the cost) with the same AdamW optimizer and synthetic images, and
prints a table: trainable parameters, training images/s (median over `--steps` steps after one warm-up step)
and peak memory. Peak memory is `torch.cuda.max_memory_allocated` on a GPU; on the CPU it is the growth of the
process's peak RSS (`resource.getrusage`) over the RSS measured after the model and batch were built, i.e.
activations + gradients + optimizer state of the training steps. Prompt-CAM runs every block on C+N tokens
(models.md §1.2), so its cost grows with `--classes`; full fine-tuning does not.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import timm
import torch
import torch.nn.functional as F

MODES = ("finetune", "promptcam", "intr", "scouter")


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def worker(mode: str, args: argparse.Namespace) -> dict:
    """One configuration: build, warm up, time `args.steps` training steps, report speed and peak memory."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    if mode == "finetune":
        net = timm.create_model(args.model, pretrained=False, num_classes=args.classes, img_size=args.img)
    else:
        from traitlens.models import INTR, SCOUTER, PromptCAM

        kind = {"promptcam": PromptCAM, "intr": INTR, "scouter": SCOUTER}[mode]
        net = kind(args.model, args.classes, pretrained=False, backbone_args={"img_size": args.img})
    net = net.to(device).train()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(args.batch, 3, args.img, args.img, device=device)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    amp = None
    if args.amp and device.type == "cuda":
        from traitlens.train.precision import autocast_dtype

        amp = autocast_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)

    def step() -> None:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            # the models' own training loss (SCOUTER adds its area term), as the trainer runs them
            loss = net.forward_loss(x, y)[0] if hasattr(net, "forward_loss") else F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()

    base = _rss_mb()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated() / 2**20
    step()  # warm-up; also allocates the optimizer state
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    result = {
        "mode": mode,
        "trainable": sum(p.numel() for p in params),
        "total": sum(p.numel() for p in net.parameters()),
        "images_per_s": args.batch / statistics.median(times),
        "peak_mb": (torch.cuda.max_memory_allocated() / 2**20 - base_gpu) if device.type == "cuda"
        else max(peak_rss - base, 0.0),
        "memory": "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS growth",
        "device": device.type,
        "amp": str(amp).replace("torch.", "") if amp is not None else "float32",
    }
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the configurations (each in its own subprocess), print the table and return its rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--img", type=int, default=224)
    parser.add_argument("--classes", type=int, default=200, help="C (CUB: 200); Prompt-CAM adds C tokens")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per configuration")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {MODES}")
    parser.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda[:i]")
    parser.add_argument("--amp", action="store_true", help="autocast on CUDA (bf16, or fp16 + GradScaler)")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return []
    rows = []
    for mode in ["finetune", *(m for m in args.modes.split(",") if m != "finetune")]:
        cmd = [sys.executable, __file__, "--worker", mode, *argv]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    ft = rows[0]
    print(f"\n{args.model} at {args.img}px, C={args.classes}, batch {args.batch}, random weights, "
          f"AdamW, {rows[0]['device']} ({rows[0]['amp']}), {args.threads} thread(s); memory = {rows[0]['memory']}")
    print(f"{'mode':<10} {'trainable':>12} {'total':>12} {'img/s':>8} {'peak MB':>9} {'speed ×ft':>10} "
          f"{'memory ×ft':>11}")
    for r in rows:
        print(f"{r['mode']:<10} {r['trainable']:>12,} {r['total']:>12,} {r['images_per_s']:>8.2f} "
              f"{r['peak_mb']:>9.0f} {r['images_per_s'] / ft['images_per_s']:>10.2f} "
              f"{r['peak_mb'] / max(ft['peak_mb'], 1e-9):>11.2f}")
    return rows


if __name__ == "__main__":
    main()
