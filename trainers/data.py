"""Datasets behind one `--data` argument: the embedded street scenes, a folder layout, Cityscapes.

Every source is validated before any training starts, then loaded into memory at the study's input
size (images bilinear, masks nearest), so a search never touches the disk again. Training batches
are made (and augmented) on the trial's device by `trainers.batches`.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from search_spaces.spec import yaml_problem

from . import streets

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle")
EMBEDDED = "streets"
CLASSES_KEYS = ("names", "ignore_index", "palette")  # what a folder's classes.yaml may hold
IGNORE = 255  # the ignore value of every loaded mask


class DataError(ValueError):
    """A dataset is missing, empty or inconsistent; the message names the file and the value."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is. Loaded masks always mark ignored pixels with IGNORE, whatever value the
    dataset's own files use (kept in `source_ignore_index` for the record)."""

    name: str
    class_names: tuple[str, ...]
    in_channels: int = 3
    ignore_index: int = IGNORE
    palette: tuple[tuple[int, int, int], ...] | None = None
    source_ignore_index: int = IGNORE

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _numpy_split(images: np.ndarray, masks: np.ndarray) -> "Split":
    with warnings.catch_warnings():  # read-only arrays of a shared object store: never written
        warnings.simplefilter("ignore", UserWarning)
        return Split(torch.from_numpy(images), torch.from_numpy(masks))


@dataclass(frozen=True)
class Split:
    """One split in memory: uint8 images (N, C, H, W) and uint8 masks (N, H, W).

    It pickles as plain NumPy arrays, which Ray's serializer keeps out of band: every trial on a
    node maps the one copy in the object store instead of unpickling a copy of its own.
    """

    images: torch.Tensor
    masks: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)

    def __reduce__(self):
        return _numpy_split, (self.images.numpy(), self.masks.numpy())

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size() + self.masks.numel() * self.masks.element_size()


@dataclass(frozen=True)
class SegData:
    info: DatasetInfo
    train: Split
    val: Split


def load_data(source: str | None, height: int, width: int, seed: int = 0,
              n_train: int = streets.StreetConfig.n_train, n_val: int = streets.StreetConfig.n_val) -> SegData:
    """The dataset named by `--data`: None or 'streets' for the embedded set, else a folder path."""
    if source in (None, "", EMBEDDED):
        return load_streets(streets.StreetConfig(height, width, n_train, n_val, seed))
    root = Path(source)
    if not root.is_dir():
        raise DataError(f"--data {source!r}: no such folder (give a dataset folder or {EMBEDDED!r})")
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        return load_cityscapes(root, height, width)
    return load_folder(root, height, width)


# --- the embedded street scenes ----------------------------------------------------------------
def _cache_dir() -> Path:
    return Path(os.environ.get("LIGHTSEG_CACHE", Path.home() / ".cache" / "lightseg-nas"))


def load_streets(cfg: streets.StreetConfig) -> SegData:
    """Generate (or read back from the cache) the embedded set; identical for identical configs."""
    key = hashlib.sha1(repr((streets.__doc__, streets._LOOK, cfg)).encode()).hexdigest()[:12]
    path = _cache_dir() / f"streets-{cfg.height}x{cfg.width}-{key}.npz"
    if path.exists():
        arrays = dict(np.load(path))
    else:
        ti, tm = streets.generate_split(cfg.n_train, cfg.height, cfg.width, cfg.seed)
        vi, vm = streets.generate_split(cfg.n_val, cfg.height, cfg.width, cfg.seed + 10_000)
        arrays = dict(ti=ti, tm=tm, vi=vi, vm=vm)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)  # atomic: concurrent trials never read half a file
    info = DatasetInfo(EMBEDDED, streets.CLASS_NAMES, 3, palette=streets.PALETTE)
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    return SegData(info, Split(t["ti"], t["tm"]), Split(t["vi"], t["vm"]))


