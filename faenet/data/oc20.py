"""The real OC20 data (IS2RE, S2EF): download registry, fetch + safe extraction, record conversion.

OC20 publishes **md5 only** for its archives (ocp ``docs/core/datasets/oc20.md``; fairchem's
``download_data.py`` checks no hash at all), so ``sha256`` is ``None`` in :data:`OC20_FILES`, with the
reason in ``OC20File.sha256_note``; :func:`fetch_oc20` verifies the md5. Counts and layout: Chanussot et al.,
ACS Catal. 11 (2021) and the ocp ``docs/core/datasets/oc20.md``.

:func:`convert_oc20_record` maps an OC20 LMDB record (float ``atomic_numbers``, ``y_relaxed``, float/int32
``fixed``, ...) to the project schema of ``faenet.data.records``; it leaves project records unchanged, so
``faenet.data.dataset.GraphDataset`` applies it to every record and serves both.
"""

from __future__ import annotations

import lzma
import math
import os
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch_geometric.data import Data

from faenet.data.download import download, safe_extract
from faenet.data.records import validate_record
from faenet.data.store import LmdbReader, write_lmdb
from faenet.graph import radius_graph
from faenet.tasks import CATALYSIS, OC20_VAL_SPLITS

BASE_URL = "https://dl.fbaipublicfiles.com/opencatalystproject/data/"
_NO_SHA = "OC20 publishes md5 only (ocp docs/core/datasets/oc20.md); no sha256 is published"
OC20_PBC = (True, True, True)  # OC20's AtomsToGraphs builds graphs with pbc on in all three directions


@dataclass(frozen=True)
class OC20File:
    """One published OC20 archive."""

    name: str
    task: str
    md5: str
    size: str  # compressed / uncompressed, as published
    sha256: str | None = None
    sha256_note: str = _NO_SHA

    @property
    def url(self) -> str:
        return BASE_URL + self.name


OC20_FILES: dict[str, OC20File] = {f.name.split(".")[0]: f for f in (
    OC20File("is2res_train_val_test_lmdbs.tar.gz", "is2re", "cfc04dd2f87b4102ab2f607240d25fb1", "8.1G / 97G"),
    OC20File("s2ef_train_200K.tar", "s2ef", "f8d0909c2623a393148435dede7d3a46", "344M / 1.7G"),
    OC20File("s2ef_train_2M.tar", "s2ef", "953474cb93f0b08cdc523399f03f7c36", "3.4G / 17G"),
    OC20File("s2ef_train_20M.tar", "s2ef", "863bc983245ffc0285305a1850e19cf7", "34G / 165G"),
    OC20File("s2ef_train_all.tar", "s2ef", "12a7087bfd189a06ccbec9bc7add2bcd", "225G / 1.1T"),
    OC20File("s2ef_val_id.tar", "s2ef", "f57f7f5c1302637940f2cc858e789410", "1.7G / 8.3G"),
    OC20File("s2ef_val_ood_ads.tar", "s2ef", "431ab0d7557a4639605ba8b67793f053", "1.7G / 8.2G"),
    OC20File("s2ef_val_ood_cat.tar", "s2ef", "532d6cd1fe541a0ddb0aa0f99962b7db", "1.7G / 8.3G"),
    OC20File("s2ef_val_ood_both.tar", "s2ef", "5731862978d80502bbf7017d68c2c729", "1.9G / 9.5G"),
    OC20File("s2ef_test_lmdbs.tar.gz", "s2ef", "bcada432482f6e87b24e14b6b744992a", "30G / 415G"),
)}
# Config size name -> archive key ("200k" is published with a capital K).
S2EF_TRAIN = {"200k": "s2ef_train_200K", "2M": "s2ef_train_2M", "20M": "s2ef_train_20M",
              "all": "s2ef_train_all"}
IS2RE_SIZES = ("10k", "100k", "all")


def fetch_oc20(key: str, root: str | os.PathLike, *, keep_archive: bool = True,
               progress: bool = True) -> Path:
    """Download OC20 archive ``key`` (a key of :data:`OC20_FILES`) into ``root``, verify md5, extract there.

    Idempotent: an extraction marker ``root/.<key>.extracted`` skips the work on a second call.
    Returns ``root``.
    """
    if key not in OC20_FILES:
        raise ValueError(f"unknown OC20 archive {key!r}; known: {sorted(OC20_FILES)}")
    f = OC20_FILES[key]
    root = Path(root)
    marker = root / f".{key}.extracted"
    if marker.exists():
        return root
    archive = download(f.url, root / f.name, sha256=f.sha256, md5=f.md5, progress=progress)
    safe_extract(archive, root)
    marker.write_text(f"{f.url} md5={f.md5}\n")
    if not keep_archive:
        archive.unlink()
    return root


