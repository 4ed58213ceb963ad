"""The data path: CIFAR-10 archive loading, the split, the synthetic set, augmentation and loaders.

The augmentation is checked against a plain per-sample reference with torchvision's semantics
(RandomCrop(32, padding=4) then RandomHorizontalFlip(p=0.5)): exact equality for given offsets and
flips, and the distribution of what the loader draws (decoded from marker images) by chi-square.
All statistical tests use fixed seeds, so they are deterministic.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import random
import socket
import tarfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from scipy import stats
from torch import Tensor, nn

from deconcnn.training import data as data_module
from deconcnn.training.data import (
    CIFAR10_MD5,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR10_URL,
    Cifar10Source,
    CifarDataModule,
    DataNotFoundError,
    SyntheticSource,
    TensorBatchLoader,
    crop_flip,
    download_cifar10,
    normalize,
    split_indices,
)

PAD = 4
SIZE = 32
ALPHA = 1e-3  # significance level of the distribution tests


# --------------------------------------------------------------------------------------------
# A small CIFAR-10 archive in the official format
# --------------------------------------------------------------------------------------------

PER_BATCH = 6  # images per data batch (the real archive has 10000)
LABEL_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def _rows(images: np.ndarray) -> np.ndarray:
    """NCHW uint8 -> the archive's N x 3072 rows: the 1024 red values row-major, then green, then blue."""
    return np.stack([np.concatenate([img[0].ravel(), img[1].ravel(), img[2].ravel()]) for img in images])


def _pickle(path: Path, entry: dict) -> None:
    # The archive's pickles come from Python 2 (protocol 2, str keys); under encoding="bytes" those
    # keys load as bytes, which is what bytes keys written with protocol 2 load as too.
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def write_cifar_archive(root: Path, seed: int = 0) -> tuple[Path, np.ndarray, np.ndarray]:
    """Write cifar-10-python.tar.gz under root; returns (archive, train images NCHW, train labels)."""
    rng = np.random.default_rng(seed)
    staging = root / "staging" / "cifar-10-batches-py"
    staging.mkdir(parents=True)
    images = rng.integers(0, 256, size=(5 * PER_BATCH, 3, SIZE, SIZE), dtype=np.uint8)
    images[0] = 0
    images[0, 1, 2, 5] = 200  # one green pixel at row 2, column 5 of the first image
    labels = rng.integers(0, 10, size=5 * PER_BATCH)
    for b in range(5):
        part = slice(b * PER_BATCH, (b + 1) * PER_BATCH)
        _pickle(
            staging / f"data_batch_{b + 1}",
            {
                b"batch_label": f"training batch {b + 1} of 5".encode(),
                b"labels": [int(v) for v in labels[part]],
                b"data": _rows(images[part]),
                b"filenames": [f"img_{b}_{i}.png".encode() for i in range(PER_BATCH)],
            },
        )
    test_images = rng.integers(0, 256, size=(PER_BATCH, 3, SIZE, SIZE), dtype=np.uint8)
    _pickle(
        staging / "test_batch",
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": [int(v) for v in rng.integers(0, 10, size=PER_BATCH)],
            b"data": _rows(test_images),
            b"filenames": [f"test_{i}.png".encode() for i in range(PER_BATCH)],
        },
    )
    _pickle(
        staging / "batches.meta", {b"num_cases_per_batch": PER_BATCH, b"label_names": LABEL_NAMES, b"num_vis": 3072}
    )
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging, arcname="cifar-10-batches-py")
    return archive, images, labels


@pytest.fixture(scope="module")
def cifar_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, np.ndarray, np.ndarray]:
    archive, images, labels = write_cifar_archive(tmp_path_factory.mktemp("mirror"))
    return archive, hashlib.md5(archive.read_bytes()).hexdigest(), images, labels


