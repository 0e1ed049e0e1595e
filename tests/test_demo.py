"""``fmc demo``: the simulator on its own, the tables, and a whole 4-second run checked against the store."""

from __future__ import annotations

import json
import re
from io import StringIO
from pathlib import Path

from adapters.embedded import EmbeddedStore
from collector.demo import (
    BAD_SCHEDULE,
    DEMO_MACHINES,
    DEMO_METERS,
    PlantSimulator,
    render_table,
    run_demo,
    text_width,
)
from collector.spool import Spool

START_MS = 1_764_000_000_000  # 2025-11-25 00:00 in the plant's time zone: night shift


def run_ticks(seed: int, n: int, start_ms: int = START_MS) -> tuple[PlantSimulator, list[list]]:
    sim = PlantSimulator(seed, start_ms)
    return sim, [sim.tick() for _ in range(n)]


def test_simulator_is_deterministic_for_a_seed() -> None:
    _, first = run_ticks(2017, 30)
    _, again = run_ticks(2017, 30)
    _, other = run_ticks(2018, 30)
    assert first == again
    assert first != other


def test_simulator_messages_look_like_the_plant_and_report_what_was_sent() -> None:
    sim, ticks = run_ticks(2017, 60)
    messages = [m for tick in ticks for m in tick]
    good = [m for m in messages if m.bad is None]
    bad = [m for m in messages if m.bad is not None]

    assert sim.report.ticks == 60
    assert sim.report.total == len(messages)
    assert sim.report.bad_total == len(bad) == 6 * len(BAD_SCHEDULE)
    assert sim.report.bad_topics == [m.topic for m in bad]
    assert sum(sim.report.machine_messages.values()) == sum(1 for m in good if m.topic.startswith("plant/"))

    seen_machines = {m.topic.split("/")[1] for m in good if m.topic.startswith("plant/")}
    assert seen_machines == {spec.equipment for spec in DEMO_MACHINES}
    for m in good:
        doc = json.loads(m.payload)
        if m.topic.startswith("plant/"):
            assert set(doc) == {"ts", "value"}
            assert START_MS <= doc["ts"] < START_MS + 61_000
        else:
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+08:00", doc["t"])
            assert isinstance(doc["d"]["reading"], float)

    # cumulative meters never go backwards, and electricity follows the plant's load
    for meter in DEMO_METERS:
        readings = [
            json.loads(m.payload)["d"]["reading"] for m in good if m.topic == f"meters/{meter.carrier}/{meter.meter}"
        ]
        assert len(readings) == 30
        assert readings == sorted(readings)
        assert readings[-1] > readings[0]
    kwh = [json.loads(m.payload)["d"]["reading"] for m in good if m.topic == "meters/electricity/main-incomer"]
    per_hour_kw = (kwh[-1] - kwh[0]) / (58 / 3600)
    assert 60 < per_hour_kw < 200  # 40 kW base load plus a dozen machines

    # the machine with a flaky network misses seconds; the others publish every second
    assert sim.report.machine_messages["knit-03"] < sim.report.machine_messages["knit-02"]
    assert sim.report.machine_messages["loom-01"] == 60 * 4
    assert sim.report.machine_messages["dye-01"] == 60 * 5


def test_tables_align_with_chinese_text() -> None:
    rows = [["loom-01", "喷气织机 air-jet loom", "12"], ["cnc-cut-02", "CNC", "7"]]
    lines = render_table(["equipment", "type 类型", "n"], rows, "<<>")
    assert len({text_width(line) for line in lines}) == 1  # the last column is right-aligned: equal widths
    # the second column starts at the same screen column on every line
    header, rule, *body = lines
    cells = ["type", "喷气", "CNC"]
    starts = [text_width(line[: line.index(cell)]) for line, cell in zip([header, *body], cells, strict=True)]
    starts.append(rule.index("  -") + 2)
    assert len(set(starts)) == 1, starts
    assert text_width("示范纺织（模拟）") == 16


def _row(text: str, first_cell: str) -> list[str]:
    match = re.search(rf"^{re.escape(first_cell)}  .*$", text, re.MULTILINE)
    assert match, f"no summary row for {first_cell}"
    return match.group(0).split()


def _total(text: str, label: str) -> int:
    match = re.search(rf"^  {re.escape(label)}\s+(\d+)", text, re.MULTILINE)
    assert match, f"no total {label!r}"
    return int(match.group(1))


def _number(cell: str) -> float:
    return float(cell.replace(",", ""))


async def test_demo_run_matches_the_store(tmp_path: Path) -> None:
    out = StringIO()
    code = await run_demo(duration_s=4, workdir=tmp_path, out=out)
    text = out.getvalue()
    assert code == 0, text
    assert "SIMULATED DATA" in text
    assert "PROBLEM" not in text

    with EmbeddedStore(tmp_path / "fmc-store.db", readonly=True) as store:
        for spec in DEMO_MACHINES:
            series = store.series("signal", {"equipment": spec.equipment})
            assert {s["signal"] for s in series} == set(spec.signals), spec.equipment
            assert {s["enterprise"] for s in series} == {"demo-330602-0001"}
            stored = store.count("signal", {"equipment": spec.equipment})
            row = _row(text, spec.equipment)
            assert int(row[1]) == stored  # the summary's "stored" column is what the store holds
            assert int(row[2]) == stored  # every good message the simulator sent became a point
        for meter in DEMO_METERS:
            points = store.points("meter_reading", {"meter": meter.meter, "carrier": meter.carrier})
            assert len(points) == 2  # ticks 0 and 2 of 4
            row = _row(text, meter.meter)
            assert int(row[1]) == len(points)
            first, last = points[0].fields["value"], points[-1].fields["value"]
            assert _number(row[-4]) == round(first, 3)
            assert _number(row[-3]) == round(last, 3)
            assert abs(_number(row[-2]) - (last - first)) < 0.0015
            assert row[-1] == meter.unit
        in_store = store.count("signal") + store.count("meter_reading")
        # the bad messages left no trace in the store
        assert store.series("meter_reading", {"carrier": "gas"}) == []
        assert store.points("signal", end_ns=1_000_000_000_000_000_000) == []  # nothing from the 1970 clock

    assert _total(text, "points written to the embedded store") == in_store
    assert _total(text, "points in the store from this run") == in_store
    assert _total(text, "points accepted into the spool") == in_store
    assert _total(text, "spool depth at the end") == 0
    assert _total(text, "points refused by the store") == 0

    # rejections: one per deliberately bad message, each for its own reason
    sim, _ = run_ticks(2017, 4)
    assert sim.report.bad_total == 4
    assert _total(text, "rejected, by reason") == sim.report.bad_total
    for reason in ("payload_not_json", "value_not_finite", "timestamp_out_of_range", "unknown_carrier"):
        assert f"{reason} 1" in text
    assert _total(text, "messages sent by the simulator") == _total(text, "messages received by the agent")

    with Spool(tmp_path / "spool.db") as spool:
        assert spool.stats().depth == 0
        rejected = spool.recent_rejections()
    assert sorted(r.topic for r in rejected) == sorted(sim.report.bad_topics)
