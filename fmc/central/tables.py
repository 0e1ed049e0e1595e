"""Indicator results as text tables (``fmc indicators`` and the demo)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fmc.indicators.engine import IndicatorResult
from fmc.indicators.plan import Targets
from fmc.indicators.pooling import GroupRow

_MARK = {"met": "✓", "missed": "✗", "insufficient_data": "?", "no_target": ""}


def _fmt(value: float | None) -> str:
    """Two decimals, four below 1 (intensities such as 0.2134 tce/10⁴ yuan)."""
    if value is None:
        return "—"
    return f"{value:,.4f}" if abs(value) < 1 else f"{value:,.2f}"


def _change(indicator: str, value: float | None) -> str:
    from fmc.indicators.plan import POINT_INDICATORS

    if value is None:
        return "—"
    if indicator in POINT_INDICATORS:
        return f"{value:+.2f} pt"
    return f"{100 * value:+.2f} %"


def result_table(results: Mapping[str, IndicatorResult], targets: Targets, lang: str) -> list[str]:
    from fmc.core.tables import render_table
    from fmc.indicators.engine import PooledResult
    from fmc.indicators.labels import INDICATOR_LABELS, STATUS_LABELS

    zh = lang == "zh"
    pooled = any(isinstance(r, PooledResult) for r in results.values())
    headers = (["指标", "单位", "数值", "基期", "目标", "同比", "年均", "覆盖率", "状态"] if zh else
               ["indicator", "unit", "value", "baseline", "target", "yoy", "avg/yr", "coverage", "status"])
    if pooled:
        headers.append("达标企业" if zh else "met")
    rows = []
    for name, r in results.items():
        label_zh, label_en, unit = INDICATOR_LABELS[name]
        row = [label_zh if zh else label_en, unit, _fmt(r.value), _fmt(r.baseline), _fmt(r.target),
               _change(name, r.yoy), _change(name, r.avg_annual), f"{100 * r.coverage:.0f} %",
               STATUS_LABELS[r.status][0 if zh else 1]]
        if pooled:
            p = r if isinstance(r, PooledResult) else None
            row.append(f"{p.met_count}/{p.assessed}" if p is not None and p.assessed else "—")
        rows.append(row)
    align = "<<>>>>>><" + (">" if pooled else "")
    return render_table(headers, rows, align)


def _cell(r: IndicatorResult) -> str:
    """``value (target) mark``: 45.00 (43.00) ✓; the target only where there is one."""
    target = f" ({_fmt(r.target)})" if r.target is not None else ""
    return f"{_fmt(r.value)}{target} {_MARK[r.status]}".rstrip()


def level_table(rows: Sequence[GroupRow], names: Mapping[str, str | None], lang: str) -> list[str]:
    from fmc.core.tables import render_table
    from fmc.indicators.labels import INDICATOR_LABELS, industry_label
    from fmc.indicators.plan import INDICATORS

    zh = lang == "zh"
    headers = ["", *(INDICATOR_LABELS[i][0 if zh else 1] + f" ({INDICATOR_LABELS[i][2]})" for i in INDICATORS)]
    body = []
    for row in rows:
        label = row.key
        if row.level == "enterprise" and names.get(row.key):
            label = f"{row.key} {names[row.key]}"
        elif row.level == "industry" and row.industry:
            label = f"{row.key} {industry_label(row.industry, lang)}"
        cells = [_cell(row.results[i]) for i in INDICATORS]
        body.append([label, *cells])
    return render_table(headers, body, "<" + ">" * len(INDICATORS))
