"""Data sources: the embedded set is deterministic; users' folders are validated before use."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from trainers.batches import Draw, TrainBatches, augment, draw, resample
from trainers.data import DataError, load_data
from trainers.streets import CLASS_NAMES, generate_split


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTSEG_CACHE", str(tmp_path / "cache"))


def test_embedded_set_is_identical_for_a_seed_and_cached():
    a = load_data(None, 32, 64, seed=3, n_train=12, n_val=4)
    b = load_data("streets", 32, 64, seed=3, n_train=12, n_val=4)  # read back from the cache
    c = load_data(None, 32, 64, seed=4, n_train=12, n_val=4)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.masks, b.val.masks)
    assert not torch.equal(a.train.images, c.train.images)
    assert a.train.images.shape == (12, 3, 32, 64) and a.val.masks.shape == (4, 32, 64)
    assert a.info.num_classes == len(CLASS_NAMES) == 8


def test_embedded_scenes_have_their_layout_and_every_class():
    _, labels = generate_split(40, 64, 128, seed=0)
    counts = np.bincount(labels.ravel(), minlength=8)
    assert (counts > 0).all()
    sky, road = CLASS_NAMES.index("sky"), CLASS_NAMES.index("road")
    assert (labels[:, :8] == sky).mean() > 0.3 and (labels[:, -8:] == sky).mean() == 0
    assert (labels[:, -8:] == road).mean() > 0.2


def test_road_and_sidewalk_share_a_texture():
    # context, not colour, must separate them: their mean intensities overlap across images
    images, labels = generate_split(30, 64, 128, seed=1)
    gray = images.mean(1)
    road = [gray[i][labels[i] == 0].mean() for i in range(30) if (labels[i] == 1).any()]
    walk = [gray[i][labels[i] == 1].mean() for i in range(30) if (labels[i] == 1).any()]
    assert min(walk) < max(road) and min(road) < max(walk)


def test_augment_is_seeded_and_keeps_shapes():
    x = torch.rand(4, 3, 16, 32)
    y = torch.randint(0, 3, (4, 16, 32), dtype=torch.uint8)
    a = augment(x, y, torch.Generator().manual_seed(0))
    b = augment(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == x.shape and a[1].shape == y.shape


def make_folder(root, n=2, mask_value=1, mask_size=(20, 30), names=("a", "b", "c")):
    (root / "classes.yaml").write_text(yaml.safe_dump({"names": list(names)}))
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((20, 30, 3), 100, np.uint8)).save(root / "images" / split / f"{i}.png")
            Image.fromarray(np.full(mask_size, mask_value, np.uint8)).save(root / "masks" / split / f"{i}.png")
    return root


def test_folder_layout_loads_and_resizes(tmp_path):
    data = load_data(str(make_folder(tmp_path)), 16, 32)
    assert data.info.class_names == ("a", "b", "c")
    assert data.train.images.shape == (2, 3, 16, 32) and (data.val.masks == 1).all()


@pytest.mark.parametrize("breakage,message", [
    (lambda r: (r / "masks" / "train" / "1.png").unlink(), "no mask"),
    (lambda r: [p.unlink() for p in (r / "images" / "val").iterdir()], "empty split"),
    (lambda r: (r / "classes.yaml").unlink(), "classes.yaml: missing"),
    (lambda r: (r / "images" / "train" / "0.png").write_bytes(b"not a png"), "unreadable image"),
    (lambda r: Image.fromarray(np.full((10, 30), 1, np.uint8)).save(r / "masks" / "val" / "0.png"), "differs from image size"),
    (lambda r: Image.fromarray(np.full((20, 30), 7, np.uint8)).save(r / "masks" / "val" / "1.png"), "mask id 7"),
])
def test_bad_folders_are_refused_naming_the_file(tmp_path, breakage, message):
    root = make_folder(tmp_path)
    breakage(root)
    with pytest.raises(DataError, match=message):
        load_data(str(root), 16, 32)


def test_missing_folder_and_ignore_index(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        load_data(str(tmp_path / "nope"), 16, 32)
    data = load_data(str(make_folder(tmp_path, mask_value=255)), 16, 32)
    assert (data.train.masks == 255).all()


def test_cityscapes_layout_is_detected(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "leftImg8bit" / split / "aachen").mkdir(parents=True)
        (tmp_path / "gtFine" / split / "aachen").mkdir(parents=True)
        for i in (1, 2):
            Image.fromarray(np.zeros((16, 32, 3), np.uint8)).save(tmp_path / "leftImg8bit" / split / "aachen" / f"x_00000{i}_leftImg8bit.png")
            Image.fromarray(np.full((16, 32), 18, np.uint8)).save(tmp_path / "gtFine" / split / "aachen" / f"x_00000{i}_gtFine_labelTrainIds.png")
    data = load_data(str(tmp_path), 16, 32)
    assert data.info.name == "cityscapes" and data.info.num_classes == 19


def make_ignore_folder(root, ignore, names=("a", "b", "c")):
    """Masks with a left half of the first class id, a right half of the last, an ignored band."""
    ids = [i for i in range(256) if i != ignore][:len(names)]  # the documented id convention
    (root / "classes.yaml").write_text(yaml.safe_dump({"names": list(names), "ignore_index": ignore}))
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(6):
            mask = np.full((32, 32), ids[0], np.uint8)
            mask[:, 16:] = ids[-1]
            mask[:4] = ignore
            img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            img[..., 16:, 0] = 250  # the right half is red: learnable
            Image.fromarray(img).save(root / "images" / split / f"{i}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    return root


@pytest.mark.parametrize("ignore", [254, 0])
@pytest.mark.parametrize("decoder", ["bilinear", "dupsample"])
def test_any_ignore_index_trains_end_to_end(tmp_path, ignore, decoder):
    from helpers import tiny_spec
    from trainers.train import TrainConfig, evaluate, fit

    data = load_data(str(make_ignore_folder(tmp_path, ignore)), 32, 32)
    m = data.val.masks
    # ignored pixels carry the one internal ignore value; class ids map to 0..C-1
    assert data.info.ignore_index == 255 and data.info.source_ignore_index == ignore
    assert (m[:, :4] == 255).all() and (m[:, 4:, :16] == 0).all() and (m[:, 4:, 16:] == 2).all()
    spec = tiny_spec(decoder=decoder, num_classes=3)
    result = fit(spec, data, TrainConfig(epochs=1, batch_size=4))
    assert 0 <= result.miou <= 1
    # evaluation leaves ignored pixels out: a perfect prediction elsewhere scores 1
    class Oracle(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(len(x), 3, 32, 32)
            out[:, 0, :, :16] = 1
            out[:, 2, :, 16:] = 1
            return out
    assert evaluate(Oracle(), data.val, 3, data.info.ignore_index).miou == 1.0


def test_ignore_index_zero_names_the_class_ids_in_errors(tmp_path):
    root = make_ignore_folder(tmp_path, 0)
    Image.fromarray(np.full((32, 32), 4, np.uint8)).save(root / "masks" / "val" / "0.png")
    with pytest.raises(DataError, match=r"mask id 4 is not a class id \(1\.\.3\) nor the ignore index 0"):
        load_data(str(root), 32, 32)


@pytest.mark.parametrize("value", ["x", -1, 256, True])
def test_bad_ignore_index_is_one_line(tmp_path, value):
    root = make_folder(tmp_path)
    (root / "classes.yaml").write_text(yaml.safe_dump({"names": ["a", "b", "c"], "ignore_index": value}))
    with pytest.raises(DataError, match="ignore_index .* must be an integer in \\[0, 255\\]"):
        load_data(str(root), 16, 32)


def test_an_unknown_key_in_classes_yaml_is_named_with_the_allowed_ones(tmp_path):
    """A misspelt ignore_index used to be dropped silently; the masks' 0s were then 'not a class id'."""
    root = make_ignore_folder(tmp_path, 0)
    (root / "classes.yaml").write_text("names: [a, b, c]\nignore_indx: 0\n")
    with pytest.raises(DataError) as err:
        load_data(str(root), 32, 32)
    assert str(err.value) == (f"{root / 'classes.yaml'}: unknown key 'ignore_indx'; "
                              "allowed: names, ignore_index, palette")


