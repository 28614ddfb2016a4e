"""Datasets (the embedded captioned shapes first), tokenizers, transforms and collate.

    from mmtx.data import build_dataset, collate
    train = build_dataset("shapes", "train", augment="light")   # no download, ever
    test = build_dataset("digits", "test")                       # real data from scikit-learn

Captions become `caption_ids` / `caption_mask` in the batch with CaptionCollate:

    tok = WordTokenizer(shapes_vocabulary())      # or WordTokenizer.from_texts(ds.captions)
    loader = DataLoader(train, batch_size=64, collate_fn=CaptionCollate(tok, max_len=32))

Two-object captioned scenes with object masks and foil captions, for grounding and hard
negatives:

    ds = ShapesDataset(task="caption", return_objects=True, return_foils=True)
    ds[0]["caption"], ds[0]["foil_swap_objects"], ds[0]["object_masks"]   # (2, H, W) bool
"""

from .base import SubsetDataset, stratified_indices, stratified_split
from .build import build_dataset, list_datasets
from .captions import ImageCaptionFolder
from .collate import CaptionCollate, collate
from .digits import DigitsDataset
from .grid import save_sample_grid
from .scene_text import FOIL_KINDS, make_foils
from .shapes import TASKS, ShapesDataset, make_caption, shapes_vocabulary
from .tokenizers import (
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    WordTokenizer,
    build_tokenizer,
    load_tokenizer,
)
from .transforms import build_transforms, denormalize
from .vision import ImageFolderDataset, TorchvisionDataset, default_root

__all__ = [
    "build_dataset", "list_datasets", "ShapesDataset", "DigitsDataset", "ImageCaptionFolder",
    "ImageFolderDataset", "TorchvisionDataset", "SubsetDataset", "TASKS", "make_caption",
    "shapes_vocabulary", "make_foils", "FOIL_KINDS",
    "collate", "CaptionCollate", "build_transforms", "denormalize", "default_root",
    "stratified_indices", "stratified_split", "save_sample_grid",
    "Tokenizer", "WordTokenizer", "ByteTokenizer", "BPETokenizer", "build_tokenizer",
    "load_tokenizer",
]