def test_download_checks_md5_unpacks_and_loads_exact_images(cifar_archive, tmp_path):
    archive, md5, images, labels = cifar_archive
    data_dir = tmp_path / "data"
    download_cifar10(data_dir, url=archive.as_uri(), md5=md5)
    assert (data_dir / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert (data_dir / "cifar-10-batches-py" / "test_batch").is_file()

    x, y = Cifar10Source(str(data_dir)).load()
    assert x.dtype == torch.uint8 and x.shape == (5 * PER_BATCH, 3, SIZE, SIZE)
    assert y.dtype == torch.int64 and y.tolist() == labels.tolist()
    assert torch.equal(x, torch.from_numpy(images))  # batches 1..5 in order, NCHW
    assert x[0, 1, 2, 5] == 200 and int(x[0].count_nonzero()) == 1  # channel planes R, G, B


def test_download_again_reuses_the_verified_archive(cifar_archive, tmp_path):
    archive, md5, images, _ = cifar_archive
    download_cifar10(tmp_path, url=archive.as_uri(), md5=md5)
    # A second call finds the archive in data_dir and does not fetch (the URL is gone now).
    download_cifar10(tmp_path, url=(tmp_path / "elsewhere" / archive.name).as_uri(), md5=md5)
    assert torch.equal(Cifar10Source(str(tmp_path)).load()[0], torch.from_numpy(images))


def test_download_with_wrong_md5_fails_clearly_and_unpacks_nothing(cifar_archive, tmp_path):
    archive, md5, _, _ = cifar_archive
    wrong = "0" * 32
    with pytest.raises(DataNotFoundError, match=f"MD5 {md5}, expected {wrong}") as err:
        download_cifar10(tmp_path, url=archive.as_uri(), md5=wrong)
    assert str(tmp_path / archive.name) in str(err.value)
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_source_downloads_when_allowed(cifar_archive, tmp_path, monkeypatch):
    archive, md5, images, _ = cifar_archive
    monkeypatch.setattr(
        data_module, "download_cifar10", functools.partial(download_cifar10, url=archive.as_uri(), md5=md5)
    )
    source = Cifar10Source(str(tmp_path / "fresh"), download=True)
    source.prepare()
    assert torch.equal(source.load()[0], torch.from_numpy(images))


def test_missing_data_with_download_off_names_the_dir_url_and_md5(tmp_path):
    missing = tmp_path / "no_cifar_here"
    with pytest.raises(DataNotFoundError, match="CIFAR-10 not found") as err:
        Cifar10Source(str(missing), download=False).prepare()
    assert str(missing) in str(err.value) and "data.source.download=true" in str(err.value)
    assert CIFAR10_URL in str(err.value) and CIFAR10_MD5 in str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(DataNotFoundError, match="location unset") as err:
        Cifar10Source(None).load()
    for said in ("data.source.data_dir=DIR", "DECONCNN_DATA_DIR", CIFAR10_URL, CIFAR10_MD5):
        assert said in str(err.value)


def _assert_says_how_to_get_it_by_hand(message: str, url: str) -> None:
    assert "\n" not in message and message.startswith(f"CIFAR-10 download of {url} failed (")
    for said in (CIFAR10_MD5, "cifar-10-batches-py/", "data.source.data_dir=DIR", "DECONCNN_DATA_DIR"):
        assert said in message


def test_download_without_network_says_how_to_get_the_archive_by_hand(tmp_path, monkeypatch):
    def offline(url: str, filename: Path) -> None:
        Path(filename).write_bytes(b"the first bytes")  # what a cut connection leaves behind
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlretrieve", offline)
    with pytest.raises(DataNotFoundError) as err:
        Cifar10Source(str(tmp_path), download=True).prepare()
    _assert_says_how_to_get_it_by_hand(str(err.value), CIFAR10_URL)
    assert "([Errno -3] Temporary failure in name resolution)" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no partial archive


def test_download_refused_by_a_closed_port_fails_clearly(tmp_path):
    with socket.socket() as sock:  # a port nothing listens on once this socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"
    with pytest.raises(DataNotFoundError, match="Connection refused") as err:
        download_cifar10(tmp_path, url=url)
    _assert_says_how_to_get_it_by_hand(str(err.value), url)
    assert list(tmp_path.iterdir()) == []


def test_download_cut_short_leaves_no_partial_file(tmp_path):
    server = socket.create_server(("127.0.0.1", 0))

    def serve_ten_of_1000_bytes() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)

    thread = threading.Thread(target=serve_ten_of_1000_bytes, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/cifar-10-python.tar.gz"
    try:
        with pytest.raises(DataNotFoundError, match="retrieval incomplete") as err:
            download_cifar10(tmp_path, url=url)
    finally:
        thread.join(timeout=10)
        server.close()
    _assert_says_how_to_get_it_by_hand(str(err.value), url)
    assert list(tmp_path.iterdir()) == []


def test_datamodule_on_the_archive_splits_exact_images(cifar_archive, tmp_path):
    archive, md5, images, labels = cifar_archive
    download_cifar10(tmp_path, url=archive.as_uri(), md5=md5)
    dm = CifarDataModule(Cifar10Source(str(tmp_path)), batch_size=8, val_size=6, split_seed=3)
    dm.prepare_data()
    dm.setup()
    train_idx, val_idx = split_indices(len(labels), 6, 3)
    assert torch.equal(dm._val[0], torch.from_numpy(images)[val_idx])
    assert torch.equal(dm._train[1], torch.from_numpy(labels)[train_idx])


# --------------------------------------------------------------------------------------------
# The split and the synthetic set
# --------------------------------------------------------------------------------------------


def test_split_is_fixed_for_a_seed_disjoint_and_45k_5k():
    train, val = split_indices(50_000, 5_000, split_seed=0)
    assert len(train) == 45_000 and len(val) == 5_000
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(50_000))  # disjoint, complete
    again = split_indices(50_000, 5_000, split_seed=0)
    assert torch.equal(train, again[0]) and torch.equal(val, again[1])
    other = split_indices(50_000, 5_000, split_seed=1)
    assert not torch.equal(val, other[1])
    for bad in (0, 50_000, -1):
        with pytest.raises(ValueError, match="val_size"):
            split_indices(50_000, bad, 0)