# --- users' folders --------------------------------------------------------------------------
def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except Exception as exc:  # PIL raises many types for bad files
        raise DataError(f"{path}: unreadable image ({exc})") from None


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.array(im)
    except Exception as exc:
        raise DataError(f"{path}: unreadable mask ({exc})") from None
    if arr.ndim != 2:
        raise DataError(f"{path}: mask has shape {arr.shape}; expected one channel of class ids")
    return arr


def _pairs(image_dir: Path, mask_dir: Path, image_stem, mask_name) -> list[tuple[Path, Path]]:
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: missing folder")
    images = sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"{image_dir}: empty split (no {'/'.join(IMAGE_SUFFIXES)} images)")
    pairs = []
    for img in images:
        mask = mask_dir / img.parent.relative_to(image_dir) / mask_name(image_stem(img))
        if not mask.is_file():
            raise DataError(f"{img}: no mask (expected {mask})")
        pairs.append((img, mask))
    return pairs


def label_lut(num_classes: int, source_ignore: int) -> np.ndarray:
    """Mask id -> class index (IGNORE for the ignore id, -1 for an id that is neither).

    The class ids are the first `num_classes` ids in 0..255 that are not the ignore id: 0..C-1
    for the usual 255 or 254, and 1..C when id 0 marks unlabelled pixels (ignore_index: 0).
    """
    lut = np.full(256, -1, np.int16)
    ids = [i for i in range(256) if i != source_ignore][:num_classes]
    lut[ids] = np.arange(num_classes)
    lut[source_ignore] = IGNORE
    return lut


def _class_ids_text(lut: np.ndarray) -> str:
    ids = np.flatnonzero((lut >= 0) & (lut != IGNORE))
    return f"{ids[0]}..{ids[-1]}"


def _load_split(pairs: list[tuple[Path, Path]], info: DatasetInfo, height: int, width: int) -> Split:
    """Read every pair straight into one preallocated uint8 array per split (no second copy)."""
    lut = label_lut(info.num_classes, info.source_ignore_index)
    images = np.empty((len(pairs), info.in_channels, height, width), np.uint8)
    masks = np.empty((len(pairs), height, width), np.uint8)

    def load(i: int) -> None:
        img_path, mask_path = pairs[i]
        img, mask = _read_image(img_path), _read_mask(mask_path)
        if img.shape[:2] != mask.shape:
            raise DataError(f"{mask_path}: mask size {mask.shape} differs from image size {img.shape[:2]}")
        if mask.min() < 0 or mask.max() > 255:
            raise DataError(f"{mask_path}: mask id {int(mask.max() if mask.max() > 255 else mask.min())} is out of "
                            f"range; class ids are {_class_ids_text(lut)}, the ignore index {info.source_ignore_index}")
        mapped = lut[mask.astype(np.uint8)]
        if (mapped < 0).any():
            bad = int(mask[mapped < 0].flat[0])
            raise DataError(f"{mask_path}: mask id {bad} is not a class id ({_class_ids_text(lut)}) "
                            f"nor the ignore index {info.source_ignore_index}")
        images[i] = _resize_image(torch.from_numpy(img).permute(2, 0, 1), height, width).numpy()
        masks[i] = _resize_mask(torch.from_numpy(mapped.astype(np.uint8)), height, width).numpy()

    # PNG decoding and resizing release the GIL: threads load a Cityscapes-sized set several times faster.
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        for job in [pool.submit(load, i) for i in range(len(pairs))]:
            job.result()
    finally:  # the first bad file is reported at once, not after decoding the rest
        pool.shutdown(wait=True, cancel_futures=True)
    return Split(torch.from_numpy(images), torch.from_numpy(masks))


