"""EB-NeRD category names and the short codes used in the NAILS paper."""

from __future__ import annotations

import polars as pl

#: Danish ``category_str`` values of EB-NeRD and the codes of the NAILS paper.
DANISH_TO_CODE: dict[str, str] = {
    "forbrug": "CON",  # consumption
    "incoming": "INC",  # incoming (wire) news
    "krimi": "CRM",  # crime
    "musik": "MUS",  # music
    "nationen": "OPN",  # opinion
    "nyheder": "NWS",  # news
    "penge": "PFI",  # personal finance
    "sport": "SPT",  # sport
    "underholdning": "ENT",  # entertainment
}
PAPER_CODES: tuple[str, ...] = tuple(sorted(DANISH_TO_CODE.values()))


def to_codes(category_str: pl.Expr | pl.Series) -> pl.Expr | pl.Series:
    """Replace known Danish names by their codes; other names (e.g. ``auto``) stay as they are."""
    return category_str.replace(DANISH_TO_CODE)
