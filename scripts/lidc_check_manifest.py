"""Print the figures quoted in data_manifests/README.md: the committed LIDC manifest against
the real LUNA16 tables (nodule match, scan selection, excluded findings, per-reader diameters).

Usage: .venv/bin/python scripts/lidc_check_manifest.py [--jobs 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from nodule.data import lidc
from nodule.paths import REPO_ROOT, cache_dir, luna16_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifests", type=Path, default=REPO_ROOT / "data_manifests")
    parser.add_argument("--luna16", type=Path, default=luna16_dir())
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()

    manifest = lidc.read_manifest(args.manifests)
    reference = pd.read_csv(args.luna16 / "annotations.csv")
    excluded = pd.read_csv(args.luna16 / "annotations_excluded.csv")
    luna_uids = set(pd.read_csv(args.luna16 / "seriesuids.csv", header=None)[0])

    print(lidc.format_summary(lidc.manifest_summary(manifest)))
    result = lidc.match_luna16(manifest.annotations, reference)
    print(result.describe())
    q = [0.01, 0.05, 0.5, 0.95, 0.99]
    ratio = result.pairs["diameter_ratio"].quantile(q).round(3).tolist()
    dz = result.pairs["dz_mm"].quantile(q).round(3).tolist()
    print(f"matched diameter ratio manifest/LUNA16, quantiles {q}: {ratio}")
    print(f"matched |dz| mm, quantiles {q}: {dz}")
    extra = manifest.annotations.drop(index=result.pairs["manifest_index"])
    print("extra nodules:")
    print(extra[["patient_id", "coordZ", "diameter_mm", "n_readers"]].to_string(index=False))

    scans = manifest.scans
    chosen = set(scans.loc[scans["selected"], "seriesuid"])
    print(f"scan selection: {len(chosen)} selected, {len(chosen & luna_uids)} in seriesuids.csv")
    differ = scans[scans["seriesuid"].isin(chosen ^ luna_uids)]
    print(differ[["patient_id", "selected", "reason"]].fillna("").to_string(index=False))

    by_uid = dict(tuple(excluded.groupby("seriesuid")))
    near = 0
    for row in manifest.excluded.itertuples():
        entries = by_uid.get(row.seriesuid)
        if (
            entries is not None
            and (np.abs(entries["coordZ"] - row.coordZ) <= row.slice_spacing_mm).any()
        ):
            near += 1
    print(
        f"excluded findings: {len(manifest.excluded)}, with an annotations_excluded.csv entry "
        f"within one slice in z: {near}"
    )

    # Per reader: LUNA16's excluded list repeats some readers' own marks with a diameter.
    records = [s for s in lidc.load_scans() if s.seriesuid in chosen]
    features = lidc.scan_features(
        records, jobs=args.jobs, cache=cache_dir("lidc", f"scans_v{lidc.CACHE_VERSION}")
    )
    with_diameter = excluded[excluded["diameter_mm"] > 0]
    by_uid = dict(tuple(with_diameter.groupby("seriesuid")))
    n_readers = same_z = same_zd = 0
    for rec, feat in zip(records, features, strict=True):
        entries = by_uid.get(rec.seriesuid)
        for ann in feat["annotations"]:
            n_readers += 1
            if entries is None:
                continue
            dz_all = np.abs(entries["coordZ"].to_numpy() - ann["z_mm"])
            j = int(dz_all.argmin())
            if dz_all[j] < 1e-3:
                same_z += 1
                same_zd += int(abs(entries["diameter_mm"].iloc[j] - ann["diameter_mm"]) < 1e-4)
    print(
        f"reader annotations: {n_readers}; with a LUNA16 excluded entry at the same z (1e-3 mm): "
        f"{same_z}, of which with the same diameter (1e-4 mm): {same_zd}"
    )


if __name__ == "__main__":
    main()
