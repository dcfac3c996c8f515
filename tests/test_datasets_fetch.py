"""The fetchers end to end, against a local HTTP server on 127.0.0.1 serving small archives
with MAF's member layout and formats (npy, pandas pickle, csv, hdf5, jpg)."""

import hashlib
import io
import os
import tarfile
import threading
import warnings
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from skffjord.datasets import (
    DataIntegrityError,
    _bsds300,
    _bsds300_images,
    _maf_archive,
    _specs,
    fetch_bsds300,
    fetch_dataset,
    fetch_gas,
    fetch_hepmass,
    fetch_miniboone,
    fetch_power,
    get_data_home,
)
from skffjord.datasets._bsds300_images import images_digest
from skffjord.datasets._download import RemoteFile, git_blob_sha1
from skffjord.datasets._preprocessing import (
    preprocess_gas,
    preprocess_hepmass,
    preprocess_miniboone,
    preprocess_power,
    split_sizes,
)
from skffjord.datasets._splits import cache_path

from .test_datasets_preprocessing import _gas_frame, _hepmass_frames, _power_raw

FETCHERS = {
    "power": fetch_power,
    "gas": fetch_gas,
    "hepmass": fetch_hepmass,
    "miniboone": fetch_miniboone,
    "bsds300": fetch_bsds300,
}


# --------------------------------------------------------------------------- local server


class _Server:
    """Serves ``routes[path] = bytes``; ``truncate[path] = k`` cuts the next ``k`` responses to
    half their announced length; ``hits[path]`` counts requests."""

    def __init__(self):
        self.routes: dict[str, bytes] = {}
        self.truncate: dict[str, int] = {}
        self.hits: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                body = outer.routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.truncate.get(self.path, 0) > 0:
                    outer.truncate[self.path] -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = _Server()
    yield srv
    srv.close()


# --------------------------------------------------------------------------- small archives


def _npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _hdf5_bytes(splits):
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as fh:
        for key, value in splits.items():
            fh.create_dataset(key, data=value)
    return buffer.getvalue()


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _small_sources():
    rng = np.random.default_rng(0)
    power = _power_raw(n=1000, seed=5)
    gas = _gas_frame(n=1200, seed=6)
    hep_train, hep_test = _hepmass_frames(seed=7)
    miniboone = rng.normal(size=(500, 43))
    bsds = {
        "train": rng.normal(size=(100, 63)).astype(np.float32),
        "validation": rng.normal(size=(20, 63)).astype(np.float32),
        "test": rng.normal(size=(50, 63)).astype(np.float32),
    }
    gas_buffer = io.BytesIO()
    gas.to_pickle(gas_buffer)
    members = {
        "data/power/data.npy": _npy_bytes(power),
        "data/gas/ethylene_CO.pickle": gas_buffer.getvalue(),
        "data/hepmass/1000_train.csv": hep_train.to_csv(index=False).encode(),
        "data/hepmass/1000_test.csv": hep_test.to_csv(index=False).encode(),
        "data/miniboone/data.npy": _npy_bytes(miniboone),
        "data/BSDS300/BSDS300.hdf5": _hdf5_bytes(bsds),
        "data/mnist/mnist.pkl.gz": b"not needed, never extracted",
    }
    raw = {
        "power": power,
        "gas": gas,
        "hepmass": (hep_train, hep_test),
        "miniboone": miniboone,
        "bsds300": bsds,
    }
    return members, raw


def _expected(name, raw):
    if name == "power":
        return preprocess_power(raw["power"])
    if name == "gas":
        return preprocess_gas(raw["gas"])[0]
    if name == "hepmass":
        return preprocess_hepmass(*raw["hepmass"])[0]
    if name == "miniboone":
        return preprocess_miniboone(raw["miniboone"])
    return tuple(raw["bsds300"][k] for k in ("train", "validation", "test"))


def _serve_maf_archive(server, monkeypatch, members):
    """Serve ``members`` as the MAF archive, with its true checksum and size."""
    archive = _tar_gz(members)
    server.routes["/maf/data.tar.gz"] = archive
    monkeypatch.setattr(
        _maf_archive,
        "MAF_ARCHIVE",
        RemoteFile(
            "data.tar.gz",
            server.url("/maf/data.tar.gz"),
            hashlib.sha256(archive).hexdigest(),
            len(archive),
        ),
    )


