"""Built-in datasets read from their original files with numpy, verified by checksum.

No TensorFlow and no TFDS: Fashion-MNIST and MNIST are four gzipped IDX files
each, CIFAR-10 and CIFAR-100 one ``*-binary.tar.gz`` archive. Every file is
checked against the checksum of its original release (the ones TFDS
registers) before it is used, so a corrupt or truncated file is named in the
error instead of being trained on. Fashion-MNIST's IDX payloads also have
registered checksums, because Debian's ``dataset-fashion-mnist`` package
recompressed the files (same content, other gzip header).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import tarfile

import numpy as np

from sidjax.data.dataset import Dataset, channel_stats

# Debian's dataset-fashion-mnist; override with $SIDJAX_FASHION_MNIST_DIR.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


class DatasetUnavailableError(RuntimeError):
    """The dataset can neither be read from disk nor prepared; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One original file: its name and the sha256 of its bytes (and of its gunzipped payload, if known)."""

    name: str
    sha256: str
    payload_sha256: str = ""


IDX = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
       "t10k-labels-idx1-ubyte.gz")  # fmt: skip
# name -> the original files (checksums as registered in TFDS's url_checksums; payloads measured)
SOURCES: dict[str, tuple[SourceFile, ...]] = {
    "fashion_mnist": (
        SourceFile(IDX[0], "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                   "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        SourceFile(IDX[1], "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                   "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        SourceFile(IDX[2], "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                   "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        SourceFile(IDX[3], "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                   "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    ),
    "mnist": (
        SourceFile(IDX[0], "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        SourceFile(IDX[1], "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        SourceFile(IDX[2], "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        SourceFile(IDX[3], "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    ),
    "cifar10": (SourceFile("cifar-10-binary.tar.gz", "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"),),
    "cifar100": (SourceFile("cifar-100-binary.tar.gz", "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec"),),
}  # fmt: skip
NUM_CLASSES = {"fashion_mnist": 10, "mnist": 10, "cifar10": 10, "cifar100": 100}


def find_files(name: str, manual_dir: str | None) -> str | None:
    """The directory holding ``name``'s original files: ``manual_dir``, else Debian's for Fashion-MNIST.

    Returns None where there is none to look in. Raises ``DatasetUnavailableError``
    for a directory that lacks some of the files, naming them.
    """
    names = [f.name for f in SOURCES[name]]
    if manual_dir:
        if not os.path.isdir(manual_dir):
            raise DatasetUnavailableError(f"{name}: --manual-dir {manual_dir} is not a directory")
        directory = manual_dir
    elif name == "fashion_mnist":
        directory = os.environ.get("SIDJAX_FASHION_MNIST_DIR", DEBIAN_FASHION_MNIST_DIR)
        if not os.path.isdir(directory):
            return None
    else:
        return None
    missing = [n for n in names if not os.path.exists(os.path.join(directory, n))]
    if missing:
        raise DatasetUnavailableError(
            f"{name}: {directory} lacks {', '.join(missing)} (it needs {', '.join(names)})"
        )
    return directory


def verify(path: str, source: SourceFile) -> bytes:
    """The file's bytes, gunzipped where it is gzip; ``DatasetUnavailableError`` if it is not the original."""
    with open(path, "rb") as f:
        raw = f.read()
    if hashlib.sha256(raw).hexdigest() == source.sha256:
        return gzip.decompress(raw) if path.endswith(".gz") and not path.endswith(".tar.gz") else raw
    if source.payload_sha256 and raw[:2] == b"\x1f\x8b":
        try:
            payload = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DatasetUnavailableError(
                f"{path} is damaged ({err}); replace it with the original file"
            ) from None
        if hashlib.sha256(payload).hexdigest() == source.payload_sha256:
            return payload
    raise DatasetUnavailableError(
        f"{path} is not the original {source.name} (sha256 mismatch: damaged or another file); replace it"
    )


def read_idx(payload: bytes) -> np.ndarray:
    """An IDX file's array (uint8 images ``[num, H, W]`` or labels ``[num]``)."""
    ndim = payload[3]
    dims = np.frombuffer(payload, ">u4", count=ndim, offset=4)
    return np.frombuffer(payload, np.uint8, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims))


def read_cifar(archive: bytes, name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR's binary batches: per record, the label byte(s) then 3x32x32 pixels (channels first)."""
    label_bytes, label_at = (2, 1) if name == "cifar100" else (1, 0)  # CIFAR-100: coarse, fine
    record = label_bytes + 3072
    splits: dict[str, list[bytes]] = {"train": [], "test": []}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            base = os.path.basename(member.name)
            split = (
                "test"
                if base.startswith("test")
                else "train"
                if base.startswith(("data_batch", "train"))
                else None
            )
            if split and member.isfile() and base.endswith(".bin"):
                splits[split].append(tar.extractfile(member).read())
    out = {}
    for split, chunks in splits.items():
        data = np.frombuffer(b"".join(chunks), np.uint8).reshape(-1, record)
        images = data[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        out[split] = (np.ascontiguousarray(images), data[:, label_at].astype(np.int32))
    return out


def read_files(name: str, directory: str) -> Dataset:
    """``name`` from its verified original files in ``directory``."""
    paths = {f.name: os.path.join(directory, f.name) for f in SOURCES[name]}
    contents = {f.name: verify(paths[f.name], f) for f in SOURCES[name]}
    if name.startswith("cifar"):
        arrays = read_cifar(contents[SOURCES[name][0].name], name)
    else:
        arrays = {
            split: (read_idx(contents[IDX[i]])[..., None], read_idx(contents[IDX[i + 1]]).astype(np.int32))
            for split, i in (("train", 0), ("test", 2))
        }
    (train_x, train_y), (test_x, test_y) = arrays["train"], arrays["test"]
    mean, std = channel_stats(train_x)
    return Dataset(name, train_x, train_y, test_x, test_y, NUM_CLASSES[name], mean, std, source=directory)
