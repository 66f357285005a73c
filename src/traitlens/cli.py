"""The `traitlens` command line: quickstart, data, train, explain, methods."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import typer
from PIL import Image

from traitlens.models import list_model_kinds
from traitlens.quickstart import QuickstartConfig, run_quickstart

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="traitlens: make Vision Transformer classifiers explain themselves.")
data_app = typer.Typer(no_args_is_help=True, help="Generate or export datasets.")
app.add_typer(data_app, name="data")

log = logging.getLogger("traitlens")


@app.command()
def quickstart(
    out: Path = typer.Option(QuickstartConfig.out, help="Output folder for the model and report."),
    classes: int = typer.Option(QuickstartConfig.num_classes, help="TraitShapes classes."),
    epochs: int = typer.Option(QuickstartConfig.epochs, help="Training epochs."),
    n_train: int = typer.Option(QuickstartConfig.n_train, help="Training images."),
    seed: int = typer.Option(QuickstartConfig.seed, help="Seed for data and training."),
) -> None:
    """Generate TraitShapes, train a tiny ViT, explain it with every method, write an HTML report.

    Example: traitlens quickstart --out runs/qs
    """
    res = run_quickstart(QuickstartConfig(out=out, num_classes=classes, epochs=epochs, n_train=n_train, seed=seed))
    typer.echo(f"test accuracy {res.test_accuracy:.3f} (colour-histogram baseline {res.histogram_accuracy:.3f}); "
               f"{res.total_seconds:.0f} s in total")
    typer.echo(f"model:  {res.model_dir}")
    typer.echo(f"report: {res.report.resolve()}")


@data_app.command("traitshapes")
def data_traitshapes(
    out: Path = typer.Option(..., help="Folder to write the CUB-layout dataset into."),
    classes: int = typer.Option(16, help="Number of classes."),
    size: int = typer.Option(64, help="Image side in pixels (32-224)."),
    n: int = typer.Option(10_000, help="Training images."),
    n_test: int = typer.Option(2_000, help="Test images."),
    seed: int = typer.Option(0, help="Base seed."),
    preset: str = typer.Option("default", help="'default' or 'hard'."),
    workers: int = typer.Option(2, help="Rendering processes."),
) -> None:
    """Write a TraitShapes set in the CUB-200-2011 layout (with segmentations and part masks).

    Example: traitlens data traitshapes --out data/ts --classes 16 --size 64 --n 10000
    """
    from traitlens.data.traitshapes import TraitShapes, TraitShapesConfig, export_cub, materialize

    cfg = TraitShapesConfig(size=size, num_classes=classes, seed=seed, preset=preset)
    train = materialize(TraitShapes(cfg, "train", n), workers)
    test = materialize(TraitShapes(cfg, "test", n_test), workers)
    typer.echo(f"wrote {export_cub(train, out, test=test)}")


def training_overrides(*, epochs: int, lr: float, batch_size: int, num_workers: int,
                       **flags: bool | int | None) -> dict[str, Any]:
    """The FitConfig fields a `train` command line sets: numbers given as non-zero, flags given at all (None = keep
    the recipe's value, so `--recipe reference` keeps its flips and crops unless the user turns them off)."""
    numbers = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "num_workers": num_workers}
    return {**{k: v for k, v in numbers.items() if v}, **{k: v for k, v in flags.items() if v is not None}}


#: `linear` / `finetune` train any timm classifier; every registered interpretable model kind is a mode too.
TRAIN_MODES = ("linear", "finetune", *(kind.name for kind in list_model_kinds()))


