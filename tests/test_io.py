"""mmtx.io: the one atomic write. A failed write leaves the old file and no temporary file; a
finished one has the mode a plain open() would have given."""

import json
import os
import stat

import pytest

from mmtx.io import atomic_path, read_utf8, write_json, write_text


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "result.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_path(target) as tmp:
            tmp.write_text("{half")
            raise RuntimeError("midway")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_written_files_have_the_mode_open_gives(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = write_text(tmp_path / "sub" / "atomic.png", "x")  # makes the folder too
    assert stat.S_IMODE(os.stat(written).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)
    assert written.read_text() == "x"


def test_the_temporary_keeps_the_suffix_libraries_read_the_format_from(tmp_path):
    with atomic_path(tmp_path / "grid.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"png")
    assert (tmp_path / "grid.png").read_bytes() == b"png"


def test_read_utf8_names_the_file_and_the_byte(tmp_path):
    bad = tmp_path / "captions.txt"
    bad.write_bytes(b"ok\n\xff\n")
    with pytest.raises(ValueError, match=r"captions '.*captions.txt': not UTF-8 text \(byte 3 "
                                         r"is 0xff\)"):
        read_utf8(bad, "captions")
