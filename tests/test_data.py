"""Tests for mixvae.data: parsing the canonical formats, splits, errors, caching and batching.

Most tests run on a generated fixture (mixvae.data.fixtures). The ``real_*`` tests run on the real files when
MIXVAE_DATA_DIR is set and are skipped otherwise.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import mixvae.data.binarized_mnist as binarized_mnist_module
import mixvae.data.mnist as mnist_module
import mixvae.data.omniglot as omniglot_module
from mixvae.data import DataError, Dataset, available_datasets, load_dataset, resolve_root
from mixvae.data.download import reachable, writable_dir
from mixvae.data.fixtures import fixture_counts, write_chardata, write_fixture_root

N_TRAIN, N_TEST = 120, 40


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory) -> Path:
    return write_fixture_root(tmp_path_factory.mktemp("data"), n_train=N_TRAIN, n_test=N_TEST)


@pytest.fixture
def fresh_root(tmp_path) -> Path:
    """A fixture root of one's own, for tests that damage or delete files."""
    return write_fixture_root(tmp_path / "data", n_train=N_TRAIN, n_test=N_TEST)


@pytest.fixture
def offline(monkeypatch):
    """Make every dataset module believe the network is unreachable."""
    for module in (mnist_module, binarized_mnist_module, omniglot_module):
        monkeypatch.setattr(module, "reachable", lambda url, timeout=None: False)


def assert_one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------------------------- fixture parsing


def test_available_datasets():
    assert available_datasets() == ["binarized_mnist", "mnist", "omniglot"]


def test_unknown_dataset_lists_names():
    with pytest.raises(DataError) as err:
        load_dataset("cifar10")
    message = assert_one_line(err)
    assert all(name in message for name in available_datasets())


@pytest.mark.parametrize("name", ["mnist", "binarized_mnist", "omniglot"])
def test_fixture_shapes_and_ranges(fixture_root, name):
    ds = load_dataset(name, root=fixture_root, download=False)
    counts = fixture_counts(N_TRAIN, N_TEST)[name]
    sizes = ds.sizes()
    assert sizes["test"] == counts["test"]
    assert sizes["train"] + sizes["valid"] == counts["train"] + counts.get("valid", 0)
    assert sizes["valid"] > 0
    for split in ("train", "valid", "test"):
        x = ds.split(split)
        assert x.dtype == torch.float32 and x.shape[1] == 784 == ds.x_dim
        assert 0.0 <= x.min().item() and x.max().item() <= 1.0
    torch.testing.assert_close(ds.train_mean, ds.train.mean(0))
    assert ds.dynamic == (name != "binarized_mnist")
    assert ds.name == name and ds.source.startswith(f"{name}: ")


def test_binarized_mnist_is_binary_and_uses_its_valid_file(fixture_root):
    ds = load_dataset("binarized_mnist", root=fixture_root)
    for x in (ds.train, ds.valid, ds.test):
        assert set(x.unique().tolist()) == {0.0, 1.0}
    assert ds.sizes() == {"train": N_TRAIN, "valid": N_TEST, "test": N_TEST}
    merged = load_dataset("binarized_mnist", root=fixture_root, valid_size=0)
    assert merged.sizes() == {"train": N_TRAIN + N_TEST, "valid": 0, "test": N_TEST}
    torch.testing.assert_close(merged.train, torch.cat([ds.train, ds.valid]))
    with pytest.warns(UserWarning, match="ignored"):
        load_dataset("binarized_mnist", root=fixture_root, valid_size=7)


def test_mnist_gz_and_plain_agree(fresh_root):
    plain = load_dataset("mnist", root=fresh_root, valid_size=0)
    for f in (fresh_root / "MNIST" / "raw").glob("*-ubyte"):
        f.unlink()
    gz = load_dataset("mnist", root=fresh_root, valid_size=0)
    assert ".gz" in gz.source and ".gz" not in plain.source
    assert torch.equal(plain.train, gz.train) and torch.equal(plain.test, gz.test)
    # intensities are uint8 / 255
    assert torch.equal(torch.round(plain.train * 255) / 255, plain.train)