# ----------------------------------------------------------------------------------------------------------
# Record conversion
# ----------------------------------------------------------------------------------------------------------

def _scalar(v: Any, name: str) -> float:
    t = torch.as_tensor(v)
    if t.numel() != 1:
        raise ValueError(f"OC20 field {name} has {t.numel()} values, expected one")
    return t.reshape(()).item()


def convert_oc20_record(data: Data, task: str, *, cutoff: float = 6.0, max_num_neighbors: int = 50) -> Data:
    """Map an OC20 LMDB record to the schema of ``faenet.data.records`` (a new ``Data``).

    - ``atomic_numbers`` float -> int64; ``tags``, ``fixed`` -> int64; ``cell`` -> (1, 3, 3) float32;
      ``pbc`` -> (1, 3) bool, ``[True, True, True]`` when absent (as OC20 builds its graphs);
      ``natoms`` -> int; ``sid``/``fid`` (int or LongTensor([x])) -> int.
    - IS2RE: ``y = y_relaxed`` (already adsorption-referenced); S2EF: ``y = y`` (or fairchem's ``energy``),
      ``force = force`` (or ``forces``), float32.
    - ``edge_index``/``cell_offsets`` are kept (int64); records without them (S2EF LMDBs built without
      ``--get-edges``) get a radius graph (``cutoff`` Å, ``max_num_neighbors``), as OC20's AtomsToGraphs.
    Records already in the project schema pass through unchanged in value.
    """
    if task not in CATALYSIS:
        raise ValueError(f"task {task!r} is not one of {CATALYSIS}")
    keys = set(data.keys())
    pos = torch.as_tensor(data.pos, dtype=torch.float32)
    n = pos.shape[0]
    z = torch.as_tensor(data.atomic_numbers)
    out: dict[str, Any] = {
        "pos": pos,
        "atomic_numbers": (z.round() if z.is_floating_point() else z).long().reshape(n),
        "natoms": int(_scalar(data.natoms, "natoms")) if "natoms" in keys else n,
        "tags": torch.as_tensor(data.tags).long().reshape(n) if "tags" in keys
        else torch.zeros(n, dtype=torch.long),
        "fixed": torch.as_tensor(data.fixed).long().reshape(n) if "fixed" in keys
        else torch.zeros(n, dtype=torch.long),
        "cell": torch.as_tensor(data.cell, dtype=torch.float32).reshape(1, 3, 3),
        "pbc": torch.as_tensor(data.pbc, dtype=torch.bool).reshape(1, 3) if "pbc" in keys
        else torch.tensor([OC20_PBC]),
    }
    if "edge_index" in keys and "cell_offsets" in keys:
        out["edge_index"] = torch.as_tensor(data.edge_index).long()
        out["cell_offsets"] = torch.as_tensor(data.cell_offsets).long()
    else:
        out["edge_index"], out["cell_offsets"] = radius_graph(pos.double(), cutoff, max_num_neighbors,
                                                              out["cell"][0].double(), out["pbc"][0])
    if task == "is2re":
        src = "y_relaxed" if "y_relaxed" in keys else "y" if "y" in keys else None
        if src is None:
            raise ValueError("OC20 IS2RE record has no y_relaxed (the OC20 test LMDBs hide their labels); "
                             "use a train/val split")
        out["y"] = float(_scalar(data[src], src))
    else:
        src = "y" if "y" in keys else "energy" if "energy" in keys else None
        fsrc = "force" if "force" in keys else "forces" if "forces" in keys else None
        if src is None or fsrc is None:
            raise ValueError(f"OC20 S2EF record lacks energy or forces (has {sorted(keys)}); "
                             "the S2EF test LMDBs hide their labels")
        out["y"] = float(_scalar(data[src], src))
        out["force"] = torch.as_tensor(data[fsrc], dtype=torch.float32).reshape(n, 3)
    for k in ("sid", "fid"):
        if k in keys and data[k] is not None:
            out[k] = int(_scalar(data[k], k))
    return Data(**out)


# ----------------------------------------------------------------------------------------------------------
# S2EF: raw extxyz/txt -> records (as OC20's preprocess_ef.py --ref-energy --get-edges)
# ----------------------------------------------------------------------------------------------------------