@app.command()
def train(
    mode: str = typer.Argument(..., help=" | ".join(TRAIN_MODES)),
    data: Path = typer.Option(..., help="CUB-layout folder (images.txt), or ImageFolder: train/ (+ val/) (+ test/), "
                                        "or class folders only."),
    model: str = typer.Option("traitlens-vit-tiny", "--model", "--backbone",
                              help="timm name, hf-hub: id, preset or model folder (the backbone for "
                                   "promptcam/intr/scouter)."),
    out: Path = typer.Option(Path("runs/train"), help="Run folder: checkpoint.pt, metrics, best/."),
    epochs: int = typer.Option(0, help="Epochs (0 = the recipe's default)."),
    lr: float = typer.Option(0.0, help="Learning rate (0 = the recipe's default)."),
    batch_size: int = typer.Option(0, help="Batch size (0 = the recipe's default)."),
    recipe: str = typer.Option("quick", help="Interpretable models: 'quick' (small CPU runs: the quickstart's model "
                                             "options and recipe) or 'reference' (the paper's; docs/recipes.md). "
                                             "linear / finetune: published weights get the pretrained recipes."),
    pretrained: bool = typer.Option(True, help="Published weights for a timm / hf-hub: name (from the Hugging Face "
                                               "hub or its cache); --no-pretrained builds it randomly. Model folders "
                                               "and presets ignore it."),
    allow_random_backbone: bool = typer.Option(False, help="Allow a frozen backbone without trained weights "
                                                           "(linear / promptcam on a preset or --no-pretrained)."),
    model_arg: list[str] = typer.Option(None, "--model-arg", help="KEY=VALUE constructor option, repeatable, values "
                                                                  "as JSON (hidden_dim=64, variant=shallow)."),
    model_config: Path | None = typer.Option(None, help="JSON object of constructor options (--model-arg overrides)."),
    img_size: int = typer.Option(0, help="ViT input size (a model folder's position embedding is resampled); "
                                         "0 = the model's own."),
    val_fraction: float = typer.Option(0.1, help="Without a val/ folder: the share of every class held out of "
                                                 "train to select the checkpoint on (0 = none: keep the last "
                                                 "epoch). The test split is never used to select."),
    split_seed: int = typer.Option(0, help="Seed of the held-out validation draw."),
    workers: int = typer.Option(0, help="DataLoader worker processes (0 = load in the training process)."),
    resume: bool = typer.Option(False, help="Continue the run in OUT (same settings and data)."),
    overwrite: bool = typer.Option(False, help="Replace a run already in OUT (default: refuse)."),
    amp: bool | None = typer.Option(None, "--amp/--no-amp", help="Mixed precision: float16 on a GPU, bfloat16 on a "
                                                              "CPU with AMX/AVX512-BF16 (default: the recipe's, on)."),
    augment_flip: bool | None = typer.Option(None, "--augment-flip/--no-augment-flip",
                                             help="Random left-right flips of the training images (default: the "
                                                  "recipe's)."),
    augment_shift: int | None = typer.Option(None, help="Random translations of the training images by up to this "
                                                        "many px (default: the recipe's)."),
    augment_crop: bool | None = typer.Option(None, "--augment-crop/--no-augment-crop",
                                             help="Resize to input/0.875 and crop at random (Resize -> RandomCrop, "
                                                  "as the reference recipes do; default: the recipe's)."),
    seed: int = typer.Option(0),
) -> None:
    """Train a classifier: `linear` probe or `finetune` of a timm model, or an interpretable model on a backbone.

    The checkpoint is selected on validation (val/, or a stratified share of train); the test split is scored once,
    for that checkpoint, at the end (metrics.json records both; docs/training.md).

    Example: traitlens train finetune --data data/ts --model traitlens-vit-tiny --epochs 10 --out runs/ts
    Example: traitlens train promptcam --data data/ts --backbone runs/ts/best --out runs/pcam
    Example: traitlens train intr --data data/ts --backbone runs/ts/best --model-arg dec_layers=1 --out runs/intr
    Distributed: torchrun --nproc-per-node 2 -m traitlens train finetune --data data/ts ...
    """
    from dataclasses import replace

    import torch

    from traitlens.data import open_splits
    from traitlens.models import recommended_fit_config
    from traitlens.models.build import build_classifier, parse_model_options, published_weights
    from traitlens.train.distributed import distributed_from_env
    from traitlens.train.run import check_run_dir, clear_run_dir, open_run_splits, train_and_test

    if mode not in TRAIN_MODES:
        raise typer.BadParameter(f"unknown mode '{mode}'; choose from {', '.join(TRAIN_MODES)}")
    options = parse_model_options(model_arg or [], model_config)
    replaced = check_run_dir(out, overwrite=overwrite, resume=resume)
    class_names = open_splits(data, None, val_fraction, split_seed).classes
    with distributed_from_env() as device:
        torch.manual_seed(seed)  # identical initial weights on every rank
        net = build_classifier(mode, model, len(class_names), class_names, pretrained=pretrained, options=options,
                               recipe=recipe, img_size=img_size, allow_random_backbone=allow_random_backbone)
        cfg = recommended_fit_config(mode, recipe, pretrained=published_weights(model, pretrained), backbone=model,
                                     seed=seed)
        cfg = replace(cfg, **training_overrides(epochs=epochs, lr=lr, batch_size=batch_size, num_workers=workers,
                                                amp=amp, augment_flip=augment_flip, augment_shift=augment_shift,
                                                augment_crop=augment_crop))
        net = net.to(device)
        splits = open_run_splits(data, net, cfg, val_fraction, split_seed)
        log.info("%s: %s", data, splits.describe())
        clear_run_dir(replaced)
        res = train_and_test(net, splits.train, splits.val, splits.test, cfg, out, data=splits.summary(),
                             resume=resume)
    typer.echo(res.summary_line())


