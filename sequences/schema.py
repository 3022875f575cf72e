"""Validate MRD XML headers against the ISMRMRD XML schema (XSD) with lxml.

The schema file is Debian's ``ismrmrd-schema`` package
(``/usr/share/ismrmrd/schema/ismrmrd.xsd``) unless a path is given.
"""

from __future__ import annotations

from pathlib import Path

from lxml import etree

DEFAULT_XSD = Path("/usr/share/ismrmrd/schema/ismrmrd.xsd")


def find_schema() -> Path | None:
    """The ISMRMRD XSD if one is installed, else None."""
    return DEFAULT_XSD if DEFAULT_XSD.exists() else None


def validate_header_xml(xml_text: str, xsd_path: str | Path | None = None) -> list[str]:
    """Problems found validating ``xml_text`` against the schema; an empty list means valid.

    Raises FileNotFoundError when no schema is available.
    """
    xsd = Path(xsd_path) if xsd_path else find_schema()
    if xsd is None or not xsd.exists():
        raise FileNotFoundError("no ISMRMRD schema found (install Debian's ismrmrd-schema or pass a path).")
    schema = etree.XMLSchema(etree.parse(str(xsd)))
    doc = etree.fromstring(xml_text.encode())
    return [] if schema.validate(doc) else [str(e) for e in schema.error_log]
