"""Reading a CT: a volume file (NRRD, NIfTI, MHA...) or a DICOM folder, as a checked 3D SimpleITK image.

The image's physical space is LPS, as ITK's always is. Inputs are never modified; anything that
cannot be used as a CT (a missing path, several DICOM series without a choice, uneven slices, a 4D or
multi-channel image) is refused with one actionable sentence (:class:`InputError`).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .errors import InputError, NotADiagnosisWarning

__all__ = [
    "DicomSeries",
    "read_ct",
    "read_volume_file",
    "list_dicom_series",
    "read_dicom_series",
    "format_series_table",
    "check_ct_values",
    "ITKMessageWarning",
    "VOLUME_SUFFIXES",
]

#: File endings read as one volume by SimpleITK (anything else that is a file is still tried).
VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")

# DICOM tags read from each slice's header, once, when a folder is listed.
_TAG_SERIES_UID = "0020|000e"
_TAG_SERIES_DESCRIPTION = "0008|103e"
_TAG_MODALITY = "0008|0060"
_TAG_POSITION = "0020|0032"  # ImagePositionPatient
_TAG_ORIENTATION = "0020|0037"  # ImageOrientationPatient
_TAG_INSTANCE_NUMBER = "0020|0013"
_TAG_BITS_STORED = "0028|0101"
_TAG_PIXEL_REPRESENTATION = "0028|0103"  # 0 unsigned, 1 signed
_TAG_RESCALE_INTERCEPT = "0028|1052"
_TAG_RESCALE_SLOPE = "0028|1053"
# GDCM's types for rescaled integer pixels wider than int16: read straight as int16 when that is exact.
_WIDER_INTEGER_IDS = (sitk.sitkUInt16, sitk.sitkInt32, sitk.sitkUInt32)
# Slice steps may differ from their median by this share (plus 0.01 mm) before the series counts as uneven.
_SLICE_STEP_TOLERANCE = 0.1
_INT16_RANGE = (np.iinfo(np.int16).min, np.iinfo(np.int16).max)
#: Threads that read a DICOM folder's headers at once (GDCM parses each file with Python's lock released).
#: The series' pixels are read by one ImageSeriesReader: reading them in parts on threads, or slice by
#: slice, measured no faster on the shared 2-core VM (page faults and file reads serialise in the kernel)
#: for up to 60 % more CPU time (README, "Performance").
READ_THREADS = max(1, min(4, os.cpu_count() or 1))
# Headers are read on several threads only when each gets at least this many files (a few read fast anyway).
_MIN_FILES_PER_THREAD = 8
# check_ct_values first looks at every this-many-th voxel along each axis: two different values there settle it.
_SAMPLE_STEP = 7


class ITKMessageWarning(NotADiagnosisWarning):
    """A message ITK printed while reading a CT that was read nonetheless (shown once, as one line)."""


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series found in a folder."""

    uid: str
    description: str
    modality: str
    files: Tuple[str, ...]  # in patient order: along the slice normal (else by instance number, then name)
    #: Each file's position along the slice normal (mm), in the order of ``files``; None when a slice
    #: has no position or orientation in its header (then nothing can be checked).
    slice_positions_mm: Optional[Tuple[float, ...]] = None
    #: The range every slice's rescaled values lie in, when all are integers GDCM reads as a type wider than
    #: int16 (what reading straight to int16 needs); else None.
    value_range: Optional[Tuple[int, int]] = None

    @property
    def number_of_slices(self) -> int:
        return len(self.files)