def test_amat_gz_and_plain_agree(tmp_path):
    plain = load_dataset("binarized_mnist", root=write_fixture_root(tmp_path / "a", N_TRAIN, N_TEST))
    gz = load_dataset("binarized_mnist", root=write_fixture_root(tmp_path / "b", N_TRAIN, N_TEST, gzip_amat=True))
    assert ".amat.gz" in gz.source
    for split in ("train", "valid", "test"):
        assert torch.equal(plain.split(split), gz.split(split))


def test_amat_other_number_spellings(tmp_path):
    rng = np.random.default_rng(0)
    binary = rng.random((5, 784)) < 0.3
    text = "".join(" ".join("1.0" if v else "0.0" for v in row) + "\n" for row in binary).encode()
    parsed = binarized_mnist_module.parse_amat(text, tmp_path / "x.amat")
    assert np.array_equal(parsed, binary.astype(np.uint8))


# ------------------------------------------------------------------------------------------------ validation splits


def test_mnist_valid_is_last_training_images(fixture_root):
    full = load_dataset("mnist", root=fixture_root, valid_size=0)
    ds = load_dataset("mnist", root=fixture_root, valid_size=30)
    assert full.sizes()["valid"] == 0
    assert torch.equal(ds.valid, full.train[-30:]) and torch.equal(ds.train, full.train[:-30])
    default = load_dataset("mnist", root=fixture_root)
    assert default.sizes()["valid"] == round(N_TRAIN / 6)  # 10,000 of 60,000 on the real set


def test_omniglot_valid_is_seeded_random_subset(fixture_root):
    full = load_dataset("omniglot", root=fixture_root, valid_size=0)
    a = load_dataset("omniglot", root=fixture_root, valid_size=20, seed=1)
    b = load_dataset("omniglot", root=fixture_root, valid_size=20, seed=1)
    c = load_dataset("omniglot", root=fixture_root, valid_size=20, seed=2)
    assert torch.equal(a.valid, b.valid) and not torch.equal(a.valid, c.valid)
    assert not torch.equal(a.valid, full.train[-20:])
    rows = {tuple(r.tolist()) for r in full.train}
    assert {tuple(r.tolist()) for r in torch.cat([a.train, a.valid])} == rows


def test_valid_size_must_leave_training_images(fixture_root):
    with pytest.raises(ValueError, match="no training images"):
        load_dataset("mnist", root=fixture_root, valid_size=N_TRAIN)


# ------------------------------------------------------------------------------------------------ missing / corrupt


@pytest.mark.parametrize("name", ["mnist", "binarized_mnist", "omniglot"])
def test_missing_files_one_line_error(tmp_path, name, offline):
    for download in (False, None):
        with pytest.raises(DataError) as err:
            load_dataset(name, root=tmp_path / "empty", download=download)
        message = assert_one_line(err)
        assert str(tmp_path / "empty") in message and "MIXVAE_DATA_DIR" in message and "download" in message


