"""The rules file: flag thresholds and the ordered branches of a reprocessing campaign.

A rules file is TOML (``default_rules.toml`` is shipped and documents the
format): ``name``, ``description``, a ``[flags]`` table of thresholds
(:class:`~density_db.flags.FlagThresholds`) and ``[[branch]]``
tables, each with a ``name``, an optional ``description`` and
``cost_per_frame``, and an optional ``when`` table of conditions on density
class, bright-star count, confidence, flags, band and sky region.  A frame
goes to the first branch whose conditions it meets; the last branch must take
every frame (a rules file without one gets a catch-all ``standard`` branch).

Every mistake is an error naming the file, the branch and the key: unknown
keys, wrong types, empty names, repeated branches.  A branch that can never be
chosen (it matches no frame, or an earlier branch takes every frame it would
match) is a warning: the rules still work, but probably not as meant.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from density_db.errors import DensityDBError, RulesError
from density_db.flag_rules import default_rules_bytes, parse_flag_thresholds
from density_db.flags import FLAGS_BY_NAME, FlagThresholds, flag_mask
from density_db.labels import N_CLASSES
from density_db.regions import SkyRegion, region_from_table

logger = logging.getLogger(__name__)

CATCH_ALL_BRANCH = "standard"
_BRANCH_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_TOP_KEYS = {"name", "description", "flags", "branch"}
_BRANCH_KEYS = {"name", "description", "cost_per_frame", "when"}
_WHEN_KEYS = ("density_class", "bright_count", "confidence", "flags_any", "flags_all", "flags_none", "band", "region")
_BOUND_KEYS = {"min": (True, True), "max": (False, True), "above": (True, False), "below": (False, False)}
"""Range keys: (is a lower bound, is inclusive)."""


@dataclass(frozen=True)
class Interval:
    """Numbers between two bounds, each inclusive or not (``-inf``/``inf``: unbounded)."""

    low: float = -math.inf
    high: float = math.inf
    low_inclusive: bool = True
    high_inclusive: bool = True

    def is_empty(self) -> bool:
        return self.low > self.high or (self.low == self.high and not (self.low_inclusive and self.high_inclusive))

    def contains(self, value: float) -> bool:
        above = value > self.low or (self.low_inclusive and value == self.low)
        below = value < self.high or (self.high_inclusive and value == self.high)
        return above and below

    def covers(self, other: Interval) -> bool:
        """Whether every number of ``other`` is in this interval."""
        if other.is_empty():
            return True
        low_ok = other.low > self.low or (other.low == self.low and (self.low_inclusive or not other.low_inclusive))
        high_ok = other.high < self.high or (
            other.high == self.high and (self.high_inclusive or not other.high_inclusive)
        )
        return low_ok and high_ok

    def sql(self, column: str, parameters: dict[str, Any], prefix: str) -> str:
        terms = []
        if self.low > -math.inf:
            parameters[f"{prefix}_low"] = self.low
            terms.append(f"{column} {'>=' if self.low_inclusive else '>'} :{prefix}_low")
        if self.high < math.inf:
            parameters[f"{prefix}_high"] = self.high
            terms.append(f"{column} {'<=' if self.high_inclusive else '<'} :{prefix}_high")
        return " AND ".join(terms) if terms else f"{column} IS NOT NULL"


@dataclass(frozen=True)
class Condition:
    """What a frame's result must meet to enter a branch (``None``: no condition on that)."""

    classes: frozenset[int] | None = None
    bright_count: Interval | None = None
    confidence: Interval | None = None
    flags_any: frozenset[str] | None = None
    flags_all: frozenset[str] = frozenset()
    flags_none: frozenset[str] = frozenset()
    bands: frozenset[str] | None = None
    region: SkyRegion | None = field(default=None, compare=False)
    region_spec: str | None = None
    """The region as canonical text: two conditions with the same one test the same sky."""

    def is_catch_all(self) -> bool:
        return self == Condition()

    def why_empty(self) -> str | None:
        """Why no frame can meet this condition, or ``None`` if some can."""
        if self.classes is not None and not self.classes:
            return "no density class between 0 and 5 meets density_class"
        for name, interval in (("bright_count", self.bright_count), ("confidence", self.confidence)):
            if interval is not None and interval.is_empty():
                return f"{name} has an empty range"
        if self.flags_all & self.flags_none:
            return f"flag {sorted(self.flags_all & self.flags_none)[0]!r} is both required and excluded"
        if self.flags_any is not None and self.flags_any <= self.flags_none:
            return "every flag of flags_any is excluded by flags_none"
        if self.bands is not None and not self.bands:
            return "band lists no band"
        return None

    def covers(self, other: Condition) -> bool:
        """Whether every frame that meets ``other`` also meets this condition (conservative: False if unsure)."""
        if self.classes is not None and (other.classes is None or not other.classes <= self.classes):
            return False
        for mine, theirs in ((self.bright_count, other.bright_count), (self.confidence, other.confidence)):
            if mine is not None and (theirs is None or not mine.covers(theirs)):
                return False
        if self.flags_any is not None and not (
            other.flags_all & self.flags_any or (other.flags_any is not None and other.flags_any <= self.flags_any)
        ):
            return False
        if not (self.flags_all <= other.flags_all and self.flags_none <= other.flags_none):
            return False
        if self.bands is not None and (other.bands is None or not other.bands <= self.bands):
            return False
        return self.region_spec is None or self.region_spec == other.region_spec

    def sql(self, parameters: dict[str, Any], prefix: str, region_table: str | None) -> str:
        """A SQL predicate on a result ``fd`` (``field_density`` columns) and its ``frame f``.

        Values go into ``parameters``.

        ``region_table`` names a table of the ``frame_id`` of the frames in
        this condition's region (filled by the caller).
        """
        terms = []
        if self.classes is not None:
            terms.append(
                f"fd.density_class IN ({', '.join(str(value) for value in sorted(self.classes))})"
                if self.classes
                else "false"
            )
        if self.bright_count is not None:
            terms.append(self.bright_count.sql("fd.bright_count", parameters, f"{prefix}_bright"))
        if self.confidence is not None:
            terms.append(self.confidence.sql("fd.class_confidence", parameters, f"{prefix}_confidence"))
        if self.flags_any is not None:
            terms.append(f"(fd.flags & {flag_mask(self.flags_any)}) <> 0")
        if self.flags_all:
            mask = flag_mask(self.flags_all)
            terms.append(f"(fd.flags & {mask}) = {mask}")
        if self.flags_none:
            terms.append(f"(fd.flags & {flag_mask(self.flags_none)}) = 0")
        if self.bands is not None:
            parameters[f"{prefix}_bands"] = sorted(self.bands)
            terms.append(f"f.band = ANY(CAST(:{prefix}_bands AS text[]))")
        if self.region is not None:
            terms.append(f"fd.frame_id IN (SELECT frame_id FROM {region_table})")
        return " AND ".join(terms) if terms else "true"


