"""The split description: which data trains, validates and tests which learned part.

One versioned YAML file (``configs/splits/default.yaml``) names the real scans and their
side (test-only or training side), the LIDC patients reserved from the shape bank, every
data set with the role of each of its subsets (``train``, ``val``, ``test``,
``crossval``) and what each learned part trains on. Every data set is defined by the
command that makes it (``nodule synth`` seed, scans, preset and generator version; ``nodule insert``
background, seed and the part of the shape bank its nodules come from) or by the files it is found in, so the SeriesInstanceUID of every
scan can be computed without the data (:meth:`Split.scans`). :func:`check_split` reports
a scan in two data sets, a patient on two sides (or in two cross-validation folds), a
learned part told to train on data that is not training data, real scans used on the
wrong side, and inserted nodule shapes from the wrong part of the shape bank (held-out
``insert`` shapes in training data, ``synth`` training shapes in test data); :func:`leaked_scans` tells which scans a learned part saw in training that a
split uses to validate or test.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import pandas as pd

from nodule.paths import REPO_ROOT, data_dir

Role = Literal["train", "val", "test", "crossval"]
ROLES: tuple[Role, ...] = get_args(Role)
Side = Literal["train", "test"]
SourceKind = Literal["synth", "insert", "real", "luna16"]
SOURCE_KINDS: tuple[SourceKind, ...] = get_args(SourceKind)
N_SUBSETS = 10
DEFAULT_SPLIT = REPO_ROOT / "configs" / "splits" / "default.yaml"
"""The project's split description."""
SHAPE_PARTS = ("insert", "synth")
"""Parts of the shape bank an insert data set draws from: ``insert`` (held out for test
sets) or ``synth`` (the training part, as ``nodule synth`` uses)."""
SCAN_COLUMNS = ["dataset", "seriesuid", "subset", "role", "patient"]

_RANGE = re.compile(r"^(?P<prefix>.*?)(?P<a>\d+)\.\.(?P=prefix)(?P<b>\d+)$")


class SplitError(ValueError):
    """A split description that is malformed or breaks a rule; the message names the file."""


def expand_patients(value: str | Sequence[str] | None) -> list[str]:
    """Patient ids from a list or a range ``LIDC-IDRI-0001..LIDC-IDRI-0010`` (zero padding kept)."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        match = _RANGE.match(str(item).strip())
        if match is None:
            out.append(str(item).strip())
            continue
        a, b, width = int(match["a"]), int(match["b"]), len(match["a"])
        out.extend(f"{match['prefix']}{n:0{width}d}" for n in range(a, b + 1))
    return out


@dataclass(frozen=True)
class RealScan:
    """A real CT of ``$NODULE_DATA/real_ct/<name>``.

    Attributes:
        name: its folder name.
        side: ``test`` (never trained on) or ``train``.
        seriesuid: its SeriesInstanceUID.
        patient: the public pseudonym of its patient.
        findings: where its reference standard lies: ``luna16`` (the real LUNA16 tables)
            or a known-findings CSV relative to the repository.
    """

    name: str
    side: Side
    seriesuid: str
    patient: str
    findings: str = ""

    @property
    def path(self) -> Path:
        """The scan's folder under ``$NODULE_DATA``."""
        return data_dir() / "real_ct" / self.name


@dataclass(frozen=True)
class DataSet:
    """One data set of the split.

    Attributes:
        name: its name (the default folder name under ``$NODULE_CACHE/sets``).
        kind: ``synth``, ``insert``, ``real`` or ``luna16``.
        params: the making command's parameters (synth: seed, scans, preset; insert:
            background, seed, scans; real: the real scans' names; luna16:
            exclude_patients, move_patients).
        roles: subset -> role.
    """

    name: str
    kind: SourceKind
    params: Mapping[str, Any]
    roles: Mapping[int, Role]

    def folds(self, role: Role) -> list[int]:
        """The subsets with this role, ascending."""
        return sorted(k for k, r in self.roles.items() if r == role)

    def role_of(self, subset: int) -> Role | None:
        """The role of a subset (None: not used)."""
        return self.roles.get(int(subset))


