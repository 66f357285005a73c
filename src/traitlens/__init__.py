"""traitlens: make Vision Transformer image classifiers explain themselves.

Example:
    >>> import traitlens as tl
    >>> model = tl.load_model("traitlens-quickstart/run/best")  # doctest: +SKIP
    >>> exp = tl.explain(model, images, method="cdam", target="topk:3")  # doctest: +SKIP
"""

from traitlens import models  # registers the interpretable models and the "native" method
from traitlens._version import __version__
from traitlens.backbones import (
    AttentionProbe,
    ImageLoadError,
    load_image,
    load_images,
    load_model,
    normalize,
    save_model,
)
from traitlens.evaluation import Atlas, atlas, evaluate
from traitlens.explain import (
    Concept,
    Explanation,
    IncompatibleMethodError,
    explain,
    get_method,
    list_methods,
    method_refusal,
    supported_methods,
)
from traitlens.train import FitConfig, fit

__all__ = [
    "Atlas",
    "AttentionProbe",
    "Concept",
    "Explanation",
    "FitConfig",
    "ImageLoadError",
    "IncompatibleMethodError",
    "__version__",
    "atlas",
    "evaluate",
    "explain",
    "fit",
    "get_method",
    "list_methods",
    "load_image",
    "load_images",
    "load_model",
    "method_refusal",
    "models",
    "normalize",
    "save_model",
    "supported_methods",
]