def read_ct(path: str | os.PathLike, series_uid: str | None = None, progress: bool = False,
            before_pixels: Optional[Callable[[], None]] = None) -> sitk.Image:
    """Read a CT from a volume file (NRRD, NIfTI, MHA...) or a DICOM folder; the input is never modified.

    ``series_uid`` picks one series when a DICOM folder holds several (the error raised otherwise
    lists them). Raises :class:`InputError` with one actionable sentence when the path is missing,
    unreadable or not a 3D scalar volume. Integer images whose values fit are returned as int16.
    ``before_pixels`` is called once, when the pixels' read begins (a DICOM series' after its headers are
    read and checked), so that other work can run meanwhile: SimpleITK reads them with Python's lock released.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"The CT path {path} does not exist; give a volume file (.nrrd, .nii.gz, .mha) or a DICOM folder.")
    if path.is_dir():
        return read_dicom_series(path, series_uid=series_uid, progress=progress, before_pixels=before_pixels)
    header = _slice_header(path) if path.suffix.lower() in (".dcm", ".dicom", ".ima", "") else None
    if header is not None:
        # One slice of a series was given: read the whole series it belongs to from its folder.
        if series_uid is not None and series_uid.strip() != header.uid:
            raise InputError(f"{path.name} belongs to series {header.uid}, not {series_uid}; pass the DICOM folder instead.")
        return read_dicom_series(path.parent, series_uid=header.uid, progress=progress, before_pixels=before_pixels)
    if series_uid is not None:
        raise InputError(f"A series UID was given but {path} is a single volume file; pass the DICOM folder instead.")
    return read_volume_file(path, progress=progress, before_pixels=before_pixels)


def read_volume_file(path: str | os.PathLike, progress: bool = False,
                     before_pixels: Optional[Callable[[], None]] = None) -> sitk.Image:
    """Read one volume file with SimpleITK and check that it is a 3D scalar image (``before_pixels``: as
    :func:`read_ct`'s)."""
    path = Path(path)
    if before_pixels is not None:
        before_pixels()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    image = _execute(
        reader,
        f"Reading {path.name}" if progress else None,
        lambda reason: f"SimpleITK could not read {path} as an image ({reason}); "
        "give a .nrrd, .nii(.gz), .mha file or a DICOM folder.",
    )
    return _narrow_to_int16(_check_volume(image, str(path)))


def _execute(reader, progress_description: str | None, error_message) -> sitk.Image:
    """Run a SimpleITK reader, with a progress bar when described; a read failure becomes an InputError.

    ITK's own messages are captured (never printed raw): on failure the last one explains the error,
    on success each is re-issued once as an :class:`ITKMessageWarning`. The progress command is
    removed afterwards, so that nothing keeps the reader (and through it the image's buffer) alive.
    """
    bar = None
    if progress_description is not None:
        bar = _progress_bar(progress_description)
        reader.AddCommand(sitk.sitkProgressEvent, lambda: bar.update(round(reader.GetProgress() * 100) - bar.n))
    try:
        with itk_messages() as messages:
            image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(error_message(_first_line(exc))) from None
    finally:
        reader.RemoveAllCommands()
        if bar is not None:
            bar.close()
    for message in dict.fromkeys(_informative_line(m) for m in messages):
        warnings.warn(message, ITKMessageWarning, stacklevel=3)
    return image


class _CollectingLogger(sitk.LoggerBase):
    """An ITK output window that keeps every message instead of printing it on stderr."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: List[str] = []

    def DisplayText(self, text: str) -> None:  # noqa: N802 - ITK's names
        self.messages.append(text)

    DisplayErrorText = DisplayWarningText = DisplayGenericOutputText = DisplayDebugText = DisplayText


@contextlib.contextmanager
def itk_messages() -> Iterator[List[str]]:
    """Capture what ITK would print (``WARNING: In /…/itkSomething.hxx, line …``) into a list."""
    logger = _CollectingLogger()
    previous = logger.SetAsGlobalITKLogger()
    try:
        yield logger.messages
    finally:
        previous.SetAsGlobalITKLogger()


@dataclass(frozen=True)
class _SliceHeader:
    path: str
    uid: str
    description: str
    modality: str
    position: Optional[Tuple[float, float, float]]
    orientation: Optional[Tuple[float, ...]]
    instance: Optional[int]
    #: The lowest and highest value the file's pixels can take once rescaled (from its bits stored, sign,
    #: slope and intercept), when it holds integers GDCM reads as a wider integer type; else None.
    value_range: Optional[Tuple[int, int]] = None


def _slice_header(path: Path) -> _SliceHeader | None:
    """The header fields of one DICOM file (read once, no pixels), or None when it is not a DICOM image."""
    with itk_messages():
        return _read_slice_header(path)


def _read_slice_header(path: Path) -> _SliceHeader | None:
    """:func:`_slice_header` without capturing ITK's messages (the caller does, once for all threads:
    ITK has one global message window, which threads must not swap under one another)."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None

    def tag(key: str) -> str:
        return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""

    uid = tag(_TAG_SERIES_UID)
    if not uid:  # only DICOM images carry a SeriesInstanceUID (a DICOMDIR does not)
        return None
    instance = tag(_TAG_INSTANCE_NUMBER)
    return _SliceHeader(
        path=str(path),
        uid=uid,
        description=tag(_TAG_SERIES_DESCRIPTION),
        modality=tag(_TAG_MODALITY),
        position=_numbers(tag(_TAG_POSITION), 3),
        orientation=_numbers(tag(_TAG_ORIENTATION), 6),
        instance=int(instance) if instance.lstrip("-").isdigit() else None,
        value_range=_value_range(tag, reader.GetPixelID()),
    )


