"""Photo tiles for Shisen-Sho-Cifar10: CIFAR-10 from a user's copy, or a default set needing no download.

- ``load_cifar10(path)`` reads the standard "CIFAR-10 python version" folder (``cifar-10-batches-py``
  with ``batches.meta`` and pickled ``test_batch`` / ``data_batch_*`` files) -- the paper's tiles.
- ``load_digits()`` is the offline default: the UCI handwritten digits (10 classes, CC BY 4.0), the
  first 32 8x8 scans of each class as scikit-learn bundles them, shipped with g1 (``assets/digits_8x8.npz``,
  8 KB, so that no stage image carries scikit-learn and scipy for them). CIFAR-10 itself cannot be fetched
  where this project is built and tested, so tests and CI use the digits; give
  ``tiles=<path to cifar-10-batches-py>`` for the real thing.
"""

from __future__ import annotations

import logging
import pickle
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from .render import BOARD_BG
from .tiles import TileSet, empty_sprite

log = logging.getLogger(__name__)

PHOTOS_PER_CLASS = 32  # pictures kept per class: a board shows 4 different ones of each of its classes
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class PhotoTiles(TileSet):
    """Kinds are classes; variants are different photos of the class."""

    def __init__(self, names: tuple[str, ...], photos: np.ndarray, source: str):
        if photos.ndim != 5 or photos.shape[-1] != 3 or photos.shape[0] != len(names):
            raise ValueError(f"photos must be (classes, per_class, h, w, 3), got {photos.shape}")
        if photos.shape[1] < 4:
            raise ValueError(f"{source}: need at least 4 different photos per class, got {photos.shape[1]}")
        self.names = tuple(names)
        self.photos = photos
        self.variants = photos.shape[1]
        self.source = source
        self._sprites: dict[tuple[int, int], np.ndarray] = {}

    def sprite(self, code: int, cell: int) -> np.ndarray:
        if code == 0:
            return empty_sprite(cell)
        key = (code, cell)
        if key not in self._sprites:
            photo = self.photos[self.kind(code), self.variant(code)]
            gap = max(1, cell // 16)
            inner = Image.fromarray(photo).resize((cell - 2 * gap, cell - 2 * gap), Image.Resampling.BILINEAR)
            tile = Image.new("RGB", (cell, cell), BOARD_BG)
            tile.paste(inner, (gap, gap))
            self._sprites[key] = np.asarray(tile, dtype=np.uint8)
        return self._sprites[key]


def _by_class(images: np.ndarray, labels: np.ndarray, n_classes: int, source: str) -> np.ndarray:
    picked = []
    for k in range(n_classes):
        idx = np.flatnonzero(labels == k)[:PHOTOS_PER_CLASS]
        if len(idx) < 4:
            raise ValueError(f"{source}: class {k} has {len(idx)} images, need at least 4")
        picked.append(idx)
    per_class = min(len(i) for i in picked)
    return np.stack([images[i[:per_class]] for i in picked])


@lru_cache(maxsize=8)
def load_cifar10(path: str) -> PhotoTiles:
    """CIFAR-10 in its standard python-batch format, from a folder the user gives: a local path, or an S3 URI
    (``s3://bucket/datasets/cifar-10-batches-py``, what the pipeline's pods read; copied once into the work
    folder, so no pod needs a shared volume)."""
    if "://" in str(path):
        return load_cifar10(str(_local_copy(str(path))))
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"CIFAR-10 folder {folder} does not exist; pass the 'cifar-10-batches-py' folder of the "
            "python version of CIFAR-10, or tiles='digits' for the offline default"
        )
    meta = folder / "batches.meta"
    batches = [folder / "test_batch", *sorted(folder.glob("data_batch_*"))]
    batches = [b for b in batches if b.is_file()]
    if not meta.is_file() or not batches:
        raise FileNotFoundError(f"{folder} has no batches.meta and test_batch/data_batch_* files of CIFAR-10")
    with meta.open("rb") as f:
        names = tuple(
            n.decode() if isinstance(n, bytes) else str(n)
            for n in pickle.load(f, encoding="bytes")[b"label_names"]
        )
    with batches[0].open("rb") as f:
        batch = pickle.load(f, encoding="bytes")
    data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = np.asarray(batch[b"labels"])
    log.info("loaded CIFAR-10 tiles from %s (%d images in %s)", folder, len(data), batches[0].name)
    return PhotoTiles(names, _by_class(data, labels, len(names), str(folder)), f"cifar10:{folder}")