def test_download_none_checks_network_only_when_files_missing(fixture_root, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(mnist_module, "reachable", lambda url, timeout=None: calls.append(url) or False)
    load_dataset("mnist", root=fixture_root)
    assert calls == []
    with pytest.raises(DataError):
        load_dataset("mnist", root=tmp_path)
    assert calls == [mnist_module.MIRROR]


def test_download_fetches_missing_files(fixture_root, tmp_path, monkeypatch):
    """The online path, with the network replaced by copies from the fixture."""
    root, urls = tmp_path / "dl", []

    def fake_fetch(url, dest):
        urls.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(fixture_root / dest.relative_to(root), dest)

    for module in (binarized_mnist_module, omniglot_module):
        monkeypatch.setattr(module, "fetch", fake_fetch)
    for module in (mnist_module, binarized_mnist_module, omniglot_module):
        monkeypatch.setattr(module, "reachable", lambda url, timeout=None: True)
    monkeypatch.setattr(mnist_module, "_download",
                        lambda r: shutil.copytree(fixture_root / "MNIST", r / "MNIST"))
    for name in available_datasets():
        assert load_dataset(name, root=root).sizes() == load_dataset(name, root=fixture_root).sizes()
    assert urls == [binarized_mnist_module.URL.format(split=s) for s in ("train", "valid", "test")] + [
        omniglot_module.URL.format(name=n) for n in omniglot_module.ZIP_NAMES]


def test_failed_download_one_line_error(tmp_path, monkeypatch):
    def failing_fetch(url, dest):
        raise OSError("connection reset")

    monkeypatch.setattr(binarized_mnist_module, "fetch", failing_fetch)
    with pytest.raises(DataError, match="connection reset") as err:
        load_dataset("binarized_mnist", root=tmp_path, download=True)
    assert_one_line(err)
    assert not list(tmp_path.rglob("*.amat*"))


def test_reachable_is_bounded_offline():
    start = time.monotonic()
    assert not reachable("https://no-such-host.invalid/", timeout=1.0)
    assert time.monotonic() - start < 5.0


def _corrupt_cases():
    def bad_magic(root):
        path = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
        data = bytearray(path.read_bytes())
        data[3] = 0x01
        path.write_bytes(bytes(data))
        return "mnist", path

    def truncated_idx(root):
        path = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
        path.write_bytes(path.read_bytes()[:-100])
        return "mnist", path

    def bad_gzip(root):
        for f in (root / "MNIST" / "raw").glob("*-ubyte"):
            f.unlink()
        path = root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
        path.write_bytes(path.read_bytes()[:500])
        return "mnist", path

    def short_amat_line(root):
        path = root / "binarized_mnist" / "binarized_mnist_valid.amat"
        lines = path.read_bytes().splitlines(keepends=True)
        lines[3] = lines[3][2:]  # 783 values
        path.write_bytes(b"".join(lines))
        return "binarized_mnist", path

    def non_binary_amat(root):
        path = root / "binarized_mnist" / "binarized_mnist_test.amat"
        path.write_bytes(b"2" + path.read_bytes()[1:])
        return "binarized_mnist", path

    def garbage_zip(root):
        path = root / "omniglot" / "images_evaluation.zip"
        path.write_bytes(b"not a zip file")
        return "omniglot", path

    def wrong_png_size(root):
        from PIL import Image

        path = root / "omniglot" / "images_background.zip"
        out = io.BytesIO()
        Image.new("1", (50, 50), 1).save(out, format="PNG")
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr("images_background/Extra/character01/9999_01.png", out.getvalue())
        return "omniglot", path

    return [bad_magic, truncated_idx, bad_gzip, short_amat_line, non_binary_amat, garbage_zip, wrong_png_size]


@pytest.mark.parametrize("corrupt", _corrupt_cases(), ids=lambda f: f.__name__)
def test_corrupt_file_one_line_error(fresh_root, corrupt):
    name, path = corrupt(fresh_root)
    with pytest.raises(DataError) as err:
        load_dataset(name, root=fresh_root, download=False)
    assert str(path) in assert_one_line(err)


def test_missing_files_message_names_the_config_keys(tmp_path, offline):
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root=tmp_path / "empty", download=False)
    message = assert_one_line(err)
    assert "dataset.root" in message and "dataset.download=true" in message
    assert "data.root" not in message.replace("dataset.root", "") and "download=True" not in message


@pytest.fixture(scope="module")
def canonical_sized_root(tmp_path_factory) -> Path:
    """Fixture files with the canonical image counts of MNIST's and binarized MNIST's 10,000-image files (so
    they are verified) but generated pixels: well-formed files whose content is not the published one."""
    root = tmp_path_factory.mktemp("canonical")
    rng = np.random.default_rng(0)
    from mixvae.data.fixtures import write_binarized_mnist, write_mnist

    write_mnist(root, 60, 10_000, rng)
    write_binarized_mnist(root, 60, 10_000, rng)
    return root