def _value_range(tag, pixel_id: int) -> Optional[Tuple[int, int]]:
    """The range of a slice's rescaled values, when they are integers of a type wider than int16."""
    if pixel_id not in _WIDER_INTEGER_IDS:
        return None
    try:
        bits, signed = int(tag(_TAG_BITS_STORED)), int(tag(_TAG_PIXEL_REPRESENTATION)) == 1
        slope, intercept = float(tag(_TAG_RESCALE_SLOPE) or 1), float(tag(_TAG_RESCALE_INTERCEPT) or 0)
    except ValueError:
        return None
    if not (1 <= bits <= 16 and slope != 0 and slope.is_integer() and intercept.is_integer()):
        return None
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    ends = sorted((int(slope) * low + int(intercept), int(slope) * high + int(intercept)))
    return ends[0], ends[1]


def _numbers(text: str, count: int) -> Optional[Tuple[float, ...]]:
    try:
        values = tuple(float(v) for v in text.split("\\"))
    except ValueError:
        return None
    return values if len(values) == count and all(np.isfinite(values)) else None


def list_dicom_series(folder: str | os.PathLike) -> list[DicomSeries]:
    """List the DICOM series in ``folder`` and its subfolders (TCIA downloads nest them), by UID.

    Each file's header is read once, here (on :data:`READ_THREADS` threads); the listing carries what
    reading the series needs (the files in patient order and their positions), so nothing is parsed twice.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; give the folder that holds the DICOM slices.")
    headers_by_uid: dict = {}
    for header in _slice_headers(list(_walk_files(folder))):
        if header is not None:
            headers_by_uid.setdefault(header.uid, []).append(header)
    series = [_series_of(uid, headers) for uid, headers in headers_by_uid.items()]
    # Most slices first: the thin-slice CT is usually the one wanted.
    series.sort(key=lambda s: (-s.number_of_slices, s.uid))
    return series


def _slice_headers(paths: List[Path]) -> List[Optional[_SliceHeader]]:
    """:func:`_slice_header` of every path, in order: in contiguous parts on threads when there are many."""
    parts = _parts(len(paths))
    with itk_messages():
        if len(parts) == 1:
            return [_read_slice_header(path) for path in paths]
        with ThreadPoolExecutor(len(parts), thread_name_prefix="notadiagnosis-read") as pool:
            chunks = list(pool.map(lambda part: [_read_slice_header(path) for path in paths[part]], parts))
    return [header for chunk in chunks for header in chunk]


def _parts(count: int) -> List[slice]:
    """``count`` items cut into at most :data:`READ_THREADS` contiguous parts of at least
    :data:`_MIN_FILES_PER_THREAD` each (one part when there are too few)."""
    number = max(1, min(READ_THREADS, count // _MIN_FILES_PER_THREAD))
    bounds = [round(i * count / number) for i in range(number + 1)]
    return [slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]


def _series_of(uid: str, headers: List[_SliceHeader]) -> DicomSeries:
    """One series from its slices' headers: sorted along the slice normal when every slice has a
    position and the first an orientation (as GDCM sorts), else by instance number, then file name."""
    orientation = headers[0].orientation
    positions = None
    if orientation is not None and all(h.position is not None for h in headers):
        normal = np.cross(orientation[:3], orientation[3:])
        heights = [float(np.dot(h.position, normal)) for h in headers]
        order = sorted(range(len(headers)), key=lambda i: (heights[i], headers[i].path))
        positions = tuple(heights[i] for i in order)
    else:
        order = sorted(range(len(headers)), key=lambda i: (headers[i].instance is None, headers[i].instance or 0,
                                                          headers[i].path))
    first = headers[0]
    return DicomSeries(uid=uid, description=first.description, modality=first.modality,
                       files=tuple(headers[i].path for i in order), slice_positions_mm=positions,
                       value_range=_series_range([h.value_range for h in headers]))


def _series_range(ranges: List[Optional[Tuple[int, int]]]) -> Optional[Tuple[int, int]]:
    if any(r is None for r in ranges):
        return None
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def read_dicom_series(
    folder: str | os.PathLike, series_uid: str | None = None, progress: bool = False,
    before_pixels: Optional[Callable[[], None]] = None,
) -> sitk.Image:
    """Read one DICOM series from a folder as a 3D image in HU (GDCM applies rescale slope/intercept).

    With several series and no ``series_uid``, raises :class:`InputError` listing each series'
    UID, description and number of slices, asking for ``--series UID``. Unevenly spaced slices are
    refused before any pixel is read. ``before_pixels``: as :func:`read_ct`'s.
    """
    folder = Path(folder)
    series = list_dicom_series(folder)
    if not series:
        raise InputError(f"No DICOM series found in {folder}; give a folder of .dcm slices or a volume file.")
    if series_uid is None:
        if len(series) > 1:
            raise InputError(
                f"The folder {folder} holds {len(series)} DICOM series; choose one with --series UID "
                f"(series_uid= in Python):\n{format_series_table(series)}"
            )
        chosen = series[0]
    else:
        matches = [s for s in series if s.uid == series_uid.strip()]
        if not matches:
            raise InputError(
                f"No series with UID {series_uid} in {folder}; the folder holds:\n{format_series_table(series)}"
            )
        chosen = matches[0]
    if chosen.number_of_slices < 2:
        raise InputError(
            f"Series {chosen.uid} in {folder} has a single slice; a 3D CT needs the whole series of slices."
        )
    _check_slice_positions(chosen)
    if before_pixels is not None:
        before_pixels()

    def read(pixel_id: Optional[int]) -> sitk.Image:
        reader = sitk.ImageSeriesReader()
        reader.SetImageIO("GDCMImageIO")
        reader.SetFileNames(list(chosen.files))
        if pixel_id is not None:
            reader.SetOutputPixelType(pixel_id)
        return _execute(
            reader,
            f"Reading {chosen.number_of_slices} DICOM slices" if progress else None,
            lambda reason: f"Could not read DICOM series {chosen.uid} in {folder} ({reason}).",
        )

    if chosen.value_range is not None:
        image = read(sitk.sitkInt16)
        if _exact_as_int16(image, chosen.value_range):
            return _check_volume(image, f"DICOM series {chosen.uid}")
        del image
    return _narrow_to_int16(_check_volume(read(None), f"DICOM series {chosen.uid}"))


def _exact_as_int16(image: sitk.Image, value_range: Tuple[int, int]) -> bool:
    """Whether a series read straight as int16 holds its true values (rescaled values in ``value_range``).

    ITK casts each value to int16 by wrapping it around 65,536. A value below -32,768 lands in
    ``[low + 65536, 32767]``, one above 32,767 in ``[-32768, high - 65536]``: zones no value that fits
    can take while the range spans less than 65,536. No voxel in them: every value fitted, and the image
    is the one ImageSeriesReader's int32 read narrowed to int16 gives. (This halves the pages the read
    touches: on a VM each costs a fault; about 0.14 s of a 133-slice CT's read.)
    """
    low, high = value_range
    if high - low >= 65536:
        return False
    # Only a side whose values can wrap is scanned, in numpy on the image's own buffer: one pass (nearly every
    # CT's range, e.g. -33,792..31,743, can wrap on one side only) instead of ITK's filter, measured 0.08-0.10 s
    # of CPU against 6 ms for LIDC-IDRI-0001.
    voxels = sitk.GetArrayViewFromImage(image)
    below_wrapped = low < _INT16_RANGE[0] and voxels.max() >= low + 65536
    above_wrapped = high > _INT16_RANGE[1] and voxels.min() <= high - 65536
    return not (below_wrapped or above_wrapped)


def _check_slice_positions(series: DicomSeries) -> None:
    """Refuse a series whose slices are unevenly spaced (missing or duplicated slices).

    ITK builds the volume with one slice spacing; a gap would silently misplace every slice after
    it, so the patch would not be where the user pointed.
    """
    if series.slice_positions_mm is None:
        return  # no ImagePositionPatient: nothing to check against
    steps = np.diff(series.slice_positions_mm)
    if len(steps) == 0:
        return
    typical = float(np.median(steps))
    if typical <= 1e-3 or np.any(np.abs(steps - typical) > _SLICE_STEP_TOLERANCE * typical + 0.01):
        raise InputError(
            f"Series {series.uid} has uneven slice positions (steps {steps.min():.2f} to {steps.max():.2f} mm): "
            "slices are missing or duplicated; export the complete series again."
        )


def format_series_table(series: Sequence[DicomSeries]) -> str:
    """A plain-text table of series: UID, slices, modality, description (one line each)."""
    lines = []
    for s in series:
        description = s.description or "(no description)"
        lines.append(f"  {s.uid}  {s.number_of_slices:4d} slices  {s.modality or '?':3s}  {description}")
    return "\n".join(lines)


def _walk_files(folder: Path) -> Iterator[Path]:
    """Every file under ``folder``, in a stable order (hidden files and folders skipped)."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def _check_volume(image: sitk.Image, source: str) -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{source} has {image.GetNumberOfComponentsPerPixel()} values per voxel; a CT has one (HU).")
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        # Some writers store a 3D volume as 4D with one time point: take that one.
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise InputError(f"{source} is a {image.GetDimension()}D image; a CT volume must be 3D.")
    if min(image.GetSize()) < 2:
        raise InputError(f"{source} has size {image.GetSize()}; a CT volume needs several voxels along every axis.")
    return image