@dataclass(frozen=True)
class Split:
    """A parsed split description (see the module docstring and ``configs/splits/default.yaml``).

    Attributes:
        name: its name.
        version: its version.
        path: the file it was read from.
        real_scans: folder name -> real scan.
        reserved_patients: LIDC patients left out of every part of the shape bank.
        insert_fraction: share of the other LIDC patients whose shapes are held out for
            test-set insertion.
        datasets: name -> data set.
        learners: learned part -> data sets it trains on (their ``train`` subsets).
    """

    name: str
    version: int
    path: Path
    real_scans: Mapping[str, RealScan]
    reserved_patients: frozenset[str]
    insert_fraction: float
    datasets: Mapping[str, DataSet]
    learners: Mapping[str, tuple[str, ...]]
    _scans: dict[str, pd.DataFrame] = field(default_factory=dict, compare=False, repr=False)

    @property
    def tag(self) -> str:
        """``name@vN`` (recorded by what the split shaped)."""
        return f"{self.name}@v{self.version}"

    def dataset(self, name: str) -> DataSet:
        """A data set by name.

        Raises:
            SplitError: no such data set.
        """
        if name not in self.datasets:
            raise SplitError(
                f"{self.path}: no data set {name!r}; it names {', '.join(sorted(self.datasets))}"
            )
        return self.datasets[name]

    def real_scan(self, name_or_uid: str) -> RealScan:
        """A real scan by folder name or SeriesInstanceUID.

        Raises:
            SplitError: not a real scan of this split.
        """
        for scan in self.real_scans.values():
            if name_or_uid in (scan.name, scan.seriesuid):
                return scan
        raise SplitError(f"{self.path}: {name_or_uid!r} is not one of its real scans")

    def scans(self, dataset: str) -> pd.DataFrame:
        """Every scan of a data set, computed from its definition (no data needed but
        LUNA16's own lists): columns :data:`SCAN_COLUMNS`."""
        if dataset not in self._scans:
            self._scans[dataset] = _scans_of(self, self.dataset(dataset))
        return self._scans[dataset].copy()

    def scan_table(self) -> pd.DataFrame:
        """:meth:`scans` of every data set, one table."""
        frames = [self.scans(name) for name in self.datasets]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SCAN_COLUMNS)

    def training_scans(self, learner: str) -> pd.DataFrame:
        """The scans a learned part trains on: the ``train`` subsets of its data sets."""
        if learner not in self.learners:
            raise SplitError(f"{self.path}: no learner {learner!r}; it names {sorted(self.learners)}")
        frames = [self.scans(name) for name in self.learners[learner]]
        table = pd.concat(frames, ignore_index=True)
        return table[table["role"] == "train"].reset_index(drop=True)

    def fingerprint(self) -> str:
        """A hash of the parsed description (what decides every role)."""
        payload = {
            "name": self.name,
            "version": self.version,
            "real_scans": {k: vars(v) for k, v in sorted(self.real_scans.items())},
            "reserved": sorted(self.reserved_patients),
            "insert_fraction": self.insert_fraction,
            "datasets": {
                k: {"kind": d.kind, "params": d.params, "roles": {str(s): r for s, r in sorted(d.roles.items())}}
                for k, d in sorted(self.datasets.items())
            },
            "learners": {k: list(v) for k, v in sorted(self.learners.items())},
        }
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- parsing


def _roles(path: Path, name: str, raw: Any) -> dict[int, Role]:
    if not isinstance(raw, Mapping) or not raw:
        raise SplitError(f"{path}: data set {name!r} needs roles (e.g. {{train: [0, 1], test: [9]}})")
    out: dict[int, Role] = {}
    for role, subsets in raw.items():
        if role not in ROLES:
            raise SplitError(f"{path}: data set {name!r}: unknown role {role!r} (use {', '.join(ROLES)})")
        ks = list(range(N_SUBSETS)) if subsets == "all" else subsets
        if not isinstance(ks, list) or not all(isinstance(k, int) and 0 <= k < N_SUBSETS for k in ks):
            raise SplitError(f"{path}: data set {name!r}: role {role!r} needs 'all' or subsets 0-9, got {subsets!r}")
        for k in ks:
            if k in out:
                raise SplitError(f"{path}: data set {name!r}: subset {k} is both {out[k]} and {role}")
            out[k] = role
    return out


