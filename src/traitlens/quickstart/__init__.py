"""`traitlens quickstart`: the embedded default job, end to end and offline.

Generates a TraitShapes set, trains a tiny ViT on it, explains test images with every registered method
and writes an HTML report, plus a few test images in `samples/` (with `samples/labels.json`) that the README's
Python example loads. No downloads.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from traitlens.backbones import create_preset, normalize
from traitlens.data.traitshapes import TraitShapes, TraitShapesConfig, colour_histogram_baseline, materialize
from traitlens.explain import explain, list_methods
from traitlens.models import InterpretableModel, list_model_kinds
from traitlens.quickstart.sections import atlas_section, leaderboard_section, same_model_section, write_text
from traitlens.report import HtmlReport, accuracy_status, accuracy_warning, findings
from traitlens.train import FitConfig, evaluate_accuracy, fit, fit_on_cores
from traitlens.viz import figure_png, head_grid, method_grid, save_png, to_uint8_image

__all__ = ["QUICK_MODEL_OPTIONS", "QuickstartConfig", "QuickstartResult", "run_quickstart", "sample_name"]

#: The small CPU variant of each interpretable model (each kind's registered `quick_options`).
QUICK_MODEL_OPTIONS: dict[str, dict] = {k.name: dict(k.quick_options) for k in list_model_kinds()}

log = logging.getLogger(__name__)


@dataclass
class QuickstartConfig:
    """Sizes of the quickstart run; the defaults aim at ≥ 85 % test accuracy in under 5 CPU minutes.

    Why each setting (measurements: docs/history.md, "Quickstart recipe"):
    - flips and shifts of up to 4 px (half a patch): without them the ViT overfits its training images;
    - lr 1.5e-3: at 2e-3 some runs stall near the peak of the one-cycle schedule;
    - 9 epochs: what fits the time budget on 2 CPU cores;
    - the by-design models: the first 4,000 training images, each kind's own quick-recipe epochs
      (`interpretable_epochs` None), enough for ≥ 85 % on this ViT ("Quickstart by-design models").

    `samples_per_class` test images of each class are saved as `samples/<class>_<i>.png` (class names with "/"
    written as "_") for the README's example; `converged_accuracy` is the target under which a model is flagged.
    `train_processes`: the ViT's training processes (None: one per core, see `fit_on_cores`; 1 trains in this
    process, which saves the workers' start-up in tiny runs).
    """

    out: Path = Path("traitlens-quickstart")
    num_classes: int = 8
    size: int = 64
    n_train: int = 22_000
    n_val: int = 500
    n_test: int = 2_000
    epochs: int = 9
    batch_size: int = 128
    lr: float = 1.5e-3
    augment_flip: bool = True
    augment_shift: int = 4
    seed: int = 0
    num_workers: int = 2
    n_explain: int = 4
    leaderboard_images: int = 16
    same_model_images: int = 16
    #: test images per class in the trait atlases of the ViT (CDAM) and of each by-design model (native maps);
    #: 0 = no atlas.
    atlas_per_class: int = 32
    same_model_methods: tuple[str, ...] = ("cdam", "gradcam_vit", "gradcam", "input_x_gradient")
    interpretable: tuple[str, ...] = ("promptcam", "intr", "scouter")
    interpretable_train: int = 4_000
    interpretable_test: int = 1_000
    interpretable_epochs: int | None = None
    converged_accuracy: float = 0.85
    samples_per_class: int = 1
    train_processes: int | None = None
    progress: bool = True

    def vit_recipe(self) -> FitConfig:
        """The `FitConfig` the quickstart trains its ViT with (also the evidence benchmark's backbone recipe)."""
        return FitConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=self.seed,
                         augment_flip=self.augment_flip, augment_shift=self.augment_shift)


