"""Atom embeddings of FAENet's embedding block (Sec. 4, App. B.1): atomic number, period, group, tag and
a fixed table of mendeleev physical properties, concatenated per atom.

Physical properties (App. B.1), one column each, rows indexed by Z:
atomic radius, atomic volume, density, dipole polarizability, electron affinity, Allen electronegativity,
van der Waals radius, metallic radius, metallic radius (C12), covalent radii (Pyykkö double, triple,
single) and the first and second ionisation energies: the 14 columns of the official code, same order.

Normalisation and missing values (as the official ``PhysEmbedding(short=False)``):

1. each column is z-scored with the mean and sample std (ddof=1, NaN skipped) over Z = 1..85;
2. columns with ``int(85 / 2) = 42`` or more NaN over Z = 1..85 are dropped (none are, with mendeleev 1.3.0);
3. remaining NaN are filled with the column mean, which is 0 after z-scoring.

So every column has exactly zero mean over Z = 1..85. Rows Z = 86..100 use the same statistics (the
official table stops at 85 and crashes beyond). Row 0 is all zeros (no element).

Differences forced by mendeleev 1.3.0 (the official pin is 0.12.1):
- ``atomic_volume`` is no longer a column: it is recomputed as ``atomic_weight / density`` (cm^3/mol,
  mendeleev's old definition). 0.12.1 had 2 NaN in that column over Z <= 85; the recomputed one has none.
- ``fetch_ionization_energies`` fails under pandas 3, so IE1 and IE2 come from
  ``fetch_table("ionizationenergies")`` rows with ``ion_charge`` 0 and 1 (eV).

Period (1..7) and group (1..18; 19 for the lanthanides/actinides, which mendeleev leaves without a
group) index embeddings of sizes 8 and 20, one larger than the official 7 and 19 that crash on period 7
and on the f-block. mendeleev takes about a second to import and query, so the table is computed once per
process (``functools.lru_cache``) and, when the caller gives ``cache_path``, stored in a small ``.npz``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

#: Largest supported atomic number (fermium); Z outside 1..MAX_ATOMIC_NUMBER raises ``ValueError``.
MAX_ATOMIC_NUMBER = 100
#: Elements whose statistics define the z-scoring (as the official code).
NORMALISATION_MAX_Z = 85
PERIOD_SIZE = 8  # periods 1..7, index 0 unused
GROUP_SIZE = 20  # groups 1..18, 19 = f-block, index 0 unused
F_BLOCK_GROUP = 19
#: OC20 tags 0 (sub-surface), 1 (surface), 2 (adsorbate); molecules carry -1, mapped to this 4th index.
NUM_TAGS = 4
MOLECULE_TAG_INDEX = 3

PROPERTY_NAMES = (
    "atomic_radius", "atomic_volume", "density", "dipole_polarizability", "electron_affinity", "en_allen",
    "vdw_radius", "metallic_radius", "metallic_radius_c12", "covalent_radius_pyykko_double",
    "covalent_radius_pyykko_triple", "covalent_radius_pyykko", "IE1", "IE2",
)
_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ElementTable:
    """Per-element lookup tables, row index = Z (row 0 = no element)."""

    properties: np.ndarray  # (MAX_ATOMIC_NUMBER + 1, P) float64, z-scored, NaN filled with 0
    period: np.ndarray  # (MAX_ATOMIC_NUMBER + 1,) int64 in 1..7 (0 for row 0)
    group: np.ndarray  # (MAX_ATOMIC_NUMBER + 1,) int64 in 1..19 (0 for row 0)
    names: tuple[str, ...]  # the P kept property columns

    def __post_init__(self) -> None:  # shared by every caller through the cache: make it read-only
        for arr in (self.properties, self.period, self.group):
            arr.setflags(write=False)

    @property
    def n_properties(self) -> int:
        return len(self.names)


def _compute_element_table() -> ElementTable:
    """Query mendeleev and build the normalised table (about 1 s)."""
    from mendeleev.fetch import fetch_table

    df = fetch_table("elements").set_index("atomic_number").sort_index()
    df["atomic_volume"] = df["atomic_weight"] / df["density"]
    ie = fetch_table("ionizationenergies")
    ie = ie[ie["ion_charge"].isin([0, 1])].pivot(index="atomic_number", columns="ion_charge",
                                                   values="ionization_energy")
    df["IE1"], df["IE2"] = ie[0], ie[1]
    zs = np.arange(1, MAX_ATOMIC_NUMBER + 1)
    raw = df.reindex(zs)[list(PROPERTY_NAMES)].astype(float)
    ref = raw.loc[:NORMALISATION_MAX_Z]
    z_scored = (raw - ref.mean()) / ref.std(ddof=1)
    keep = [c for c in PROPERTY_NAMES if ref[c].isna().sum() < NORMALISATION_MAX_Z // 2]
    values = z_scored[keep].fillna(0.0).to_numpy(dtype=np.float64)

    period = df["period"].reindex(zs).to_numpy()
    group = df["group_id"].reindex(zs).fillna(F_BLOCK_GROUP).to_numpy()
    if np.isnan(period).any() or not (1 <= period.min() and period.max() < PERIOD_SIZE):
        raise RuntimeError("mendeleev returned periods outside 1..7; the element table cannot be built")
    if not (1 <= group.min() and group.max() < GROUP_SIZE):
        raise RuntimeError("mendeleev returned groups outside 1..19; the element table cannot be built")
    zero = np.zeros((1, values.shape[1]))
    return ElementTable(
        properties=np.concatenate([zero, values]),
        period=np.concatenate([[0], period]).astype(np.int64),
        group=np.concatenate([[0], group]).astype(np.int64),
        names=tuple(keep),
    )


def _mendeleev_version() -> str:
    try:
        return importlib.metadata.version("mendeleev")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


#: The table as mendeleev computes it, shipped with the package (``python -m faenet.embedding`` rewrites it):
#: loading it takes milliseconds where the mendeleev queries take about 1 s in every process that builds a
#: FAENet. Used only when its mendeleev version and schema match the installed ones (tested to equal a live
#: computation), else the table is computed.
PACKAGED_TABLE = Path(__file__).with_name("element_table.npz")


@functools.lru_cache(maxsize=4)
def element_table(cache_path: str | None = None) -> ElementTable:
    """The normalised element table, computed once per process.

    ``cache_path``: optional ``.npz`` file. If it exists and was written by the same mendeleev version and
    table schema it is loaded (no mendeleev import); otherwise the table is computed and written there
    atomically. Without it, the packaged table (``PACKAGED_TABLE``) is used when it matches.
    """
    version = f"{_SCHEMA_VERSION}:{_mendeleev_version()}:{MAX_ATOMIC_NUMBER}"
    if cache_path is not None and (table := _load_table(Path(cache_path), version)) is not None:
        return table
    table = _load_table(PACKAGED_TABLE, version) or _compute_element_table()
    if cache_path is not None:
        path = Path(cache_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, properties=table.properties, period=table.period, group=table.group,
                     names=np.array(table.names), version=np.array(version))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    return table


def _load_table(path: Path, version: str) -> ElementTable | None:
    """The table stored at ``path`` if it exists and was written for ``version``, else None."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as f:
        if str(f["version"]) != version:
            return None
        return ElementTable(f["properties"].copy(), f["period"].copy(), f["group"].copy(),
                            tuple(str(n) for n in f["names"]))