def _resize_image(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if img.shape[-2:] == (h, w):
        return img
    out = F.interpolate(img[None].float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return out[0].round().clamp(0, 255).to(torch.uint8)


def _resize_mask(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if mask.shape == (h, w):
        return mask
    return F.interpolate(mask[None, None], size=(h, w), mode="nearest")[0, 0]


def check_fits_in_memory(source: str, n_images: int, in_channels: int, height: int, width: int) -> None:
    """Refuse, before reading anything, a dataset whose in-memory copy would not fit."""
    need = n_images * (in_channels + 1) * height * width  # uint8 image + uint8 mask per image
    avail = _available_memory()
    # x2: a search holds a second copy for a moment while it hands the set to Ray's object store
    if avail is not None and 2 * need > 0.8 * avail:
        raise DataError(f"--data {source}: {n_images} images at {height}x{width} need {need / 2**30:.1f} GiB in memory "
                        f"({(in_channels + 1) * height * width / 2**20:.2f} MiB each) but {avail / 2**30:.1f} GiB are "
                        f"available; use a smaller --size or a machine with more memory")


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def read_classes(path: Path) -> DatasetInfo:
    if not path.is_file():
        raise DataError(f"{path}: missing (a YAML file with `names: [...]`, optional ignore_index and palette)")
    try:
        meta = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: malformed YAML at {yaml_problem(exc)}") from None
    # A misspelt optional key would otherwise be dropped, and its default then blamed on the masks.
    unknown = [k for k in meta if k not in CLASSES_KEYS] if isinstance(meta, dict) else []
    if unknown:
        raise DataError(f"{path}: unknown key {unknown[0]!r}; allowed: {', '.join(CLASSES_KEYS)}")
    if not isinstance(meta, dict) or not isinstance(meta.get("names"), list) or len(meta["names"]) < 2:
        raise DataError(f"{path}: `names` must be a list of at least 2 class names")
    if len(meta["names"]) > 255:
        raise DataError(f"{path}: {len(meta['names'])} class names; at most 255 fit in 8-bit masks")
    ignore = meta.get("ignore_index", IGNORE)
    if not isinstance(ignore, int) or isinstance(ignore, bool) or not 0 <= ignore <= 255:
        raise DataError(f"{path}: ignore_index {ignore!r} must be an integer in [0, 255]")
    palette = meta.get("palette")
    if palette is not None and not (isinstance(palette, list) and len(palette) >= len(meta["names"]) and all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in palette)):
        raise DataError(f"{path}: palette must list one [r, g, b] triple of integers in 0..255 per class "
                        f"({len(meta['names'])} classes)")
    return DatasetInfo(path.parent.name, tuple(map(str, meta["names"])), 3,
                       palette=tuple(tuple(c) for c in palette) if palette else None, source_ignore_index=ignore)


def load_folder(root: Path, height: int, width: int) -> SegData:
    """images/{train,val}/*.png|jpg with masks/{train,val}/<same stem>.png and classes.yaml."""
    info = read_classes(root / "classes.yaml")
    pairs = {split: _pairs(root / "images" / split, root / "masks" / split, lambda p: p.stem, lambda s: s + ".png")
             for split in ("train", "val")}
    return _load_splits(str(root), info, pairs, height, width)


def load_cityscapes(root: Path, height: int, width: int) -> SegData:
    """leftImg8bit/{train,val}/<city>/*_leftImg8bit.png with gtFine/..._gtFine_labelTrainIds.png."""
    info = DatasetInfo("cityscapes", CITYSCAPES_CLASSES, 3)
    pairs = {split: _pairs(root / "leftImg8bit" / split, root / "gtFine" / split,
                           lambda p: p.name.replace("_leftImg8bit.png", ""), lambda s: s + "_gtFine_labelTrainIds.png")
             for split in ("train", "val")}
    return _load_splits(str(root), info, pairs, height, width)


def _load_splits(source: str, info: DatasetInfo, pairs: dict[str, list], height: int, width: int) -> SegData:
    if len(pairs["train"]) < 2:
        raise DataError(f"--data {source}: {len(pairs['train'])} training image; training needs at least 2 (BatchNorm)")
    check_fits_in_memory(source, sum(map(len, pairs.values())), info.in_channels, height, width)
    return SegData(info, _load_split(pairs["train"], info, height, width), _load_split(pairs["val"], info, height, width))


# --- batches ---------------------------------------------------------------------------------
def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float in [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)