@dataclass(frozen=True)
class Branch:
    """A processing branch: where frames meeting ``condition`` go, and what each costs."""

    name: str
    condition: Condition
    description: str | None = None
    cost_per_frame: float | None = None


@dataclass(frozen=True)
class Rules:
    """A checked rules file.

    Attributes
    ----------
    name, description
        From the file.
    flags
        The flag thresholds, or ``None`` if the file has no ``[flags]`` table.
    branches
        In order; the last one takes every frame.
    warnings
        Branches that can never be chosen, and why.
    source
        Where the rules came from (a path, or ``default`` for the shipped file).
    document
        The file's parsed content, stored as provenance.
    sha256
        Of the file's bytes.
    """

    name: str
    description: str | None
    flags: FlagThresholds | None
    branches: tuple[Branch, ...]
    warnings: tuple[str, ...]
    source: str
    document: dict[str, Any]
    sha256: str

    def require_flags(self) -> FlagThresholds:
        if self.flags is None:
            raise RulesError(f"{self.source}: has no [flags] table of thresholds")
        return self.flags

    def require_branches(self) -> tuple[Branch, ...]:
        if not self.document.get("branch"):
            raise RulesError(f"{self.source}: has no [[branch]] tables")
        return self.branches

    def provenance(self) -> dict[str, Any]:
        """What a run or campaign stores about the rules it used: where from, the branches in order, the file."""
        return {
            "name": self.name,
            "source": self.source,
            "sha256": self.sha256,
            "branches": [
                {"name": branch.name, "description": branch.description, "cost_per_frame": branch.cost_per_frame}
                for branch in self.branches
            ],
            "document": self.document,
        }


