"""Tests of shiftadd.data: loaders on small real samples, malformed inputs, augmentation, sharding.

Samples come from ../shared/data (the CIFAR-10 JPEG archive and mnist10k.npz); tests that
need them skip when that folder is absent. Everything writes under pytest's tmp_path, with
SHIFTADD_CACHE pointed there too.
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import shiftadd.data as sd
from shiftadd.data import BatchLoader, ImageDataset, load_dataset
from shiftadd.data.augment import augment_batch, denormalize, normalize, random_crop, random_hflip
from shiftadd.data.cifar import CIFAR10_CLASSES
from shiftadd.errors import DataError

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
CIFAR_TAR = SHARED / "cifar10-jpeg.tar.gz"
MNIST_NPZ = SHARED / "mnist10k.npz"
needs_cifar = pytest.mark.skipif(not CIFAR_TAR.is_file(), reason="../shared/data/cifar10-jpeg.tar.gz not available")
needs_mnist = pytest.mark.skipif(not MNIST_NPZ.is_file(), reason="../shared/data/mnist10k.npz not available")

SAMPLE_CLASSES = ("airplane", "cat", "ship")
N_TRAIN, N_TEST = 6, 3


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTADD_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def jpeg_samples():
    """Real JPEG bytes from the shared archive: {(split, class): [(name, bytes), ...]} plus embedded checks."""
    if not CIFAR_TAR.is_file():
        pytest.skip("../shared/data/cifar10-jpeg.tar.gz not available")
    from shiftadd.data.embedded import load_embedded_arrays

    emb = load_embedded_arrays()
    wanted_emb = {emb["train_files"][i]: ("train", i) for i in (0, 777, 1999)}
    wanted_emb.update({emb["test_files"][i]: ("test", i) for i in (0, 555)})
    samples = {(s, c): [] for s in ("train", "test") for c in SAMPLE_CLASSES}
    emb_bytes = {}
    with tarfile.open(CIFAR_TAR) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3:
                continue
            key = (parts[0], parts[1])
            want = key in samples and len(samples[key]) < (N_TRAIN if parts[0] == "train" else N_TEST)
            if want or member.name in wanted_emb:
                data = tar.extractfile(member).read()
                if want:
                    samples[key].append((parts[2], data))
                if member.name in wanted_emb:
                    emb_bytes[member.name] = data
            if len(emb_bytes) == len(wanted_emb) and all(
                    len(v) == (N_TRAIN if k[0] == "train" else N_TEST) for k, v in samples.items()):
                break
    return {"samples": samples, "embedded": {n: (wanted_emb[n], b) for n, b in emb_bytes.items()}}


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB")).transpose(2, 0, 1)


def _make_folder(root: Path, samples) -> Path:
    for (split, cls), items in samples.items():
        d = root / split / cls
        d.mkdir(parents=True, exist_ok=True)
        for name, data in items:
            (d / name).write_bytes(data)
    return root


# -- pickles in the layout and encoding of the official (Python 2) CIFAR files ---------------------------

class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 byte strings, as cPickle did for the official CIFAR batches."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin1"))

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def _py2_pickle(obj, path: Path, old_numpy_name: bool = True) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    data = buf.getvalue()
    if old_numpy_name:  # what numpy 1.x (and the 2009 files) write
        data = data.replace(b"numpy._core.multiarray\n_reconstruct", b"numpy.core.multiarray\n_reconstruct")
    path.write_bytes(data)


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), 3072)


# -- embedded default ------------------------------------------------------------------------------------

def test_list_datasets():
    assert set(sd.list_datasets()) == {"cifar10", "cifar100", "mnist", "folder", "embedded"}


def test_embedded_default_shapes_and_balance():
    train, test = load_dataset("embedded", data_dir="/ignored")
    assert train.images.shape == (2000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (1000, 3, 32, 32)
    assert train.labels.dtype == torch.int64 and train.labels.shape == (2000,)
    assert train.classes == CIFAR10_CLASSES and test.classes == CIFAR10_CLASSES
    assert train.class_counts() == [200] * 10 and test.class_counts() == [100] * 10
    assert len(train.mean) == 3 and all(0.3 < m < 0.6 for m in train.mean)
    assert all(0.15 < s < 0.35 for s in train.std) and test.mean == train.mean
    # real photos: neither constant nor noise; the first two train images differ
    assert 20 < float(train.images.float().std()) < 90
    assert not torch.equal(train.images[0], train.images[1])
    asset = Path(sd.__file__).with_name("assets") / "cifar10_embedded.npz"
    assert asset.stat().st_size < 5_000_000


def test_embedded_pixels_match_the_archive(jpeg_samples):
    train, test = load_dataset("embedded")
    assert len(jpeg_samples["embedded"]) == 5
    for name, ((split, i), data) in jpeg_samples["embedded"].items():
        ds = train if split == "train" else test
        np.testing.assert_array_equal(ds.images[i].numpy(), _decode(data))
        assert ds.classes[int(ds.labels[i])] == name.split("/")[1]


def test_subset_is_balanced_and_fixed():
    train, _ = load_dataset("embedded", subset=105, seed=3)
    again, _ = load_dataset("embedded", subset=105, seed=3)
    other, _ = load_dataset("embedded", subset=105, seed=4)
    assert len(train) == 105 and sorted(train.class_counts()) == [10] * 5 + [11] * 5
    assert torch.equal(train.images, again.images)
    assert not torch.equal(train.images, other.images)
    with pytest.raises(DataError, match="larger than the training set"):
        load_dataset("embedded", subset=2001)
    with pytest.raises(DataError, match="positive"):
        load_dataset("embedded", subset=0)


# -- image folders and archives ----------------------------------------------------------------------------

def test_folder_dataset_and_cache(jpeg_samples, tmp_path, monkeypatch):
    root = _make_folder(tmp_path / "ds", jpeg_samples["samples"])
    train, test = load_dataset("folder", root)
    assert train.classes == sorted(SAMPLE_CLASSES)
    assert train.images.shape == (3 * N_TRAIN, 3, 32, 32) and test.images.shape == (3 * N_TEST, 3, 32, 32)
    assert train.class_counts() == [N_TRAIN] * 3 and test.class_counts() == [N_TEST] * 3
    # sorted class folders, sorted files: sample k of "cat" in train is the k-th sorted file
    cat = sorted(jpeg_samples["samples"][("train", "cat")])
    k = train.classes.index("cat") * N_TRAIN + 2
    np.testing.assert_array_equal(train.images[k].numpy(), _decode(cat[2][1]))
    assert len(list((tmp_path / "cache" / "decoded").glob("folder-*.npz"))) == 1

    # the second load comes from the decoded cache: no image is decoded again
    import shiftadd.data.folder as folder_mod

    def no_decode(*a, **k):
        raise AssertionError("decoded again despite the cache")

    with monkeypatch.context() as m:
        m.setattr(folder_mod, "decode_images", no_decode)
        train2, test2 = load_dataset("folder", root)
    assert torch.equal(train.images, train2.images) and torch.equal(test.labels, test2.labels)
    assert train2.mean == train.mean

    # a damaged cache entry is ignored and rebuilt
    entry = next((tmp_path / "cache" / "decoded").glob("folder-*.npz"))
    entry.write_bytes(b"PK\x03\x04garbage")
    train_again, _ = load_dataset("folder", root)
    assert torch.equal(train_again.images, train.images)

    # adding a file changes the folder's mtime: the cache entry is rebuilt
    png = root / "train" / "cat" / "zzz_extra.png"
    Image.fromarray(_decode(cat[0][1]).transpose(1, 2, 0)).save(png)
    train3, _ = load_dataset("folder", root)
    assert len(train3) == len(train) + 1
    np.testing.assert_array_equal(train3.images[k + N_TRAIN - 2].numpy(), _decode(cat[0][1]))


def test_folder_from_tar_gz(jpeg_samples, tmp_path):
    root = _make_folder(tmp_path / "src" / "mydata", jpeg_samples["samples"])
    archive = tmp_path / "mydata.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # one top-level folder, then train/ and test/
        tar.add(root, arcname="mydata")
    direct, _ = load_dataset("folder", root)
    train, test = load_dataset("folder", archive)
    assert torch.equal(train.images, direct.images) and torch.equal(train.labels, direct.labels)
    extracted = [p for p in (tmp_path / "cache" / "extracted").iterdir() if not p.name.startswith(".")]
    assert len(extracted) == 1 and (extracted[0] / "mydata" / "train" / "cat").is_dir()
    train2, _ = load_dataset("folder", archive)  # from the decoded cache
    assert torch.equal(train2.images, train.images)


def test_tar_with_unsafe_member_is_refused(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(DataError, match="outside the archive"):
        load_dataset("folder", archive)
    assert not (tmp_path / "cache" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()


def test_cifar10_as_folder_needs_ten_classes(jpeg_samples, tmp_path):
    root = _make_folder(tmp_path / "ds", jpeg_samples["samples"])
    with pytest.raises(DataError, match="3 classes but cifar10 has 10"):
        load_dataset("cifar10", root)


def test_empty_class_folder(jpeg_samples, tmp_path):
    root = _make_folder(tmp_path / "ds", jpeg_samples["samples"])
    (root / "train" / "dog").mkdir()
    with pytest.raises(DataError, match=r"class folder .*dog has no images: expected .*\*\.jpg"):
        load_dataset("folder", root)


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_image(jpeg_samples, tmp_path, kind):
    root = _make_folder(tmp_path / "ds", jpeg_samples["samples"])
    good = jpeg_samples["samples"][("train", "cat")][0][1]
    bad = root / "train" / "cat" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg" * 10 if kind == "garbage" else good[: len(good) // 2])
    with pytest.raises(DataError, match=r"cannot decode image .*broken\.jpg"):
        load_dataset("folder", root)


def test_missing_paths(tmp_path):
    missing = tmp_path / "nope"
    for name, hint in [("cifar10", "cifar-10-batches-py/data_batch_1..5"), ("cifar100", "cifar-100-python"),
                       ("mnist", "train-images-idx3-ubyte"), ("folder", "train/<class>/")]:
        with pytest.raises(DataError) as info:
            load_dataset(name, missing)
        msg = str(info.value)
        assert "\n" not in msg and str(missing) in msg and hint in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no CIFAR-10 found at .*empty: expected"):
        load_dataset("cifar10", tmp_path / "empty")
    with pytest.raises(DataError, match="needs a data path"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet", tmp_path)
    assert issubclass(DataError, ValueError)


# -- CIFAR python pickles ------------------------------------------------------------------------------------

def _cifar10_batches(tmp_path: Path, jpeg_samples) -> tuple:
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    imgs, labels = [], []
    for cls in SAMPLE_CLASSES:
        for _, data in jpeg_samples["samples"][("train", cls)][:5]:
            imgs.append(_decode(data))
            labels.append(CIFAR10_CLASSES.index(cls))
    imgs = np.stack(imgs)
    for b in range(5):  # 3 images per batch
        sel = slice(3 * b, 3 * b + 3)
        _py2_pickle({b"batch_label": f"training batch {b + 1} of 5".encode(), b"labels": labels[sel],
                     b"data": _cifar_rows(imgs[sel]), b"filenames": [b"x.png"] * 3}, folder / f"data_batch_{b + 1}")
    test_imgs = np.stack([_decode(d) for _, d in jpeg_samples["samples"][("test", "ship")]])
    _py2_pickle({b"batch_label": b"testing batch 1 of 1", b"labels": [8] * len(test_imgs),
                 b"data": _cifar_rows(test_imgs), b"filenames": [b"y.png"] * len(test_imgs)}, folder / "test_batch")
    _py2_pickle({b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_cases_per_batch": 10000,
                 b"num_vis": 3072}, folder / "batches.meta")
    return folder, imgs, np.asarray(labels), test_imgs


def test_cifar10_pickles(jpeg_samples, tmp_path):
    folder, imgs, labels, test_imgs = _cifar10_batches(tmp_path, jpeg_samples)
    for where in (folder.parent, folder):  # the parent folder or cifar-10-batches-py itself
        train, test = load_dataset("cifar10", where)
        assert train.classes == CIFAR10_CLASSES
        np.testing.assert_array_equal(train.images.numpy(), imgs)
        np.testing.assert_array_equal(train.labels.numpy(), labels)
        np.testing.assert_array_equal(test.images.numpy(), test_imgs)
        assert test.labels.tolist() == [8] * len(test_imgs)


def test_cifar10_missing_batch(jpeg_samples, tmp_path):
    folder, *_ = _cifar10_batches(tmp_path, jpeg_samples)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError, match="missing CIFAR batch file .*data_batch_4"):
        load_dataset("cifar10", folder.parent)


def test_cifar100_pickles(jpeg_samples, tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    imgs = np.stack([_decode(d) for _, d in jpeg_samples["samples"][("train", "cat")]])
    names = [f"class_{i:03d}" for i in range(100)]
    for split, sel in (("train", slice(0, 4)), ("test", slice(4, 6))):
        n = len(imgs[sel])
        _py2_pickle({b"filenames": [b"f.png"] * n, b"batch_label": split.encode(), b"fine_labels": [3, 99] * (n // 2),
                     b"coarse_labels": [0] * n, b"data": _cifar_rows(imgs[sel])}, folder / split, old_numpy_name=False)
    _py2_pickle({b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": [b"c"] * 20}, folder / "meta")
    train, test = load_dataset("cifar100", tmp_path)
    assert train.classes == names and len(train) == 4 and len(test) == 2
    np.testing.assert_array_equal(train.images.numpy(), imgs[:4])
    assert train.labels.tolist() == [3, 99, 3, 99] and test.classes[int(test.labels[1])] == "class_099"


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", ["os.system", "protocol5-array", "garbage", "truncated"])
def test_restricted_unpickler_refuses(jpeg_samples, tmp_path, payload):
    folder, imgs, *_ = _cifar10_batches(tmp_path, jpeg_samples)
    marker = tmp_path / "pwned"
    target = folder / "data_batch_2"
    if payload == "os.system":
        target.write_bytes(pickle.dumps({"data": _Exploit(marker), "labels": [0]}, protocol=2))
    elif payload == "protocol5-array":
        target.write_bytes(pickle.dumps({"data": _cifar_rows(imgs[:3]), "labels": [0, 0, 0]}, protocol=5))
    elif payload == "garbage":
        target.write_bytes(b"\x00\x01not a pickle at all")
    else:
        target.write_bytes(target.read_bytes()[:500])
    with pytest.raises(DataError, match="data_batch_2"):
        load_dataset("cifar10", folder.parent)
    assert not marker.exists()


def test_cifar_wrong_array_shape(jpeg_samples, tmp_path):
    folder, *_ = _cifar10_batches(tmp_path, jpeg_samples)
    _py2_pickle({b"labels": [0], b"data": np.zeros((1, 100), np.uint8)}, folder / "data_batch_3")
    with pytest.raises(DataError, match=r"'data' must be a uint8 array \(N, 3072\)"):
        load_dataset("cifar10", folder)


# -- MNIST ----------------------------------------------------------------------------------------------------

def _write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">i", d) for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.fixture(scope="module")
def mnist():
    if not MNIST_NPZ.is_file():
        pytest.skip("../shared/data/mnist10k.npz not available")
    with np.load(MNIST_NPZ) as f:
        return f["images"], f["labels"]


def _mnist_idx_dir(root: Path, mnist) -> Path:
    images, labels = mnist
    root.mkdir(parents=True, exist_ok=True)
    _write_idx(root / "train-images-idx3-ubyte.gz", images[:300], gz=True)
    _write_idx(root / "train-labels-idx1-ubyte.gz", labels[:300], gz=True)
    _write_idx(root / "t10k-images-idx3-ubyte", images[300:400], gz=False)
    _write_idx(root / "t10k-labels-idx1-ubyte", labels[300:400], gz=False)
    return root


def test_mnist_idx(mnist, tmp_path):
    root = _mnist_idx_dir(tmp_path / "mnist", mnist)
    train, test = load_dataset("mnist", root)
    assert train.images.shape == (300, 1, 28, 28) and test.images.shape == (100, 1, 28, 28)
    np.testing.assert_array_equal(train.images[:, 0].numpy(), mnist[0][:300])
    np.testing.assert_array_equal(test.labels.numpy(), mnist[1][300:400])
    assert train.classes == [str(d) for d in range(10)] and len(train.mean) == 1


def test_mnist_truncated_idx(mnist, tmp_path):
    root = _mnist_idx_dir(tmp_path / "mnist", mnist)
    f = root / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte is truncated.*\(100, 28, 28\)"):
        load_dataset("mnist", root)
    f.write_bytes(b"\x12\x34\x56\x78rest")
    with pytest.raises(DataError, match="not an IDX file"):
        load_dataset("mnist", root)


def test_mnist_npz_fixed_split(mnist):
    train, test = load_dataset("mnist", MNIST_NPZ)
    again, _ = load_dataset("mnist", MNIST_NPZ, seed=123)  # the split does not depend on seed
    assert len(train) == 8000 and len(test) == 2000
    assert torch.equal(train.images, again.images)
    counts = np.bincount(mnist[1], minlength=10)
    np.testing.assert_array_equal(np.asarray(train.class_counts()) + np.asarray(test.class_counts()), counts)
    assert min(test.class_counts()) > 100  # every digit is in the test split
    # the union of both splits is the whole file, each image once
    both = torch.cat([train.images, test.images])[:, 0].reshape(10000, -1).numpy()
    ref = mnist[0].reshape(10000, -1)
    assert sorted(map(bytes, both)) == sorted(map(bytes, ref))


def test_mnist_npz_wrong_keys_and_dtype(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, pictures=np.zeros((10, 28, 28), np.uint8), targets=np.zeros(10, np.int64))
    with pytest.raises(DataError, match="expected arrays 'images'.*found pictures, targets"):
        load_dataset("mnist", bad)
    np.savez(bad, images=np.zeros((10, 28, 28), np.float32), labels=np.zeros(10, np.int64))
    with pytest.raises(DataError, match="must be uint8"):
        load_dataset("mnist", bad)
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset("mnist", bad)


# -- augmentation ---------------------------------------------------------------------------------------------

def _batch(n=16, c=3, h=8, w=8, seed=0):
    return torch.randint(1, 256, (n, c, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.int64).to(torch.uint8)


def test_random_crop_shapes_and_content():
    x = _batch()
    out = random_crop(x, 4, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    centre = torch.full((16, 2), 4)
    assert torch.equal(random_crop(x, 4, offsets=centre), x)
    corner = torch.zeros(16, 2, dtype=torch.int64)  # window starts in the padding: shift down-right by 4
    out = random_crop(x, 4, offsets=corner)
    assert torch.equal(out[:, :, 4:, 4:], x[:, :, :4, :4])
    assert int(out[:, :, :4, :].abs().sum()) == 0 and int(out[:, :, :, :4].abs().sum()) == 0
    # each output is its own input shifted by a drawn offset; several offsets occur
    out = random_crop(x, 2, torch.Generator().manual_seed(1))
    used = set()
    for i in range(16):
        hits = [(a, b) for a in range(5) for b in range(5)
                if torch.equal(out[i], random_crop(x[i:i + 1], 2, offsets=torch.tensor([[a, b]]))[0])]
        assert len(hits) == 1
        used.add(hits[0])
    assert len(used) > 4


def test_random_flip_is_a_real_flip():
    x = _batch(n=200)
    mask = torch.arange(200) % 3 == 0
    out = random_hflip(x, mask=mask)
    assert torch.equal(out[mask], x[mask].flip(3)) and torch.equal(out[~mask], x[~mask])
    assert torch.equal(out[0, :, :, 0], x[0, :, :, -1])
    out = random_hflip(x, 0.5, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(out[i], x[i].flip(2)) for i in range(200)])
    same = torch.tensor([torch.equal(out[i], x[i]) for i in range(200)])
    assert bool((flipped | same).all()) and 60 < int(flipped.sum()) < 140


def test_augmentation_is_deterministic():
    x = _batch(n=64)
    a = augment_batch(x, 4, True, torch.Generator().manual_seed(7))
    b = augment_batch(x, 4, True, torch.Generator().manual_seed(7))
    c = augment_batch(x, 4, True, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_normalize_roundtrip():
    x = _batch(n=4)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    y = normalize(x, mean, std)
    ref = (x.double() / 255 - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        std, dtype=torch.float64).view(1, 3, 1, 1)
    assert y.dtype == torch.float32 and torch.allclose(y.double(), ref, atol=1e-5)
    assert torch.equal(denormalize(y, mean, std), x)


# -- batch loader -------------------------------------------------------------------------------------------------

def _toy(n=100) -> ImageDataset:
    imgs = torch.arange(n, dtype=torch.int64).view(n, 1, 1, 1).expand(n, 3, 8, 8).to(torch.uint8).contiguous()
    return ImageDataset(imgs, torch.arange(n) % 10, [str(i) for i in range(10)], (0.0,) * 3, (1 / 255,) * 3)


def _ids(loader) -> list:
    """Sample ids in the order the loader yields them (the toy images hold their index as pixel value)."""
    return [int(i) for x, _ in loader for i in x[:, 0, 0, 0]]


def test_loader_batches_and_order():
    ds = _toy(100)
    loader = BatchLoader(ds, 32, shuffle=False)
    batches = list(loader)
    assert len(loader) == 4 == len(batches) and batches[-1][0].shape == (4, 3, 8, 8)
    x, y = batches[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert _ids(loader) == list(range(100))
    assert torch.equal(torch.cat([b[1] for b in batches]), ds.labels)
    assert len(BatchLoader(ds, 32, drop_last=True)) == 3 == len(list(BatchLoader(ds, 32, drop_last=True)))


def test_loader_shuffle_is_deterministic_per_epoch():
    ds = _toy(100)
    a, b = BatchLoader(ds, 16, shuffle=True, seed=1), BatchLoader(ds, 16, shuffle=True, seed=1)
    order0 = _ids(a)
    assert sorted(order0) == list(range(100)) and order0 != list(range(100))
    assert order0 == _ids(b) == _ids(a)  # same seed and epoch: same order
    a.set_epoch(1)
    assert _ids(a) != order0
    b.set_epoch(1)
    assert _ids(a) == _ids(b)
    assert _ids(BatchLoader(ds, 16, shuffle=True, seed=2)) != order0


def test_loader_augmentation_deterministic_and_normalised():
    train, _ = load_dataset("embedded", subset=256)
    l1 = BatchLoader(train, 64, shuffle=True, augment=True, seed=5)
    l2 = BatchLoader(train, 64, shuffle=True, augment=True, seed=5)
    x1, y1 = next(iter(l1))
    x2, y2 = next(iter(l2))
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.shape == (64, 3, 32, 32)
    l2.set_epoch(1)
    assert not torch.equal(next(iter(l2))[0], x1)
    plain = torch.cat([x for x, _ in BatchLoader(train, 128)])
    assert abs(float(plain.mean())) < 0.15 and 0.85 < float(plain.std()) < 1.15


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_ddp_shards_are_disjoint_and_equal(world_size):
    ds = _toy(101)
    for epoch in (0, 1):
        shards = []
        for rank in range(world_size):
            loader = BatchLoader(ds, 8, shuffle=True, seed=3, rank=rank, world_size=world_size)
            loader.set_epoch(epoch)
            ids = _ids(loader)
            assert len(ids) == 101 // world_size == loader.num_samples
            assert len(loader) == -(-len(ids) // 8)
            shards.append(ids)
        flat = [i for s in shards for i in s]
        assert len(set(flat)) == len(flat) == (101 // world_size) * world_size
        # uneven shards (evaluation): every sample exactly once
        ev = [_ids(BatchLoader(ds, 8, rank=r, world_size=world_size, even_shards=False)) for r in range(world_size)]
        assert sorted(i for s in ev for i in s) == list(range(101))
        assert max(map(len, ev)) - min(map(len, ev)) <= 1


def test_loader_rejects_bad_arguments():
    ds = _toy(10)
    with pytest.raises(ValueError):
        BatchLoader(ds, 0)
    with pytest.raises(ValueError):
        BatchLoader(ds, 4, rank=2, world_size=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_augmentation_matches_cpu():
    x = _batch(n=64)
    cpu = augment_batch(x, 4, True, torch.Generator().manual_seed(3))
    gpu = augment_batch(x.cuda(), 4, True, torch.Generator().manual_seed(3))
    assert gpu.is_cuda and torch.equal(cpu, gpu.cpu())
    train, _ = load_dataset("embedded", subset=128)
    a = next(iter(BatchLoader(train, 64, shuffle=True, augment=True, seed=1)))
    b = next(iter(BatchLoader(train, 64, shuffle=True, augment=True, seed=1, device="cuda")))
    c = next(iter(BatchLoader(train.to("cuda"), 64, shuffle=True, augment=True, seed=1)))
    assert b[0].is_cuda and c[1].is_cuda
    assert torch.allclose(a[0], b[0].cpu()) and torch.allclose(a[0], c[0].cpu()) and torch.equal(a[1], c[1].cpu())


@pytest.mark.slow
@needs_cifar
def test_full_cifar10_archive_loads_and_caches(tmp_path):
    import time

    t = time.perf_counter()
    train, test = load_dataset("cifar10", CIFAR_TAR)
    first = time.perf_counter() - t
    t = time.perf_counter()
    train2, _ = load_dataset("cifar10", CIFAR_TAR)
    second = time.perf_counter() - t
    assert len(train) == 50000 and len(test) == 10000 and train.class_counts() == [5000] * 10
    assert torch.equal(train.images, train2.images) and second < first / 5
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)


def test_data_command(monkeypatch, capsys, tmp_path):
    from shiftadd import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ["shiftadd.data.commands"])
    assert cli.main(["data", "info", "--dataset", "embedded", "--subset", "50"]) == 0
    out = capsys.readouterr().out
    assert "embedded: 50 train + 1000 test images, 3x32x32, 10 classes" in out
    assert cli.main(["data", "info", "--dataset", "cifar10", "--data-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no CIFAR-10 found at" in err
    assert cli.main(["data", "list"]) == 0 and "mnist" in capsys.readouterr().out