def _open_text(path: Path):
    return lzma.open(path, "rt") if path.suffix == ".xz" else open(path)


def read_s2ef_frames(extxyz: str | os.PathLike, txt: str | os.PathLike, *, cutoff: float = 6.0,
                     max_num_neighbors: int = 50, ref_energy: bool = True) -> Iterator[Data]:
    """Records of one OC20 S2EF ``<k>.extxyz[.xz]`` + ``<k>.txt[.xz]`` pair, in file order.

    ``y`` = energy minus the ``.txt`` reference energy when ``ref_energy`` (OC20's ``--ref-energy``);
    ``force`` = stored (unconstrained) forces; OC20 tags; ``fixed`` from ``move_mask``; ``sid``/``fid`` from
    ``random<sid>,frame<fid>,<ref>``.
    """
    import ase.io

    extxyz, txt = Path(extxyz), Path(txt)
    with _open_text(txt) as fh:
        meta = [line.strip().split(",") for line in fh if line.strip()]
    with _open_text(extxyz) as fh:
        frames = ase.io.read(fh, index=":", format="extxyz")
    if len(frames) != len(meta):
        raise ValueError(f"{extxyz} holds {len(frames)} frames but {txt} has {len(meta)} lines")
    for atoms, (sid, fid, ref) in zip(frames, meta, strict=True):
        n = len(atoms)
        fixed = torch.zeros(n, dtype=torch.long)
        for c in atoms.constraints:
            fixed[torch.as_tensor(c.get_indices(), dtype=torch.long)] = 1
        e = float(atoms.get_potential_energy())
        rec = Data(pos=torch.tensor(atoms.get_positions(), dtype=torch.float32),
                   atomic_numbers=torch.tensor(atoms.get_atomic_numbers(), dtype=torch.long), natoms=n,
                   tags=torch.tensor(atoms.get_tags(), dtype=torch.long), fixed=fixed,
                   cell=torch.tensor(atoms.get_cell().array, dtype=torch.float32).reshape(1, 3, 3),
                   pbc=torch.tensor([OC20_PBC]),
                   y=e - float(ref) if ref_energy else e,
                   force=torch.tensor(atoms.get_forces(apply_constraint=False), dtype=torch.float32),
                   sid=int(sid.replace("random", "")), fid=int(fid.replace("frame", "")))
        rec.edge_index, rec.cell_offsets = radius_graph(rec.pos.double(), cutoff, max_num_neighbors,
                                                        rec.cell[0].double(), rec.pbc[0])
        yield rec


