"""Where each figure comes from, in one shape for JSON, CSV and the ``indicator`` points. Pure.

Every figure carries: the policy file it was computed under (file name, plan id, version, and a digest
of the policy as loaded, so an edit shows), the coverage of each input (a carrier, a report field,
``enterprise_daily``; for groups the share of members and of size), and where its baseline came from
(``measured`` base-year data or the registry's ``survey`` figure). A group's figure also says whom it
holds: the population its target is about, the members pooled (their ids and a digest of them), those
left out and why, and those without a baseline (docs/indicators.md, docs/api.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from fmc.core.points import FieldValue
from fmc.indicators.engine import IndicatorResult, PooledResult
from fmc.indicators.plan import Targets


def policy_ref(targets: Targets) -> dict[str, str | None]:
    """The policy file a figure was computed under."""
    return {"file": targets.source_file, "plan": targets.plan.id, "version": targets.plan.version,
            "digest": targets.digest}


def policy_text(targets: Targets) -> str:
    """``zhejiang-2017-2020.toml zhejiang-2017-2020 v2 sha256:1a2b…``: one cell, one field."""
    ref = policy_ref(targets)
    return f"{ref['file'] or '-'} {ref['plan']} v{ref['version']} sha256:{ref['digest']}"


def members_digest(ids: Iterable[str]) -> str:
    """16 hex digits of SHA-256 over the sorted ids: two figures with the same digest pooled the same members."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def provenance(result: IndicatorResult, targets: Targets) -> dict[str, Any]:
    """The provenance of one figure, JSON-ready."""
    out: dict[str, Any] = {"policy": policy_ref(targets), "inputs": {k: float(v) for k, v in result.inputs}}
    if isinstance(result, PooledResult):
        out.update(
            population=result.population,
            pooled=list(result.pooled),
            pooled_digest=members_digest(result.pooled),
            excluded=[{"enterprise": e, "reason": why} for e, why in result.excluded],
            without_baseline=list(result.without_baseline),
            baseline_sources=dict(result.baseline_sources),
        )
    else:
        out["baseline_source"] = result.baseline_source
    out["note"] = result.note
    return out


# CSV: (key, Chinese header, English header), after the figure's own columns
PROVENANCE_CSV_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("population", "统计口径", "population"),
    ("baseline_source", "基期来源", "baseline source"),
    ("inputs", "各项数据覆盖率", "coverage per input"),
    ("excluded", "未纳入企业", "members left out"),
    ("without_baseline", "无基期企业", "members without a baseline"),
    ("pooled_digest", "纳入企业摘要", "pooled members digest"),
    ("policy", "政策文件", "policy file"),
    ("note", "说明", "note"),
)


def _pairs(items: Iterable[tuple[str, object]]) -> str:
    return ";".join(f"{k}={v}" for k, v in items)


def provenance_cells(p: Mapping[str, Any]) -> list[object]:
    """The CSV cells of ``provenance()``'s result, in ``PROVENANCE_CSV_COLUMNS`` order. The pooled ids are
    not a cell (a province holds too many for one): members − left out, and the digest to check."""
    pooled = "pooled" in p
    sources = p.get("baseline_sources") or {}
    policy = p["policy"]
    return [
        p.get("population"),
        _pairs(sources.items()) if pooled else p.get("baseline_source"),
        _pairs((k, repr(float(v))) for k, v in p["inputs"].items()),
        ";".join(f"{x['enterprise']}:{x['reason']}" for x in p.get("excluded") or ()) if pooled else None,
        ";".join(p.get("without_baseline") or ()) if pooled else None,
        p.get("pooled_digest"),
        f"{policy['file'] or '-'} {policy['plan']} v{policy['version']} sha256:{policy['digest']}",
        p.get("note"),
    ]


def provenance_fields(result: IndicatorResult, policy: str | None) -> dict[str, FieldValue]:
    """The ``indicator`` point fields of a figure's provenance (each absent when it does not apply)."""
    fields: dict[str, FieldValue] = {}
    if policy is not None:
        fields["policy"] = policy
    for name, coverage in result.inputs:
        fields[f"coverage_{name}"] = float(coverage)
    if isinstance(result, PooledResult):
        fields["population"] = result.population
        fields["included"] = int(result.included)
        fields["excluded"] = len(result.excluded)
        fields["without_baseline"] = len(result.without_baseline)
        sources = dict(result.baseline_sources)
        fields["baseline_measured"] = int(sources.get("measured", 0))
        fields["baseline_survey"] = int(sources.get("survey", 0))
        fields["pooled_digest"] = members_digest(result.pooled)
    elif result.baseline_source is not None:
        fields["baseline_source"] = result.baseline_source
    return fields
