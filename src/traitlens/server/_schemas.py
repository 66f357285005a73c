"""Response bodies of the JSON API (they make the OpenAPI schema at `/openapi.json`)."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = [
    "ConceptOut",
    "ContrastOut",
    "ErrorOut",
    "ExampleOut",
    "ExplainOut",
    "HealthOut",
    "InfoOut",
    "InternalErrorOut",
    "MethodOut",
    "ModelOut",
    "PredictionOut",
    "ScaleOut",
    "SizeOut",
    "TargetOut",
]


class ErrorOut(BaseModel):
    """Every error: a message saying what went wrong and what to do."""

    detail: str


class InternalErrorOut(BaseModel):
    """A bug (500): the traceback is in the server's log under `request_id`; the response never carries it."""

    detail: str = Field(description='always "internal error"')
    request_id: str = Field(description="the id the server's log names this request with (also X-Request-ID)")


class MethodOut(BaseModel):
    """One explanation method from the registry."""

    name: str
    signed: bool = Field(description="negative values are counter-evidence")
    class_specific: bool = Field(description="the map depends on the target class")
    needs_grad: bool
    families: list[str] = Field(description="model families it runs on: vit, cnn, native")
    concept: bool = Field(description="accepts concept targets")
    summary: str
    cost: str
    default_upsample: str
    default_norm: str


class ModelOut(BaseModel):
    """A model the server loaded at start-up (chosen by `name`; never a path)."""

    name: str = Field(description="the name requests use and the page shows: a folder's or preset's own name")
    architecture: str = Field(description="the model's class, e.g. VisionTransformer or PromptCAM")
    family: str = Field(description="vit, cnn or native (interpretable by design)")
    num_classes: int | None
    class_names: list[str] | None
    input_size: list[int] = Field(description="[H, W] the images are resized to")
    methods: list[str] = Field(description="registered methods that run on this model's family")


class ConceptOut(BaseModel):
    """A concept stored in memory; explain it with `target=concept:<id>`."""

    id: str
    name: str
    model: str
    n_images: int
    dim: int


class ExampleOut(BaseModel):
    """An example image the page offers to click; its bytes are at `url`."""

    id: str
    name: str = Field(description="what the page shows under the thumbnail")
    source: str = Field(description="where it comes from: a samples folder, scikit-image's photos or TraitShapes")
    label: str | None = Field(description="the true class, when the source knows it")
    url: str
    width: int
    height: int


class InfoOut(BaseModel):
    """What the server offers."""

    version: str
    default_model: str
    models: list[ModelOut]
    methods: list[MethodOut]
    concepts_available: bool
    concepts: list[ConceptOut]
    limits: dict[str, float | int]
    image_formats: list[str]


class HealthOut(BaseModel):
    """Liveness and load."""

    status: str
    in_flight: int = Field(description="requests computing or queued now")
    capacity: int = Field(description="workers + queue; more concurrent requests get 503")


class PredictionOut(BaseModel):
    """One of the model's top classes."""

    index: int
    name: str | None
    prob: float
    logit: float


class SizeOut(BaseModel):
    """Width and height in pixels."""

    width: int
    height: int


class ScaleOut(BaseModel):
    """The one colour scale of a set of maps (the top-k maps of a request, or all its per-head maps).

    Colours run from `lo` to `hi`: the same colour is the same value on every map of the set. Signed maps use
    [−max|v|, max|v|] (0 black, at the centre), others [min, max]. `min`/`max` are the values' own range.
    """

    lo: float
    hi: float
    min: float
    max: float
    signed: bool


class TargetOut(BaseModel):
    """The explanation of one target."""

    index: int | None = Field(description="class id; null for a concept")
    name: str
    prob: float | None = Field(description="the model's probability of this class; null for a concept")
    overlay: str = Field(description="PNG data URL: the map blended on the image (opacity 0.55), at overlay_size, "
                                     "coloured on the request's `scale`")
    heat: str = Field(description="PNG data URL: the coloured map alone at overlay_size (lay it over `image`)")
    degenerate: bool = Field(description="the map was constant (nothing to show)")
    heads: list[str] | None = Field(None, description="PNG data URLs, one per head, when the method has head maps: "
                                                      "each head's map blended on the image, on `head_scale`")
    head_heat: list[str] | None = Field(None, description="the per-head coloured maps alone (lay them over "
                                                          "`head_image`)")
    raw: list[list[float]] | None = Field(None, description="raw token-grid map [h][w] (include_raw=true)")


class ContrastOut(BaseModel):
    """'Why A, not B': the raw map of A minus the raw map of B, shown on the signed scale."""

    a: str
    b: str
    overlay: str = Field(description="PNG data URL at overlay_size; orange = for A over B, blue = for B over A")
    heat: str = Field(description="the coloured difference alone (lay it over the response's `image`)")
    scale: ScaleOut
    max_abs: float
    raw: list[list[float]] | None = Field(None, description="raw token-grid difference [h][w] (include_raw=true)")


class ExplainOut(BaseModel):
    """An explanation of one uploaded image."""

    model: str
    method: str
    signed: bool
    input_size: list[int] = Field(description="[H, W] the model saw")
    overlay_size: SizeOut
    image: str = Field(description="PNG data URL: the uploaded image at overlay_size (the base of every `heat`)")
    head_image: str | None = Field(None, description="the image at the per-head maps' size (base of `head_heat`)")
    scale: ScaleOut = Field(description="the colour scale shared by the maps of all targets: raw values (the maps "
                                        "are not normalised), so the same colour is the same value")
    head_scale: ScaleOut | None = Field(None, description="the colour scale shared by all per-head maps")
    download: str = Field(description="URL of this explanation as .npz (`Explanation.load` reads it); kept for the "
                                      "last max_results explanations")
    predictions: list[PredictionOut]
    targets: list[TargetOut]
    contrast: ContrastOut | None = None
    map_shape: list[int] = Field(description="shape of Explanation.maps [B, K, H, W]")
    patch_map_shape: list[int] = Field(description="shape of Explanation.patch_maps [B, K, h, w]")
    head_maps_shape: list[int] | None = Field(description="shape of Explanation.head_maps [B, K, R, h, w] or null")
    amp: str | None = Field(None, description="the autocast dtype the maps were computed in ('bfloat16', 'float16'; "
                                              "`serve --amp`, amp-safe methods only), or null: float32")
    seconds: float