@app.command()
def evaluate(
    model: str = typer.Option(..., help="Model folder, timm name or preset."),
    data: str = typer.Option(..., help="CUB-layout folder, ImageFolder tree, or traitshapes[:N]."),
    methods: str = typer.Option("cdam", help="Comma-separated methods, globs, or 'all'."),
    metrics: str = typer.Option("default", help="Comma-separated metrics (name or name@source), 'default' or 'all'."),
    out: Path = typer.Option(Path("runs/evaluate"), help="Output folder: results.{csv,json,md}, plots/, cache/."),
    split: str = typer.Option("test", help="Dataset split."),
    batch_size: int = typer.Option(16),
    max_images: int = typer.Option(0, help="Evaluate at most this many images (0 = all)."),
    target: str = typer.Option("label", help="'label' (the true class), 'top1' (the prediction) or 'lsc' (the "
                                             "least similar class)."),
    lsc: str = typer.Option("", help="With --target lsc: min_logit (default), traits, a JSON file {true: lsc} or "
                                     "'TRUE:LSC,...'."),
    amp: bool = typer.Option(False, "--amp", help="Mixed precision for every method (all must be amp-safe, "
                                                  "docs/performance.md); part of the cache key."),
) -> None:
    """Score explanation methods with faithfulness, localisation and complexity metrics; resumable.

    Example: traitlens evaluate --model runs/ts/best --data traitshapes:128 --methods cdam,agcam,rollout
    --metrics deletion,insertion,pointing_game@trait --out runs/eval
    Sharded: torchrun --nproc-per-node 2 -m traitlens evaluate ...
    """
    from traitlens.evaluation import cli_evaluate
    from traitlens.train.distributed import distributed_from_env

    with distributed_from_env() as device:
        results = cli_evaluate(model, data, methods, metrics, out, split=split, batch_size=batch_size,
                               max_images=max_images or None, target=target, lsc=lsc or None,
                               device=str(device), amp=amp)
    for row in results.rows:
        typer.echo(f"{row['method']:22} {row['metric']:28} {row['value']:.4f}")
    typer.echo(f"wrote results to {out}")


@app.command("atlas")
def atlas_cmd(
    model: str = typer.Option(..., help="Model folder, timm name or preset."),
    data: str = typer.Option(..., help="CUB-layout folder, ImageFolder tree, or traitshapes[:N]."),
    method: str = typer.Option("cdam", help="A method from `traitlens methods`, or 'native' (Prompt-CAM, INTR, "
                                            "SCOUTER)."),
    out: Path = typer.Option(Path("runs/atlas"), help="Output folder: index.html, classes/, atlas.json, *.csv, "
                                                      "exemplars/, state/ (resume)."),
    classes: str = typer.Option("", help="Comma-separated class names or indices (default: all)."),
    max_per_class: int = typer.Option(0, help="At most this many images per class (0 = all)."),
    confused: int = typer.Option(2, help="Confused classes per class (and runner-up targets per image)."),
    exemplars: int = typer.Option(3, help="Correctly classified exemplars shown per class."),
    split: str = typer.Option("test", help="Dataset split."),
    batch_size: int = typer.Option(16),
    device: str = typer.Option("auto", help="auto (cuda when available) | cpu | cuda | cuda:N"),
    resume: bool = typer.Option(True, help="Continue an interrupted run in --out (--no-resume starts over)."),
    amp: bool = typer.Option(False, "--amp", help="Mixed precision for an amp-safe method (docs/performance.md); "
                                                  "part of the settings a resume must match."),
) -> None:
    """Which traits each class relies on: part shares and lifts, confused pairs with "why A, not B" maps, exemplars.

    Example: traitlens atlas --model runs/ts/best --data traitshapes:512 --method cdam --max-per-class 32
    --out runs/atlas
    """
    from traitlens.backbones import load_model
    from traitlens.evaluation import atlas, open_dataset
    from traitlens.explain import amp_refusal, method_refusal
    from traitlens.report import write_atlas_html

    net = load_model(model)
    _refuse(method_refusal(net, method))
    _refuse(amp_refusal(method) if amp else None)
    net = net.to(_device(device)).eval()
    dataset = open_dataset(data, net, split)
    chosen = [c.strip() for c in classes.split(",") if c.strip()] or None
    name = "/".join(Path(model).parts[-2:]) if Path(model).exists() else model  # "run/best", never a full path
    res = atlas(net, dataset, method, out, classes=chosen, max_per_class=max_per_class or None, confused=confused,
                exemplars=exemplars, batch_size=batch_size, model_name=name, resume=resume,
                method_options={"amp": True} if amp else None)
    index = write_atlas_html(res, out)
    typer.echo(f"{res.n_images} images, {len(res.classes)} classes, accuracy {res.accuracy:.3f}")
    if res.hit_fraction is not None:
        typer.echo(f"top-lift part is a discriminative part for {round(res.hit_fraction * res.n_hit_classes)} of "
                   f"{res.n_hit_classes} classes ({res.hit_fraction:.1%})")
    if res.seconds_per_image is not None:
        typer.echo(f"{res.seconds_per_image:.4f} s per image")
    typer.echo(f"atlas: {index.resolve()}")


