"""What every configuration section shares: frozen models that refuse unknown keys, AE titles, ports."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # default character repertoire, no backslash

AETitle = Annotated[str, Field(min_length=1, max_length=16)]
Port = Annotated[int, Field(ge=1, le=65535)]


def check_ae_title(value: str) -> str:
    """``value`` stripped, if it is a valid AE title; else ``ValueError``."""
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError(f"{value!r} is not a valid AE title (1-16 printable characters, no backslash)")
    return value.strip()


class Section(BaseModel):
    """A configuration section: immutable, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


TLSVersion = Literal["1.2", "1.3"]


def refuse_repeats(values: list[str], key: str) -> list[str]:
    """``values`` unchanged, unless one is listed twice (``ValueError`` naming ``key`` and it)."""
    repeated = sorted({value for value in values if values.count(value) > 1})
    if repeated:
        raise ValueError(f"{key} lists {', '.join(repeated)} more than once")
    return values