@pytest.mark.parametrize("name,stem", [("mnist", "t10k-images-idx3-ubyte"),
                                       ("binarized_mnist", "binarized_mnist_valid.amat")])
def test_canonical_file_with_other_pixels_is_refused_unless_verify_false(canonical_sized_root, name, stem):
    with pytest.raises(DataError) as err:
        load_dataset(name, root=canonical_sized_root, download=False)
    message = assert_one_line(err)
    assert stem in message and "does not match the canonical file" in message and "dataset.verify=false" in message
    ds = load_dataset(name, root=canonical_sized_root, download=False, verify=False)
    assert ds.sizes()["test"] == 10_000


def test_binarized_digest_ignores_spelling_and_order_not_pixels():
    rng = np.random.default_rng(1)
    images = (rng.random((50, 784)) < 0.3).astype(np.uint8)
    digest = binarized_mnist_module.image_digest(images)
    assert binarized_mnist_module.image_digest(images[::-1]) == digest
    flipped = images.copy()
    flipped[7, 100] ^= 1
    assert binarized_mnist_module.image_digest(flipped) != digest


def test_omniglot_zip_digest_checked_only_for_the_full_set(tmp_path):
    path = tmp_path / "images_evaluation.zip"
    path.write_bytes(b"x")
    other = {"0" * 64, "1" * 32}
    omniglot_module._check_zips([path], {path: other}, n_images=100)  # a fixture-sized set: not checked
    with pytest.raises(DataError, match=r"images_evaluation.zip does not match the canonical file"):
        omniglot_module._check_zips([path], {path: other}, n_images=13_180)
    original = {"6b91aef0f799c5bb55b94e3f2daec811", "0" * 64}  # torchvision's MD5 of the original zip
    omniglot_module._check_zips([path], {path: original}, n_images=13_180)


# ----------------------------------------------------------------------------------------------------- omniglot


