"""A slice's attributes beside its identity: body part, sex, age, manufacturer, slice thickness, as text ('' unknown).

DICOM files carry them as tags (:func:`hashbench.data.dicom.header_fields`); image files and ``.npz`` arrays carry
none, so the folder, list and MedMNIST sources read them from a CSV file beside the data (:func:`read_attributes`):
a key column naming each image, then any of :data:`ATTRIBUTE_COLUMNS`. Both routes store the
same forms: body part upper-case (``CHEST``), sex ``M``, ``F`` or ``O``, age in whole years (``45``), slice
thickness in millimetres as a plain decimal (``2.5``).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from hashbench.store.results import ATTRIBUTES

# what is known of a slice beside its identity (what cells keep, but the modality: an identifier column), '' where
# unknown: evaluation breaks results down by these and grades relevance on them; every index has these columns
# (filled with '' for datasets ingested without them)
ATTRIBUTE_COLUMNS = [name for name in ATTRIBUTES if name != "modality"]

ATTRIBUTES_FILE = "attributes.csv"
DICOM_AGE = re.compile(r"(\d{1,3})([DWMY])")  # the AS value representation: 045Y, 006M, 010W, 003D
DAYS_PER_UNIT = {"D": 1, "W": 7, "M": 365.25 / 12, "Y": 365.25}
SEXES = ("M", "F", "O")
EXAMPLES = 3


def dicom_age(text: str) -> str:
    """Whole years of a DICOM age string ('045Y' -> '45', '006M' -> '0'), '' if it is not one."""
    found = DICOM_AGE.fullmatch(text.strip().upper())
    if not found:
        return ""
    count, unit = int(found[1]), found[2]
    return str(count if unit == "Y" else math.floor(count * DAYS_PER_UNIT[unit] / DAYS_PER_UNIT["Y"]))


def age_years(text: str) -> str:
    """Whole years from a plain count of years ('45', '045') or a DICOM age string; '' if neither."""
    text = text.strip()
    return str(int(text)) if text.isdecimal() else dicom_age(text)


def sex(text: str) -> str:
    """M, F or O as DICOM codes them; '' for anything else."""
    text = text.strip().upper()
    return text if text in SEXES else ""


def millimetres(text: str) -> str:
    """A non-negative decimal as plain text without trailing zeros ('2.50' -> '2.5', '5.0' -> '5'); '' if not one."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return ""
    return np.format_float_positional(value, trim="-") if math.isfinite(value) and value >= 0 else ""


NORMALISE: dict[str, Callable[[str], str]] = {
    "body_part": lambda text: text.strip().upper(),
    "sex": sex,
    "age": age_years,
    "manufacturer": str.strip,
    "slice_thickness": millimetres,
}
EXPECTED = {
    "sex": "M, F or O",
    "age": "whole years (45) or a DICOM age (045Y, 006M)",
    "slice_thickness": "a number of millimetres (2.5)",
}


@dataclass(frozen=True)
class StatedAttributes:
    """What a source's attributes file states, by the value of the index column that names an image (``key``).

    They are the attributes of those images, '' where the file states none: the images themselves carry none.
    """

    file: Path
    key: str  # an index column: path, patient
    values: dict[str, dict[str, str]]

    def for_image(self, key: str) -> dict[str, str]:
        """The attribute columns of the image named ``key``."""
        stated = self.values.get(key, {})
        return {column: stated.get(column, "") for column in ATTRIBUTE_COLUMNS}

    def of(self, keys: pd.Series) -> pd.DataFrame:
        """The attribute columns of the images named by ``keys``, indexed as ``keys``."""
        return self._table.reindex(keys.to_numpy()).fillna("").set_axis(keys.index)

    @cached_property
    def _table(self) -> pd.DataFrame:
        return pd.DataFrame.from_dict(self.values, orient="index", columns=ATTRIBUTE_COLUMNS, dtype=str).fillna("")


def read_attributes(
    path: Path, key_columns: Sequence[str], index_column: str, image_key: Callable[[tuple[str, ...]], str | None]
) -> StatedAttributes:
    """The attributes ``path`` states: none where there is no such file (one removed takes its attributes with it).

    ``key_columns`` name an image in the file; ``image_key`` turns their values into the value of the dataset's
    ``index_column`` that names it (None: no such image). A ValueError names what the file gets wrong and the fix.
    """
    if not path.is_file():
        return StatedAttributes(path, index_column, {})
    valid = [*key_columns, *ATTRIBUTE_COLUMNS]
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            lines = [(reader.line_num, [value.strip() for value in row]) for row in reader if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: cannot be read as CSV ({type(exc).__name__}: {exc})") from None
    columns = lines[0][1] if lines else []
    unknown = [column for column in columns if column not in valid]
    missing = [column for column in key_columns if column not in columns]
    if unknown or missing or len(set(columns)) != len(columns) or len(columns) == len(key_columns):
        raise ValueError(
            f"{path}: columns {', '.join(columns) or 'none'}; an attributes file has the columns "
            f"{', '.join(key_columns)} and any of {', '.join(ATTRIBUTE_COLUMNS)}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
            + (f" (missing: {', '.join(missing)})" if missing else "")
        )
    values, strangers = {}, []
    for line, row in lines[1:]:
        if len(row) != len(columns):
            raise ValueError(f"{path}:{line}: {len(row)} fields where the header has {len(columns)}")
        fields = dict(zip(columns, row))
        named = tuple(fields[column] for column in key_columns)
        key = image_key(named)
        if key is None:
            strangers.append(",".join(named))
            continue
        if key in values:
            raise ValueError(f"{path}:{line}: {','.join(named)} has a row above already; give each image one row")
        values[key] = {
            column: _normalised(path, line, column, fields[column]) for column in ATTRIBUTE_COLUMNS if column in fields
        }
    if strangers:
        raise ValueError(
            f"{path}: {len(strangers)} row(s) name images that are not in the source (e.g. {', '.join(strangers[:EXAMPLES])}); "
            f"correct their {', '.join(key_columns)} or remove those rows"
        )
    return StatedAttributes(path, index_column, values)


def _normalised(path: Path, line: int, column: str, text: str) -> str:
    value = NORMALISE[column](text)
    if text and not value:
        raise ValueError(f"{path}:{line}: {column} {text!r} is not {EXPECTED[column]}; correct it or leave it empty")
    return value
