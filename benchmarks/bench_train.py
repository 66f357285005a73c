"""Training cost of the by-design models (Prompt-CAM, INTR, SCOUTER) vs full fine-tuning of the same ViT.

Run:  python benchmarks/bench_train.py [--model vit_base_patch16_224] [--img 224] [--classes 200]
                                       [--batch 8] [--steps 3] [--threads 1] [--modes finetune,promptcam,...]
      python benchmarks/bench_train.py --preset vitb16 --out train.json   # the docs/performance.md table

`--preset vitb16`: ViT-B/16 at 224 px, 200 classes (CUB), batch 8, 3 timed steps: on a CPU each configuration's
process peaks at a few GiB (full fine-tuning ~3 GiB, INTR the most), well inside 24 GiB of RAM, and the four take a
few minutes on an idle machine with one thread. `--amp` autocasts as the trainer does (bf16 on a GPU that has it,
else fp16 with a `GradScaler`; bf16 on a CPU with bf16 units, attention unfused meanwhile). `--out` writes the rows
as JSON; the table is printed as Markdown too, ready for docs/performance.md.

Each configuration runs in a fresh subprocess (so the peak-memory high-water marks do not mix) on a randomly
initialised ViT (weights do not change the cost) with the same AdamW optimizer and synthetic images, and
prints a table: trainable parameters, training images/s (median over `--steps` steps after one warm-up step)
and peak memory. Peak memory is `torch.cuda.max_memory_allocated` on a GPU; on the CPU it is the growth of the
process's peak RSS (VmHWM, `rss.py`) over the RSS measured after the model and batch were built, i.e.
activations + gradients + optimizer state of the training steps; the process's whole peak RSS is reported too
(`peak_rss_mb`, on both devices). Prompt-CAM runs every block on C+N tokens
(models.md §1.2), so its cost grows with `--classes`; full fine-tuning does not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from rss import peak_rss_mb, rss_mb

MODES = ("finetune", "promptcam", "intr", "scouter")
#: Named configurations: ViT-B/16 at 224 px with CUB's 200 classes, a batch that fits a 24 GiB machine's CPU.
PRESETS: dict[str, dict[str, object]] = {
    "vitb16": {"model": "vit_base_patch16_224", "img": 224, "classes": 200, "batch": 8, "steps": 3},
}


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
    unfused: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if args.amp:
        from traitlens.train.precision import autocast_dtype, unfused_attention

        amp = autocast_dtype(device)
        if amp is not None and device.type == "cpu":
            unfused = unfused_attention(net)  # as the trainer does in bf16 on a CPU
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

    base = rss_mb()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated() / 2**20
    times = []
    with unfused:
        step()  # warm-up; also allocates the optimizer state
        for _ in range(args.steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    peak_rss = peak_rss_mb()
    result = {
        "mode": mode,
        "trainable": sum(p.numel() for p in params),
        "total": sum(p.numel() for p in net.parameters()),
        "images_per_s": args.batch / statistics.median(times),
        "peak_mb": (torch.cuda.max_memory_allocated() / 2**20 - base_gpu) if device.type == "cuda"
        else max(peak_rss - base, 0.0),
        "memory": "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS growth",
        "peak_rss_mb": peak_rss,
        "device": device.type,
        "amp": str(amp).replace("torch.", "") if amp is not None else "float32",
    }
    return result


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line, with a `--preset`'s values where the option was not given explicitly."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), help="sets --model/--img/--classes/--batch/--steps")
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--img", type=int, default=224)
    parser.add_argument("--classes", type=int, default=200, help="C (CUB: 200); Prompt-CAM adds C tokens")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per configuration")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {MODES}")
    parser.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda[:i]")
    parser.add_argument("--amp", action="store_true", help="autocast as the trainer does (GPU: bf16 or fp16 + "
                        "GradScaler; CPU with bf16 units: bf16)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.preset:
        given = {a.split("=")[0].lstrip("-") for a in argv if a.startswith("--")}
        for key, value in PRESETS[args.preset].items():
            if key not in given:
                setattr(args, key, value)
    unknown = set(args.modes.split(",")) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {MODES}")
    return args


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    """The rows as a Markdown table with speed and memory ratios to full fine-tuning (the first row)."""
    ft = rows[0]
    lines = [f"{args.model} at {args.img} px, {args.classes} classes, batch {args.batch}, {args.steps} steps, "
             f"{ft['device']} ({ft['amp']}), {args.threads} thread(s); memory = {ft['memory']}", "",
             "| mode | trainable | img/s | peak MB | peak RSS MB | speed ×ft | memory ×ft |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['trainable']:,} | {r['images_per_s']:.2f} | {r['peak_mb']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['images_per_s'] / ft['images_per_s']:.2f} | "
                     f"{r['peak_mb'] / max(ft['peak_mb'], 1e-9):.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the configurations (each in its own subprocess), print the table and return its rows."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return []
    rows = []
    resolved = [f"--{key}={getattr(args, key)}" for key in ("model", "img", "classes", "batch", "steps", "threads",
                                                            "device")] + (["--amp"] if args.amp else [])
    for mode in ["finetune", *(m for m in args.modes.split(",") if m != "finetune")]:
        cmd = [sys.executable, __file__, "--worker", mode, *resolved]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(markdown(rows, args))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"config": {k: v for k, v in vars(args).items() if k not in ("out", "worker")},
                                        "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
