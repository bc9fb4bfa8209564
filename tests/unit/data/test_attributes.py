"""Slice attributes: from DICOM tags (every age unit, malformed values as unknown) and from an attributes file."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from hashbench.data.attributes import ATTRIBUTE_COLUMNS, dicom_age, millimetres, read_attributes
from hashbench.data.dicom import header_fields


@pytest.mark.parametrize(
    "stored, years",
    [
        ("045Y", "45"),
        ("100Y", "100"),
        ("000Y", "0"),
        ("006M", "0"),
        ("018M", "1"),
        ("010W", "0"),
        ("104W", "1"),
        ("003D", "0"),
        ("400D", "1"),
        (" 045Y ", "45"),
        ("45", ""),
        ("045", ""),
        ("45 Y", ""),
        ("045X", ""),
        ("1045Y", ""),
        ("", ""),
    ],
)
def test_dicom_ages_become_whole_years(stored, years):
    assert dicom_age(stored) == years


@pytest.mark.parametrize(
    "stored, text",
    [
        ("2.50", "2.5"),
        ("5", "5"),
        ("5.0", "5"),
        (" 1.25 ", "1.25"),
        ("0.625", "0.625"),
        ("abc", ""),
        ("-1", ""),
        ("", ""),
    ],
)
def test_slice_thickness_is_a_plain_decimal(stored, text):
    assert millimetres(stored) == text


def read_header(path):
    return header_fields(pydicom.dcmread(path))


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # written as some files have them
def test_header_attributes_as_stored_and_normalised(tmp_path, dicom):
    path = dicom(
        tmp_path / "a.dcm",
        np.zeros((8, 8), np.uint16),
        BodyPartExamined=" chest ",
        PatientSex="F",
        PatientAge="045Y",
        Manufacturer="  GE MEDICAL SYSTEMS ",
        SliceThickness="2.50",
    )
    fields = read_header(path)
    assert {column: fields[column] for column in ATTRIBUTE_COLUMNS} == {
        "body_part": "CHEST",
        "sex": "F",
        "age": "45",
        "manufacturer": "GE MEDICAL SYSTEMS",
        "slice_thickness": "2.5",
    }


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # written as some files have them
def test_absent_and_malformed_tags_are_unknown(tmp_path, dicom):
    bare = read_header(dicom(tmp_path / "bare.dcm", np.zeros((8, 8), np.uint16)))
    assert all(bare[column] == "" for column in ATTRIBUTE_COLUMNS)
    path = dicom(
        tmp_path / "odd.dcm", np.zeros((8, 8), np.uint16), PatientSex="X", PatientAge="45", SliceThickness="9.9"
    )
    path.write_bytes(path.read_bytes().replace(b"9.9 ", b"abc "))  # a DS no parser can read as a number
    odd = read_header(path)
    assert (odd["sex"], odd["age"], odd["slice_thickness"]) == ("", "", "")


def test_a_multi_valued_tag_keeps_every_value(tmp_path, dicom):
    path = dicom(tmp_path / "a.dcm", np.zeros((8, 8), np.uint16), Manufacturer=["GE", "Philips"])
    assert read_header(path)["manufacturer"] == "GE\\Philips"


def write(path, text):
    path.write_text(text)
    return path


def known(key):
    return key[0] if key[0] in {"a.png", "b.png", "c.png"} else None


def test_an_attributes_file_is_read_normalised_by_image(tmp_path):
    path = write(
        tmp_path / "attributes.csv",
        "path,sex,age,slice_thickness,body_part\na.png,f,045Y,2.50,chest\nb.png,M,7,,\n\n",
    )
    stated = read_attributes(path, ("path",), "path", known)
    assert stated.key == "path" and stated.values == {
        "a.png": {"sex": "F", "age": "45", "slice_thickness": "2.5", "body_part": "CHEST"},
        "b.png": {"sex": "M", "age": "7", "slice_thickness": "", "body_part": ""},
    }
    assert stated.for_image("c.png") == dict.fromkeys(ATTRIBUTE_COLUMNS, "")
    assert read_attributes(tmp_path / "none.csv", ("path",), "path", known).values == {}


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "path,sex,scanner\na.png,F,X\n",
            r"any of body_part, sex, age, manufacturer, slice_thickness \(unknown: scanner\)",
        ),
        ("image,sex\na.png,F\n", r"has the columns path .*\(missing: path\)"),
        ("path\na.png\n", "has the columns path and any of"),
        (
            "path,sex\na.png,F\nz.png,M\ny.png,\n",
            r"2 row\(s\) name images that are not in the source \(e.g. z.png, y.png\)",
        ),
        ("path,sex\na.png,F\na.png,M\n", r":3: a.png has a row above already"),
        ("path,sex\na.png,female\n", r":2: sex 'female' is not M, F or O"),
        ("path,age\na.png,45.5\n", r"age '45.5' is not whole years"),
        ("path,sex\na.png\n", r":2: 1 fields where the header has 2"),
    ],
    ids=["unknown column", "no key", "no attribute", "unknown images", "twice", "bad sex", "bad age", "short row"],
)
def test_a_bad_attributes_file_is_refused_with_the_fix(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        read_attributes(write(tmp_path / "attributes.csv", text), ("path",), "path", known)