def test_synthetic_is_deterministic_cifar_shaped_and_balanced():
    x, y = SyntheticSource(2000, seed=0).load()
    assert x.shape == (2000, 3, SIZE, SIZE) and x.dtype == torch.uint8
    assert y.shape == (2000,) and y.dtype == torch.int64
    x2, y2 = SyntheticSource(2000, seed=0).load()
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, y3 = SyntheticSource(2000, seed=1).load()
    assert not torch.equal(x, x3) and not torch.equal(y, y3)
    counts = torch.bincount(y, minlength=10)
    assert counts.min() >= 0.7 * 200 and counts.max() <= 1.3 * 200
    assert x.float().std() > 20  # uses the pixel range, not a constant image


def test_synthetic_is_learnable():
    """A nearest-class-mean classifier on raw pixels, fit on one half, is far above chance on the other."""
    x, y = SyntheticSource(2000, seed=5).load()
    flat = x.float().reshape(len(x), -1)
    fit, held = slice(0, 1000), slice(1000, 2000)
    means = torch.stack([flat[fit][y[fit] == c].mean(0) for c in range(10)])
    accuracy = (torch.cdist(flat[held], means).argmin(1) == y[held]).float().mean()
    assert accuracy > 0.5  # chance is 0.1


# --------------------------------------------------------------------------------------------
# Augmentation against a per-sample reference
# --------------------------------------------------------------------------------------------


def reference_crop_flip(image: Tensor, top: int, left: int, flip: bool) -> Tensor:
    """torchvision RandomCrop(32, padding=4) + RandomHorizontalFlip for one CHW image, given the draws."""
    c, h, w = image.shape
    padded = torch.zeros(c, h + 2 * PAD, w + 2 * PAD, dtype=image.dtype)
    padded[:, PAD : PAD + h, PAD : PAD + w] = image
    out = padded[:, top : top + h, left : left + w]
    return out.flip(-1) if flip else out