def parse_split(raw: Mapping[str, Any], path: Path) -> Split:
    """Build a :class:`Split` from the YAML content ``raw`` of ``path``.

    Raises:
        SplitError: a missing or malformed entry, naming the file.
    """
    if not isinstance(raw, Mapping):
        raise SplitError(f"{path}: not a split description (a YAML mapping)")
    for key in ("name", "version", "datasets"):
        if key not in raw:
            raise SplitError(f"{path}: missing {key!r}")
    real: dict[str, RealScan] = {}
    for name, entry in (raw.get("real_scans") or {}).items():
        if entry.get("side") not in get_args(Side):
            raise SplitError(f"{path}: real scan {name!r}: side must be train or test, got {entry.get('side')!r}")
        for key in ("seriesuid", "patient"):
            if not entry.get(key):
                raise SplitError(f"{path}: real scan {name!r}: missing {key!r}")
        real[name] = RealScan(
            name=name,
            side=entry["side"],
            seriesuid=str(entry["seriesuid"]),
            patient=str(entry["patient"]),
            findings=str(entry.get("findings", "")),
        )
    datasets: dict[str, DataSet] = {}
    for name, entry in raw["datasets"].items():
        kinds = [k for k in SOURCE_KINDS if k in entry]
        if len(kinds) != 1:
            raise SplitError(f"{path}: data set {name!r} needs exactly one of {', '.join(SOURCE_KINDS)}")
        kind = kinds[0]
        params = entry[kind] if entry[kind] is not None else {}
        if kind == "real":
            params = {"scans": list(params)}
            unknown = [s for s in params["scans"] if s not in real]
            if unknown:
                raise SplitError(f"{path}: data set {name!r}: unknown real scans {unknown}")
        elif kind == "insert" and params.get("background") not in real:
            raise SplitError(
                f"{path}: data set {name!r}: background {params.get('background')!r} is not a real scan of the split"
            )
        if kind == "insert" and params.get("shapes", SHAPE_PARTS[0]) not in SHAPE_PARTS:
            raise SplitError(
                f"{path}: data set {name!r}: shapes must be one of {SHAPE_PARTS}, got {params.get('shapes')!r}"
            )
        if kind == "synth" and not re.fullmatch(r"\d+\.\d+\.\d+", str(params.get("generator", "0.0.0"))):
            raise SplitError(f"{path}: data set {name!r}: generator must be a version such as 0.1.0, got {params.get('generator')!r}")
        for key in {"synth": ("seed", "scans", "preset"), "insert": ("seed", "scans")}.get(kind, ()):
            if key not in params:
                raise SplitError(f"{path}: data set {name!r}: {kind} needs {key!r}")
        datasets[name] = DataSet(name, kind, dict(params), _roles(path, name, entry.get("roles")))
    learners: dict[str, tuple[str, ...]] = {}
    for learner, entry in (raw.get("learners") or {}).items():
        names = tuple((entry or {}).get("train", []))
        unknown = [n for n in names if n not in datasets]
        if unknown:
            raise SplitError(f"{path}: learner {learner!r} trains on unknown data sets {unknown}")
        learners[learner] = names
    bank = raw.get("shape_bank") or {}
    return Split(
        name=str(raw["name"]),
        version=int(raw["version"]),
        path=path,
        real_scans=real,
        reserved_patients=frozenset(expand_patients(bank.get("reserved_patients"))),
        insert_fraction=float(bank.get("insert_fraction", 0.2)),
        datasets=datasets,
        learners=learners,
    )


_CACHE: dict[Path, tuple[float, Split]] = {}


def load_split(path: str | Path | None = None) -> Split:
    """Read a split description (default :data:`DEFAULT_SPLIT`); cached per file and mtime.

    Raises:
        FileNotFoundError: no such file.
        SplitError: malformed.
    """
    import yaml

    p = Path(path).expanduser().resolve() if path is not None else DEFAULT_SPLIT
    if not p.is_file():
        raise FileNotFoundError(f"no split description at {p}")
    mtime = p.stat().st_mtime
    cached = _CACHE.get(p)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as error:
        raise SplitError(f"{p}: not valid YAML ({error})") from error
    split = parse_split(raw, p)
    _CACHE[p] = (mtime, split)
    return split


# --------------------------------------------------------------------------- scans


def _frame(dataset: DataSet, uids: Sequence[str], subsets: Sequence[int], patients: Sequence[str]) -> pd.DataFrame:
    table = pd.DataFrame({"dataset": dataset.name, "seriesuid": list(uids), "subset": list(subsets), "patient": list(patients)})
    table["subset"] = table["subset"].astype(int)
    table["role"] = [dataset.role_of(k) for k in table["subset"]]
    return table[SCAN_COLUMNS]


def generator_version(dataset: DataSet) -> str:
    """The ``nodule synth`` generator version a synthetic data set is made with: its
    ``generator`` parameter (a set made by an earlier generator keeps its scans, whose
    SeriesInstanceUIDs name that version), else the current one."""
    from nodule.data.phantom import GENERATOR_VERSION

    return str(dataset.params.get("generator", GENERATOR_VERSION))


