"""What the embedded catalysis set is made of, torch-free (the config validator reads it): the EMT metals, the
adsorbates, catalyst compositions (a pure metal ``A``, ordered alloys ``A3B`` / ``AB``) and the OC20 rule that
held-out compositions and adsorbates are made of elements training has."""

from __future__ import annotations

import re

EMT_METALS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")

# Adsorbates: atoms with positions (Å) relative to the binding atom (listed first, at the origin), z away from
# the surface. Bond lengths and angles are textbook gas-phase values.
ADSORBATES: dict[str, tuple[tuple[str, tuple[float, float, float]], ...]] = {
    "H": (("H", (0.0, 0.0, 0.0)),),
    "O": (("O", (0.0, 0.0, 0.0)),),
    "N": (("N", (0.0, 0.0, 0.0)),),
    "C": (("C", (0.0, 0.0, 0.0)),),
    "OH": (("O", (0.0, 0.0, 0.0)), ("H", (0.0, 0.0, 0.97))),
    "CO": (("C", (0.0, 0.0, 0.0)), ("O", (0.0, 0.0, 1.15))),
    "NO": (("N", (0.0, 0.0, 0.0)), ("O", (0.0, 0.0, 1.17))),
    "CH": (("C", (0.0, 0.0, 0.0)), ("H", (0.0, 0.0, 1.10))),
    "NH": (("N", (0.0, 0.0, 0.0)), ("H", (0.0, 0.0, 1.03))),
    "CH2": (("C", (0.0, 0.0, 0.0)), ("H", (0.89, 0.0, 0.63)), ("H", (-0.89, 0.0, 0.63))),
    "NH2": (("N", (0.0, 0.0, 0.0)), ("H", (0.82, 0.0, 0.60)), ("H", (-0.82, 0.0, 0.60))),
    "OH2": (("O", (0.0, 0.0, 0.0)), ("H", (0.76, 0.0, 0.59)), ("H", (-0.76, 0.0, 0.59))),
    "CH3": (("C", (0.0, 0.0, 0.0)), ("H", (1.03, 0.0, 0.36)), ("H", (-0.51, 0.89, 0.36)),
            ("H", (-0.51, -0.89, 0.36))),
}
_CATALYST = re.compile(r"^([A-Z][a-z]?)(3?)([A-Z][a-z]?)?(3?)$")


def parse_catalyst(name: str) -> tuple[str, str | None, str]:
    """``(majority metal, minority metal or None, kind)`` of a composition: ``"Cu"`` -> ("Cu", None, "A"),
    ``"Cu3Au"`` / ``"AuCu3"`` -> ("Cu", "Au", "A3B"), ``"CuAu"`` -> ("Cu", "Au", "AB")."""
    m = _CATALYST.match(name)
    if m is None or (m[3] is None and (m[2] or m[4])) or (m[2] and m[4]):
        raise ValueError(f"catalyst {name!r} is not a composition of the form A, A3B or AB (e.g. Cu, Cu3Au, CuPd)")
    a, b = m[1], m[3]
    bad = [x for x in (a, b) if x is not None and x not in EMT_METALS]
    if bad or a == b:
        raise ValueError(f"catalyst {name!r}: metals must be two different ones of {list(EMT_METALS)}")
    if b is None:
        return a, None, "A"
    if m[4]:  # "AuCu3": the majority metal is written last
        return b, a, "A3B"
    return a, b, "A3B" if m[2] else "AB"


def catalyst_elements(name: str) -> set[str]:
    a, b, _ = parse_catalyst(name)
    return {a} if b is None else {a, b}


def check_element_coverage(catalysts: list[str], ood_catalysts: list[str], adsorbates: list[str],
                           ood_adsorbates: list[str]) -> None:
    """OC20's OOD splits hold compositions absent from training, never elements absent from it: refuse a
    configuration whose held-out catalysts or adsorbates bring an element that no training system has."""
    train_el = set().union(*(catalyst_elements(c) for c in catalysts if c not in ood_catalysts))
    train_el |= {s for a in adsorbates if a not in ood_adsorbates for s, _ in ADSORBATES[a]}
    for kind, names, elements_of in (
            ("ood_alloys", ood_catalysts, catalyst_elements),
            ("ood_adsorbates", ood_adsorbates, lambda a: {s for s, _ in ADSORBATES[a]})):
        for name in names:
            missing = elements_of(name) - train_el
            if missing:
                raise ValueError(f"{kind} entry {name!r} brings {sorted(missing)}, which no training system has: "
                                 "OC20's OOD splits are new compositions of seen elements; add a training "
                                 f"catalyst or adsorbate with {sorted(missing)} or hold out another one")
