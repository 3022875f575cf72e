"""Validate MRD XML headers against the ISMRMRD XML schema (XSD).

Uses lxml when it is installed. Otherwise a small validator that understands
the constructs the ISMRMRD schema uses (named and inline complex types with
``xs:sequence`` / ``xs:all``, minOccurs/maxOccurs, simple types restricted by
enumeration or pattern, and the built-in numeric, date and string types), so
the check runs with the standard library alone. The schema file is Debian's
``ismrmrd-schema`` package (``/usr/share/ismrmrd/schema/ismrmrd.xsd``) unless a
path is given.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

XS = "{http://www.w3.org/2001/XMLSchema}"
DEFAULT_XSD = Path("/usr/share/ismrmrd/schema/ismrmrd.xsd")

_INT_RANGES = {
    "long": (-(2**63), 2**63 - 1),
    "int": (-(2**31), 2**31 - 1),
    "short": (-(2**15), 2**15 - 1),
    "unsignedLong": (0, 2**64 - 1),
    "unsignedInt": (0, 2**32 - 1),
    "unsignedShort": (0, 2**16 - 1),
}


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
    try:
        from lxml import etree  # type: ignore[import-not-found]
    except ImportError:
        return _MiniValidator(xsd).validate(xml_text)
    schema = etree.XMLSchema(etree.parse(str(xsd)))
    doc = etree.fromstring(xml_text.encode())
    return [] if schema.validate(doc) else [str(e) for e in schema.error_log]


class _MiniValidator:
    """Structural XSD validation for the subset of XML Schema the ISMRMRD schema uses."""

    def __init__(self, xsd: Path):
        root = ET.parse(xsd).getroot()
        self.ns = root.get("targetNamespace", "")
        self.complex = {c.get("name"): c for c in root.findall(f"{XS}complexType")}
        self.simple = {s.get("name"): s for s in root.findall(f"{XS}simpleType")}
        self.top = {e.get("name"): e for e in root.findall(f"{XS}element")}

    def validate(self, xml_text: str) -> list[str]:
        errors: list[str] = []
        try:
            doc = ET.fromstring(xml_text)
        except ET.ParseError as exc:
            return [f"not well-formed XML: {exc}"]
        name = self._local(doc, errors, "/")
        if name not in self.top:
            return [f"/{name}: not a top-level element of the schema"]
        self._element(doc, self.top[name], f"/{name}", errors)
        return errors

    def _local(self, el: ET.Element, errors: list[str], path: str) -> str:
        tag = el.tag
        if tag.startswith("{"):
            ns, local = tag[1:].split("}", 1)
            if ns != self.ns:
                errors.append(f"{path}{local}: namespace {ns!r}, expected {self.ns!r}")
            return local
        if self.ns:
            errors.append(f"{path}{tag}: missing namespace {self.ns!r}")
        return tag

    def _element(self, el: ET.Element, decl: ET.Element, path: str, errors: list[str]) -> None:
        type_name = decl.get("type")
        inline_complex = decl.find(f"{XS}complexType")
        inline_simple = decl.find(f"{XS}simpleType")
        if inline_complex is not None:
            self._complex(el, inline_complex, path, errors)
        elif inline_simple is not None:
            self._simple_value(el, inline_simple, path, errors)
        elif type_name and type_name.startswith("xs:"):
            if len(el):
                errors.append(f"{path}: simple element has child elements")
            self._builtin(el.text or "", type_name[3:], path, errors)
        elif type_name in self.complex:
            self._complex(el, self.complex[type_name], path, errors)
        elif type_name in self.simple:
            self._simple_value(el, self.simple[type_name], path, errors)
        else:
            errors.append(f"{path}: schema type {type_name!r} unknown to this validator")

    def _complex(self, el: ET.Element, ctype: ET.Element, path: str, errors: list[str]) -> None:
        if (el.text or "").strip():
            errors.append(f"{path}: complex element has text {el.text.strip()!r}")
        children = list(el)
        names = [self._local(c, errors, path + "/") for c in children]
        group = ctype.find(f"{XS}sequence")
        ordered = group is not None
        if group is None:
            group = ctype.find(f"{XS}all")
        decls = group.findall(f"{XS}element") if group is not None else []
        by_name = {d.get("name"): d for d in decls}
        for n in names:
            if n not in by_name:
                errors.append(f"{path}/{n}: element not allowed here (allowed: {', '.join(by_name)})")
        if ordered:
            order = [d.get("name") for d in decls]
            idx = [order.index(n) for n in names if n in by_name]
            if idx != sorted(idx):
                errors.append(f"{path}: children out of schema order ({', '.join(names)})")
        for d in decls:
            n = d.get("name")
            count = names.count(n)
            lo = int(d.get("minOccurs", "1"))
            hi_s = d.get("maxOccurs", "1")
            hi = float("inf") if hi_s == "unbounded" else int(hi_s)
            if count < lo:
                errors.append(f"{path}/{n}: required {lo}, found {count}")
            if count > hi:
                errors.append(f"{path}/{n}: at most {hi_s}, found {count}")
        for c, n in zip(children, names, strict=True):
            if n in by_name:
                self._element(c, by_name[n], f"{path}/{n}", errors)

    def _simple_value(self, el: ET.Element, stype: ET.Element, path: str, errors: list[str]) -> None:
        text = (el.text or "").strip()
        restriction = stype.find(f"{XS}restriction")
        if restriction is None:
            return
        base = restriction.get("base", "xs:string")
        self._builtin(text, base[3:] if base.startswith("xs:") else "string", path, errors)
        enums = [e.get("value") for e in restriction.findall(f"{XS}enumeration")]
        if enums and text not in enums:
            errors.append(f"{path}: {text!r} is not one of {', '.join(enums)}")
        for pat in restriction.findall(f"{XS}pattern"):
            if not re.fullmatch(pat.get("value"), text):
                errors.append(f"{path}: {text!r} does not match pattern {pat.get('value')!r}")

    @staticmethod
    def _builtin(text: str, base: str, path: str, errors: list[str]) -> None:
        t = text.strip()
        if base in _INT_RANGES:
            lo, hi = _INT_RANGES[base]
            if not re.fullmatch(r"[-+]?\d+", t) or not lo <= int(t) <= hi:
                errors.append(f"{path}: {t!r} is not an xs:{base}")
        elif base in ("float", "double"):
            try:
                float(t)
            except ValueError:
                errors.append(f"{path}: {t!r} is not an xs:{base}")
        elif base == "date" and not re.fullmatch(r"-?\d{4,}-\d{2}-\d{2}(Z|[+-]\d{2}:\d{2})?", t):
            errors.append(f"{path}: {t!r} is not an xs:date")
        elif base == "time" and not re.fullmatch(r"\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?", t):
            errors.append(f"{path}: {t!r} is not an xs:time")
        elif base == "base64Binary" and not re.fullmatch(r"[A-Za-z0-9+/=\s]*", t):
            errors.append(f"{path}: {t!r} is not xs:base64Binary")