@pytest.fixture
def maf_server(server, monkeypatch):
    """The local server with a small MAF-layout archive, and the fetchers pointed at it."""
    members, raw = _small_sources()
    _serve_maf_archive(server, monkeypatch, members)
    npy = members["data/miniboone/data.npy"]
    blob = hashlib.sha1(b"blob %d\0" % len(npy) + npy).hexdigest()
    for name in _specs.SPECS:
        sizes = tuple(part.shape[0] for part in _expected(name, raw))
        spec = replace(_specs.SPECS[name], split_sizes=sizes)
        if name == "miniboone":
            spec = replace(spec, member_blobs=(("miniboone/data.npy", blob),))
        monkeypatch.setitem(_specs.SPECS, name, spec)
    server.raw = raw
    server.members = members
    return server


def _files(folder: Path):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- tests


def test_get_data_home_env_and_argument(monkeypatch, tmp_path):
    monkeypatch.setenv("SKFFJORD_DATA", str(tmp_path / "from_env"))
    assert get_data_home() == tmp_path / "from_env"
    assert get_data_home(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("SKFFJORD_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert get_data_home() == tmp_path / "skffjord_data"
    assert not (tmp_path / "skffjord_data").exists()  # nothing is created by asking
    with pytest.raises(TypeError, match="data_home"):
        get_data_home(3)


@pytest.mark.parametrize("name", list(FETCHERS))
def test_fetch_downloads_verifies_processes_and_caches(maf_server, tmp_path, name):
    home = tmp_path / "home"
    bunch = FETCHERS[name](home, verbose=False)
    expected = _expected(name, maf_server.raw)
    spec = _specs.SPECS[name]
    for split, want in zip(("train", "validation", "test"), expected, strict=True):
        got = bunch[split]
        assert got.shape == (want.shape[0], spec.n_features)
        assert got.dtype == (np.float32 if name == "bsds300" else np.float64)
        np.testing.assert_array_equal(got, want)
    assert len(bunch.feature_names) == spec.n_features
    assert name.upper() in bunch.DESCR
    # the archive is kept for the other datasets; only the needed members were used, and the
    # processed splits are cached
    assert _files(home) == sorted(["maf/data.tar.gz", f"processed/{name}_maf.npz"])
    assert maf_server.hits["/maf/data.tar.gz"] == 1
    # the second call reads the cache only: no request, and no archive needed
    (home / "maf" / "data.tar.gz").unlink()
    again = FETCHERS[name](home, download_if_missing=False, as_frame=True)
    assert maf_server.hits["/maf/data.tar.gz"] == 1
    assert isinstance(again.train, pd.DataFrame)
    assert list(again.train.columns) == bunch.feature_names
    np.testing.assert_array_equal(again.test.to_numpy(), bunch.test)


def test_one_download_serves_every_dataset(maf_server, tmp_path):
    for name in FETCHERS:
        fetch_dataset(name, tmp_path, verbose=False)
    assert maf_server.hits["/maf/data.tar.gz"] == 1
    assert len(list((tmp_path / "processed").iterdir())) == 5


def test_feature_names(maf_server, tmp_path):
    assert fetch_power(tmp_path, verbose=False).feature_names == [
        "global_active_power",
        "voltage",
        "sub_metering_1",
        "sub_metering_2",
        "sub_metering_3",
        "time",
    ]
    assert fetch_gas(tmp_path).feature_names == [f"s{j}" for j in range(8)]
    assert fetch_bsds300(tmp_path).feature_names[-1] == "pixel_7_6"


def test_truncated_download_raises_and_leaves_nothing(maf_server, tmp_path):
    maf_server.truncate["/maf/data.tar.gz"] = 10
    with pytest.raises(DataIntegrityError, match="[Tt]runcated"):
        fetch_power(tmp_path, n_retries=1, delay=0, verbose=False)
    assert maf_server.hits["/maf/data.tar.gz"] == 2  # one try and one retry
    assert _files(tmp_path) == []


def test_truncated_download_is_retried(maf_server, tmp_path):
    maf_server.truncate["/maf/data.tar.gz"] = 1
    bunch = fetch_power(tmp_path, n_retries=2, delay=0, verbose=False)
    assert maf_server.hits["/maf/data.tar.gz"] == 2
    assert bunch.train.shape[1] == 6


def test_wrong_checksum_raises_and_leaves_nothing(maf_server, monkeypatch, tmp_path):
    monkeypatch.setattr(
        _maf_archive, "MAF_ARCHIVE", replace(_maf_archive.MAF_ARCHIVE, sha256="0" * 64)
    )
    with pytest.raises(DataIntegrityError, match="Checksum mismatch"):
        fetch_gas(tmp_path, verbose=False)
    assert maf_server.hits["/maf/data.tar.gz"] == 1  # a mismatch is not retried
    assert _files(tmp_path) == []


def test_missing_member_raises_and_leaves_nothing(maf_server, monkeypatch, tmp_path):
    members = dict(maf_server.members)
    del members["data/gas/ethylene_CO.pickle"]
    _serve_maf_archive(maf_server, monkeypatch, members)
    with pytest.raises(DataIntegrityError, match="no member 'gas/ethylene_CO.pickle'"):
        fetch_gas(tmp_path, verbose=False)
    assert _files(tmp_path) == []


def test_wrong_member_checksum_raises(maf_server, monkeypatch, tmp_path):
    spec = replace(_specs.SPECS["miniboone"], member_blobs=(("miniboone/data.npy", "1" * 40),))
    monkeypatch.setitem(_specs.SPECS, "miniboone", spec)
    with pytest.raises(DataIntegrityError, match="git blob id"):
        fetch_miniboone(tmp_path, verbose=False)
    assert _files(tmp_path) == ["maf/data.tar.gz"]  # no cache; the archive is kept


def test_wrong_shapes_raise_and_cache_nothing(maf_server, monkeypatch, tmp_path):
    # the published sizes against a small archive: the check must refuse it
    spec = replace(_specs.SPECS["power"], split_sizes=(1_659_917, 184_435, 204_928))
    monkeypatch.setitem(_specs.SPECS, "power", spec)
    with pytest.raises(DataIntegrityError, match="split shapes"):
        fetch_power(tmp_path, verbose=False)
    assert _files(tmp_path) == ["maf/data.tar.gz"]  # no cache; the archive is kept


def test_unreadable_member_raises(maf_server, monkeypatch, tmp_path):
    members = dict(maf_server.members)
    members["data/power/data.npy"] = _npy_bytes(np.zeros((30, 7)))  # 7 columns, not 8
    _serve_maf_archive(maf_server, monkeypatch, members)
    with pytest.raises(DataIntegrityError, match="8 columns"):
        fetch_power(tmp_path, verbose=False)
    assert _files(tmp_path) == ["maf/data.tar.gz"]  # no cache; the archive is kept


def test_corrupt_archive_already_in_place_is_reported_not_deleted(maf_server, tmp_path):
    (tmp_path / "maf").mkdir()
    (tmp_path / "maf" / "data.tar.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataIntegrityError, match="Delete .*data.tar.gz"):
        fetch_power(tmp_path)
    assert "/maf/data.tar.gz" not in maf_server.hits
    assert (tmp_path / "maf" / "data.tar.gz").exists()


def test_http_error_is_clear_and_not_retried(server, monkeypatch, tmp_path):
    monkeypatch.setattr(_maf_archive, "MAF_ARCHIVE", RemoteFile("data.tar.gz", server.url("/nope")))
    with pytest.raises(OSError, match="Could not download .*nope: HTTP 404"):
        fetch_power(tmp_path, n_retries=3, delay=0, verbose=False)
    assert server.hits["/nope"] == 1  # a 404 does not go away by asking again
    assert _files(tmp_path) == []


def test_connection_refused_names_the_url(monkeypatch, tmp_path):
    monkeypatch.setattr(
        _maf_archive, "MAF_ARCHIVE", RemoteFile("data.tar.gz", "http://127.0.0.1:9/data.tar.gz")
    )
    with pytest.raises(OSError, match="Could not download http://127.0.0.1:9/data.tar.gz"):
        fetch_power(tmp_path, n_retries=1, delay=0, verbose=False)
    assert _files(tmp_path) == []


def test_a_disk_error_while_extracting_keeps_the_archive(maf_server, monkeypatch, tmp_path):
    """A full disk is not the archive's fault: the error surfaces as it is and the 1 GB
    download is kept."""
    import builtins
    import errno

    from skffjord.datasets import _download

    def full_disk_open(file, mode="r", *args, **kwargs):
        if "w" in mode and ".skffjord-" in str(file):
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return builtins.open(file, mode, *args, **kwargs)

    monkeypatch.setattr(_download, "open", full_disk_open, raising=False)
    with pytest.raises(OSError, match="No space left") as info:
        fetch_power(tmp_path, verbose=False)
    assert not isinstance(info.value, DataIntegrityError)
    assert _files(tmp_path) == ["maf/data.tar.gz"]


def test_unreadable_pickle_is_a_clear_error(maf_server, monkeypatch, tmp_path):
    members = dict(maf_server.members)
    members["data/gas/ethylene_CO.pickle"] = b"\x80\x04 definitely not a pickle"
    _serve_maf_archive(maf_server, monkeypatch, members)
    with pytest.raises(DataIntegrityError, match="cannot read gas/ethylene_CO.pickle"):
        fetch_gas(tmp_path, verbose=False)
    assert _files(tmp_path) == ["maf/data.tar.gz"]


def test_extract_members_writes_only_the_members_asked_for(tmp_path):
    from skffjord.datasets._download import extract_members

    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar_gz({"data/x/a.npy": b"a", "data/y/b.npy": b"bb", "data/z": b"c"}))
    out = tmp_path / "out"
    out.mkdir()
    found = extract_members(archive, ["y/b.npy"], out, strip_prefix="data/")
    assert list(found) == ["y/b.npy"]
    assert [p.name for p in out.iterdir()] == [found["y/b.npy"].name]
    assert found["y/b.npy"].read_bytes() == b"bb"


@pytest.mark.parametrize("name", ["../evil.jpg", "images/../../evil.jpg", "/abs.jpg", "a\\b.jpg"])
def test_unsafe_member_names_are_refused(tmp_path, name):
    from skffjord.datasets._download import extract

    archive = tmp_path / "a.tar"
    archive.write_bytes(_tar_gz({name: b"x"}))
    with pytest.raises(DataIntegrityError, match="Unsafe member name"):
        extract(archive, tmp_path / "out", lambda key: True, flatten=False)
    assert not (tmp_path / "evil.jpg").exists()


def test_download_if_missing_false(maf_server, tmp_path):
    with pytest.raises(OSError, match="download_if_missing=False"):
        fetch_hepmass(tmp_path, download_if_missing=False)
    assert maf_server.hits == {}


def test_unknown_dataset():
    with pytest.raises(ValueError, match="Unknown dataset 'mnist'.*power, gas"):
        fetch_dataset("mnist")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"as_frame": "yes"}, "as_frame"),
        ({"download_if_missing": 1}, "download_if_missing"),
        ({"n_retries": -1}, "n_retries"),
        ({"delay": -1.0}, "delay"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        fetch_power(tmp_path, **kwargs)


def test_bad_bsds300_source(tmp_path):
    with pytest.raises(ValueError, match="source must be"):
        fetch_bsds300(tmp_path, source="png")
    with pytest.raises(ValueError, match="images_dir is only used with source='images'"):
        fetch_bsds300(tmp_path, images_dir=tmp_path)


def test_data_home_not_writable(maf_server, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match="data_home is not writable"):
        fetch_power(blocker / "data", verbose=False)
    assert "/maf/data.tar.gz" not in maf_server.hits


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_data_home_read_only_folder(maf_server, tmp_path):
    home = tmp_path / "ro"
    home.mkdir()
    home.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="data_home is not writable"):
            fetch_power(home, verbose=False)
    finally:
        home.chmod(0o700)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_shape", "nan"])