def _scans_of(split: Split, dataset: DataSet) -> pd.DataFrame:
    p = dataset.params
    if dataset.kind == "synth":
        from nodule.data.phantom import default_series_uid

        n, seed, preset = int(p["scans"]), int(p["seed"]), str(p["preset"])
        uids = [default_series_uid(seed, i, preset, generator_version(dataset)) for i in range(n)]
        patients = [f"phantom:{preset}:{seed}:{i}" for i in range(n)]  # a phantom is its own patient
        return _frame(dataset, uids, [i % N_SUBSETS for i in range(n)], patients)
    if dataset.kind == "insert":
        from nodule.data.insert import derived_uid

        background = split.real_scans[str(p["background"])]
        n, seed = int(p["scans"]), int(p["seed"])
        uids = [derived_uid("nodule-insert", background.seriesuid, seed, i) for i in range(n)]
        return _frame(dataset, uids, [i % N_SUBSETS for i in range(n)], [background.patient] * n)
    if dataset.kind == "real":
        scans = [split.real_scans[s] for s in p["scans"]]
        return _frame(
            dataset, [s.seriesuid for s in scans], [i % N_SUBSETS for i in range(len(scans))], [s.patient for s in scans]
        )
    return _luna16_scans(dataset)


def _luna16_scans(dataset: DataSet) -> pd.DataFrame:
    """The LUNA16 scans by subset, with the LIDC manifest's patients; patients excluded
    and moved as the data set says. Empty when ``$NODULE_DATA/luna16`` is absent."""
    from nodule.data.luna16 import read_folds

    folds_dir = data_dir() / "luna16" / "folds"
    if not folds_dir.is_dir():
        return pd.DataFrame(columns=SCAN_COLUMNS)
    folds = read_folds(folds_dir)
    manifest = pd.read_csv(REPO_ROOT / "data_manifests" / "lidc_luna16_scans.csv", dtype={"seriesuid": str})
    patient_of = dict(zip(manifest["seriesuid"], manifest["patient_id"], strict=True))
    rows = [(uid, k, patient_of.get(uid, f"unknown:{uid}")) for k, uids in sorted(folds.items()) for uid in uids]
    table = pd.DataFrame(rows, columns=["seriesuid", "subset", "patient"])
    excluded = set(expand_patients(dataset.params.get("exclude_patients")))
    table = table[~table["patient"].isin(excluded)]
    for patient, subset in (dataset.params.get("move_patients") or {}).items():
        table.loc[table["patient"] == patient, "subset"] = int(subset)
    return _frame(dataset, table["seriesuid"].tolist(), table["subset"].tolist(), table["patient"].tolist())


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class Problem:
    """One broken rule of a split.

    Attributes:
        rule: a short name (``scan-in-two-sets``, ``patient-on-two-sides``,
            ``patient-in-two-folds``, ``learner-data``, ``real-scan-side``,
            ``reserved-patient``, ``shape-part``, ``leak``).
        message: what is wrong, naming the data sets, scans or patients.
    """

    rule: str
    message: str


def _examples(values: Iterable[object], n: int = 3) -> str:
    items = list(values)
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(str(v) for v in items[:n]) + more


def check_scans(table: pd.DataFrame) -> list[Problem]:
    """Rules on a scan table (:data:`SCAN_COLUMNS`): each scan in one data set and role, each
    patient's scans in one role and, within a cross-validated data set, in one fold."""
    problems: list[Problem] = []
    used = table[table["role"].notna()]
    twice = used.groupby("seriesuid")["dataset"].agg(lambda s: sorted(set(s)))
    for uid, sets in twice[twice.map(len) > 1].items():
        problems.append(Problem("scan-in-two-sets", f"scan {uid} is in data sets {sets}"))
    repeated = used[used.duplicated(["dataset", "seriesuid"], keep=False)]
    for (name, uid), _ in repeated.groupby(["dataset", "seriesuid"]):
        problems.append(Problem("scan-in-two-sets", f"scan {uid} is listed twice in data set {name}"))
    sides = used.groupby("patient").agg(roles=("role", lambda s: sorted(set(s))), sets=("dataset", lambda s: sorted(set(s))))
    for patient, row in sides[sides["roles"].map(len) > 1].iterrows():
        problems.append(
            Problem("patient-on-two-sides", f"patient {patient} has scans with roles {row['roles']} (data sets {row['sets']})")
        )
    cv = used[used["role"] == "crossval"]
    folds = cv.groupby(["dataset", "patient"])["subset"].agg(lambda s: sorted(set(s)))
    for key, ks in folds[folds.map(len) > 1].items():
        name, patient = key  # type: ignore[misc]
        problems.append(
            Problem("patient-in-two-folds", f"data set {name}: patient {patient} has scans in cross-validation folds {ks}")
        )
    return problems