def _narrow_to_int16(image: sitk.Image) -> sitk.Image:
    """The image as int16 when it is of a wider integer type and every value fits (GDCM gives int32 for
    most CTs, whose rescaled HU fit in int16): half the memory, the same values."""
    wider_integers = (sitk.sitkUInt16, sitk.sitkInt32, sitk.sitkUInt32, sitk.sitkInt64, sitk.sitkUInt64)
    if image.GetPixelID() not in wider_integers:
        return image
    voxels = sitk.GetArrayViewFromImage(image)  # numpy's reductions: a fraction of ITK's filter's time
    if voxels.min() < _INT16_RANGE[0] or voxels.max() > _INT16_RANGE[1]:
        return image
    return sitk.Cast(image, sitk.sitkInt16)


def check_ct_values(image: sitk.Image, source: str = "The CT") -> int:
    """Refuse an image without usable data: no finite voxel, or one value everywhere; return how many
    voxels are not finite (NaN or infinity: only a float image holds any), so that no caller scans the CT
    for them again.

    Such an image still gives the network an input, and so a probability that means nothing.
    Raw unrescaled intensities or an MRI-like image are not refused here: their voxels vary, and
    the classifier warns that they do not look like Hounsfield units.
    """
    voxels = sitk.GetArrayViewFromImage(image)
    non_finite = 0
    if np.issubdtype(voxels.dtype, np.floating):
        finite = np.isfinite(voxels)
        non_finite = int(voxels.size - np.count_nonzero(finite))
        if non_finite == voxels.size:
            raise InputError(f"{source} has no finite voxel (every value is NaN or infinity); check the file or its export.")
        low = float(voxels.min(where=finite, initial=np.inf))
        high = float(voxels.max(where=finite, initial=-np.inf))
    else:
        sample = voxels[::_SAMPLE_STEP, ::_SAMPLE_STEP, ::_SAMPLE_STEP]
        if sample.min() != sample.max():
            return 0  # two different values: not one value everywhere, no need to look at every voxel
        low, high = float(voxels.min()), float(voxels.max())
    if low == high:
        raise InputError(f"{source} holds one value ({low:g}) in every voxel, so there is nothing to classify; "
                         "check that the right image was exported.")
    return non_finite


def _progress_bar(description: str):
    from .progress import progress_bar

    # Shown only when reading takes over a second.
    return progress_bar(total=100, desc=description, unit="%", leave=False)


def _informative_line(text: str) -> str:
    """The last informative line of an ITK message, shortened: ITK prefixes file and line noise."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "")[:200]


def _first_line(exc: BaseException) -> str:
    return _informative_line(str(exc)) or type(exc).__name__