def check_atomic_numbers(z: Tensor) -> None:
    """Raise ``ValueError`` if any Z is outside 1..MAX_ATOMIC_NUMBER."""
    if z.numel() and (int(z.min()) < 1 or int(z.max()) > MAX_ATOMIC_NUMBER):
        bad = z[(z < 1) | (z > MAX_ATOMIC_NUMBER)].unique().tolist()
        raise ValueError(f"atomic numbers {bad} are not supported: FAENet embeds Z = 1..{MAX_ATOMIC_NUMBER}")


class AtomEmbedding(nn.Module):
    """Concatenated per-atom lookups of the embedding block (Sec. 4, App. B.1), width ``hidden_channels``.

    ``[ z-embedding | tag-embedding | properties (or Linear(properties)) | period-emb | group-emb ]``.
    The z-embedding takes the remaining width ``hidden_channels - tag - phys - 2 * pg`` (must be > 0).
    ``tag_hidden_channels=0`` disables tags, ``pg_hidden_channels=0`` period and group, ``phys_embeds=False``
    the properties; ``phys_hidden_channels > 0`` maps the properties through a learnt linear layer, otherwise
    the raw (fixed) z-scored values are used. Tags -1 (molecules) use their own 4th embedding row.
    """

    def __init__(self, hidden_channels: int, tag_hidden_channels: int = 0, pg_hidden_channels: int = 0,
                 phys_embeds: bool = True, phys_hidden_channels: int = 0,
                 element_table_cache: str | None = None) -> None:
        super().__init__()
        widths = {"tag_hidden_channels": tag_hidden_channels, "pg_hidden_channels": pg_hidden_channels,
                  "phys_hidden_channels": phys_hidden_channels}
        for name, v in widths.items():
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        self.use_tag = tag_hidden_channels > 0
        self.use_pg = pg_hidden_channels > 0
        self.use_phys = bool(phys_embeds)
        self.use_phys_lin = self.use_phys and phys_hidden_channels > 0
        table = element_table(element_table_cache) if (self.use_phys or self.use_pg) else None
        phys_width = 0
        if self.use_phys:
            props = torch.tensor(table.properties, dtype=torch.get_default_dtype())
            self.register_buffer("properties", props)
            phys_width = phys_hidden_channels if self.use_phys_lin else table.n_properties
            if self.use_phys_lin:
                self.phys_lin = nn.Linear(table.n_properties, phys_hidden_channels)
        if self.use_pg:
            self.register_buffer("period", torch.tensor(table.period))
            self.register_buffer("group", torch.tensor(table.group))
            self.period_embedding = nn.Embedding(PERIOD_SIZE, pg_hidden_channels)
            self.group_embedding = nn.Embedding(GROUP_SIZE, pg_hidden_channels)
        if self.use_tag:
            self.tag_embedding = nn.Embedding(NUM_TAGS, tag_hidden_channels)
        z_width = hidden_channels - tag_hidden_channels - phys_width - 2 * pg_hidden_channels
        if z_width <= 0:
            raise ValueError(
                f"hidden_channels={hidden_channels} leaves no room for the atomic-number embedding after "
                f"tag ({tag_hidden_channels}), properties ({phys_width}) and 2 x period/group "
                f"({pg_hidden_channels})")
        self.z_embedding = nn.Embedding(MAX_ATOMIC_NUMBER + 1, z_width)
        self.out_channels = hidden_channels

    def forward(self, z: Tensor, tags: Tensor | None = None) -> Tensor:
        """(N,) atomic numbers (and (N,) tags in {-1, 0, 1, 2}) -> (N, hidden_channels)."""
        check_atomic_numbers(z)
        parts = [self.z_embedding(z)]
        if self.use_tag:
            if tags is None:
                raise ValueError("tag_hidden_channels > 0 but the data has no `tags`; "
                                 "set tag_hidden_channels=0")
            if tags.numel() and (int(tags.min()) < -1 or int(tags.max()) > 2):
                raise ValueError(f"tags must be in {{-1, 0, 1, 2}}, got {tags.unique().tolist()}")
            parts.append(self.tag_embedding(torch.where(tags < 0, MOLECULE_TAG_INDEX, tags)))
        if self.use_phys:
            props = self.properties[z]
            parts.append(self.phys_lin(props) if self.use_phys_lin else props)
        if self.use_pg:
            parts += [self.period_embedding(self.period[z]), self.group_embedding(self.group[z])]
        return torch.cat(parts, dim=-1)


if __name__ == "__main__":  # rewrite the packaged table from the installed mendeleev
    PACKAGED_TABLE.unlink(missing_ok=True)
    element_table.cache_clear()
    element_table(str(PACKAGED_TABLE))
    print(f"wrote {PACKAGED_TABLE}")
