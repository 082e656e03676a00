"""The `imagefolder` source: image files sorted into one folder per class, as torchvision's
ImageFolder and Hugging Face's imagefolder read them.

    data.dir/<class>/*.png|jpg|jpeg                 one pool (drray splits off heldout and test), or
    data.dir/{train,heldout,test}/<class>/...       the splits given (heldout and test optional)

Classes are the folder names sorted, label ids 0..K-1 in that order (`class_names`, which the
ExampleSets carry, so a rater's scores map back to the folders); images in
subfolders of a class folder count for the class. Ids number the files in the order `image_files`
lists them (split, class, path). Every image must have one size and channel count, unless
data.image_size is set: then each is resized to it, and grayscale ones among RGB ones become RGB.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import numpy as np

from drray.config import DataConfig
from drray.data.examples import ExampleSet
from drray.data.images import IMAGE_SUFFIXES, read_image_file, resize, stack_images
from drray.data.sources.paths import existing_data_dir
from drray.errors import DataError
from drray.registry import DATA_SOURCES

SPLIT_FOLDERS = ("train", "heldout", "test")


@dataclass(frozen=True)
class ImageFile:
    id: int
    path: Path
    split: str  # "train" (the pool, where the tree has no split folders), "heldout" or "test"
    label: int


@DATA_SOURCES.register("imagefolder")
def load_imagefolder_source(cfg: DataConfig):
    """(train, test, heldout) ExampleSets from data.dir; None for a split folder that is absent.
    Every file is read and checked before anything is returned."""
    # A plain loop over Pillow: a tree larger than memory would want ray.data.read_images instead
    # (drray/ has no Ray), but meta-training holds its data in memory anyway.
    root = existing_data_dir(cfg, "a folder of class folders (<class>/*.png), or of train/ heldout/ test/ ones")
    files = image_files(root)
    names = class_names(root)
    size = cfg.image_size
    images = [resize(read_image_file(file.path), size) for file in files]
    rows = stack_images(images, lambda i: str(files[i].path), to_one_mode=size is not None)
    parts = {}
    for split in SPLIT_FOLDERS:
        index = np.array([i for i, file in enumerate(files) if file.split == split], dtype=np.int64)
        if len(index):
            labels = np.array([files[i].label for i in index], dtype=np.int64)
            parts[split] = ExampleSet.clean(index, rows[index], labels, len(names), class_names=names)
    return parts["train"], parts.get("test"), parts.get("heldout")


def split_roots(root: Path) -> dict[str, Path]:
    """split -> the folder of its class folders: {"train": root} for a tree without split folders."""
    present = {split: root / split for split in SPLIT_FOLDERS if (root / split).is_dir()}
    if not present:
        return {"train": root}
    if "train" not in present:
        raise DataError(f"{root / 'train'}: missing, beside {', '.join(p.name for p in present.values())}/; "
                        "put the training images there, one folder per class")
    others = [p for p in _visible_folders(root) if p.name not in SPLIT_FOLDERS]
    if others:
        raise DataError(f"{others[0]}: a folder beside train/ that is not a split; name the splits train, heldout "
                        "and test (each holding the class folders), or move it out of data.dir")
    return present


def class_names(root: Path) -> list[str]:
    """The class folder names, sorted: label id i is class_names(root)[i]. Every split must have the
    same classes."""
    roots = split_roots(Path(root))
    classes = {split: sorted(p.name for p in _visible_folders(folder)) for split, folder in roots.items()}
    train = classes["train"]
    if not train:
        raise DataError(f"{roots['train']}: no class folders; put the images in one folder per class "
                        "(<class>/*.png or .jpg)")
    for split, names in classes.items():
        if names != train:
            missing, extra = sorted(set(train) - set(names)), sorted(set(names) - set(train))
            differ = f"lacks {', '.join(missing)}" if missing else f"has {', '.join(extra)} not in train/"
            raise DataError(f"{roots[split]}: {differ}; every split needs the same class folders "
                            f"({', '.join(train)})")
    return train


def image_files(root: Path) -> list[ImageFile]:
    """Every image of the tree, numbered: split by split (train, heldout, test), class by class,
    each class's files sorted by path. An empty class folder, or a tree without images, is a DataError."""
    root = Path(root)
    roots, names = split_roots(root), class_names(root)
    files: list[ImageFile] = []
    for split in SPLIT_FOLDERS:
        if split not in roots:
            continue
        _refuse_loose_images(roots[split])
        for label, name in enumerate(names):
            paths = _images_under(roots[split] / name)
            if not paths:
                raise DataError(f"{roots[split] / name}: no images (.png, .jpg, .jpeg) in this class folder; "
                                "add some or remove the folder")
            first_id = len(files)
            files.extend(ImageFile(first_id + i, path, split, label) for i, path in enumerate(paths))
    return files


def _visible_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _refuse_loose_images(folder: Path) -> None:
    """An image beside the class folders has no class: say so rather than leave it out unseen."""
    loose = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if loose:
        raise DataError(f"{loose[0]}: an image outside any class folder; move it into {folder}/<class>/")