def test_a_yaml_syntax_error_in_classes_yaml_names_the_line_and_column(tmp_path):
    root = make_folder(tmp_path)
    (root / "classes.yaml").write_text("names: [a, b, c]\nignore_index: 255\npalette: [[0, 0, 0], [1, 1, 1]\n")
    with pytest.raises(DataError) as err:
        load_data(str(root), 16, 32)
    assert str(err.value) == (f"{root / 'classes.yaml'}: malformed YAML at line 4, column 1: "
                              "expected ',' or ']', but got '<stream end>'")


def test_a_dataset_too_big_for_memory_is_refused_before_loading(tmp_path, monkeypatch):
    import trainers.data as data_module
    monkeypatch.setattr(data_module, "_available_memory", lambda: 20_000)
    # 4 images x (3 + 1) bytes x 16 x 32 = 8,192 bytes, twice while handed to Ray: > 80 % of 20,000
    with pytest.raises(DataError, match=r"4 images at 16x32 need .* GiB in memory .* use a smaller --size"):
        load_data(str(make_folder(tmp_path)), 16, 32)


def test_a_split_pickles_its_arrays_out_of_band():
    """Ray's serializer keeps out-of-band buffers in its shared object store: trials map one copy."""
    import pickle
    data = load_data(None, 32, 64, seed=0, n_train=12, n_val=4)
    buffers = []
    payload = pickle.dumps(data, protocol=5, buffer_callback=buffers.append)
    assert sum(b.raw().nbytes for b in buffers) == data.train.nbytes + data.val.nbytes == 16 * 4 * 32 * 64
    assert len(payload) < 4096  # only the metadata travels in band
    back = pickle.loads(payload, buffers=buffers)
    assert torch.equal(back.train.images, data.train.images) and torch.equal(back.val.masks, data.val.masks)