def test_area_matrix_preserves_mean():
    A = omniglot_module.area_matrix()
    np.testing.assert_allclose(A.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(A.sum(0), 28 / 105, atol=1e-12)  # each input pixel counts equally
    img = np.random.default_rng(0).random((105, 105))
    np.testing.assert_allclose((A @ img @ A.T).mean(), img.mean(), rtol=1e-12)


def test_omniglot_zip_split_by_drawer_and_inverted(fixture_root):
    zips = [fixture_root / "omniglot" / n for n in omniglot_module.ZIP_NAMES]
    drawers = np.concatenate([omniglot_module._read_zip(z)[0] for z in zips])
    train, test = omniglot_module.build_from_zips(zips)
    assert len(train) == np.sum(drawers <= 15) and len(test) == np.sum(drawers >= 16)
    assert set(np.unique(drawers)) == set(range(1, 21))
    images = train.reshape(-1, 28, 28)
    assert images[:, 0, :].max() == 0 and images[:, :, 0].max() == 0  # background is 0 after inversion
    assert images.max() == 255  # stroke interiors are full ink


def test_omniglot_cache_reused_and_keyed_by_zips(fresh_root, monkeypatch):
    first = load_dataset("omniglot", root=fresh_root)
    cache = list((fresh_root / "omniglot").glob("omniglot28_area_*.npz"))
    assert len(cache) == 1 and str(cache[0]) in first.source

    def no_build(paths):
        raise AssertionError("cache not used")

    monkeypatch.setattr(omniglot_module, "build_from_zips", no_build)
    second = load_dataset("omniglot", root=fresh_root)
    assert torch.equal(first.train, second.train) and torch.equal(first.test, second.test)
    monkeypatch.undo()

    # a changed zip gets a new cache key
    write_fixture_root(fresh_root / "other", n_train=N_TRAIN, n_test=N_TEST, seed=5)
    shutil.copy(fresh_root / "other" / "omniglot" / "images_evaluation.zip", fresh_root / "omniglot")
    third = load_dataset("omniglot", root=fresh_root)
    assert len(list((fresh_root / "omniglot").glob("omniglot28_area_*.npz"))) == 2
    assert not torch.equal(first.test, third.test)


def test_omniglot_damaged_cache_is_rebuilt(fresh_root):
    first = load_dataset("omniglot", root=fresh_root)
    (cache,) = (fresh_root / "omniglot").glob("omniglot28_area_*.npz")
    cache.write_bytes(b"broken")
    again = load_dataset("omniglot", root=fresh_root)
    assert torch.equal(first.train, again.train)
    with np.load(cache) as f:
        assert f["train"].shape[1] == 784


def test_omniglot_read_only_root_caches_in_user_dir(fresh_root, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder = fresh_root / "omniglot"
    folder.chmod(0o555)
    try:
        assert not writable_dir(folder)
        ds = load_dataset("omniglot", root=fresh_root)
    finally:
        folder.chmod(0o755)
    assert not list(folder.glob("*.npz"))
    assert len(list((tmp_path / "xdg" / "mixvae").glob("omniglot28_area_*.npz"))) == 1
    assert str(tmp_path / "xdg" / "mixvae") in ds.source


def test_omniglot_chardata_preferred_and_row_major(fresh_root):
    rng = np.random.default_rng(3)
    train, test = rng.random((30, 784)), rng.random((10, 784))
    write_chardata(fresh_root / "omniglot" / "chardata.mat", train, test)
    ds = load_dataset("omniglot", root=fresh_root, valid_size=0)
    assert "chardata.mat" in ds.source
    np.testing.assert_allclose(ds.train.numpy(), train, atol=1e-7)
    np.testing.assert_allclose(ds.test.numpy(), test, atol=1e-7)


# ------------------------------------------------------------------------------------------------------ batching


def _indexed_dataset(n: int) -> Dataset:
    """Row i of every split is the constant i / n, so a batch tells which rows it holds."""
    rows = (torch.arange(n, dtype=torch.float32) / n)[:, None].expand(n, 784).contiguous()
    return Dataset("indexed", "test", rows, rows[:0], rows, dynamic=False)


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_cover_every_index_once(shuffle):
    n, batch_size = 103, 10
    ds = _indexed_dataset(n)
    g = torch.Generator().manual_seed(0)
    batches = list(ds.batches("train", batch_size, shuffle=shuffle, generator=g))
    assert len(batches) == ds.num_batches("train", batch_size) == math.ceil(n / batch_size)
    assert [b.shape[0] for b in batches] == [10] * 10 + [3]
    seen = torch.round(torch.cat(batches)[:, 0] * n).long()
    assert sorted(seen.tolist()) == list(range(n))
    assert (seen.tolist() == list(range(n))) != shuffle
    assert list(ds.batches("valid", 5)) == [] and ds.num_batches("valid", 5) == 0


def test_shuffle_is_reproducible_and_varies_by_epoch():
    ds = _indexed_dataset(50)

    def epoch(g):
        return torch.cat(list(ds.batches("train", 7, shuffle=True, generator=g)))[:, 0]

    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    e1, e2 = epoch(g1), epoch(g2)
    assert torch.equal(e1, e2) and not torch.equal(e1, epoch(g1))


def test_dynamic_binarization_fresh_draws_with_right_mean(fixture_root):
    ds = load_dataset("mnist", root=fixture_root)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([torch.cat(list(ds.batches("train", 32, generator=g))) for _ in range(100)]).double()
    assert set(draws.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(draws[0], draws[1])  # a fresh Bernoulli draw on every pass
    p = ds.train.double()
    # the mean of 100 draws is unbiased for the intensity: total deviation in standard errors
    z = (draws.mean(0) - p).sum() / torch.sqrt((p * (1 - p)).sum() / draws.shape[0])
    assert abs(z.item()) < 5.0
    # the same generator seed reproduces the draws
    again = torch.cat(list(ds.batches("train", 32, generator=torch.Generator().manual_seed(0))))
    assert torch.equal(again.double(), draws[0])


def test_static_binarized_batches_are_the_stored_images(fixture_root):
    ds = load_dataset("binarized_mnist", root=fixture_root)
    assert torch.equal(torch.cat(list(ds.batches("test", 16))), ds.test)
    binarized = torch.cat(list(ds.batches("test", 16, binarize=True, generator=torch.Generator().manual_seed(0))))
    assert torch.equal(binarized, ds.test)  # Bernoulli of 0/1 is itself


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda(fixture_root):
    ds = load_dataset("mnist", root=fixture_root, device="cuda")
    assert ds.train.is_cuda and ds.train_mean.is_cuda
    g = torch.Generator(device="cuda").manual_seed(0)
    batch = next(ds.batches("train", 8, shuffle=True, generator=g))
    assert batch.is_cuda and batch.shape == (8, 784)
    with pytest.raises(ValueError, match="generator"):
        next(ds.batches("train", 8, generator=torch.Generator()))


# ------------------------------------------------------------------------------------------------------------ root


def test_root_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("MIXVAE_DATA_DIR", raising=False)
    assert resolve_root(None) == Path("data")
    monkeypatch.setenv("MIXVAE_DATA_DIR", str(tmp_path))
    assert resolve_root(None) == tmp_path
    assert resolve_root(tmp_path / "x") == tmp_path / "x"


def test_root_from_env(fixture_root, monkeypatch):
    monkeypatch.setenv("MIXVAE_DATA_DIR", str(fixture_root))
    assert str(fixture_root) in load_dataset("mnist").source


# ------------------------------------------------------------------------------------------------ real files

REAL_ROOT = os.environ.get("MIXVAE_DATA_DIR")
real = pytest.mark.skipif(not REAL_ROOT, reason="MIXVAE_DATA_DIR not set (real data files)")


@real
def test_real_mnist():
    ds = load_dataset("mnist", root=REAL_ROOT, download=False)
    assert ds.sizes() == {"train": 50_000, "valid": 10_000, "test": 10_000}
    full = load_dataset("mnist", root=REAL_ROOT, valid_size=0, download=False)
    assert full.sizes()["train"] == 60_000
    assert abs(full.train.mean().item() - 0.1307) < 1e-3  # the well-known MNIST pixel mean


@real
def test_real_binarized_mnist():
    ds = load_dataset("binarized_mnist", root=REAL_ROOT, download=False)
    assert ds.sizes() == {"train": 50_000, "valid": 10_000, "test": 10_000}
    assert set(ds.train.unique().tolist()) == {0.0, 1.0}
    assert 0.12 < ds.train.mean().item() < 0.14


@pytest.fixture(scope="session")
def real_omniglot(tmp_path_factory):
    """Built once per session; a read-only mirror sends the cache to a temporary XDG_CACHE_HOME."""
    xdg = tmp_path_factory.mktemp("xdg")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(xdg))
        start = time.monotonic()
        ds = load_dataset("omniglot", root=REAL_ROOT, valid_size=0, download=False)
    return ds, time.monotonic() - start, xdg


@real
def test_real_omniglot(real_omniglot):
    ds, seconds, _ = real_omniglot
    if "chardata.mat" in ds.source:
        assert ds.sizes() == {"train": 24_345, "valid": 0, "test": 8_070}
    else:
        assert ds.sizes() == {"train": 24_345, "valid": 0, "test": 8_115}  # 1,623 characters x 15 / 5 drawers
        assert seconds < 60
    assert 0.03 < ds.train.mean().item() < 0.15  # mostly background


@real
def test_real_omniglot_default_valid(real_omniglot, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(real_omniglot[2]))
    ds = load_dataset("omniglot", root=REAL_ROOT, download=False)  # cache hit in the user cache dir or root
    assert ds.sizes()["valid"] == 1_345 and ds.sizes()["train"] == 23_000
