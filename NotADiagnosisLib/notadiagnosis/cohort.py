"""Cohort mode: every CT of a manifest classified in one process, into one resumable CSV or JSONL file.

One model load for the whole cohort; worker processes read the next CTs while the current one is
classified; each CT's results are appended (and flushed to disk) as soon as they are done, so an
interrupted run loses at most the CT in progress, and a rerun with the same options skips every CT
already in the file (a CT whose rows were cut off is redone). A CT that cannot be used is recorded
with its one-sentence reason and the run goes on. ``shard=(K, N)`` keeps every N-th row from the
K-th, so a cluster's job array splits a cohort with nothing else.

The manifest is a CSV with a header row and one row per CT: ``ct`` (a volume file or DICOM folder)
and ``points`` (a points file, or coordinates ``x,y,z; x,y,z``), optionally ``id`` (the case's name
in the results; default the ``ct`` cell), ``series`` (a SeriesInstanceUID) and ``coordinates``
(``RAS``, the default, or ``LPS``: how the row's coordinates and a CSV points file's x,y,z columns
are meant). Relative paths are relative to the manifest's folder; other columns are ignored.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import multiprocessing
import os
import re
import signal
import warnings
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from .atomic import write_text_atomic
from .cases import classify_case, read_case
from .errors import InputError, NotADiagnosisError, show_warning
from .points import parse_point, read_points
from .results import CSV_COLUMNS, REMINDER, csv_cells, model_summary, safe_name
from .progress import progress_bar

__all__ = ["CohortOptions", "CohortRow", "read_manifest", "shard_rows", "classify_cohort", "COHORT_CSV_COLUMNS"]

#: Columns of the cohort CSV: the case, then the single-CT CSV's columns, then the reason of a failure.
COHORT_CSV_COLUMNS = ("case", "ct", "series", "status", "points_in_case") + CSV_COLUMNS + ("error",)
OUTPUT_SUFFIXES = (".csv", ".jsonl")
STATUS_OK, STATUS_FAILED = "ok", "failed"
# The first line of a results file after the reminder: it names the options that change results.
_OPTIONS_MARK = "notadiagnosis cohort"
_FORMAT_VERSION = 2  # 2: the measurement columns
_MANIFEST_COLUMNS = ("id", "ct", "series", "points", "coordinates")
_COORDINATES = re.compile(r"^[\s\d.,;eE+-]+$")


class CohortStopped(NotADiagnosisError):
    """The run cannot go on (a reading process died); nothing is recorded for the CTs not done."""


@dataclass(frozen=True)
class CohortOptions:
    """What a cohort run does; ``workers`` 0 reads each CT in this process, when its turn comes."""

    manifest: Path
    out: Path
    shard: Optional[Tuple[int, int]] = None
    workers: int = 2
    tta: bool = True
    batch_size: int = 32
    saliency: Optional[Path] = None
    measure: bool = True
    segmentation: Optional[Path] = None
    at_click: bool = False


@dataclass(frozen=True)
class CohortRow:
    """One manifest row, as written (paths resolved against the manifest's folder)."""

    case: str
    ct_cell: str
    ct_path: Path
    series: Optional[str]
    points_cell: str
    coordinates: str
    line: int


# ------------------------------------------------------------------------------------------ manifest


def read_manifest(path: Path) -> List[CohortRow]:
    """The manifest's rows; a manifest that cannot be used at all (no file, no ct or points column,
    no rows, two rows naming the same case) is refused with one sentence."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"The manifest {path} does not exist; give a CSV with a header row and one row per CT (columns ct, points).")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"Could not read the manifest {path} ({error}); save it as UTF-8 CSV.") from None
    numbered = [(n, line) for n, line in enumerate(text.splitlines(), start=1)
                if line.strip() and not line.lstrip().startswith("#")]
    if not numbered:
        raise InputError(f"The manifest {path} is empty; give a header row (ct,points) and one row per CT.")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    parsed = list(csv.reader([line for _, line in numbered], delimiter=delimiter))
    header = [name.strip().lower() for name in parsed[0]]
    missing = [name for name in ("ct", "points") if name not in header]
    if missing:
        raise InputError(f"The manifest {path} has no {' or '.join(missing)} column; its header row must name ct and points "
                         f"(and optionally {', '.join(c for c in _MANIFEST_COLUMNS if c not in ('ct', 'points'))}).")
    rows: List[CohortRow] = []
    seen: Dict[str, int] = {}
    for (line_number, _), fields in zip(numbered[1:], parsed[1:]):
        cells = {name: fields[i].strip() if i < len(fields) else "" for i, name in enumerate(header)}
        ct_cell = cells.get("ct", "")
        series = cells.get("series") or None
        case = cells.get("id") or (f"{ct_cell}#{series}" if series else ct_cell) or f"row {line_number}"
        if case in seen:
            raise InputError(f"Lines {seen[case]} and {line_number} of the manifest {path} both name the case {case!r}; "
                             "give each row its own value in an id column.")
        seen[case] = line_number
        rows.append(CohortRow(case=case, ct_cell=ct_cell, ct_path=_beside(path, ct_cell), series=series,
                              points_cell=cells.get("points", ""), coordinates=(cells.get("coordinates") or "RAS").upper(),
                              line=line_number))
    if not rows:
        raise InputError(f"The manifest {path} has a header but no rows; add one row per CT.")
    return rows


def _beside(manifest: Path, cell: str) -> Path:
    path = Path(cell).expanduser()
    return path if path.is_absolute() else manifest.parent / path


def shard_rows(rows: Sequence[CohortRow], shard: Optional[Tuple[int, int]]) -> List[CohortRow]:
    """Shard K of N (1-based): rows K, K+N, K+2N… of the manifest; the N shards partition it."""
    if shard is None:
        return list(rows)
    k, n = shard
    if not 1 <= k <= n:
        raise InputError(f"Shard {k}/{n} does not exist; K must be between 1 and N.")
    return list(rows[k - 1 :: n])


def load_row(row: CohortRow, manifest: Path) -> Tuple[Any, list]:
    """Read and check one row's points and CT (no model): (image, points). Runs in a worker process."""
    where = f"Line {row.line} of {manifest.name}"
    if row.coordinates not in ("RAS", "LPS"):
        raise InputError(f"{where}: coordinates {row.coordinates!r} is neither RAS nor LPS.")
    if not row.ct_cell:
        raise InputError(f"{where} has no ct; give a volume file or DICOM folder.")
    cell, lps = row.points_cell, row.coordinates == "LPS"
    if not cell:
        raise InputError(f"{where} has no points; give a points file or coordinates x,y,z; x,y,z.")
    if _COORDINATES.match(cell):
        points = [parse_point(text, lps=lps, label=f"P{i}")
                  for i, text in enumerate((part for part in cell.split(";") if part.strip()), start=1)]
    else:
        points = read_points(_beside(manifest, cell), coordinate_system=row.coordinates if lps else None)
    return read_case(row.ct_path, row.series, points), points


# -------------------------------------------------------------------------------------------- output


class CohortOutput:
    """The results file: checked and cleaned when it exists (resume), then appended one CT at a time."""

    def __init__(self, path: Path) -> None:
        self.path = self.check_path(path)
        self.suffix = self.path.suffix.lower()
        self.options: Optional[Dict[str, Any]] = None
        self.done: Dict[str, str] = {}  # case -> status
        self._kept = ""
        if self.path.is_file() and self.path.stat().st_size > 0:
            self._read_existing()

    @staticmethod
    def check_path(path: Path) -> Path:
        """The results file's path, refused unless it ends in .csv or .jsonl in a writable folder."""
        path = Path(path).expanduser()
        if path.suffix.lower() not in OUTPUT_SUFFIXES:
            raise InputError(f"The results file {path} must end in .csv or .jsonl (its format).")
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
            raise InputError(f"Cannot write the results file {path}: its folder does not exist or is not writable.")
        return path

    def _read_existing(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"Cannot read the existing results file {self.path} ({error}); move it away to start again.") from None
        if not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]  # the last line was cut off mid-write
        lines = text.splitlines(keepends=True)
        if self.suffix == ".csv":
            self._read_csv(lines)
        else:
            self._read_jsonl(lines)

    def _foreign(self) -> InputError:
        return InputError(f"{self.path} exists but is not a results file of notadiagnosis's cohort mode; "
                          "choose another --out (it is never overwritten).")

    def _read_options(self, line: str, prefix: str) -> Dict[str, Any]:
        if not line.startswith(prefix):
            raise self._foreign()
        try:
            options = json.loads(line[len(prefix):])
        except json.JSONDecodeError:
            raise self._foreign() from None
        if not isinstance(options, dict):
            raise self._foreign()
        return options

    def _damaged(self, number: int, count: int) -> None:
        """A line that cannot be read: the last one was cut off by an interruption (it is dropped and
        its CT redone); one before others was changed by hand, and nothing is guessed."""
        if number < count:
            raise InputError(f"Line {number} of {self.path} is damaged; repair or remove it (its CT is then redone), "
                             "or choose another --out.")

    def _read_csv(self, lines: List[str]) -> None:
        if len(lines) < 3 or lines[0] != f"# {REMINDER}\n":
            raise self._foreign()
        self.options = self._read_options(lines[1], f"# {_OPTIONS_MARK} ")
        header = next(csv.reader([lines[2]]))
        if tuple(header) != COHORT_CSV_COLUMNS:
            raise InputError(f"{self.path} has other columns than this version of notadiagnosis writes; "
                             "choose another --out to start again.")
        kept, block, expected = lines[:3], [], 0
        for number, line in enumerate(lines[3:], start=4):
            fields = next(csv.reader([line]), [])
            if len(fields) != len(COHORT_CSV_COLUMNS):
                self._damaged(number, len(lines))
                break
            row = dict(zip(COHORT_CSV_COLUMNS, fields))
            if block and row["case"] != block[0][0]["case"]:
                block, expected = [], 0  # the previous case was cut off: drop it
            if not block:
                expected = 1 if row["status"] == STATUS_FAILED else int(row["points_in_case"] or 0)
            block.append((row, line))
            if len(block) == expected:
                kept.extend(line for _, line in block)
                self.done[row["case"]] = row["status"]
                block = []
        self._kept = "".join(kept)

    def _read_jsonl(self, lines: List[str]) -> None:
        self.options = self._read_options(lines[0], "")
        if _OPTIONS_MARK not in self.options:
            raise self._foreign()
        self.options = self.options[_OPTIONS_MARK]
        kept = [lines[0]]
        for number, line in enumerate(lines[1:], start=2):
            try:
                record = json.loads(line)
                case, status = record["case"], record["status"]
            except (json.JSONDecodeError, KeyError, TypeError):
                self._damaged(number, len(lines))
                break
            kept.append(line)
            self.done[case] = status
        self._kept = "".join(kept)

    def start(self, options: Dict[str, Any]) -> None:
        """Check that the file was written with ``options`` (or write its head), then keep only whole CTs."""
        if self.options is not None:
            differing = sorted(key for key in set(options) | set(self.options) if options.get(key) != self.options.get(key))
            if differing:
                raise InputError(
                    f"{self.path} was written with other options ({', '.join(f'{k}: {self.options.get(k)!r} there, {options.get(k)!r} now' for k in differing)}); "
                    "rerun with the same options to resume, or choose another --out."
                )
            current = self.path.read_text(encoding="utf-8")
            if current != self._kept:  # a CT cut off mid-write: rewrite without it, atomically
                write_text_atomic(self.path, self._kept)
            return
        if self.suffix == ".csv":
            buffer = io.StringIO()
            buffer.write(f"# {REMINDER}\n# {_OPTIONS_MARK} {json.dumps(options, sort_keys=True)}\n")
            csv.writer(buffer, lineterminator="\n").writerow(COHORT_CSV_COLUMNS)
            head = buffer.getvalue()
        else:
            head = json.dumps({_OPTIONS_MARK: options, "disclaimer": REMINDER}, sort_keys=True) + "\n"
        write_text_atomic(self.path, head)

    def write_done(self, row: CohortRow, rows: Sequence[Dict[str, Any]]) -> None:
        if self.suffix == ".csv":
            self._append_csv([[row.case, row.ct_cell, row.series or "", STATUS_OK, str(len(rows)), *csv_cells(r), ""]
                              for r in rows])
        else:
            self._append_json({"case": row.case, "ct": row.ct_cell, "series": row.series, "status": STATUS_OK,
                               "points": list(rows)})
        self.done[row.case] = STATUS_OK

    def write_failed(self, row: CohortRow, reason: str) -> None:
        reason = _one_line(reason)  # e.g. the list of a folder's DICOM series, on one line
        if self.suffix == ".csv":
            self._append_csv([[row.case, row.ct_cell, row.series or "", STATUS_FAILED, "0"]
                              + [""] * len(CSV_COLUMNS) + [reason]])
        else:
            self._append_json({"case": row.case, "ct": row.ct_cell, "series": row.series, "status": STATUS_FAILED,
                               "error": reason})
        self.done[row.case] = STATUS_FAILED

    def _append_csv(self, cells: List[List[str]]) -> None:
        buffer = io.StringIO()
        # One line per row, always: the file is read back line by line when a run resumes.
        csv.writer(buffer, lineterminator="\n").writerows([_one_line(cell) for cell in row] for row in cells)
        self._append(buffer.getvalue())

    def _append_json(self, record: Dict[str, Any]) -> None:
        self._append(json.dumps(record) + "\n")

    def _append(self, text: str) -> None:
        # One write per CT, flushed to disk: an interruption leaves whole CTs and at most one cut-off CT.
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) if "\n" in str(text) or "\r" in str(text) else str(text)


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold a lock beside ``out`` for the whole run, so that two runs never append to one file
    (two jobs of an array given the same --out, say)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; runs are the user's to keep apart
        yield
        return
    lock_path = out.with_name(f".{out.name}.lock")
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(f"Another run is writing {out} right now; wait for it, or give this one another --out.") from None
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class CohortSummary:
    """What a cohort run did: ``text`` is its one-line summary; ``failed`` counts the shard's CTs whose
    status in the results file is failed (this run's and earlier runs')."""

    text: str
    failed: int

    def __str__(self) -> str:
        return self.text


