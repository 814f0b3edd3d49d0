"""The embedded default dataset: procedurally generated, layout-specific street scenes.

Cityscapes in spirit, small enough to train a net in seconds on a CPU, generated deterministically
from a seed (no download). Every region is filled with a crop of a real photographed texture that
scikit-image ships (gravel, brick, grass, ...), tinted and lit differently per image, so classes
differ by texture and layout rather than by a flat colour. It is built to reward what the seeds'
techniques are for:
- context: road and sidewalk share the gravel texture and overlapping tints; only their place in
  the scene (the road between the kerbs, under the vanishing point) separates them -> dilations;
- fine detail: 1-2 px poles and small distant people -> good decoders;
- fixed layout: sky above a horizon band, road at the bottom centre -> TVConv's spatial priors.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

CLASS_NAMES = ("road", "sidewalk", "building", "vegetation", "sky", "car", "person", "pole")
ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, CAR, PERSON, POLE = range(len(CLASS_NAMES))
PALETTE = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (107, 142, 35), (70, 130, 180),
           (0, 0, 142), (220, 20, 60), (153, 153, 153))  # Cityscapes colours


@lru_cache(maxsize=1)
def _textures() -> dict[str, np.ndarray]:
    """Grayscale photographs in [0, 1] that ship inside scikit-image (no network)."""
    from skimage import data, color

    gray = {n: getattr(data, n)() for n in ("gravel", "brick", "grass", "moon", "camera")}
    gray["fur"] = color.rgb2gray(data.chelsea())
    gray["skin"] = color.rgb2gray(data.astronaut())
    return {n: np.asarray(t, dtype=np.float32) / (255.0 if t.max() > 1 else 1.0) for n, t in gray.items()}


# class -> (texture, base RGB tint, tint jitter, texture contrast)
_LOOK = {
    ROAD: ("gravel", (0.40, 0.40, 0.42), 0.05, 0.6),
    SIDEWALK: ("gravel", (0.48, 0.46, 0.45), 0.05, 0.6),
    BUILDING: ("brick", (0.55, 0.42, 0.35), 0.15, 0.8),
    VEGETATION: ("grass", (0.25, 0.50, 0.20), 0.08, 0.9),
    SKY: ("moon", (0.55, 0.70, 0.90), 0.08, 0.15),
    CAR: ("camera", (0.30, 0.30, 0.60), 0.25, 0.35),
    PERSON: ("fur", (0.60, 0.45, 0.40), 0.15, 0.7),
    POLE: ("skin", (0.55, 0.55, 0.55), 0.10, 0.5),
}


@dataclass(frozen=True)
class StreetConfig:
    # Small by design: one trial (train + eval + measure) takes seconds on one CPU core, so
    # `--budget 100` fits in minutes. Any size that divides by 32 works (`--size`).
    height: int = 32
    width: int = 64
    n_train: int = 256
    n_val: int = 64
    seed: int = 0


def _texture_crop(rng: np.random.Generator, name: str, h: int, w: int) -> np.ndarray:
    """A random crop of a texture at a random scale, resampled to (h, w) by nearest neighbour."""
    tex = _textures()[name]
    scale = rng.uniform(0.5, 2.0)
    ch, cw = min(tex.shape[0], max(2, int(h * scale))), min(tex.shape[1], max(2, int(w * scale)))
    y0, x0 = rng.integers(0, tex.shape[0] - ch + 1), rng.integers(0, tex.shape[1] - cw + 1)
    rows = y0 + (np.arange(h) * ch // h)
    cols = x0 + (np.arange(w) * cw // w)
    return tex[np.ix_(rows, cols)]


def _paint(rng: np.random.Generator, image: np.ndarray, label: np.ndarray, mask: np.ndarray, cls: int) -> None:
    if not mask.any():
        return
    h, w = label.shape
    name, tint, jitter, contrast = _LOOK[cls]
    tex = _texture_crop(rng, name, h, w)
    tex = 1.0 + contrast * (tex - tex.mean())
    rgb = np.clip(np.asarray(tint) + rng.normal(0, jitter, 3), 0.05, 0.95)
    image[mask] = (tex[..., None] * rgb)[mask]
    label[mask] = cls


def generate_scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """One (H, W, 3) float image in [0, 1] and its (H, W) uint8 label map."""
    image = np.zeros((h, w, 3), np.float32)
    label = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    horizon = rng.uniform(0.35, 0.5) * h
    vx = rng.uniform(0.35, 0.65) * w
    _paint(rng, image, label, np.ones((h, w), bool), SKY)

    # Buildings and trees above the horizon, a skyline of random heights on both sides.
    x = 0
    while x < w:
        bw = int(rng.integers(w // 10, w // 4))
        top = horizon - rng.uniform(0.1, 0.8) * horizon
        cls = VEGETATION if rng.random() < 0.3 else BUILDING
        side = (xx >= x) & (xx < x + bw) & (yy >= top) & (yy < horizon + 1)
        if cls == VEGETATION:  # tree crowns are round
            cy, cxx, r = top + (horizon - top) / 2, x + bw / 2, max(bw, horizon - top) / 1.6
            side &= (yy - cy) ** 2 + (xx - cxx) ** 2 < r * r
        _paint(rng, image, label, side, cls)
        x += bw

    # Ground: road between two kerb lines through the vanishing point, sidewalks outside them.
    depth = np.clip((yy - horizon) / (h - horizon), 0, 1)
    below = yy >= horizon
    road_half = depth * rng.uniform(0.35, 0.6) * w
    walk_half = road_half + depth * rng.uniform(0.12, 0.3) * w
    centre = vx + (rng.uniform(-0.15, 0.15) * w) * depth
    dist = np.abs(xx - centre)
    _paint(rng, image, label, below & (dist >= walk_half), VEGETATION if rng.random() < 0.5 else BUILDING)
    _paint(rng, image, label, below & (dist < walk_half) & (dist >= road_half), SIDEWALK)
    _paint(rng, image, label, below & (dist < road_half), ROAD)

    def row_geometry(y: float) -> tuple[float, float, float]:
        d = (y - horizon) / (h - horizon)
        rh = d * (road_half.max() / max(depth.max(), 1e-6))
        return d, rh, rh + d * (walk_half - road_half).max() / max(depth.max(), 1e-6)

    # Cars on the road, sized by perspective.
    for _ in range(rng.integers(0, 4)):
        yb = rng.uniform(horizon + 0.2 * (h - horizon), h)
        d, rh, _ = row_geometry(yb)
        cw_, ch_ = 0.35 * w * d + 2, 0.18 * w * d + 2
        cx = centre[min(int(yb), h - 1), 0] + rng.uniform(-1, 1) * max(rh - cw_ / 2, 0)
        body = (np.abs(xx - cx) < cw_ / 2) & (yy < yb) & (yy > yb - ch_)
        _paint(rng, image, label, body, CAR)

    # People and poles on the sidewalks, poles tall and 1-2 px wide.
    for cls, count in ((PERSON, rng.integers(0, 5)), (POLE, rng.integers(1, 4))):
        for _ in range(count):
            yb = rng.uniform(horizon + 0.1 * (h - horizon), h)
            d, rh, wh = row_geometry(yb)
            side = rng.choice((-1, 1))
            px = centre[min(int(yb), h - 1), 0] + side * (rh + rng.uniform(0.2, 0.9) * (wh - rh))
            if cls == PERSON:
                ph = 0.45 * h * d + 3
                m = (np.abs(xx - px) < ph / 6) & (yy < yb) & (yy > yb - ph)
                m |= (xx - px) ** 2 + (yy - (yb - ph)) ** 2 < (ph / 7) ** 2
            else:
                m = (np.abs(xx - px) < rng.uniform(0.5, 1.1)) & (yy < yb) & (yy > rng.uniform(0.05, 0.4) * horizon)
            _paint(rng, image, label, m, cls)

    # Lighting: global gain, a soft horizontal gradient and sensor noise, all per image.
    light = rng.uniform(0.6, 1.3) * (1 + rng.uniform(-0.3, 0.3) * (xx / w - 0.5))
    image = image * light[..., None] + rng.normal(0, rng.uniform(0.0, 0.04), image.shape)
    return np.clip(image, 0, 1).astype(np.float32), label


def generate_split(n: int, h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, H, W) uint8 images and (n, H, W) uint8 labels; identical for identical arguments."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, h, w), np.uint8)
    labels = np.empty((n, h, w), np.uint8)
    for i in range(n):
        img, lab = generate_scene(rng, h, w)
        images[i] = np.round(img.transpose(2, 0, 1) * 255)
        labels[i] = lab
    return images, labels


# Cityscapes train ids of the street classes, for writing the scenes in Cityscapes' layout.
CITYSCAPES_TRAIN_ID = {ROAD: 0, SIDEWALK: 1, BUILDING: 2, POLE: 5, VEGETATION: 8, SKY: 10, PERSON: 11, CAR: 13}


def write_cityscapes_layout(root, n_train: int, n_val: int, height: int, width: int, seed: int = 0,
                            ego_rows: float = 0.06) -> None:
    """Write generated scenes as a Cityscapes-layout dataset (`leftImg8bit/`, `gtFine/*_labelTrainIds.png`).

    The bottom `ego_rows` of every frame is the ego vehicle's bonnet, ignored (255) as in
    Cityscapes, so the ignore path is exercised at real sizes without shipping real data.
    """
    from pathlib import Path

    from PIL import Image

    lut = np.full(256, 255, np.uint8)
    lut[list(CITYSCAPES_TRAIN_ID)] = list(CITYSCAPES_TRAIN_ID.values())
    rng = np.random.default_rng(seed)
    ego = int(round(ego_rows * height))
    for split, n in (("train", n_train), ("val", n_val)):
        images, masks = Path(root) / "leftImg8bit" / split / "synth", Path(root) / "gtFine" / split / "synth"
        images.mkdir(parents=True, exist_ok=True)
        masks.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, lab = generate_scene(rng, height, width)
            img = np.round(img * 255).astype(np.uint8)
            lab = lut[lab]
            if ego:
                img[-ego:] = (img[-ego:] * 0.2).astype(np.uint8)
                lab[-ego:] = 255
            stem = f"synth_{i:06d}_000019"
            Image.fromarray(img).save(images / f"{stem}_leftImg8bit.png")
            Image.fromarray(lab).save(masks / f"{stem}_gtFine_labelTrainIds.png")