class _Phases:
    """Wall time per quickstart phase, logged as each ends (where the five minutes go)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._t
        self._t = now
        log.info("phase %s: %.1f s", name, self.seconds[name])


@dataclass
class QuickstartResult:
    """Where the report is and what the run measured."""

    report: Path
    model_dir: Path
    test_accuracy: float
    histogram_accuracy: float
    train_seconds: float
    total_seconds: float
    methods: list[str] = field(default_factory=list)
    skipped_methods: dict[str, str] = field(default_factory=dict)
    interpretable_accuracy: dict[str, float] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)


def run_quickstart(config: QuickstartConfig | None = None) -> QuickstartResult:
    """Run the quickstart and return where the report was written."""
    cfg = config or QuickstartConfig()
    t_start = time.perf_counter()
    phases = _Phases()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ts = TraitShapesConfig(size=cfg.size, num_classes=cfg.num_classes, seed=cfg.seed)
    log.info("generating TraitShapes: %d classes, %d px", cfg.num_classes, cfg.size)
    train = materialize(TraitShapes(ts, "train", cfg.n_train), cfg.num_workers, cfg.progress)
    val = materialize(TraitShapes(ts, "val", cfg.n_val), cfg.num_workers, cfg.progress)
    test = materialize(TraitShapes(ts, "test", cfg.n_test), cfg.num_workers, cfg.progress)
    samples = _save_samples(test, out / "samples", cfg.samples_per_class)
    log.info("saved %d sample test images in %s", len(samples), out / "samples")
    phases.done("generate data")

    torch.manual_seed(cfg.seed)  # the initial weights too: the same command gives the same models
    model = create_preset("traitlens-vit-tiny", cfg.num_classes, class_names=train.classes)
    # One one-thread process per core: faster than two intra-op threads, and robust to a busy machine
    # (docs/history.md, "CPU threading").
    result = fit_on_cores(model, train, val, cfg.vit_recipe(), out=out / "run", processes=cfg.train_processes,
                          progress=cfg.progress)
    phases.done("train ViT")
    train_seconds = phases.seconds["train ViT"]
    test_acc = evaluate_accuracy(model, test)
    hist_acc = colour_histogram_baseline(train, test)
    log.info("test accuracy %.3f (colour-histogram baseline %.3f)", test_acc, hist_acc)
    phases.done("test accuracy + histogram baseline")

    report = HtmlReport("traitlens quickstart: a tiny ViT on TraitShapes")
    report.heading("What was found")
    summary = report.placeholder()
    report.heading("Model and data")
    report.table(
        ["quantity", "value"],
        [["classes", cfg.num_classes], ["image size", f"{cfg.size} px"],
         ["train / val / test images", f"{cfg.n_train} / {cfg.n_val} / {cfg.n_test}"],
         ["epochs", cfg.epochs], ["augmentation", _augmentation(cfg)], ["training time", f"{train_seconds:.0f} s"],
         ["ViT test accuracy", test_acc], ["colour-histogram baseline accuracy", hist_acc],
         ["chance", 1 / cfg.num_classes]],
    )
    _warn(report, "ViT", test_acc, cfg)
    report.paragraph("The colour-histogram baseline (logistic regression on per-channel histograms) shows the classes "
                     "are not separable by colour statistics alone: the model must find the traits.", note=True)
    report.figure(_curves(result.history), "training curves")

    images01 = torch.stack([test[i]["image"] for i in range(cfg.n_explain)])
    labels = [test.classes[int(test.labels[i])] for i in range(cfg.n_explain)]
    x = normalize(model, images01)
    explanations, skipped = {}, {}
    for info in list_methods(family="vit"):
        try:
            explanations[info.name] = explain(model, x, method=info.name)
        except Exception as err:  # a broken method must not cost the user the whole report
            log.warning("method %s failed: %s", info.name, err)
            skipped[info.name] = f"{type(err).__name__}: {err}"
    report.heading("Explanations of the predicted class")
    report.paragraph("Rows: test images (true and explained class under each image); columns: every registered "
                     "method, for the model's top-1 class, wrapped into bands of a few methods that each start with "
                     "the images again. The bar under each map gives its own scale in the method's units (each map "
                     "is scaled on its own, so compare shapes across methods, not colours). Signed maps use the "
                     "diverging scale: orange = evidence for the class, blue = against, black = 0; the others run "
                     "from black (their minimum) to yellow (their maximum).")
    report.figure(method_grid(images01, explanations, row_labels=labels, path=out / "methods.png"),
                  "images × methods")
    if "raw_attention" in explanations and explanations["raw_attention"].head_maps is not None:
        heads = explanations["raw_attention"].head_maps[0, 0]
        report.figure(head_grid(heads, path=out / "heads.png"), f"last-block CLS attention per head ({labels[0]})")
    phases.done("explain with every method")
    model_dir = result.best_dir or out / "run" / "best"
    interp_acc, nets = _interpretable_section(report, cfg, model_dir, train, val, test, images01, labels, out)
    phases.done("interpretable models")
    rows: list[dict] = []
    if cfg.leaderboard_images:
        rows = leaderboard_section(report, model, test, nets, {"ViT": test_acc, **interp_acc},
                                   n_images=cfg.leaderboard_images)
        phases.done("leaderboard")
    if cfg.same_model_images and nets:
        same_model_section(report, nets, test, out, n_images=cfg.same_model_images,
                           methods=cfg.same_model_methods, seed=cfg.seed)
        phases.done("same-model table")
    if cfg.atlas_per_class:
        atlas_section(report, model, nets, test, out, per_class=cfg.atlas_per_class, progress=cfg.progress)
        phases.done("trait atlas")
    if skipped:
        report.heading("Methods that failed")
        report.table(["method", "error"], sorted(skipped.items()))
    found = findings({"ViT": test_acc, **interp_acc}, num_classes=cfg.num_classes, target=cfg.converged_accuracy,
                     baseline=hist_acc, rows=rows)
    report.fill(summary, found.text())
    total = time.perf_counter() - t_start
    report.heading("Where the time went")
    report.table(["phase", "seconds"], [[name, f"{sec:.1f}"] for name, sec in phases.seconds.items()])
    report.paragraph(f"Total run time {total:.0f} s. Model saved in {model_dir}.", note=True)
    path = report.write(out / "report.html")
    return QuickstartResult(path, model_dir, test_acc, hist_acc, train_seconds, total,
                            sorted(explanations), skipped, interp_acc, phases.seconds)


def _warn(report: HtmlReport, name: str, accuracy: float, cfg: QuickstartConfig) -> None:
    """A red warning for a model near chance, an amber one for a model below the target, nothing otherwise."""
    text = accuracy_warning(name, accuracy, cfg.num_classes, cfg.converged_accuracy)
    if text is not None:
        near = accuracy_status(accuracy, cfg.num_classes, cfg.converged_accuracy) == "near chance"
        report.warning(text, "warning" if near else "caution")


def sample_name(class_name: str, i: int) -> str:
    """The file of a class's `i`-th saved sample: ("red-head/plain/fan/spike", 0) → "red-head_plain_fan_spike_0.png"."""
    return f"{class_name.replace('/', '_').replace(' ', '-')}_{i}.png"