def classify_cohort(options: CohortOptions, load_classifier: Callable[[], Any]) -> CohortSummary:
    """Classify every CT of the manifest's shard not yet in ``options.out``; returns its summary.

    The manifest and the results file are checked before ``load_classifier()`` is called.
    """
    manifest_rows = read_manifest(options.manifest)
    rows = shard_rows(manifest_rows, options.shard)
    CohortOutput.check_path(options.out)
    with _exclusive(Path(options.out).expanduser()):
        return _classify_rows(options, manifest_rows, rows, CohortOutput(options.out), load_classifier)


def _classify_rows(options: CohortOptions, manifest_rows: List[CohortRow], rows: List[CohortRow],
                   output: "CohortOutput", load_classifier: Callable[[], Any]) -> CohortSummary:
    """The run itself, once the results file is locked and read: the rows not done, in manifest order."""
    todo = [row for row in rows if row.case not in output.done]
    classifier = load_classifier()
    output.start(_result_options(classifier, options))
    already = len(rows) - len(todo)
    statuses: Counter = Counter()
    bar = progress_bar(total=len(rows), initial=already, desc="CTs", unit="CT", leave=True)
    try:
        with contextlib.closing(_read_ahead(todo, options)) as reading:
            for row, loaded in reading:
                statuses[_classify_row(classifier, output, options, row, loaded)] += 1
                bar.update(1)
    finally:
        bar.close()
    failed_in_file = sum(1 for row in rows if output.done.get(row.case) == STATUS_FAILED)
    shard = f" (shard {options.shard[0]}/{options.shard[1]} of {len(manifest_rows)})" if options.shard else ""
    return CohortSummary(
        f"Cohort: {len(rows)} CTs{shard}: {statuses[STATUS_OK]} classified and {statuses[STATUS_FAILED]} failed in this run, "
        f"{already} already done; {failed_in_file} failed in all (status {STATUS_FAILED}, with the reason). "
        f"Results: {options.out}", failed_in_file)


