"""Image datasets: archives of one folder per class, and NumPy .npz files.

Both are converted to one stored form, an uncompressed .npz file with ``x``
(uint8, N x height x width x channels), ``y`` (int64 class indices) and
``classes`` (class names). Its members are stored uncompressed so that readers
can memory-map ``x`` instead of loading it.
"""

import io
import logging
import stat
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import anyio.to_thread
import numpy as np

from mlhub_mcp.artifacts import StoredObject
from mlhub_mcp.errors import InvalidDatasetFile
from mlhub_mcp.platform import Platform

logger = logging.getLogger(__name__)

# Bounds that stop a small hostile archive from filling the disk or memory.
# They are generous for classification sets (CIFAR-10 has 60,000 images of
# 32x32 pixels, ImageNet-1k about 1.3 million).
MAX_ENTRIES = 2_000_000
MAX_ENTRY_BYTES = 64 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_DECODED_BYTES = 64 * 1024**3

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
_CHUNK_ROWS = 1024
_THUMBNAIL_MIN = 64
_THUMBNAIL_MAX = 256


class _ImageSink:
    """Appends decoded images to a raw scratch file and gathers pixel statistics."""

    def __init__(self, raw_path: Path) -> None:
        self.raw_path = raw_path
        self._file: BinaryIO = raw_path.open("wb")
        self.frame: tuple[int, int, int] | None = None
        self.first_name = ""
        self.count = 0
        self._sum: np.ndarray | None = None
        self._squares: np.ndarray | None = None
        self.minimum = 255
        self.maximum = 0

    def add(self, name: str, images: np.ndarray) -> None:
        """Append uint8 images of shape (N, H, W, C); ``name`` is the source for errors."""
        frame = images.shape[1:]
        if self.frame is None:
            self.frame = (frame[0], frame[1], frame[2])
            self.first_name = name
            self._sum = np.zeros(frame[2], np.float64)
            self._squares = np.zeros(frame[2], np.float64)
        elif frame != self.frame:
            height, width = self.frame[:2]
            raise InvalidDatasetFile(
                f"entry {name!r} is {frame[1]}x{frame[0]} pixels (width x height) but "
                f"{self.first_name!r} is {width}x{height}; all images must have one size, so "
                "resize them before packing the archive"
            )

        self.count += len(images)
        if self.count > MAX_ENTRIES:
            raise InvalidDatasetFile(f"the dataset has more than {MAX_ENTRIES} images")
        if self.count * images[0].size > MAX_DECODED_BYTES:
            raise InvalidDatasetFile(
                f"the decoded images exceed {MAX_DECODED_BYTES // 1024**3} GiB; split the dataset"
            )

        pixels = images.reshape(-1, frame[2]).astype(np.float64)
        self._sum += pixels.sum(axis=0)
        self._squares += np.square(pixels).sum(axis=0)
        self.minimum = min(self.minimum, int(images.min()))
        self.maximum = max(self.maximum, int(images.max()))
        self._file.write(np.ascontiguousarray(images).tobytes())

    def close(self) -> None:
        self._file.close()

    def image_statistics(self) -> dict[str, Any]:
        assert self.frame is not None
        assert self._sum is not None
        assert self._squares is not None
        values = self.count * self.frame[0] * self.frame[1]
        channel_mean = self._sum / values
        channel_std = np.sqrt(np.maximum(self._squares / values - np.square(channel_mean), 0.0))
        mean = float(self._sum.sum() / (values * self.frame[2]))
        variance = float(self._squares.sum() / (values * self.frame[2])) - mean * mean
        return {
            "type": _image_type(self.frame),
            "count": self.count,
            "null_count": 0,
            "min": self.minimum,
            "max": self.maximum,
            "mean": mean,
            "std": float(np.sqrt(max(variance, 0.0))),
            "channel_mean": [round(float(v), 4) for v in channel_mean],
            "channel_std": [round(float(v), 4) for v in channel_std],
        }


def _image_type(frame: tuple[int, int, int]) -> str:
    return f"uint8[{frame[0]},{frame[1]},{frame[2]}]"


# Archives of one folder per class


def _entry_parts(name: str) -> list[str]:
    """Split an archive entry name; reject absolute names and '..' components."""
    unified = name.replace("\\", "/")
    is_absolute = unified.startswith("/") or (len(unified) > 1 and unified[1] == ":")
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if is_absolute or ".." in parts or "\x00" in name:
        raise InvalidDatasetFile(
            f"archive entry {name!r} has an absolute path or a '..' component; "
            "entries must be relative paths such as 'cat/0001.png'"
        )

    return parts