def _save_samples(test, folder: Path, per_class: int) -> dict[str, str]:
    """Save the first `per_class` test images of each class as PNGs and `labels.json` (file name → class)."""
    taken: dict[int, int] = {}
    labels: dict[str, str] = {}
    for i in range(len(test)):
        c = int(test.labels[i])
        if taken.get(c, 0) >= per_class:
            continue
        name = sample_name(test.classes[c], taken.get(c, 0))
        save_png(to_uint8_image(test[i]["image"]), folder / name)
        labels[name] = test.classes[c]
        taken[c] = taken.get(c, 0) + 1
        if len(taken) == len(test.classes) and all(n >= per_class for n in taken.values()):
            break
    if labels:
        write_text(folder / "labels.json", json.dumps(dict(sorted(labels.items())), indent=1))
    return labels


def _interpretable_section(report: HtmlReport, cfg: QuickstartConfig, backbone_dir: Path, train, val, test,
                           images01: torch.Tensor, labels: list[str], out: Path,
                           ) -> tuple[dict[str, float], dict[str, InterpretableModel]]:
    """Train Prompt-CAM / INTR / SCOUTER briefly on the quickstart ViT and show their own maps.

    Returns (test accuracy, trained model) per kind.
    """
    if not cfg.interpretable:
        return {}, {}
    from traitlens.models import build_interpretable

    subset = train.head(cfg.interpretable_train)
    test_subset = test.head(cfg.interpretable_test)
    nets = {}
    for kind in cfg.interpretable:
        torch.manual_seed(cfg.seed)
        nets[kind] = build_interpretable(kind, backbone_dir, cfg.num_classes, class_names=subset.classes,
                                         **QUICK_MODEL_OPTIONS.get(kind, {}))
    # On a CPU each model trains on one thread and the models train side by side, one per core: these small models
    # train far slower on two intra-op threads than on one (docs/history.md, "CPU threading").
    on_cpu = not torch.cuda.is_available()
    workers = min(len(nets), os.cpu_count() or 1) if on_cpu else 1
    threads = torch.get_num_threads()
    log.info("training %s (%d at a time)", ", ".join(nets), workers)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            jobs = {kind: pool.submit(_train_one, kind, net, cfg, subset, val, test_subset, out, on_cpu,
                                      cfg.progress and workers == 1) for kind, net in nets.items()}
            results = {kind: job.result() for kind, job in jobs.items()}
    finally:
        torch.set_num_threads(threads)

    report.heading("Interpretable-by-design models on the quickstart ViT")
    accuracy = {kind: acc for kind, (acc, _, _) in results.items()}
    status = {"ok": "yes", "below target": "NO: below target", "near chance": "NO: near chance"}
    report.table(["model", f"test accuracy ({len(test_subset)} images)", "epochs", "train time",
                  f"converged (≥ {cfg.converged_accuracy:.0%})"],
                 [[kind, acc, epochs, f"{sec:.0f} s", status[accuracy_status(acc, cfg.num_classes,
                                                                            cfg.converged_accuracy)]]
                  for kind, (acc, epochs, sec) in results.items()])
    report.paragraph(f"Each trained on {len(subset)} images with its 'quick' recipe: Prompt-CAM (shallow: class "
                     "prompts from the first block) keeps the ViT frozen, INTR "
                     "fine-tunes it at a lower learning rate and SCOUTER its last blocks. SCOUTER runs without the "
                     "slot-attention renormalisation: in so short a run the renormalised sigmoid saturates.",
                     note=True)
    for kind, acc in accuracy.items():
        _warn(report, kind, acc, cfg)
    for kind, net in nets.items():
        exp = explain(net, normalize(net, images01), method="native")
        report.figure(method_grid(images01, {f"{kind} native": exp}, row_labels=labels),
                      f"{kind}: its own evidence map for the predicted class, overlaid on each test image")
        if exp.head_maps is not None:
            report.figure(head_grid(exp.head_maps[0, 0], image=images01[0]),
                          f"{kind}: per-head maps for the predicted class ({labels[0]})")
            _head_part_table(report, kind, net, test_subset)
    return accuracy, nets