def _classify_row(classifier, output: CohortOutput, options: CohortOptions, row: CohortRow, loaded) -> str:
    """Classify one row and append its results, or record why it failed; returns the row's status."""
    try:
        image, points = loaded()
        rows = classify_case(classifier, image, points, tta=options.tta, batch_size=options.batch_size,
                             saliency_dir=options.saliency / safe_name(row.case) if options.saliency else None,
                             measure=options.measure, at_click=options.at_click,
                             segmentation_dir=options.segmentation / safe_name(row.case) if options.segmentation else None)
    except CohortStopped:
        raise
    except NotADiagnosisError as error:
        output.write_failed(row, str(error))
        return STATUS_FAILED
    output.write_done(row, rows)
    return STATUS_OK


def _result_options(classifier, options: CohortOptions) -> Dict[str, Any]:
    """What must not change between a run and its resumption: the model, TTA, measuring, where points are
    classified and the shard."""
    return {"format": _FORMAT_VERSION, "model": model_summary(classifier), "tta": options.tta, "measure": options.measure,
            "at_click": options.at_click, "shard": None if options.shard is None else f"{options.shard[0]}/{options.shard[1]}"}


def _read_ahead(rows: Sequence[CohortRow], options: CohortOptions) -> Iterator[Tuple[CohortRow, Callable[[], Tuple[Any, list]]]]:
    """Yield (row, load) in manifest order; with workers, the next rows are already being read in other
    processes while the caller classifies the current one (at most ``workers`` CTs ahead, for memory)."""
    if options.workers == 0:
        for row in rows:
            yield row, (lambda row=row: load_row(row, options.manifest))
        return
    # spawn, not fork: the parent holds the inference runtime's threads, which a fork would copy broken.
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=options.workers, mp_context=context, initializer=_start_reader)
    pending: deque = deque()
    upcoming = iter(rows)
    try:
        for row in upcoming:
            pending.append((row, pool.submit(load_row, row, options.manifest)))
            if len(pending) >= options.workers:
                break
        while pending:
            row, future = pending.popleft()
            following = next(upcoming, None)
            if following is not None:
                pending.append((following, pool.submit(load_row, following, options.manifest)))
            yield row, _result_of(future, row)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _result_of(future: Future, row: CohortRow) -> Callable[[], Tuple[Any, list]]:
    def result() -> Tuple[Any, list]:
        try:
            return future.result()
        except BrokenProcessPool:
            raise CohortStopped(f"The process reading {row.ct_cell} died (out of memory?), so the run stopped there; "
                                "rerun the same command to resume (with fewer --workers if memory is short).") from None
    return result


def _start_reader() -> None:
    """Set up a reading process: warnings as one line each, as the command line shows them; Ctrl-C
    (which reaches every process of the group) left to the parent, which stops the run."""
    warnings.showwarning = show_warning
    signal.signal(signal.SIGINT, signal.SIG_IGN)
