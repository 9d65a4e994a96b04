"""The one atomic writer (notadiagnosis.atomic): a failed write leaves the previous file, nothing half-written."""
from __future__ import annotations

import os

import pytest

from notadiagnosis.atomic import atomic_path, write_atomic, write_text_atomic


class Interrupted(Exception):
    pass


def test_a_write_that_fails_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "sub" / "card.json"
    write_text_atomic(target, "old\n")

    def half_then_fail(handle):
        handle.write(b"ne")
        raise Interrupted

    with pytest.raises(Interrupted):
        write_atomic(target, half_then_fail)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["card.json"]


def test_a_path_writer_replaces_the_target_only_when_it_finishes(tmp_path):
    target = tmp_path / "weights.bin"
    with atomic_path(target) as temporary:
        temporary.write_bytes(b"new")
        assert temporary.parent == target.parent and not target.exists()
    assert target.read_bytes() == b"new"
    with pytest.raises(Interrupted):
        with atomic_path(target) as temporary:
            temporary.write_bytes(b"newer")
            raise Interrupted
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["weights.bin"]


def test_files_get_the_usual_mode_of_the_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
