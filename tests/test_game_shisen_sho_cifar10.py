"""The photo variant: tiles match by class, the 4 tiles of a class are different photos, CIFAR-10 loading."""

import pickle

import numpy as np
import pytest
from conftest import make_small

from g1core.gym import photos


def test_four_different_photos_per_class():
    env = make_small("shisen-sho-cifar10")
    for seed in range(10):
        env.reset(seed=seed)
        kinds = (env.board.astype(int) - 1) // env.tiles.variants
        assert len(np.unique(kinds)) == 9
        for k in np.unique(kinds):
            codes = env.board[kinds == k]
            assert len(codes) == 4 and len(set(codes.tolist())) == 4  # same class, different pictures


def test_shipped_digits_are_scikit_learns_first_scans_of_each_class():
    """assets/digits_8x8.npz is the UCI digits exactly as scikit-learn bundles them, not a lookalike."""
    import gzip
    from pathlib import Path

    sklearn = pytest.importorskip("sklearn")
    with gzip.open(Path(sklearn.__file__).parent / "datasets" / "data" / "digits.csv.gz", "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    labels = table[:, 64].astype(int)
    tiles = photos.load_digits()
    for k in range(10):
        scans = table[labels == k, :64][: tiles.variants].reshape(-1, 8, 8)
        expected = (scans * (255 / 16)).round().astype(np.uint8)
        assert np.array_equal(tiles.photos[k, ..., 0], expected)
        assert len({p.tobytes() for p in tiles.photos[k]}) == tiles.variants  # all different scans


def test_tiles_match_by_class_not_by_picture():
    env = make_small("shisen-sho-cifar10")
    env.reset(seed=0)
    pairs = env.legal_actions()
    assert pairs
    r1, c1, r2, c2 = pairs[0]
    assert env.board[r1, c1] != env.board[r2, c2]  # different photos ...
    assert env.tiles.kind(int(env.board[r1, c1])) == env.tiles.kind(int(env.board[r2, c2]))  # ... one class
    assert env.apply(pairs[0]).legal


def test_text_names_classes():
    env = make_small("shisen-sho-cifar10")
    env.reset(seed=0)
    cells = {c.strip() for row in env.text_observation().split("\n") for c in row.split("|")}
    assert cells <= set(photos.DIGIT_NAMES)
    assert env.text_observation().startswith(" ") and " | " in env.text_observation()


def test_set_board_gives_different_photos_per_class():
    env = make_small("shisen-sho-cifar10")
    env.reset(seed=0)
    text = env.text_observation()
    other = make_small("shisen-sho-cifar10")
    other.set_board(text)
    assert other.text_observation() == text
    kinds = (other.board.astype(int) - 1) // other.tiles.variants
    for k in np.unique(kinds):
        assert len(set(other.board[kinds == k].tolist())) == 4


def write_cifar(
    folder,
    per_class=5,
    names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
):
    """A small folder in CIFAR-10's own python-batch format (the format users download)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    labels = [k for k in range(len(names)) for _ in range(per_class)]
    data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in names]}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": labels}, f)
    return data, labels


def test_cifar10_folder(tmp_path):
    data, labels = write_cifar(tmp_path / "cifar-10-batches-py")
    env = make_small("shisen-sho-cifar10", tiles=str(tmp_path / "cifar-10-batches-py"))
    env.reset(seed=0)
    assert env.tiles.names[0] == "airplane" and env.tiles.variants == 5
    # the first photo of class 0 is the first image labelled 0, channels last
    assert np.array_equal(env.tiles.photos[0, 0], data[0].reshape(3, 32, 32).transpose(1, 2, 0))
    cells = {c.strip() for row in env.text_observation().split("\n") for c in row.split("|")}
    assert cells <= set(env.tiles.names)
    assert env.render().shape == (112, 112, 3)
    assert env.difficulty == {"size": 6, "tiles": str(tmp_path / "cifar-10-batches-py")}


def test_cifar10_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_small("shisen-sho-cifar10", tiles=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="batches.meta"):
        make_small("shisen-sho-cifar10", tiles=str(tmp_path / "empty"))
    write_cifar(tmp_path / "few", per_class=3)
    with pytest.raises(ValueError, match="at least 4"):
        make_small("shisen-sho-cifar10", tiles=str(tmp_path / "few"))


def test_board_too_big_for_the_classes():
    with pytest.raises(ValueError, match="tile kinds"):
        make_small("shisen-sho-cifar10", size=8)


def test_cifar10_from_s3_is_fetched_once_and_read_by_the_game(tmp_path, s3_prefix, monkeypatch):
    """What a pipeline pod does: `g1 gym fetch-cifar10` puts the folder in S3 (once: a second call finds it),
    and the game reads tiles=s3://... through a copy in its work folder; no shared volume."""
    import hashlib
    import tarfile

    from g1core import storage
    from g1core.cli import main

    monkeypatch.setenv("G1_WORK_DIR", str(tmp_path / "work"))
    (tmp_path / "src").mkdir()
    data, _ = write_cifar(tmp_path / "src" / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    uri = f"{s3_prefix}/datasets/cifar-10-batches-py"
    with pytest.raises(ValueError, match="checksum"):
        photos.fetch_cifar10(uri, str(archive), md5="0" * 32)
    assert not storage.list_uris(uri)  # a wrong checksum writes nothing
    assert main(["gym", "fetch-cifar10", "--to", uri, "--source", str(archive), "--md5", md5]) == 0
    assert storage.exists(f"{uri}/batches.meta") and storage.exists(f"{uri}/test_batch")
    assert photos.fetch_cifar10(uri, str(tmp_path / "absent.tar.gz"), md5) is False  # there: nothing to do
    photos.load_cifar10.cache_clear()
    env = make_small("shisen-sho-cifar10", tiles=uri)
    env.reset(seed=0)
    assert np.array_equal(env.tiles.photos[0, 0], data[0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert list((tmp_path / "work" / "datasets").iterdir())  # the pod's local copy


def test_cifar10_uri_without_data_names_the_fix(s3_prefix, tmp_path, monkeypatch):
    monkeypatch.setenv("G1_WORK_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="fetch|manifests/data"):
        make_small("shisen-sho-cifar10", tiles=f"{s3_prefix}/nothing-here")