def test_corrupt_cache_is_a_clear_error(maf_server, tmp_path, damage):
    fetch_miniboone(tmp_path, verbose=False)
    cache = cache_path(tmp_path, "miniboone")
    if damage == "garbage":
        cache.write_bytes(b"this is not an npz file")
    elif damage == "truncated":
        cache.write_bytes(cache.read_bytes()[:1000])
    else:
        with np.load(cache) as cached:
            content = dict(cached)
        if damage == "wrong_shape":
            content["train"] = content["train"][:, :5]
        else:
            content["test"][0, 0] = np.nan
        np.savez(cache, **content)
    with pytest.raises(DataIntegrityError, match=f"cached file {cache}.* is corrupt"):
        fetch_miniboone(tmp_path)


# --------------------------------------------------------------------------- BSDS300 images


def _jpeg_bytes(array):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _write_images(folder: Path, n_train=6, n_test=3, seed=0):
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("test", n_test)):
        (folder / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (40, 30, 3) if i % 2 else (30, 40, 3)
            image = rng.integers(0, 256, shape, dtype=np.uint8)
            (folder / split / f"{1000 + i}.jpg").write_bytes(_jpeg_bytes(image))


@pytest.fixture
def small_bsds300(monkeypatch):
    spec = replace(
        _specs.SPECS["bsds300"], split_sizes=(300, 30, 120), images_digest=None, n_images=None
    )
    monkeypatch.setitem(_specs.SPECS, "bsds300", spec)
    return spec


def test_bsds300_from_an_images_folder(small_bsds300, tmp_path):
    images = tmp_path / "images"
    _write_images(images)
    home = tmp_path / "home"
    bunch = fetch_bsds300(home, source="images", images_dir=images, random_state=3)
    assert [bunch[s].shape for s in ("train", "validation", "test")] == [
        (300, 63),
        (30, 63),
        (120, 63),
    ]
    assert bunch.train.dtype == np.float32
    # the dropped pixel is minus the sum of the others; a full patch lies in [-1, 1]
    last = -bunch.train.sum(axis=1, keepdims=True)
    full = np.hstack((bunch.train, last))
    assert np.abs(full).max() <= 1.0
    assert _files(home) == ["processed/bsds300_images_seed3.npz"]
    same = fetch_bsds300(home, source="images", images_dir=images, random_state=3)
    np.testing.assert_array_equal(same.test, bunch.test)
    other = fetch_bsds300(home, source="images", images_dir=images, random_state=4)
    assert not np.array_equal(other.test, bunch.test)


def test_bsds300_patches_follow_the_image(tmp_path):
    """On an image with a horizontal ramp of 4 grey levels per column, neighbouring pixels in a
    patch differ by 4/256 plus the difference of two U[0, 1)/256 noises."""
    from PIL import Image

    from skffjord.datasets._bsds300_patches import patches_from_images

    ramp = np.tile((np.arange(50) * 4).astype(np.uint8), (30, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    splits = patches_from_images(
        [tmp_path / "ramp.png"],
        [tmp_path / "ramp.png"],
        n_train=200,
        n_validation=10,
        n_test=50,
        random_state=0,
    )
    step = np.diff(splits["train"][:, :8], axis=1)  # first row of each patch
    assert np.all(np.abs(step - 4 / 256) < 1 / 256)
    assert np.std(step) > 0  # dequantisation noise is there
    # every patch had its mean removed: with the dropped pixel restored it sums to zero, and
    # the restored pixel continues the ramp
    restored = -splits["test"].sum(axis=1)
    assert np.all(np.abs(restored - splits["test"][:, 62] - 4 / 256) < 1 / 256)


def _serve_images(server, monkeypatch, tmp_path, *, small_spec=True):
    """Nine random JPEGs in the Berkeley archive's layout, served locally; with
    ``small_spec`` the BSDS300 spec expects exactly them (their digest and counts)."""
    source = tmp_path / "source" / "images"
    _write_images(source)
    members = {
        f"BSDS300/images/{p.parent.name}/{p.name}": p.read_bytes()
        for p in sorted(source.rglob("*.jpg"))
    }
    members["BSDS300/iids_train.txt"] = b"1000\n"
    archive = _tar_gz(members)
    server.routes["/bsds/BSDS300-images.tgz"] = archive
    monkeypatch.setattr(
        _bsds300_images,
        "BSDS300_IMAGES",
        RemoteFile(
            "BSDS300-images.tgz",
            server.url("/bsds/BSDS300-images.tgz"),
            hashlib.sha256(archive).hexdigest(),
        ),
    )
    if small_spec:
        spec = replace(
            _specs.SPECS["bsds300"],
            split_sizes=(300, 30, 120),
            images_digest=images_digest(source),
            n_images=(6, 3),
        )
        monkeypatch.setitem(_specs.SPECS, "bsds300", spec)
    return source


def test_bsds300_images_downloaded_and_verified(server, monkeypatch, tmp_path):
    _serve_images(server, monkeypatch, tmp_path)
    home = tmp_path / "home"
    bunch = fetch_bsds300(home, source="images", verbose=False)
    assert bunch.train.shape == (300, 63)
    jpgs = [f for f in _files(home) if f.endswith(".jpg")]
    assert len(jpgs) == 9 and all(f.startswith("BSDS300/images/") for f in jpgs)
    assert "BSDS300-images.tgz" not in " ".join(_files(home))  # the archive is not kept


def test_bsds300_incomplete_images_folder_is_replaced(server, monkeypatch, tmp_path):
    source = _serve_images(server, monkeypatch, tmp_path)
    home = tmp_path / "home"
    partial = home / "BSDS300" / "images" / "train"
    partial.mkdir(parents=True)
    (partial / "1000.jpg").write_bytes(b"left by an interrupted download")  # no test/ folder
    bunch = fetch_bsds300(home, source="images", verbose=False)
    assert bunch.test.shape == (120, 63)
    assert images_digest(home / "BSDS300" / "images") == images_digest(source)
    assert not [f for f in _files(home) if ".skffjord-" in f]


def test_bsds300_wrong_images_raise_and_leave_nothing(server, monkeypatch, tmp_path):
    _serve_images(server, monkeypatch, tmp_path, small_spec=False)
    home = tmp_path / "home"
    # the real digest and counts: these 9 random images are not BSDS300
    with pytest.raises(DataIntegrityError, match="BSDS300 has 200 and 100|not the original"):
        fetch_bsds300(home, source="images", verbose=False)
    assert _files(home) == []


def test_bsds300_images_dir_without_images(tmp_path):
    with pytest.raises(OSError, match="no train/\\*.jpg"):
        fetch_bsds300(tmp_path / "home", source="images", images_dir=tmp_path)


def test_bsds300_random_state_must_be_an_int(tmp_path):
    with pytest.raises(ValueError, match="random_state"):
        fetch_bsds300(tmp_path, source="images", random_state=None)


def test_read_only_data_home_with_images_warns_and_returns(small_bsds300, tmp_path, monkeypatch):
    images = tmp_path / "images"
    _write_images(images)
    monkeypatch.setattr(_bsds300, "is_writable", lambda folder: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bunch = fetch_bsds300(tmp_path / "home", source="images", images_dir=images)
    assert bunch.test.shape == (120, 63)
    assert any("not cached" in str(w.message) for w in caught)


_SHARED_IMAGES = os.environ.get("SKFFJORD_BSDS300_IMAGES")


@pytest.mark.slow
@pytest.mark.skipif(not _SHARED_IMAGES, reason="set SKFFJORD_BSDS300_IMAGES to the images folder")
def test_bsds300_from_the_real_images(tmp_path):
    bunch = fetch_bsds300(tmp_path, source="images", images_dir=_SHARED_IMAGES)
    assert [bunch[s].shape for s in ("train", "validation", "test")] == [
        (1_000_000, 63),
        (50_000, 63),
        (250_000, 63),
    ]
    assert abs(float(bunch.train.mean())) < 1e-3


def test_split_sizes_in_specs_are_the_published_ones():
    # guard against a monkeypatch leaking or an edit of the constants
    assert _specs.SPECS["power"].split_sizes == split_sizes(2_049_280)
    assert _specs.SPECS["bsds300"].split_sizes == (1_000_000, 50_000, 250_000)
    assert _specs.SPECS["hepmass"].split_sizes == (315_123, 35_013, 174_987)
    assert _specs.SPECS["gas"].split_sizes == (852_174, 94_685, 105_206)


def test_git_blob_sha1_matches_git(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"hello\n")
    # `printf 'hello\n' | git hash-object --stdin`
    assert git_blob_sha1(path) == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_every_dataset_has_its_public_fetcher():
    import skffjord.datasets

    assert _specs.DATASETS == ("power", "gas", "hepmass", "miniboone", "bsds300")
    assert tuple(FETCHERS) == _specs.DATASETS
    for name, fetch in FETCHERS.items():
        assert getattr(skffjord.datasets, f"fetch_{name}") is fetch