def _head_part_table(report: HtmlReport, kind: str, net: torch.nn.Module, test) -> None:
    """Which part each head of `net` looks at: its share of positive native evidence per TraitShapes part."""
    from traitlens.evaluation import trait_report

    tr = trait_report(net, test, method="native", n_images=64)
    if not tr.head_rows:
        return
    report.table(["head", *tr.parts, "top part"],
                 [[row["head_index"], *[row[p] for p in tr.parts], row["top_part"]] for row in tr.head_rows])
    report.paragraph(f"{kind}: share of each head's positive evidence on each part (64 test images, true class); "
                     "rows sum to 1.", note=True)


def _train_one(kind: str, net: torch.nn.Module, cfg: QuickstartConfig, train, val, test, out: Path, one_thread: bool,
               progress: bool) -> tuple[float, int, float]:
    """Fit one interpretable model with its quick recipe; returns (test accuracy, epochs, seconds)."""
    from traitlens.models import recommended_fit_config

    if one_thread:  # OpenMP thread counts are per calling thread: set it in the worker itself
        torch.set_num_threads(1)
    t0 = time.perf_counter()
    epochs = {} if cfg.interpretable_epochs is None else {"epochs": cfg.interpretable_epochs}
    result = fit(net, train, val, recommended_fit_config(kind, "quick", seed=cfg.seed, **epochs), out=out / kind,
                 progress=progress)
    return evaluate_accuracy(net, test), len(result.history), time.perf_counter() - t0


def _augmentation(cfg: QuickstartConfig) -> str:
    parts = (["random left-right flips"] if cfg.augment_flip else []) + (
        [f"shifts of up to {cfg.augment_shift} px"] if cfg.augment_shift else [])
    return ", ".join(parts) or "none"


def _curves(history: list[dict[str, float]]) -> bytes:
    import matplotlib.pyplot as plt  # here, not at module level: the CLI imports this module on every command

    fig, ax = plt.subplots(1, 2, figsize=(8, 2.8))
    epochs = [h["epoch"] for h in history]
    ax[0].plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("train loss")
    ax[1].plot(epochs, [h["train_acc"] for h in history], marker="o", label="train")
    if "val_acc" in history[0]:
        ax[1].plot(epochs, [h["val_acc"] for h in history], marker="o", label="val")
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("accuracy")
    ax[1].legend()
    return figure_png(fig)