def default_rules() -> Rules:
    """The shipped rules (``density_db/default_rules.toml``)."""
    return parse_rules(default_rules_bytes(), source="default")


def load_rules(path: Path | None, canonical_band: Callable[[str], str] | None = None) -> Rules:
    """The rules of the file at ``path``, or the shipped default rules when ``path`` is ``None``.

    Parameters
    ----------
    canonical_band : callable, optional
        Turns a band as written into the catalog's spelling (``nuv`` -> ``NUV``).

    Raises
    ------
    RulesError
        If the file cannot be read or its content is wrong.
    """
    if path is None:
        return default_rules()
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise RulesError(f"cannot read rules file {path}: {error.strerror or error}") from None
    return parse_rules(data, source=str(path), base_dir=Path(path).parent, canonical_band=canonical_band)


def parse_rules(
    data: bytes,
    *,
    source: str,
    base_dir: Path | None = None,
    canonical_band: Callable[[str], str] | None = None,
) -> Rules:
    """Parse and check rules from TOML bytes (see :func:`load_rules`)."""
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise RulesError(f"{source}: not valid TOML: {error}") from None
    _check_keys(document, _TOP_KEYS, source)
    name = _optional_text(document, "name", source) or Path(source).stem
    description = _optional_text(document, "description", source)
    flags = parse_flag_thresholds(document["flags"], source) if "flags" in document else None
    raw_branches = document.get("branch", [])
    if not isinstance(raw_branches, list) or not all(isinstance(item, dict) for item in raw_branches):
        raise RulesError(f"{source}: branch must be an array of tables ([[branch]])")
    branches = [
        _parse_branch(raw, f"{source}: branch {index}", base_dir, canonical_band)
        for index, raw in enumerate(raw_branches, start=1)
    ]
    seen: set[str] = set()
    for branch in branches:
        if branch.name in seen:
            raise RulesError(f"{source}: two branches are named {branch.name!r}")
        seen.add(branch.name)
    if not branches or not branches[-1].condition.is_catch_all():
        if CATCH_ALL_BRANCH in seen:
            raise RulesError(
                f"{source}: the last branch must take every frame (no `when`); "
                f"branch {CATCH_ALL_BRANCH!r} has conditions"
            )
        branches.append(
            Branch(name=CATCH_ALL_BRANCH, condition=Condition(), description="Frames that match no other branch")
        )
    return Rules(
        name=name,
        description=description,
        flags=flags,
        branches=tuple(branches),
        warnings=tuple(_unreachable(branches, source)),
        source=source,
        document=document,
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _unreachable(branches: list[Branch], source: str) -> list[str]:
    warnings = []
    for index, branch in enumerate(branches):
        reason = branch.condition.why_empty()
        if reason is not None:
            warnings.append(f"{source}: branch {branch.name!r} can never be chosen: {reason}")
            continue
        earlier = next((other for other in branches[:index] if other.condition.covers(branch.condition)), None)
        if earlier is not None:
            warnings.append(
                f"{source}: branch {branch.name!r} can never be chosen: every frame it matches "
                f"goes to the earlier branch {earlier.name!r}"
            )
    for warning in warnings:
        logger.warning("%s", warning)
    return warnings


def _parse_branch(
    raw: dict[str, Any], where: str, base_dir: Path | None, canonical_band: Callable[[str], str] | None
) -> Branch:
    _check_keys(raw, _BRANCH_KEYS, where)
    name = raw.get("name")
    if not isinstance(name, str) or not _BRANCH_NAME.match(name):
        raise RulesError(
            f"{where}: name must be a word of letters, digits, '_' or '-' starting with a letter, got {name!r}"
        )
    where = f"{where} ({name!r})"
    cost = raw.get("cost_per_frame")
    if cost is not None and (isinstance(cost, bool) or not isinstance(cost, int | float) or cost < 0):
        raise RulesError(f"{where}: cost_per_frame must be a number >= 0, got {cost!r}")
    when = raw.get("when", {})
    if not isinstance(when, dict):
        raise RulesError(f"{where}: when must be a table of conditions, got {when!r}")
    _check_keys(when, set(_WHEN_KEYS), f"{where}: when")
    return Branch(
        name=name,
        description=_optional_text(raw, "description", where),
        cost_per_frame=None if cost is None else float(cost),
        condition=_parse_condition(when, f"{where}: when", base_dir, canonical_band),
    )


def _parse_condition(
    when: dict[str, Any], where: str, base_dir: Path | None, canonical_band: Callable[[str], str] | None
) -> Condition:
    values: dict[str, Any] = {}
    if "density_class" in when:
        values["classes"] = _parse_classes(when["density_class"], f"{where}.density_class")
    for key, attribute in (("bright_count", "bright_count"), ("confidence", "confidence")):
        if key in when:
            values[attribute] = _parse_interval(when[key], f"{where}.{key}")
    for key in ("flags_any", "flags_all", "flags_none"):
        if key in when:
            values[key] = _parse_flag_names(when[key], f"{where}.{key}")
    if "band" in when:
        bands = when["band"] if isinstance(when["band"], list) else [when["band"]]
        if not all(isinstance(band, str) and band for band in bands):
            raise RulesError(f"{where}.band must be a band name or a list of them, got {when['band']!r}")
        values["bands"] = frozenset(canonical_band(band) if canonical_band else band for band in bands)
    if "region" in when:
        try:
            region = region_from_table(when["region"], base_dir)
        except DensityDBError as error:
            raise RulesError(f"{where}.region: {error}") from None
        values["region"] = region
        values["region_spec"] = repr(sorted(region.spec.items()))
    return Condition(**values)


def _parse_classes(value: object, where: str) -> frozenset[int]:
    if isinstance(value, dict):
        interval = _parse_interval(value, where)
        return frozenset(klass for klass in range(N_CLASSES) if interval.contains(klass))
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, int) and not isinstance(item, bool) and 0 <= item < N_CLASSES for item in items):
        raise RulesError(f"{where} must be a class 0-5, a list of them or a table like {{ min = 4 }}, got {value!r}")
    return frozenset(items)