def test_a_single_training_image_is_refused(tmp_path):
    with pytest.raises(DataError, match="1 training image; training needs at least 2"):
        load_data(str(make_folder(tmp_path, n=1)), 16, 32)


@pytest.mark.parametrize("palette", [[1, 2, 3], [[0, 0, 0]], [[0, 0, 0], [1, 1, 1], [2, 2, 300]]])
def test_a_bad_palette_is_one_line(tmp_path, palette):
    root = make_folder(tmp_path)
    (root / "classes.yaml").write_text(yaml.safe_dump({"names": ["a", "b", "c"], "palette": palette}))
    with pytest.raises(DataError, match=r"palette must list one \[r, g, b\] triple"):
        load_data(str(root), 16, 32)


# --- batched augmentation against its per-sample definition ----------------------------------
def test_draws_follow_the_definition_in_distribution():
    """s ~ U(1, 1.5) -> zoomed size max(h, round(h s)); offsets uniform integers; flip p = 0.5.
    Frequencies must lie within 5 binomial standard deviations of the definition's probabilities."""
    h, w, n, batches = 16, 32, 16, 1250
    gen = torch.Generator().manual_seed(0)
    ds = [draw(n, h, w, gen) for _ in range(batches)]
    height, width, top, left, flip = (torch.cat([getattr(d, f) for d in ds])
                                      for f in ("height", "width", "top", "left", "flip"))
    total = n * batches

    def close(count, p, trials):
        return abs(count / trials - p) <= 5 * (p * (1 - p) / trials) ** 0.5

    # round(16 s) for s in [1, 1.5): 16 and 24 each take a half-width bin (1/16), 17..23 a full one (1/8)
    for k in range(16, 25):
        assert close(int((height == k).sum()), 1 / 16 if k in (16, 24) else 1 / 8, total), k
    assert height.min() >= h and height.max() <= 24
    assert ((width - 2 * height).abs() <= 1).all()  # one s for both axes: |round(2hs) - 2 round(hs)| <= 1
    for zoomed, offset, size in ((height, top, h), (width, left, w)):
        assert (offset >= 0).all() and (offset <= zoomed - size).all()
        for k in zoomed.unique().tolist():
            sel = offset[zoomed == k]
            for j in range(k - size + 1):
                assert close(int((sel == j).sum()), 1 / (k - size + 1), len(sel)), (k, j)
    assert close(int(flip.sum()), 0.5, total)
    assert close(int(flip[top == 0].sum()), 0.5, int((top == 0).sum()))  # independent of the offset


def _draw(*params) -> Draw:
    return Draw(*(torch.tensor([p[i] for p in params]) for i in range(5)))


@pytest.mark.parametrize("mask_dtype", [torch.uint8, torch.int64])
def test_resampling_equals_the_per_sample_definition_for_a_draw(mask_dtype):
    from helpers import augment_reference

    h, w = 12, 20
    params = [(12, 20, 0, 0, False), (12, 20, 0, 0, True), (18, 30, 6, 10, False), (18, 30, 0, 0, True),
              (15, 25, 2, 3, True), (13, 22, 1, 2, False), (17, 29, 5, 9, True), (12, 21, 0, 1, False)]
    x = torch.rand(len(params), 3, h, w) * 2 - 1
    m = torch.randint(0, 256, (len(params), h, w)).to(mask_dtype)
    out_x, out_m = resample(x, m, _draw(*params))
    assert out_x.shape == x.shape and out_x.dtype == x.dtype
    assert out_m.shape == m.shape and out_m.dtype == mask_dtype
    for k, p in enumerate(params):
        ref_x, ref_m = augment_reference(x[k], m[k], *p)
        assert torch.allclose(out_x[k], ref_x, atol=1e-5), p
        assert torch.equal(out_m[k], ref_m), p
    assert torch.equal(out_m[0], m[0]) and torch.equal(out_m[1], m[1].flip(-1))  # no zoom: a copy, a mirror
    assert torch.allclose(out_x[0], x[0], atol=1e-6) and torch.allclose(out_x[1], x[1].flip(-1), atol=1e-6)


