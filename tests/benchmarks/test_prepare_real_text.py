"""The maths source of ``benchmarks/prepare_real_text.py``: a Debian package read without dpkg,
its GNU info manual cut into documents, and the other files unchanged by adding it."""

from __future__ import annotations

import gzip
import io
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import prepare_real_text as prt  # noqa: E402

PROSE = "Maxima simplifies sums. " * 10
NODE_A = (
    "\x1f\nFile: maxima.info,  Node: Sums,  Next: Series,  Up: Top\n\n"
    f"28.1 Sums\n=========\n\n{PROSE}\n\n"
    " -- Function: sum (<expr>, <i>, <i_0>, <i_1>)\n"
    "     Represents a summation of the values of <expr> as the index <i>\n"
    "     varies from <i_0> to <i_1>, a long enough description to be kept as its own\n"
    "     document by the minimum length that the builder applies to every piece of text.\n\n"
    " -- Option variable: cauchysum\n"
    "     Default value: 'false'\n\n"
    "     When multiplying together sums with 'inf' as their upper limit, if 'sumexpand' is\n"
    "     'true' and 'cauchysum' is 'true' then the Cauchy product will be used instead.\n\n"
    "* Menu:\n\n* Series::  Taylor series and friends.\n"
)
NODE_INDEX = "\x1f\nFile: maxima.info,  Node: Function and Variable Index\n\n" + PROSE
NODE_SHORT = "\x1f\nFile: maxima.info,  Node: Tiny\n\nToo short to keep.\n"


def test_info_documents_cut_definitions_and_drop_menus_and_indices() -> None:
    docs = prt.info_documents("Tag Table:\n" + NODE_A + NODE_INDEX + NODE_SHORT)
    assert [d.split(" ")[:3] for d in docs] == [
        ["28.1", "Sums", "========="],
        ["--", "Function:", "sum"],
        ["--", "Option", "variable:"],
    ]
    assert all("Menu" not in d and "Taylor" not in d and "\n" not in d for d in docs)
    assert docs[0].endswith("Maxima simplifies sums.")


def _ar_member(name: str, data: bytes) -> bytes:
    header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
    return header + data + (b"\n" if len(data) % 2 else b"")


def _deb(path: Path, files: dict[str, bytes]) -> Path:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    path.write_bytes(
        b"!<arch>\n"
        + _ar_member("debian-binary", b"2.0\n")
        + _ar_member("control.tar.xz", b"x")  # odd size: exercises the padding
        + _ar_member("data.tar.xz", data.getvalue())
    )
    return path


def test_read_maxima_from_a_debian_package(tmp_path: Path) -> None:
    _deb(
        tmp_path / f"{prt.MAXIMA_PACKAGE}_{prt.MAXIMA_VERSION}_all.deb",
        {
            "./usr/share/info/maxima.info-2.gz": gzip.compress(NODE_SHORT.encode()),
            "./usr/share/info/maxima.info-1.gz": gzip.compress(NODE_A.encode()),
            "./usr/share/info/maxima.info.gz": gzip.compress(b"Indirect:\n"),
            "./usr/share/doc/maxima-doc/copyright": b"GPL-2",
        },
    )
    docs, source = prt.read_maxima(tmp_path)
    assert source is not None and source.documents == len(docs) == 3
    assert docs == prt.info_documents(NODE_A)


def test_a_damaged_package_is_named_in_one_line(tmp_path: Path) -> None:
    deb = tmp_path / f"{prt.MAXIMA_PACKAGE}_{prt.MAXIMA_VERSION}_all.deb"
    deb.write_bytes(b"not an ar archive")
    with pytest.raises(SystemExit, match=r"maxima-doc_.*\.deb: not a Debian package"):
        prt.read_maxima(tmp_path)


def test_maxima_documents_change_only_the_maths_files() -> None:
    by_topic = {
        "Arts": [f"general article {i}" for i in range(500)],
        "Biology and health sciences": [f"health article {i}" for i in range(80)],
        "Mathematics": [f"maths article {i}" for i in range(20)],
    }
    hpo = [f"Term {i}: a definition" for i in range(400)]
    speeches = [f"speech passage {i}" for i in range(30)]
    manual = [f"-- Function: f{i} (<x>) does {i}" for i in range(40)]
    without = prt.build_splits(by_topic, hpo, speeches, 0)
    with_manual = prt.build_splits(by_topic, hpo, speeches, 0, manual)
    maths = {"maths_train.txt", "maths_heldout.txt"}
    assert {k: v for k, v in without.items() if k not in maths} == {
        k: v for k, v in with_manual.items() if k not in maths
    }
    assert sorted(with_manual["maths_train.txt"] + with_manual["maths_heldout.txt"]) == sorted(
        without["maths_train.txt"] + without["maths_heldout.txt"] + manual
    )
    assert len([d for d in with_manual["maths_heldout.txt"] if d in manual]) == 6  # 15 % of 40
    prt.check_disjoint(with_manual)