def shape_part(dataset: DataSet) -> str:
    """The part of the shape bank an insert data set's nodules come from: its ``shapes``
    parameter, else ``insert`` (held out)."""
    return str(dataset.params.get("shapes", SHAPE_PARTS[0]))


def _shape_part_problems(dataset: DataSet, roles: set[Role]) -> list[Problem]:
    """An insert set's shapes must come from the part of the bank its roles allow."""
    part = shape_part(dataset)
    if part == "insert" and roles - {"test"}:
        return [
            Problem(
                "shape-part",
                f"data set {dataset.name} has roles {sorted(roles - {'test'})} but inserts the held-out "
                "'insert' shapes of the shape bank (training data takes shapes: synth)",
            )
        ]
    if part == "synth" and "test" in roles:
        return [
            Problem(
                "shape-part",
                f"data set {dataset.name} tests on nodules of the shape bank's training part 'synth' "
                "(test data takes shapes: insert)",
            )
        ]
    return []


def check_split(split: Split) -> list[Problem]:
    """Every rule of a split (see the module docstring); an empty list when it is sound."""
    table = split.scan_table()
    problems = check_scans(table)
    for learner, names in split.learners.items():
        for name in names:
            if not split.dataset(name).folds("train"):
                problems.append(Problem("learner-data", f"learner {learner} trains on {name}, which has no train subset"))
    for dataset in split.datasets.values():
        roles = set(dataset.roles.values())
        backgrounds = (
            [split.real_scans[str(dataset.params["background"])]]
            if dataset.kind == "insert"
            else [split.real_scans[s] for s in dataset.params["scans"]]
            if dataset.kind == "real"
            else []
        )
        if dataset.kind == "insert":
            problems.extend(_shape_part_problems(dataset, roles))
        for scan in backgrounds:
            wrong = roles - {"test"} if scan.side == "test" else roles & {"test"}
            if wrong:
                problems.append(
                    Problem(
                        "real-scan-side",
                        f"data set {dataset.name} uses {scan.side}-side real scan {scan.name} with roles {sorted(wrong)}",
                    )
                )
    for scan in split.real_scans.values():
        if scan.side == "test" and scan.patient.startswith("LIDC-IDRI-") and scan.patient not in split.reserved_patients:
            problems.append(
                Problem(
                    "reserved-patient",
                    f"test-side real scan {scan.name} is of {scan.patient}, whose nodule shapes the shape bank does not reserve",
                )
            )
    return problems


def leaked_scans(trained_on: Iterable[str], table: pd.DataFrame, roles: Sequence[Role] = ("val", "test", "crossval")) -> pd.DataFrame:
    """The scans of ``table`` with one of ``roles`` that a learned part trained on.

    Args:
        trained_on: SeriesInstanceUIDs the learned part saw in training.
        table: scans with their roles (:data:`SCAN_COLUMNS`), e.g. :meth:`Split.scan_table`.
        roles: the roles it must not have seen.

    Returns:
        The offending rows (empty when nothing leaked).
    """
    seen = set(trained_on)
    hits = table[table["role"].isin(list(roles)) & table["seriesuid"].isin(seen)]
    return hits.reset_index(drop=True)


def describe_leak(learner: str, leaks: pd.DataFrame) -> str:
    """One message for :func:`leaked_scans` rows: which data sets, roles and subsets."""
    parts = [
        f"{name} {role} subsets {sorted(set(g['subset']))} ({len(g)} scans)"
        for (name, role), g in leaks.groupby(["dataset", "role"])
    ]
    return f"{learner} was trained on scans that validate or test: {'; '.join(parts)}"


def format_problems(split: Split, problems: Sequence[Problem]) -> str:
    """A readable report of :func:`check_split` (one line a problem)."""
    if not problems:
        return f"{split.path}: split {split.tag}: no overlap, every rule holds"
    lines = [f"{split.path}: split {split.tag}: {len(problems)} problem(s)"]
    lines += [f"  [{p.rule}] {p.message}" for p in problems]
    return "\n".join(lines)