def _parse_interval(value: object, where: str) -> Interval:
    if not isinstance(value, dict) or not value:
        raise RulesError(f"{where} must be a table with min, max, above or below, got {value!r}")
    _check_keys(value, set(_BOUND_KEYS), where)
    if "min" in value and "above" in value or "max" in value and "below" in value:
        raise RulesError(f"{where}: give min or above, and max or below, not both")
    bounds: dict[str, Any] = {}
    for key, number in value.items():
        if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
            raise RulesError(f"{where}.{key} must be a number, got {number!r}")
        lower, inclusive = _BOUND_KEYS[key]
        side = "low" if lower else "high"
        bounds[side], bounds[f"{side}_inclusive"] = float(number), inclusive
    return Interval(**bounds)


def _parse_flag_names(value: object, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise RulesError(f"{where} must be a non-empty list of flag names, got {value!r}")
    unknown = [item for item in value if item not in FLAGS_BY_NAME]
    if unknown:
        raise RulesError(f"{where}: unknown flag {unknown[0]!r}; the flags are {', '.join(FLAGS_BY_NAME)}")
    return frozenset(value)


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise RulesError(f"{where}: unknown key {unknown[0]!r}; expected one of {', '.join(sorted(allowed))}")


def _optional_text(table: dict[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        raise RulesError(f"{where}: {key} must be text, got {value!r}")
    return value