def _is_skipped(parts: list[str]) -> bool:
    """Return whether an entry is metadata (hidden files, __MACOSX) or not an image."""
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return True
    return not parts[-1].lower().endswith(IMAGE_SUFFIXES)


def _read_capped(handle: BinaryIO, name: str) -> bytes:
    data = handle.read(MAX_ENTRY_BYTES + 1)
    if len(data) > MAX_ENTRY_BYTES:
        raise InvalidDatasetFile(
            f"archive entry {name!r} is larger than {MAX_ENTRY_BYTES // 1024**2} MiB"
        )
    return data


def _zip_entries(local: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    try:
        archive = zipfile.ZipFile(local)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidDatasetFile(f"not a valid zip archive: {exc}") from None

    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ENTRIES:
            raise InvalidDatasetFile(
                f"the archive has {len(infos)} entries; the limit is {MAX_ENTRIES}"
            )

        for info in infos:
            if info.is_dir():
                _entry_parts(info.filename)
                continue

            # Unix file type bits, or 0 when the archiver did not record them.
            file_type = stat.S_IFMT(info.external_attr >> 16)
            if file_type not in (0, stat.S_IFREG):
                raise InvalidDatasetFile(
                    f"archive entry {info.filename!r} is a symbolic link or special file; "
                    "only regular files are accepted"
                )
            if info.flag_bits & 0x1:
                raise InvalidDatasetFile(f"archive entry {info.filename!r} is encrypted")
            if info.file_size > MAX_ENTRY_BYTES:
                raise InvalidDatasetFile(
                    f"archive entry {info.filename!r} is larger than "
                    f"{MAX_ENTRY_BYTES // 1024**2} MiB"
                )

            def read(info: zipfile.ZipInfo = info) -> bytes:
                with archive.open(info) as handle:
                    return _read_capped(handle, info.filename)

            yield info.filename, read


def _tar_entries(local: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    # Stream mode ("r|*") reads members in order without seeking, so a
    # compressed archive is decompressed once.
    try:
        archive = tarfile.open(local, mode="r|*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise InvalidDatasetFile(f"not a valid zip or tar archive: {exc}") from None

    with archive:
        for count, member in enumerate(archive, start=1):
            if count > MAX_ENTRIES:
                raise InvalidDatasetFile(f"the archive has more than {MAX_ENTRIES} entries")
            if member.isdir():
                _entry_parts(member.name)
                continue
            if not member.isfile():
                raise InvalidDatasetFile(
                    f"archive entry {member.name!r} is a link or special file; "
                    "only regular files are accepted"
                )
            if member.size > MAX_ENTRY_BYTES:
                raise InvalidDatasetFile(
                    f"archive entry {member.name!r} is larger than {MAX_ENTRY_BYTES // 1024**2} MiB"
                )

            def read(member: tarfile.TarInfo = member) -> bytes:
                handle = archive.extractfile(member)
                assert handle is not None
                return _read_capped(handle, member.name)

            yield member.name, read


def _decode_image(name: str, data: bytes) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise InvalidDatasetFile(
                    f"image {name!r} has {image.width}x{image.height} pixels; the limit is "
                    f"{MAX_IMAGE_PIXELS} pixels per image"
                )
            rgb = image.convert("RGB")
    except InvalidDatasetFile:
        raise
    except UnidentifiedImageError:
        raise InvalidDatasetFile(
            f"archive entry {name!r} is not an image in a format Pillow reads "
            f"({', '.join(IMAGE_SUFFIXES)})"
        ) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # Pillow raises OSError or SyntaxError for damaged files.
        raise InvalidDatasetFile(f"archive entry {name!r} is not a readable image: {exc}") from None

    return np.asarray(rgb, dtype=np.uint8)


def _class_names(folders: list[tuple[str, ...]], first_name: str) -> list[str]:
    """Return the class folder name of each distinct folder of images.

    The class is the first folder below the longest prefix shared by every
    image, so 'cat/1.png' and 'train/cat/1.png' both give 'cat'.
    """
    depth = min(len(f) for f in folders)
    if depth == 0:
        raise InvalidDatasetFile(
            f"image {first_name!r} is not inside a class folder; the archive must contain one "
            "folder per class, such as 'cat/0001.png' and 'dog/0001.png'"
        )

    shared = 0
    while shared < depth - 1 and len({f[shared] for f in folders}) == 1:
        shared += 1

    return [f[shared] for f in folders]


def _read_archive(local: Path, sink: _ImageSink) -> tuple[np.ndarray, list[str], int]:
    """Decode every image of an archive into ``sink``; return labels, classes and skips."""
    entries = _zip_entries(local) if zipfile.is_zipfile(local) else _tar_entries(local)
    folder_index: dict[tuple[str, ...], int] = {}
    image_folders: list[int] = []
    skipped = 0
    name = ""
    try:
        for name, read in entries:
            parts = _entry_parts(name)
            if _is_skipped(parts):
                skipped += 1
                continue

            image = _decode_image(name, read())
            sink.add(name, image[np.newaxis])
            folder = tuple(parts[:-1])
            image_folders.append(folder_index.setdefault(folder, len(folder_index)))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as exc:
        where = f"near entry {name!r}" if name else "at its first entry"
        raise InvalidDatasetFile(f"the archive is damaged {where}: {exc}") from None

    if sink.count == 0:
        raise InvalidDatasetFile(
            f"the archive contains no images ({', '.join(IMAGE_SUFFIXES)}) in class folders"
        )

    folders = list(folder_index)
    names = _class_names(folders, sink.first_name)
    classes = sorted(set(names))
    folder_labels = np.array([classes.index(n) for n in names], dtype=np.int64)
    return folder_labels[np.array(image_folders)], classes, skipped


# NumPy .npz files


def _npy_header(handle: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    return np.lib.format.read_array_header_2_0(handle)


def _npy_chunks(
    archive: zipfile.ZipFile, member: str
) -> tuple[tuple[int, ...], np.dtype, Iterator[np.ndarray]]:
    """Open an array of an .npz file and return its shape, dtype and row chunks."""
    handle = archive.open(member)
    shape, fortran_order, dtype = _npy_header(handle)
    if dtype.hasobject:
        handle.close()
        raise InvalidDatasetFile(f"array {member[:-4]!r} contains Python objects; store numbers")

    def chunks() -> Iterator[np.ndarray]:
        with handle:
            if fortran_order:
                data = np.frombuffer(handle.read(), dtype=dtype)
                yield np.ascontiguousarray(data.reshape(shape, order="F"))
                return
            row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
            for start in range(0, shape[0], _CHUNK_ROWS):
                rows = min(_CHUNK_ROWS, shape[0] - start)
                data = handle.read(rows * row_bytes)
                if len(data) != rows * row_bytes:
                    raise InvalidDatasetFile(f"array {member[:-4]!r} is truncated")
                yield np.frombuffer(data, dtype=dtype).reshape((rows, *shape[1:]))

    return shape, dtype, chunks()


def _npz_layout(shape: tuple[int, ...]) -> str:
    """Return 'nhw', 'nhwc' or 'nchw' for the shape of ``x``."""
    if len(shape) == 3:
        return "nhw"
    if len(shape) == 4 and shape[3] in (1, 3):
        return "nhwc"
    if len(shape) == 4 and shape[1] in (1, 3):
        return "nchw"

    raise InvalidDatasetFile(
        f"array 'x' has shape {list(shape)}; expected (N, height, width), "
        "(N, height, width, channels) or (N, channels, height, width) with 1 or 3 channels"
    )


def _to_uint8(chunk: np.ndarray, layout: str, factor: float) -> np.ndarray:
    if layout == "nhw":
        chunk = chunk[..., np.newaxis]
    elif layout == "nchw":
        chunk = chunk.transpose(0, 2, 3, 1)
    if chunk.dtype == np.uint8:
        return chunk

    return np.rint(chunk.astype(np.float64) * factor).astype(np.uint8)


def _value_range(archive: zipfile.ZipFile, dtype: np.dtype) -> float:
    """Check the values of a non-uint8 ``x``; return the factor that maps them to 0..255."""
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InvalidDatasetFile(f"array 'x' has dtype {dtype}; expected uint8, integers or floats")

    low, high = np.inf, -np.inf
    for chunk in _npy_chunks(archive, "x.npy")[2]:
        if np.issubdtype(dtype, np.floating) and not np.isfinite(chunk).all():
            raise InvalidDatasetFile("array 'x' contains NaN or infinite values")
        low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))

    if np.issubdtype(dtype, np.floating) and low >= 0 and high <= 1:
        return 255.0
    if low >= 0 and high <= 255:
        return 1.0

    raise InvalidDatasetFile(
        f"array 'x' has values from {low} to {high}; expected 0..255, or 0..1 for floats"
    )


def _npz_labels(y: np.ndarray, classes: np.ndarray | None) -> tuple[np.ndarray, list[str]]:
    if y.ndim != 1:
        raise InvalidDatasetFile(f"array 'y' has shape {list(y.shape)}; expected (N,)")
    if classes is not None and (classes.ndim != 1 or classes.dtype.kind not in "US"):
        raise InvalidDatasetFile("array 'classes' must be a 1-D array of class names")
    names = [str(c) for c in classes] if classes is not None else None

    if y.dtype.kind in "US":
        values = [str(v) for v in y]
        known = names or sorted(set(values))
        missing = sorted(set(values) - set(known))
        if missing:
            raise InvalidDatasetFile(f"labels {missing[:5]} of 'y' are not in 'classes'")
        lookup = {name: index for index, name in enumerate(known)}
        return np.array([lookup[v] for v in values], dtype=np.int64), known

    if y.dtype.kind == "f" and not np.array_equal(y, np.round(y)):
        raise InvalidDatasetFile("array 'y' contains fractional values; expected class labels")
    if y.dtype.kind not in "iuf" or (len(y) and y.min() < 0):
        raise InvalidDatasetFile("array 'y' must contain class labels: integers from 0, or names")

    labels = y.astype(np.int64)
    count = int(labels.max()) + 1 if len(labels) else 0
    if names is not None and len(names) < count:
        raise InvalidDatasetFile(f"'y' has labels up to {count - 1} but 'classes' has {len(names)}")

    return labels, names or [str(i) for i in range(count)]


def _read_npz(local: Path, sink: _ImageSink) -> tuple[np.ndarray, list[str], int]:
    """Copy the images of an .npz file into ``sink``; return labels, classes and skips."""
    try:
        archive = zipfile.ZipFile(local)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidDatasetFile(f"not a valid .npz file: {exc}") from None

    with archive:
        members = set(archive.namelist())
        missing = [m for m in ("x.npy", "y.npy") if m not in members]
        if missing:
            raise InvalidDatasetFile(
                f"the .npz file lacks arrays {[m[:-4] for m in missing]}; it needs 'x' "
                "(images) and 'y' (labels), and may have 'classes' (class names)"
            )

        try:
            with np.load(local, allow_pickle=False) as npz:
                y = npz["y"]
                classes = npz["classes"] if "classes.npy" in members else None
            shape, dtype, chunks = _npy_chunks(archive, "x.npy")
            layout = _npz_layout(shape)
            if shape[0] != len(y):
                raise InvalidDatasetFile(f"'x' has {shape[0]} images but 'y' has {len(y)} labels")
            labels, names = _npz_labels(y, classes)

            factor = 1.0 if dtype == np.uint8 else _value_range(archive, dtype)
            for chunk in chunks:
                sink.add("x", _to_uint8(chunk, layout, factor))
        except (ValueError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as exc:
            raise InvalidDatasetFile(f"cannot read the .npz file: {exc}") from None

    if sink.count == 0:
        raise InvalidDatasetFile("the .npz file contains no images")

    return labels, names, 0


# The stored form


def _write_stored(target: Path, sink: _ImageSink, labels: np.ndarray, classes: list[str]) -> None:
    assert sink.frame is not None
    images = np.memmap(sink.raw_path, dtype=np.uint8, mode="r", shape=(sink.count, *sink.frame))
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        arrays = (("x", images), ("y", labels), ("classes", np.array(classes, dtype=str)))
        for name, array in arrays:
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    del images


def _details(
    sink: _ImageSink, labels: np.ndarray, classes: list[str], skipped: int
) -> dict[str, Any]:
    assert sink.frame is not None
    counts = np.bincount(labels, minlength=len(classes))
    per_class = {name: int(counts[i]) for i, name in enumerate(classes)}
    top = sorted(per_class.items(), key=lambda item: -item[1])[:5]
    height, width, channels = sink.frame
    return {
        "kind": "images",
        "row_count": sink.count,
        "columns": [
            {"name": "image", "type": _image_type(sink.frame), "null_count": 0},
            {"name": "label", "type": "int64", "null_count": 0},
        ],
        "statistics": {
            "image": sink.image_statistics(),
            "label": {
                "type": "int64",
                "count": sink.count,
                "null_count": 0,
                "min": int(labels.min()),
                "max": int(labels.max()),
                "distinct_count": int(np.count_nonzero(counts)),
                "top_values": [{"value": name, "count": count} for name, count in top],
            },
        },
        "image_info": {
            "width": width,
            "height": height,
            "channels": channels,
            "classes": classes,
            "counts_per_class": per_class,
            "skipped_files": skipped,
        },
    }


def convert_images(local: Path, fmt: str, target: Path, raw_path: Path) -> dict[str, Any]:
    """Convert an image archive or .npz file to the stored form at ``target``.

    ``raw_path`` is a scratch file for the decoded pixels. Returns the catalog
    details: kind, row_count, columns, statistics and image_info.

    Raises:
        InvalidDatasetFile: The file is malformed; the message names the entry.
    """
    sink = _ImageSink(raw_path)
    try:
        if fmt == "npz":
            labels, classes, skipped = _read_npz(local, sink)
        else:
            labels, classes, skipped = _read_archive(local, sink)
    finally:
        sink.close()

    _write_stored(target, sink, labels, classes)
    return _details(sink, labels, classes, skipped)


async def ingest_images(
    platform: Platform, local: Path, fmt: str
) -> tuple[StoredObject, dict[str, Any]]:
    """Convert an image dataset file and store it; return the object and catalog details.

    Raises:
        InvalidDatasetFile: The file is malformed; nothing is stored.
    """
    scratch = platform.scratch_dir
    target = Path(tempfile.mkstemp(dir=scratch, suffix=".npz")[1])
    raw_path = Path(tempfile.mkstemp(dir=scratch, suffix=".raw")[1])
    try:
        details = await anyio.to_thread.run_sync(convert_images, local, fmt, target, raw_path)
        raw_path.unlink(missing_ok=True)
        stored = await platform.artifacts.put_file(target)
    finally:
        target.unlink(missing_ok=True)
        raw_path.unlink(missing_ok=True)

    info = details["image_info"]
    logger.info("stored %s images of %s classes", details["row_count"], len(info["classes"]))
    return stored, details


# Reading the stored form


def _mapped_member(path: Path, archive: zipfile.ZipFile, member: str) -> np.ndarray:
    """Memory-map an uncompressed array of an .npz file, or load a compressed one."""
    info = archive.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED:
        with archive.open(member) as handle:
            return np.lib.format.read_array(handle, allow_pickle=False)

    with path.open("rb") as handle:
        # The member's data follows its local file header, whose last two
        # fields are the name and extra-field lengths (zipfile.structFileHeader).
        handle.seek(info.header_offset)
        header = handle.read(zipfile.sizeFileHeader)
        fields = struct.unpack(zipfile.structFileHeader, header)
        if fields[0] != zipfile.stringFileHeader:
            raise InvalidDatasetFile(f"the stored dataset is damaged at member {member!r}")
        name_length, extra_length = fields[-2:]
        handle.seek(info.header_offset + zipfile.sizeFileHeader + name_length + extra_length)
        shape, fortran_order, dtype = _npy_header(handle)
        offset = handle.tell()

    if dtype.hasobject:
        raise InvalidDatasetFile(f"array {member[:-4]!r} contains Python objects")
    if 0 in shape:
        return np.zeros(shape, dtype=dtype)

    order = "F" if fortran_order else "C"
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)


def open_image_arrays(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Open a stored image dataset: images (memory-mapped), labels and class names."""
    with zipfile.ZipFile(path) as archive:
        images = _mapped_member(path, archive, "x.npy")
        labels = np.asarray(_mapped_member(path, archive, "y.npy"), dtype=np.int64)
        classes = [str(c) for c in _mapped_member(path, archive, "classes.npy")]

    return images, labels, classes


def _spread(labels: np.ndarray, count: int) -> list[int]:
    """Pick up to ``count`` rows, taking each class in turn."""
    order = np.argsort(labels, kind="stable")
    _, starts, sizes = np.unique(labels[order], return_index=True, return_counts=True)
    picked: list[int] = []
    for round_index in range(int(sizes.max(initial=0))):
        for start, size in zip(starts, sizes, strict=True):
            if round_index < size and len(picked) < count:
                picked.append(int(order[start + round_index]))

    return picked


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    picture = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
    shortest = min(picture.size)
    if shortest < _THUMBNAIL_MIN:
        factor = -(-_THUMBNAIL_MIN // shortest)
        size = (picture.width * factor, picture.height * factor)
        picture = picture.resize(size, Image.Resampling.NEAREST)
    picture.thumbnail((_THUMBNAIL_MAX, _THUMBNAIL_MAX))

    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def preview_images(path: Path, count: int) -> list[tuple[str, bytes]]:
    """Return up to ``count`` (class name, PNG thumbnail) pairs, one class after another.

    Thumbnails are at most 256 pixels on a side. Images smaller than 64 pixels
    are enlarged by a whole factor, so their pixels stay sharp.
    """
    images, labels, classes = open_image_arrays(path)
    previews = []
    for row in _spread(labels, count):
        previews.append((classes[labels[row]], _png(np.asarray(images[row]))))

    return previews