def reference_draw(rng: random.Random) -> tuple[int, int, bool]:
    """What torchvision draws per sample: top, left uniform in {0..8}, flip with p=0.5."""
    return rng.randint(0, 2 * PAD), rng.randint(0, 2 * PAD), rng.random() < 0.5


def marker_image() -> Tensor:
    """Red = row + 1, green = column + 1, blue = 255: a crop's position and flip can be read back."""
    rows = torch.arange(1, SIZE + 1, dtype=torch.uint8)
    image = torch.empty(3, SIZE, SIZE, dtype=torch.uint8)
    image[0] = rows[:, None]
    image[1] = rows[None, :]
    image[2] = 255
    return image


def denormalize(batch: Tensor) -> Tensor:
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return ((batch * std + mean) * 255).round().to(torch.uint8)


def decode_draws(crops: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(top, left, flip) of augmented marker images. The centre pixel is never padding."""
    red, green = crops[:, 0].long(), crops[:, 1].long()
    top = red[:, 16, 16] - 1 + PAD - 16
    flip = green[:, 16, 15] > green[:, 16, 16]
    left = torch.where(flip, green[:, 16, 15] - 1 + PAD - 16, green[:, 16, 16] - 1 + PAD - 16)
    return top, left, flip


def test_normalize_uses_the_cifar_mean_and_std_per_channel():
    images = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    out = normalize(images)
    assert out.dtype == torch.float32 and out.shape == images.shape
    for c in range(3):
        expected = (images[:, c].float() / 255 - CIFAR10_MEAN[c]) / CIFAR10_STD[c]
        assert torch.allclose(out[:, c], expected, atol=1e-6)
    assert torch.equal(normalize(images), out)  # the cached per-device constants do not drift


def test_crop_flip_equals_reference_for_every_offset_and_flip():
    draws = [(t, left, f) for t in range(2 * PAD + 1) for left in range(2 * PAD + 1) for f in (False, True)]
    images = torch.randint(
        0, 256, (len(draws), 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    offsets = torch.tensor([(t, left) for t, left, _ in draws])
    flips = torch.tensor([f for _, _, f in draws])
    out = crop_flip(images, offsets, flips)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    for i, (t, left, f) in enumerate(draws):
        assert torch.equal(out[i], reference_crop_flip(images[i], t, left, f)), (t, left, f)


def test_marker_decoding_matches_the_reference():
    rng = random.Random(0)
    draws = [reference_draw(rng) for _ in range(300)]
    crops = torch.stack([reference_crop_flip(marker_image(), *d) for d in draws])
    top, left, flip = decode_draws(denormalize(normalize(crops)))
    assert list(zip(top.tolist(), left.tolist(), flip.tolist())) == draws


@pytest.fixture(scope="module")
def augmented_markers() -> tuple[list[Tensor], list[tuple[Tensor, Tensor, Tensor]]]:
    """Two epochs of the loader over 8100 copies of the marker image (label = sample id)."""
    n = 8100
    images = marker_image().expand(n, -1, -1, -1).contiguous()
    epoch = {"value": 0}
    loader = TensorBatchLoader(
        images, torch.arange(n), 1024, shuffle=True, augment=True, seed=11, epoch_fn=lambda: epoch["value"]
    )
    per_epoch = []
    for e in (0, 1):
        epoch["value"] = e
        batches = list(loader)
        ids = torch.cat([b[1] for b in batches])
        crops = denormalize(torch.cat([b[0] for b in batches]))
        assert sorted(ids.tolist()) == list(range(n))
        by_id = torch.empty_like(crops)
        by_id[ids] = crops
        per_epoch.append(by_id)
    return per_epoch, [decode_draws(c) for c in per_epoch]


def test_loader_outputs_are_reference_crops(augmented_markers):
    crops, draws = augmented_markers
    marker = marker_image()
    for epoch_crops, (top, left, flip) in zip(crops, draws):
        assert top.min() >= 0 and top.max() <= 2 * PAD and left.min() >= 0 and left.max() <= 2 * PAD
        for i in range(0, len(epoch_crops), 7):  # every 7th sample, exactly
            expected = reference_crop_flip(marker, int(top[i]), int(left[i]), bool(flip[i]))
            assert torch.equal(epoch_crops[i], expected), i


def test_crop_offsets_and_flips_are_jointly_uniform(augmented_markers):
    _, draws = augmented_markers
    top = torch.cat([d[0] for d in draws])
    left = torch.cat([d[1] for d in draws])
    flip = torch.cat([d[2] for d in draws]).long()
    side = 2 * PAD + 1
    cells = torch.bincount((top * side + left) * 2 + flip, minlength=side * side * 2)
    assert len(cells) == 162 and cells.min() > 0  # every offset in {0..8}^2, both flips
    assert stats.chisquare(cells.numpy()).pvalue > ALPHA
    offsets = torch.bincount(top * side + left, minlength=side * side)
    assert stats.chisquare(offsets.numpy()).pvalue > ALPHA
    for axis in (top, left):
        assert stats.chisquare(torch.bincount(axis, minlength=side).numpy()).pvalue > ALPHA
    assert stats.binomtest(int(flip.sum()), len(flip), 0.5).pvalue > ALPHA
    assert abs(flip.float().mean().item() - 0.5) < 0.02


def test_draws_are_fresh_each_epoch(augmented_markers):
    _, ((t0, l0, f0), (t1, l1, f1)) = augmented_markers
    same = ((t0 == t1) & (l0 == l1) & (f0 == f1)).float().mean().item()
    assert same < 2 / 162  # independent draws agree with probability 1/162


def test_loader_matches_the_reference_distribution_on_pixels():
    """Mean augmented image of the loader vs the per-sample reference pipeline (two-sample z-test)."""
    image = torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    n = 4000
    loader = TensorBatchLoader(
        image.expand(n, -1, -1, -1).contiguous(), torch.arange(n), 1000, shuffle=False, augment=True, seed=2
    )
    ours = denormalize(torch.cat([b[0] for b in loader])).double()
    rng = random.Random(3)
    ref = torch.stack([reference_crop_flip(image, *reference_draw(rng)) for _ in range(n)]).double()
    # Border rows/columns carry the padding statistics; compare per-pixel means where they vary.
    se = ((ours.var(0) + ref.var(0)) / n).sqrt()
    z = (ours.mean(0) - ref.mean(0)) / se.clamp_min(1e-9)
    assert z.abs().max() < 5.0  # 3072 tests; |z| > 5 has probability ~2e-3 overall under the null


# --------------------------------------------------------------------------------------------
# Shuffling and the datamodule
# --------------------------------------------------------------------------------------------


def _order(seed: int, epoch: int, n: int = 300, batch: int = 64) -> list[int]:
    loader = TensorBatchLoader(
        torch.zeros(n, 3, SIZE, SIZE, dtype=torch.uint8),
        torch.arange(n),
        batch,
        shuffle=True,
        augment=True,
        seed=seed,
        epoch_fn=lambda: epoch,
    )
    return torch.cat([labels for _, labels in loader]).tolist()


def test_shuffle_is_seeded_per_run_and_epoch():
    base = _order(seed=0, epoch=0)
    assert sorted(base) == list(range(300)) and base != list(range(300))
    assert _order(seed=0, epoch=0) == base
    assert _order(seed=0, epoch=1) != base
    assert _order(seed=1, epoch=0) != base
    assert _order(seed=1, epoch=1) != _order(seed=0, epoch=1)


def test_epoch_fn_is_read_at_each_iteration():
    epoch = {"value": 0}
    loader = TensorBatchLoader(
        torch.zeros(100, 3, SIZE, SIZE, dtype=torch.uint8),
        torch.arange(100),
        32,
        shuffle=True,
        augment=False,
        seed=4,
        epoch_fn=lambda: epoch["value"],
    )
    assert len(loader) == 4
    seen = {}
    for e in (0, 3, 0):
        epoch["value"] = e
        batches = list(loader)
        assert [len(b[1]) for b in batches] == [32, 32, 32, 4]
        seen.setdefault(e, torch.cat([b[1] for b in batches]).tolist())
        assert torch.cat([b[1] for b in batches]).tolist() == seen[e]
        assert seen[e] == _order(seed=4, epoch=e, n=100, batch=32)
    assert seen[0] != seen[3]


def _markers(n: int = 100) -> tuple[Tensor, Tensor]:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, SIZE, SIZE).contiguous()
    return images, torch.arange(n)


def test_loader_resumes_at_the_first_batch_not_trained():
    images, labels = _markers()
    epoch = {"value": 2}
    full = TensorBatchLoader(images, labels, 16, shuffle=True, augment=True, seed=5, epoch_fn=lambda: epoch["value"])
    uninterrupted = list(full)
    partial = iter(full)
    for _ in range(3):
        next(partial)
    state = full.state_dict()
    assert state["epoch"] == 2 and state["batches_done"] == 3

    resumed = TensorBatchLoader(images, labels, 16, shuffle=True, augment=True, seed=5, epoch_fn=lambda: 2)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(uninterrupted) - 3
    for (x, y), (x_ref, y_ref) in zip(rest, uninterrupted[3:]):  # same samples, crops and flips
        assert torch.equal(y, y_ref) and torch.equal(x, x_ref)
    assert len(list(resumed)) == len(uninterrupted)  # the next iteration is a whole epoch again


def test_loader_state_of_another_epoch_starts_that_epoch_from_its_first_batch():
    images, labels = _markers()
    loader = TensorBatchLoader(images, labels, 16, shuffle=True, augment=False, seed=5, epoch_fn=lambda: 1)
    loader.load_state_dict({"epoch": 0, "batches_done": 7, "seed": 5, "num_samples": 100, "batch_size": 16})
    assert len(list(loader)) == len(loader)


def test_loader_refuses_the_state_of_other_data():
    images, labels = _markers()
    loader = TensorBatchLoader(images, labels, 16, shuffle=True, augment=False, seed=5)
    with pytest.raises(ValueError, match="resume it with the data settings it started with"):
        loader.load_state_dict({"epoch": 0, "batches_done": 1, "seed": 5, "num_samples": 100, "batch_size": 32})


def test_position_fn_says_what_was_trained_not_what_was_prefetched():
    images, labels = _markers()
    loader = TensorBatchLoader(images, labels, 16, shuffle=True, augment=False, seed=5, position_fn=lambda: (0, 2))
    batches = iter(loader)
    for _ in range(3):  # a fetcher one batch ahead of training
        next(batches)
    assert loader.state_dict()["batches_done"] == 2


class IdSource:
    """Random images whose label is the sample's index, so every batch says which samples it holds."""

    def __init__(self, n: int = 200, seed: int = 0) -> None:
        self.n, self.seed = n, seed

    def prepare(self) -> None:
        pass

    def load(self) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randint(0, 256, (self.n, 3, SIZE, SIZE), dtype=torch.uint8, generator=gen), torch.arange(self.n)


def _datamodule(seed: int, **kwargs) -> tuple[CifarDataModule, Tensor]:
    source = IdSource()
    dm = CifarDataModule(
        source, batch_size=kwargs.pop("batch_size", 32), val_size=40, split_seed=7, seed=seed, **kwargs
    )
    dm.setup()
    return dm, source.load()[0]


def _at_epoch(dm: CifarDataModule, epoch: int) -> CifarDataModule:
    dm.trainer = SimpleNamespace(current_epoch=epoch)  # all the datamodule reads of its trainer after setup
    return dm


def test_train_loader_shuffles_per_run_seed_and_trainer_epoch():
    def ids(seed: int, epoch: int) -> list[int]:
        dm, _ = _datamodule(seed)
        return torch.cat([y for _, y in _at_epoch(dm, epoch).train_dataloader()]).tolist()

    train_idx, _ = split_indices(200, 40, 7)
    assert sorted(ids(0, 0)) == train_idx.tolist()
    assert ids(0, 0) == ids(0, 0)
    assert ids(0, 1) != ids(0, 0)
    assert ids(1, 0) != ids(0, 0)


def test_train_loader_without_augmentation_is_plain_normalised_images():
    dm, images = _datamodule(0, augment=False)
    for x, y in dm.train_dataloader():
        assert torch.equal(x, normalize(images[y]))


def test_train_loader_augments():
    dm, images = _datamodule(0)
    changed = [not torch.equal(x[i], normalize(images[y[i]])) for x, y in dm.train_dataloader() for i in range(len(y))]
    assert sum(changed) / len(changed) > 0.9  # only the centred, unflipped draw (p = 1/162) is the identity


def test_fixed_batch_is_the_same_for_every_run_and_unaugmented():
    a, images = _datamodule(seed=1)
    b, _ = _datamodule(seed=2)
    xa, ya = a.fixed_batch(16, seed=123)
    xb, yb = _at_epoch(b, 5).fixed_batch(16, seed=123)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert xa.shape == (16, 3, SIZE, SIZE) and xa.dtype == torch.float32 and xa.device.type == "cpu"
    train_idx, _ = split_indices(200, 40, 7)
    assert set(ya.tolist()) <= set(train_idx.tolist()) and len(set(ya.tolist())) == 16
    assert torch.equal(xa, normalize(images[ya]))  # not augmented
    assert not torch.equal(a.fixed_batch(16, seed=124)[1], ya)


def test_fixed_batch_sets_up_on_demand():
    dm = CifarDataModule(IdSource(), batch_size=32, val_size=40, split_seed=7)
    x, _y = dm.fixed_batch(8, seed=0)
    assert x.shape == (8, 3, SIZE, SIZE)


def test_val_loader_is_unaugmented_unshuffled_and_covers_each_sample_once():
    _, val_idx = split_indices(200, 40, 7)
    seen = []
    for seed, epoch in ((0, 0), (0, 3), (9, 1)):
        dm, images = _datamodule(seed, batch_size=16)
        loader = _at_epoch(dm, epoch).val_dataloader()
        batches = list(loader)
        assert len(loader) == 3 and [len(y) for _, y in batches] == [16, 16, 8]
        ids = torch.cat([y for _, y in batches])
        assert ids.tolist() == val_idx.tolist()  # every validation sample once, in split order
        x = torch.cat([x for x, _ in batches])
        assert torch.equal(x, normalize(images[ids]))
        seen.append(x)
    assert all(torch.equal(seen[0], s) for s in seen[1:])


class _BatchRecorder(pl.LightningModule):
    """A linear model that records the samples of every training batch, per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3 * SIZE * SIZE, 1)
        self.seen: dict[int, list[tuple[Tensor, Tensor]]] = {}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        self.seen.setdefault(self.current_epoch, []).append((x.clone(), y.clone()))
        return self.layer(x.flatten(1)).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_sees_the_planned_epoch_each_epoch(tmp_path):
    """Inside a real fit, epoch e's batches are exactly the loader's plan for (run seed, e)."""
    dm = CifarDataModule(IdSource(), batch_size=40, val_size=40, split_seed=7, seed=3)
    model = _BatchRecorder()
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    assert sorted(model.seen) == [0, 1, 2]
    for epoch, batches in model.seen.items():
        expected = TensorBatchLoader(*dm._train, 40, shuffle=True, augment=True, seed=3, epoch_fn=lambda e=epoch: e)
        planned = list(expected)
        assert len(batches) == len(planned) == 4
        for (x, y), (px, py) in zip(batches, planned):
            assert torch.equal(y, py) and torch.equal(x, px)