@app.command()
def serve(
    model: list[str] = typer.Option(None, help="Model folder / timm name / preset; repeat for several. "
                                               "Default: the quickstart model."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (127.0.0.1 keeps it local)."),
    port: int = typer.Option(8000),
    workers: int = typer.Option(2, help="Explanation worker threads."),
    queue: int = typer.Option(8, help="Requests allowed to wait for a worker; more get 503."),
    max_upload_mb: float = typer.Option(8.0, help="Upload size cap in MiB (413 beyond)."),
    timeout: float = typer.Option(120.0, help="Per-request timeout in seconds (504 beyond)."),
    docs: bool = typer.Option(False, "--docs", help="Also serve FastAPI's interactive /docs page (it loads "
                                                    "Swagger UI from a CDN). Off by default."),
    examples: list[Path] = typer.Option(None, "--examples", help="A folder of sample images the page offers to "
                                                                 "click; repeat for several. Default: samples/ "
                                                                 "next to the model (the quickstart's)."),
    atlas: list[Path] = typer.Option(None, help="A `traitlens atlas` folder to show at /atlas; repeat for several "
                                                "(atlases next to a served model folder are found too)."),
    device: str = typer.Option("auto", help="auto (cuda when available) | cpu | cuda | cuda:N"),
    amp: bool = typer.Option(False, "--amp", help="Mixed precision for the amp-safe methods (the others stay "
                                                  "float32; each response names its dtype)."),
) -> None:
    """Serve a local web page: upload an image, pick method/class/concept, see overlays and per-head maps.

    Example: traitlens serve --model traitlens-quickstart/run/best --port 8000
    """
    from traitlens.server import serve as run_server

    run_server(model or None, host=host, port=port, docs=docs, examples=examples or None, workers=workers,
               queue_size=queue, max_upload_bytes=int(max_upload_mb * (1 << 20)), timeout_s=timeout,
               atlas=atlas or None, device=_device(device), amp=amp)


def _unique(name: str, used: set[str]) -> str:
    """`name`, or `name-2`, `name-3`, … when one already in `used` (compared case-insensitively) has it; adds it."""
    candidate, n = name, 1
    while candidate.casefold() in used:
        n += 1
        candidate = f"{name}-{n}"
    used.add(candidate.casefold())
    return candidate


def output_stems(paths: list[Path]) -> list[str]:
    """File stems for the overlays of `paths`: inputs sharing a name get -2, -3, … in the order given.

    Two folders' `ok.png` give `ok` and `ok-2`; the comparison ignores case, for case-insensitive file systems.
    """
    used: set[str] = set()
    return [_unique(path.stem, used) for path in paths]


@app.command("explain")
def explain_cmd(
    images: list[Path] = typer.Argument(..., help="Image files."),
    model: str = typer.Option(..., help="Model folder, timm name or preset."),
    method: str = typer.Option("cdam", help="A method from `traitlens methods`."),
    target: str = typer.Option("top1", help="top1 | topk:K | class index | class name | "
                                            "comma-separated list, one per image"),
    out: Path = typer.Option(Path("explanations"), help="Output folder: IMAGE_METHOD_TARGET.png per image and "
                                                        "target (inputs sharing a file name get IMAGE-2, IMAGE-3, "
                                                        "… in the order given) and METHOD.npz."),
    target_space: str = typer.Option("logit", help="logit | prob | log_prob"),
    upsample: str = typer.Option("", help="nearest | bilinear (default: the method's)"),
    normalize_maps: str = typer.Option("", "--normalize", help="none | minmax | maxabs (default: the method's)"),
    force: bool = typer.Option(False, "--force", help="Overwrite outputs already in --out (default: refuse)."),
    device: str = typer.Option("auto", help="auto (cuda when available) | cpu | cuda | cuda:N"),
    amp: bool = typer.Option(False, "--amp", help="Mixed precision (bfloat16; float16 on older GPUs) for the "
                                                  "amp-safe methods; maps within the tolerance of "
                                                  "docs/performance.md."),
) -> None:
    """Explain image files; writes one PNG overlay per image and target, and the raw maps as .npz.

    Outputs already in --out are never overwritten without --force: the command stops before writing anything.

    Example: traitlens explain bird.png --model traitlens-quickstart/run/best --method cdam --target topk:3
    """
    from traitlens.backbones import class_names_of, load_images, load_model, normalize
    from traitlens.explain import amp_refusal, explain, method_refusal, parse_target_text
    from traitlens.viz import overlay, save_png

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    npz = out / f"{method}.npz"
    net = load_model(model)
    _refuse(method_refusal(net, method))
    _refuse(amp_refusal(method) if amp else None)
    net = net.to(_device(device)).eval()
    images01 = load_images(images, model=net)
    tgt = parse_target_text(target, class_names_of(net))
    x = normalize(net, images01.to(_device(device)))
    exp = explain(net, x, method=method, target=tgt, target_space=target_space, upsample=upsample or None,
                  normalize=normalize_maps or None, amp=amp).cpu()
    used = {npz.name.casefold()}
    overlays: list[tuple[int, int, Path]] = []
    for b, stem in enumerate(output_stems(list(images))):
        for k in range(exp.maps.shape[1]):
            name = exp.target_names[b][k] if exp.target_names else str(int(exp.targets[b, k]))
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
            overlays.append((b, k, out / f"{_unique(f'{stem}_{method}_{safe}', used)}.png"))
    existing = [path for path in (npz, *(path for _, _, path in overlays)) if path.exists()]
    if existing and not force:
        more = f" and {len(existing) - 1} more outputs" if len(existing) > 1 else ""
        raise FileExistsError(f"{existing[0]}{more} already exist; pass --force to overwrite, or another --out")
    out.mkdir(parents=True, exist_ok=True)
    for b, k, path in overlays:
        save_png(overlay(images01[b], exp.maps[b, k], signed=exp.signed), path)
    exp.save(npz)
    if exp.logits is not None:
        names = getattr(net, "class_names", None)
        probs = exp.logits.softmax(-1)
        top = probs.topk(min(3, probs.shape[-1]))
        for b, path in enumerate(images):
            preds = ", ".join(f"{names[i] if names else i} {p:.2f}"
                              for p, i in zip(top.values[b].tolist(), top.indices[b].tolist(), strict=True))
            typer.echo(f"{path}: {preds}")
    typer.echo(f"wrote overlays and {method}.npz to {out}")


def _device(device: str) -> str:
    """'auto' → cuda when available, else cpu; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _refuse(reason: str | None) -> None:
    """A usage error (exit 2) with the one-line reason, e.g. a method that does not run on the model."""
    if reason is not None:
        typer.echo(f"error: {reason}", err=True)
        raise typer.Exit(2)


@app.command()
def methods(
    model: str = typer.Option("", help="Model folder, timm name or preset: list only the methods that run on it."),
) -> None:
    """List every explanation method with its metadata (with --model, those that run on that model).

    Example: traitlens methods --model runs/pcam/best
    """
    from traitlens.explain import list_methods, model_families, supported_methods

    infos = list_methods()
    if model:
        from traitlens.backbones import load_model

        net = load_model(model)
        infos = supported_methods(net)
        typer.echo(f"{model} ({type(net).__name__}) offers {', '.join(model_families(net)) or 'no family'}; "
                   f"{len(infos)} of {len(list_methods())} methods run on it")
    typer.echo(f"{'name':22} {'signed':6} {'class':5} {'grad':4} {'amp':5} {'families':24} cost")
    for m in infos:
        amp = "-" if m.amp_tolerance is None else f"{m.amp_tolerance:g}"  # the tolerance --amp keeps the maps within
        typer.echo(f"{m.name:22} {'yes' if m.signed else 'no':6} {'yes' if m.class_specific else 'no':5} "
                   f"{'yes' if m.needs_grad else 'no':4} {amp:5} {','.join(m.families):24} {m.cost}")


def main() -> None:
    """Entry point of the `traitlens` script: logging to stderr, then the Typer app."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own pixel cap refuses those images
    try:
        app()
    except (ValueError, TypeError, OSError, RuntimeError, OverflowError) as err:
        # Known user errors (bad model name, corrupt image, unknown method, an existing output, ...) get one line,
        # not a traceback.
        typer.echo(f"error: {' '.join(str(err).split())}", err=True)
        raise SystemExit(2) from err


if __name__ == "__main__":
    main()