def test_a_twofold_zoom_repeats_each_mask_pixel_twice_per_axis():
    m = torch.arange(6 * 8, dtype=torch.int64).view(1, 6, 8)
    _, out = resample(torch.zeros(1, 1, 6, 8), m, _draw((12, 16, 3, 5, False)))
    expect = torch.tensor([[int(m[0, (3 + i) // 2, (5 + j) // 2]) for j in range(8)] for i in range(6)])
    assert torch.equal(out[0], expect)


@pytest.mark.parametrize("mask_dtype", [torch.uint8, torch.int64])
def test_augmented_masks_stay_aligned_with_the_images(mask_dtype):
    """An image whose colour is its mask: channel 0 is 40 x class (stripes of 5 px and bands of 4 px,
    class = stripe parity + band parity, so neighbouring regions differ by one class), channel 1
    flags an ignored block. Away from class boundaries the colour decodes to the mask's value."""
    h, w, n = 24, 40, 64
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    cls = (xx // 5) % 2 + (yy // 4) % 2
    ignored = (yy >= 8) & (yy < 16) & (xx >= 10) & (xx < 20)
    mask = torch.where(ignored, 255, cls).to(mask_dtype)
    image = torch.stack((40.0 * cls, 200.0 * ignored, torch.zeros(h, w)))
    out_x, out_m = augment(image.expand(n, 3, h, w).contiguous(), mask.expand(n, h, w).contiguous(),
                           torch.Generator().manual_seed(0))
    assert set(out_m.unique().tolist()) <= {0, 1, 2, 255}  # never blended
    decoded = torch.where(out_x[:, 1] > 100, 255, (out_x[:, 0] / 40).round().long())
    m = out_m.long()
    # interior: one class over the 3 x 3 neighbourhood; the crop's edge counts as a boundary (the
    # zoomed image goes on beyond it, with classes the mask no longer shows)
    window = F.pad(m, (1, 1, 1, 1), value=-1).unfold(1, 3, 1).unfold(2, 3, 1)
    interior = (window == m[..., None, None]).flatten(-2).all(-1)
    assert interior.float().mean() > 0.3  # the check covers much of the image
    assert torch.equal(decoded[interior], m[interior])
    assert (out_x[:, 1] > 100).any() and (out_m == 255).any()


def test_augmentation_is_seeded_and_uses_the_generator_only():
    x = torch.rand(6, 3, 16, 32)
    y = torch.randint(0, 3, (6, 16, 32), dtype=torch.uint8)
    torch.manual_seed(1)
    a = augment(x, y, torch.Generator().manual_seed(5))
    torch.manual_seed(2)  # the global generator plays no part
    b = augment(x, y, torch.Generator().manual_seed(5))
    c = augment(x, y, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_train_batches_index_convert_and_cast():
    from trainers.data import Split, to_float

    split = Split(torch.randint(0, 256, (5, 3, 8, 16), dtype=torch.uint8),
                  torch.randint(0, 4, (5, 8, 16), dtype=torch.uint8))
    idx = torch.tensor([3, 0, 4])
    x, y = TrainBatches(split, "cpu")(idx)
    assert torch.equal(x, to_float(split.images[idx]))
    assert y.dtype == torch.int64 and torch.equal(y, split.masks[idx].long())
    xa, ya = TrainBatches(split, "cpu")(idx, torch.Generator().manual_seed(0))
    xb, yb = augment(to_float(split.images[idx]), split.masks[idx], torch.Generator().manual_seed(0))
    assert torch.equal(xa, xb) and torch.equal(ya, yb.long())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("share", [1 / 16, 0.0])  # the split held on the GPU; staged per batch
def test_a_seed_makes_the_same_batches_on_the_gpu(monkeypatch, share):
    import trainers.batches as batches
    from trainers.data import Split

    monkeypatch.setattr(batches, "RESIDENT_SHARE", share)
    split = Split(torch.randint(0, 256, (8, 3, 32, 64), dtype=torch.uint8),
                  torch.randint(0, 19, (8, 32, 64), dtype=torch.uint8))
    idx = torch.tensor([5, 1, 2, 7])
    gpu = TrainBatches(split, "cuda")
    assert gpu.staged == (share == 0)
    cx, cy = TrainBatches(split, "cpu")(idx, torch.Generator().manual_seed(3))
    gx, gy = gpu(idx, torch.Generator().manual_seed(3))
    assert gx.is_cuda and gy.dtype == torch.int64
    assert torch.equal(gy.cpu(), cy) and torch.allclose(gx.cpu(), cx, atol=1e-4)