def _local_copy(uri: str) -> Path:
    """The CIFAR-10 folder at ``uri``, downloaded once into ``<work dir>/datasets/``."""
    import hashlib

    from .. import storage
    from ..policies import work_dir

    local = work_dir() / "datasets" / f"cifar10-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"
    if not (local / "batches.meta").is_file():
        if not storage.exists(storage.join(uri, "batches.meta")):
            raise FileNotFoundError(
                f"no CIFAR-10 at {uri} (batches.meta missing): upload the python version's "
                "cifar-10-batches-py folder there (manifests/data does it), or pass tiles='digits'"
            )
        log.info("downloading CIFAR-10 from %s to %s", uri, local)
        partial = local.with_name(local.name + ".partial")  # a killed download is never taken as the data
        shutil.rmtree(partial, ignore_errors=True)
        storage.get_dir(uri, partial)
        shutil.rmtree(local, ignore_errors=True)
        partial.rename(local)
    return local


DIGITS_FILE = Path(__file__).parent / "assets" / "digits_8x8.npz"
DIGITS_LEVELS = 16  # the scans' grey levels run 0..16


@lru_cache(maxsize=1)
def load_digits() -> PhotoTiles:
    """The offline default: handwritten digits, 8x8 grey scans shown as RGB tiles."""
    with np.load(DIGITS_FILE, allow_pickle=False) as data:
        scans = data["scans"]  # (10 classes, 32 scans, 8, 8), levels 0..16
    grey = (scans.astype(np.float64) * (255 / DIGITS_LEVELS)).round().astype(np.uint8)
    return PhotoTiles(DIGIT_NAMES, np.repeat(grey[..., None], 3, axis=-1), "digits")


def load_tiles(tiles: str) -> PhotoTiles:
    """``"digits"`` (offline default) or a path to CIFAR-10's python-batch folder."""
    return load_digits() if tiles == "digits" else load_cifar10(str(tiles))


CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # the archive's checksum as its authors publish it


def fetch_cifar10(dest_uri: str, source: str = CIFAR10_URL, md5: str | None = CIFAR10_MD5) -> bool:
    """Put CIFAR-10's ``cifar-10-batches-py`` folder at ``dest_uri`` (S3 or a local folder); False when it is
    already there. ``source`` is the archive's URL or a local path. The files go up first and
    ``batches.meta`` last, so an interrupted run leaves a folder that readers take for missing."""
    import hashlib
    import tarfile
    import tempfile
    import urllib.request

    from .. import storage

    if storage.exists(storage.join(dest_uri, "batches.meta")):
        log.info("CIFAR-10 is already at %s", dest_uri)
        return False
    with tempfile.TemporaryDirectory(prefix="g1-cifar10-") as tmp:
        archive = Path(tmp) / "cifar-10-python.tar.gz"
        if "://" in source:
            log.info("downloading %s", source)
            urllib.request.urlretrieve(source, archive)
        else:
            shutil.copyfile(source, archive)
        if md5 is not None:
            digest = hashlib.md5(archive.read_bytes()).hexdigest()
            if digest != md5:
                raise ValueError(f"{source}: checksum {digest}, expected {md5}; nothing was written")
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        folder = Path(tmp) / "cifar-10-batches-py"
        load_cifar10.__wrapped__(str(folder))  # refuses a folder that is not CIFAR-10's python version
        for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name != "batches.meta"):
            storage.put_file(path, storage.join(dest_uri, path.name))
        storage.put_file(folder / "batches.meta", storage.join(dest_uri, "batches.meta"))
    log.info("CIFAR-10 is now at %s", dest_uri)
    return True
