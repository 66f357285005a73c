"""The data layer: the synthetic TraitShapes set, real formats, and annotation-aware transforms.

Every dataset returns sample dicts (``image`` float [3,H,W] in [0,1], ``label`` int64, ``index``
and, where known, ``box``, ``parts``, ``mask``, ``part_masks``, ``trait_masks``) so one set of
transforms, trainers and metrics serves TraitShapes, CUB-layout folders and ImageFolder trees;
``detect_layout`` says which of the two folder layouts a path holds.
"""

from traitlens.data.errors import DataError
from traitlens.data.fashion_mnist import FASHION_MNIST_CLASSES, FashionMNIST, load_fashion_mnist, read_idx
from traitlens.data.folders import (
    IMAGE_EXTENSIONS,
    CUBDataset,
    ImageFolderDataset,
    TraitTable,
    class_names_from_folders,
    load_image,
)
from traitlens.data.layout import LAYOUTS, SPLIT_NAMES, Layout, detect_layout, split_folders
from traitlens.data.splits import DataSplits, SubsetDataset, open_splits, stratified_split
from traitlens.data.traitshapes import (
    PART_NAMES,
    PRESETS,
    SLOT_PARTS,
    SLOTS,
    InMemoryDataset,
    TraitShapes,
    TraitShapesConfig,
    TraitShapesSample,
    class_mask,
    class_names,
    class_traits,
    colour_histogram_baseline,
    differing_slots,
    discriminative_mask,
    export_cub,
    materialize,
    render,
    sample_label,
    sibling_pairs,
)
from traitlens.data.transforms import (
    CenterCrop,
    Compose,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    ToTensor,
    hflip,
)

__all__ = [
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "PART_NAMES",
    "PRESETS",
    "SLOTS",
    "SLOT_PARTS",
    "SPLIT_NAMES",
    "CUBDataset",
    "CenterCrop",
    "Compose",
    "DataError",
    "DataSplits",
    "FashionMNIST",
    "ImageFolderDataset",
    "InMemoryDataset",
    "Layout",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "Resize",
    "SubsetDataset",
    "ToTensor",
    "TraitShapes",
    "TraitShapesConfig",
    "TraitShapesSample",
    "TraitTable",
    "class_mask",
    "class_names",
    "class_names_from_folders",
    "class_traits",
    "colour_histogram_baseline",
    "detect_layout",
    "differing_slots",
    "discriminative_mask",
    "export_cub",
    "hflip",
    "load_fashion_mnist",
    "load_image",
    "materialize",
    "open_splits",
    "read_idx",
    "render",
    "sample_label",
    "sibling_pairs",
    "split_folders",
    "stratified_split",
]