def s2ef_folder_records(folder: str | os.PathLike, **kwargs: Any) -> Iterator[Data]:
    """Records of every ``<k>.extxyz[.xz]`` (with its ``<k>.txt[.xz]``) under ``folder``, k ascending."""
    folder = Path(folder)
    pairs = []
    for p in folder.rglob("*.extxyz*"):
        stem = p.name.split(".extxyz")[0]
        cands = (p.with_name(stem + ".txt.xz"), p.with_name(stem + ".txt"))
        txt = next((q for q in cands if q.exists()), None)
        if txt is None:
            raise FileNotFoundError(f"{p} has no matching {stem}.txt[.xz] beside it")
        pairs.append((int(stem) if stem.isdigit() else stem, p, txt))
    if not pairs:
        raise FileNotFoundError(f"no *.extxyz[.xz] files under {folder}")
    for _, p, txt in sorted(pairs, key=lambda t: (isinstance(t[0], str), t[0])):
        yield from read_s2ef_frames(p, txt, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# Whole preparation (pipeline stage `fetch` with data.source = oc20)
# ----------------------------------------------------------------------------------------------------------

def _find_is2re(root: Path, size: str, split: str) -> Path | None:
    sub = Path("is2re") / (size if split == "train" else "all") / split / "data.lmdb"
    for cand in (root / sub, root / "is2res_train_val_test_lmdbs" / "data" / sub, root / "data" / sub):
        if cand.is_file():
            return cand
    return None


def _converted(reader: LmdbReader, task: str, stats: dict[str, list[float]]) -> Iterator[Data]:
    for i in range(len(reader)):
        rec = convert_oc20_record(reader[i], task)
        validate_record(rec, f"{reader.path}[{i}]")
        stats.setdefault("y", []).append(rec.y)
        yield rec


def prepare_oc20(oc20_dir: str | os.PathLike, out_dir: str | os.PathLike, *, is2re_size: str = "all",
                 s2ef_size: str = "2M", tasks: tuple[str, ...] = CATALYSIS, download_missing: bool = True,
                 progress: bool = True) -> dict[str, Any]:
    """Fetch (if missing) and convert OC20 to ``out_dir/{is2re,s2ef}/<split>.lmdb`` in the project schema.

    IS2RE: the released LMDBs (train of ``is2re_size``, the four val splits; test labels are hidden).
    S2EF: the train archive of ``s2ef_size`` and the four val archives, preprocessed from extxyz with
    referenced energies and 6 Å / 50-neighbour graphs. Returns a summary (counts, content hashes).
    """
    from faenet.data.dataset import content_hash

    if is2re_size not in IS2RE_SIZES:
        raise ValueError(f"is2re_size {is2re_size!r} is not one of {IS2RE_SIZES}")
    if s2ef_size not in S2EF_TRAIN:
        raise ValueError(f"s2ef_size {s2ef_size!r} is not one of {sorted(S2EF_TRAIN)}")
    root, out = Path(oc20_dir), Path(out_dir)
    counts: dict[str, dict[str, int]] = {}
    energy: dict[str, dict[str, float]] = {}
    if "is2re" in tasks:
        for split in ("train", *OC20_VAL_SPLITS):
            src = _find_is2re(root, is2re_size, split)
            if src is None:
                if not download_missing:
                    url = OC20_FILES["is2res_train_val_test_lmdbs"].url
                    raise FileNotFoundError(f"OC20 IS2RE {split} LMDB not found under {root}; download "
                                            f"{url} or allow downloads")
                fetch_oc20("is2res_train_val_test_lmdbs", root, progress=progress)
                src = _find_is2re(root, is2re_size, split)
                if src is None:
                    raise FileNotFoundError(f"IS2RE {split} LMDB missing from the archive extracted "
                                            f"in {root}")
            stats: dict[str, list[float]] = {}
            counts.setdefault("is2re", {})[split] = write_lmdb(out / "is2re" / f"{split}.lmdb",
                                                               _converted(LmdbReader(src), "is2re", stats))
            energy.setdefault("is2re", {})[split] = _mean(stats.get("y", []))
    if "s2ef" in tasks:
        for split, key in (("train", S2EF_TRAIN[s2ef_size]), *((s, f"s2ef_{s}") for s in OC20_VAL_SPLITS)):
            folder = root / key
            if not folder.is_dir():
                if not download_missing:
                    raise FileNotFoundError(f"OC20 S2EF folder {folder} not found; download "
                                            f"{OC20_FILES[key].url} or allow downloads")
                fetch_oc20(key, root, progress=progress)
            ys: list[float] = []

            def _recs(folder: Path = folder, ys: list[float] = ys) -> Iterator[Data]:
                for rec in s2ef_folder_records(folder):
                    ys.append(rec.y)
                    yield rec

            counts.setdefault("s2ef", {})[split] = write_lmdb(out / "s2ef" / f"{split}.lmdb", _recs())
            energy.setdefault("s2ef", {})[split] = _mean(ys)
    hashes = {t: content_hash(out / t) for t in counts}
    return {"source": "oc20", "counts": counts, "energy_mean": energy, "content_hashes": hashes,
            "is2re_size": is2re_size, "s2ef_size": s2ef_size, "checksums": "md5 (OC20 publishes no sha256)"}


def _mean(v: list[float]) -> float:
    return statistics.fmean(v) if v else math.nan


def data_card_markdown(summary: dict[str, Any]) -> str:
    """Data card of the prepared OC20 data (counts per split, mean energy, content hashes)."""
    lines = ["# Data card: OC20 (real)", "",
             f"IS2RE size `{summary.get('is2re_size')}`, S2EF size `{summary.get('s2ef_size')}`; archives "
             "verified by md5 (OC20 publishes no sha256).", "",
             "| task | split | records | mean y (eV) |", "|---|---|---|---|"]
    for task, per in summary.get("counts", {}).items():
        for split, n in per.items():
            lines.append(f"| {task} | {split} | {n} | {summary['energy_mean'][task][split]:.4f} |")
    lines += ["", "| task | content hash (sha256) |", "|---|---|"]
    lines += [f"| {t} | `{h}` |" for t, h in summary.get("content_hashes", {}).items()]
    return "\n".join(lines) + "\n"
