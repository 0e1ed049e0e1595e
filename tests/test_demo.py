"""``fmc demo``: the simulated plant on its own, its meters through the real accumulator, the ledger,
the tables, and a whole short run (asyncua server + amqtt + the agent) checked against the store."""

from __future__ import annotations

import itertools
import json
import re
from datetime import date
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from fmc.agent.ingest import PLANT_STATE_KEY
from fmc.agent.spool import Spool
from fmc.cli.exits import EXIT_USAGE
from fmc.cli.main import main
from fmc.core.tables import render_table, text_width
from fmc.demo.plant import (
    BAD_SCHEDULE,
    DEMO_LEDGER_ONLY,
    DEMO_MACHINES,
    DEMO_METERS,
    LINK_CYCLE_S,
    LINK_LOSS_AT_S,
    LINK_LOSS_S,
    METER_PERIOD_S,
    PlantSimulator,
    meter_configs,
    opcua_meter_configs,
    write_ledger_csv,
)
from fmc.demo.run import LEDGER_FILE, SPOOL_FILE, STORE_FILE, SUMMARY_FILE, run_demo
from fmc.plant.config import MeterConfig
from fmc.plant.ledger import load_inventory_csv
from fmc.plant.meters import MeterAccumulator
from fmc.stores.embedded.store import EmbeddedStore

DAY_MS = 1_764_036_000_000  # 2025-11-25 10:00 in the plant's time zone: day shift, working
BREAK_MS = 1_764_043_800_000  # 2025-11-25 12:10: the day shift's meal break
MANUAL = {s.equipment for s in DEMO_MACHINES if s.kind.manual}


def run_ticks(seed: int, n: int, start_ms: int = DAY_MS, reset_at_tick: int | None = None) -> tuple[
        PlantSimulator, list[Any]]:
    sim = PlantSimulator(seed, reset_at_tick=reset_at_tick)
    return sim, [sim.tick(start_ms + k * 1000) for k in range(n)]


def test_simulator_is_deterministic_for_a_seed() -> None:
    _, first = run_ticks(2017, 30)
    _, again = run_ticks(2017, 30)
    _, other = run_ticks(2018, 30)
    assert first == again
    assert first != other


def test_simulator_machines_show_every_state_and_their_signals() -> None:
    sim, ticks = run_ticks(2017, 60)
    flaky = next(s.equipment for s in DEMO_MACHINES if s.flaky_link)
    for spec in DEMO_MACHINES:
        published = [t.values[spec.equipment] for t in ticks if spec.equipment in t.values]
        assert published, spec.equipment
        assert all(set(v) == set(spec.signals) for v in published), spec.equipment
    # every state shows within a minute, and each machine changes state every few seconds
    states = {state for tl in sim.report.timeline.values() for _, state in tl}
    assert states == {"running", "idle", "down", "off"}
    assert all(len(tl) >= 4 for tl in sim.report.timeline.values())
    for spec in DEMO_MACHINES:
        seen = {state for _, state in sim.report.timeline[spec.equipment]}
        if spec.kind.profile == "power_only":
            assert "down" not in seen  # a power reading cannot tell a fault from "off"
        if spec.kind.profile == "machine_tool":
            assert "off" not in seen  # an NC channel has no "off"
    # the flaky machine: its nodes turn Bad once, then it is silent until the link is back
    assert [k for k, t in enumerate(ticks) if t.link_lost] == [LINK_LOSS_AT_S, LINK_LOSS_AT_S + LINK_CYCLE_S]
    assert all(t.link_lost in ([], [flaky]) for t in ticks)
    silent = [k for k, t in enumerate(ticks) if flaky not in t.values]
    assert silent == [k for k in range(60) if LINK_LOSS_AT_S <= k % LINK_CYCLE_S < LINK_LOSS_AT_S + LINK_LOSS_S]
    assert sum(sim.report.state_seconds[flaky].values()) == 60  # it worked on, unheard


def test_operators_at_lunch_leave_manual_machines_standing() -> None:
    sim, _ = run_ticks(2017, 40, start_ms=BREAK_MS)
    for equipment, timeline in sim.report.timeline.items():
        entered = [state for _, state in timeline[1:]]
        if equipment in MANUAL:
            assert "running" not in entered, equipment
    assert any("running" in [s for _, s in tl[1:]] for e, tl in sim.report.timeline.items() if e not in MANUAL)


def _readings(ticks: list[Any], meter: str) -> list[tuple[int, float]]:
    out = []
    for t in ticks:
        for m in t.messages:
            if m.bad is None and m.topic.endswith(f"/{meter}"):
                out.append((t.now_ms, json.loads(m.payload)["d"]["reading"]))
    return out


def test_meter_registers_and_the_reset_through_the_real_accumulator() -> None:
    sim, ticks = run_ticks(2017, 60, reset_at_tick=31)
    assert sim.reset_at_tick == 30  # right after a reading
    resetting = next(m for m in DEMO_METERS if m.resets)
    configs = {c["id"]: MeterConfig.model_validate(c) for c in meter_configs() + opcua_meter_configs()}
    for meter in DEMO_METERS:
        readings = _readings(ticks, meter.meter)
        assert len(readings) == 60 // METER_PERIOD_S
        values = [v for _, v in readings]
        drops = [i for i in range(1, len(values)) if values[i] < values[i - 1]]
        assert drops == ([16] if meter.resets else []), meter.meter  # tick 32 is the first reading after the reset
        # what the agent's accumulator makes of these readings equals the register's true increments
        acc = MeterAccumulator(configs[meter.meter], interval_s=60)
        emitted = []
        for ts_ms, value in readings:
            emitted += acc.observe(value, 0, ts_ms * 1_000_000)
        counted = sum(iv.amount_native for iv in emitted) + sum(row[1] for row in acc.snapshot()["open"])
        assert sim.report.meter_increments[meter.meter] > 0
        assert abs(counted - sim.report.meter_increments[meter.meter]) < 1e-6, meter.meter
        assert acc.counts["reset_counted"] == (1 if meter is resetting else 0)
        assert acc.counts["reset_uncounted"] == acc.counts["implausible"] == 0
    assert sim.report.resets == {resetting.meter: DAY_MS + 30_000}
    # electricity follows the plant's load: 40 kW base load plus twenty machines
    kwh = [v for _, v in _readings(ticks, "main-incomer")]
    per_hour_kw = (kwh[-1] - kwh[0]) / (58 / 3600)
    assert 60 < per_hour_kw < 300


def test_simulator_sends_the_bad_messages_it_reports() -> None:
    sim, ticks = run_ticks(2017, 20)
    bad = [m for t in ticks for m in t.messages if m.bad is not None]
    assert len(bad) == sim.report.bad_total == 2 * len(BAD_SCHEDULE)
    assert sim.report.bad_topics == [m.topic for m in bad]
    assert sim.report.mqtt_total == sum(len(t.messages) for t in ticks)


def test_ledger_csv_is_what_the_inventory_loader_reads(tmp_path: Path) -> None:
    items = {i.id: i for i in load_inventory_csv(write_ledger_csv(tmp_path / "ledger.csv"))}
    assert set(items) == {s.equipment for s in DEMO_MACHINES} | {x.equipment for x in DEMO_LEDGER_ONLY}
    for spec in DEMO_MACHINES:
        item = items[spec.equipment]
        assert (item.nc, item.asset_value, item.kind, item.connected) == (spec.kind.nc, spec.kind.asset_value,
                                                                          spec.kind.kind, True)
    for x in DEMO_LEDGER_ONLY:
        assert (items[x.equipment].nc, items[x.equipment].connected) == (x.nc, False)
    assert not items["shuttle-01"].counts_on(date(2025, 11, 25))  # scrapped: not in the year-end count
    assert items["jacq-01"].counts_on(date(2025, 11, 25))


def test_tables_align_with_chinese_text() -> None:
    rows = [["loom-01", "喷气织机 air-jet loom", "12"], ["cut-02", "CNC", "7"]]
    lines = render_table(["equipment", "type 类型", "n"], rows, "<<>")
    assert len({text_width(line) for line in lines}) == 1  # the last column is right-aligned: equal widths
    header, rule, *body = lines
    cells = ["type", "喷气", "CNC"]
    starts = [text_width(line[: line.index(cell)]) for line, cell in zip([header, *body], cells, strict=True)]
    starts.append(rule.index("  -") + 2)
    assert len(set(starts)) == 1, starts
    assert text_width("示范纺织（模拟）") == 16


# --- a whole run -------------------------------------------------------------------------------------


def _line(text: str, label: str) -> str:
    match = re.search(rf"^\s*{re.escape(label)}\s+(.*)$", text, re.MULTILINE)
    assert match, f"no line {label!r}"
    return match.group(1)


def _ratio(text: str, label: str) -> tuple[float, float, float]:
    """'¥1,234 of ¥5,678 = 21.7 %' -> (1234, 5678, 21.7)."""
    m = re.match(r"¥?([\d,.]+) of ¥?([\d,.]+) = ([\d.]+) %", _line(text, label))
    assert m, _line(text, label)
    return tuple(float(g.replace(",", "")) for g in m.groups())  # type: ignore[return-value]


def _total(text: str, label: str) -> int:
    return int(_line(text, label).split()[0])


async def test_demo_run_matches_the_store_and_the_simulator(tmp_path: Path) -> None:
    out = StringIO()
    code = await run_demo(duration_s=6, workdir=tmp_path, out=out)
    text = out.getvalue()
    assert code == 0, text
    assert "SIMULATED DATA" in text
    assert "PROBLEM" not in text
    doc = json.loads((tmp_path / SUMMARY_FILE).read_text(encoding="utf-8"))
    assert doc["simulated"] is True
    sim = doc["report"]
    day = date.fromisoformat(doc["enterprise"]["day"])

    # every connected machine: its signals and its states are in the store; the others left no trace
    never = [x.equipment for x in DEMO_LEDGER_ONLY]
    with EmbeddedStore(tmp_path / STORE_FILE, readonly=True) as store:
        for spec in DEMO_MACHINES:
            series = store.series("signal", {"equipment": spec.equipment})
            assert {s["signal"] for s in series} == set(spec.signals), spec.equipment
            assert store.count("signal", {"equipment": spec.equipment}) >= len(spec.signals)
            states = [p.fields["state"] for p in store.points("equipment_state", {"equipment": spec.equipment})]
            assert states, spec.equipment
            if spec.flaky_link:
                continue
            # every state the simulator held for 3 s or more, the agent saw; and no fault it did not have
            timeline = sim["timeline"][spec.equipment]
            held = {state for (t0, state), (t1, _) in itertools.pairwise(timeline) if t1 - t0 >= 3000}
            assert held <= set(states), (spec.equipment, timeline, states)
            had = {state for _, state in timeline} | {sim["initial_states"][spec.equipment]}
            assert "down" not in set(states) - had, (spec.equipment, timeline, states)
        for equipment in never:
            assert store.count("signal", {"equipment": equipment}) == 0
            assert store.count("equipment_state", {"equipment": equipment}) == 0
        flaky = next(s for s in DEMO_MACHINES if s.flaky_link)
        bad_status = store.points("signal", {"equipment": flaky.equipment}, fields=["quality"])
        intervals = store.points("meter_interval", {"meter": "intake-1"}, fields=["amount"])
        readings = [p.fields["value"] for p in store.points("meter_reading", {"meter": "intake-1"})]
        # the dyehouse's energy counter, read over OPC UA (a kind = "meter" node): readings that rise
        opcua_readings = [p.fields["value"] for p in store.points("meter_reading", {"meter": "dyehouse",
                                                                                   "carrier": "electricity"})]
    assert len(opcua_readings) >= 3 and opcua_readings[-1] > opcua_readings[0]
    assert all(b >= a for a, b in itertools.pairwise(opcua_readings))
    assert sim["link_losses"] == {flaky.equipment: 1}
    assert sum(1 for p in bad_status if p.fields["quality"]) == len(flaky.signals)  # each node turned Bad once

    # the NC rate printed is the ledger's, never-connected equipment included in the denominators
    ledger = [i for i in load_inventory_csv(tmp_path / LEDGER_FILE) if i.counts_on(day)]
    nc = [i for i in ledger if i.nc]
    assert {"jacq-01", "rapier-01", "press-01"} <= {i.id for i in ledger}
    assert _ratio(text, "by count") == (len(nc), len(ledger), round(100 * len(nc) / len(ledger), 1))
    value_nc, value_all = sum(i.asset_value or 0 for i in nc), sum(i.asset_value or 0 for i in ledger)
    assert _ratio(text, "by asset value 原值") == (value_nc, value_all, round(100 * value_nc / value_all, 1))
    connected_nc = sum(1 for i in nc if i.connected)
    assert _ratio(text, "delivered good data in this run (demo stand-in)")[:2] == (connected_nc, len(nc))
    assert _ratio(text, "by the rule (good data, ≥ 1 min online today)")[:2] == (0, len(nc))  # a 6 s run

    # the resetting counter: what the agent counted (written intervals + the open one it saved in the
    # spool) equals the register's true increments; a drop in the readings shows the reset happened
    assert any(b < a for a, b in itertools.pairwise(readings))
    with Spool(tmp_path / SPOOL_FILE) as spool:
        assert spool.stats().depth == 0
        rejected = spool.recent_rejections()
        plant = json.loads(spool.state_get(PLANT_STATE_KEY) or "{}")
    dyehouse = plant["meters"]["dyehouse"]  # its accumulator counted the rise (written or still open)
    assert dyehouse["last_value"] == opcua_readings[-1]
    meter = plant["meters"]["intake-1"]
    counted = sum(p.fields["amount"] for p in intervals) + sum(row[1] for row in meter["open"])
    assert sim["meter_increments"]["intake-1"] > 0
    assert abs(counted - sim["meter_increments"]["intake-1"]) < 1e-6
    assert meter["counts"]["reset_counted"] == 1
    # the Modbus water meter was read (its consumption equals its register's increments, or PROBLEM above)
    assert sim["meter_increments"]["intake-2-modbus"] > 0 and _line(text, "intake-2-modbus")
    row = _line(text, "intake-1").split()
    assert float(row[-3]) == round(counted, 3)  # the consumption column (then unit, tce)

    # the DL/T 645 meter (fmc/demo/dlt645_meter.py): read over TCP, its register wrapped at 999999.99 kWh and the
    # accumulator counted the wrap (rollover = 1000000): the consumption is what the register moved, tce with it
    (dlt,) = [m for m in doc["meters"] if m["meter"] == "dyehouse-645"]
    assert dlt["first"] > 999_999 and dlt["last"] < 1 and dlt["events"].get("rollover") == 1, dlt
    kwh, tce = dlt["amount_written"] + dlt["amount_open"], dlt["tce_written"] + dlt["tce_open"]
    assert kwh > 0 and abs(kwh - sim["meter_increments"]["dyehouse-645"]) < 1e-6
    assert abs(tce - kwh * 0.1229 / 1000) < 1e-12

    # rejections: one per deliberately bad message, each for its own reason; nothing left in the spool
    assert _total(text, "rejected, by reason") == sum(sim["bad_messages"].values()) == len(BAD_SCHEDULE)
    for reason in ("payload_not_json", "value_not_finite", "timestamp_out_of_range", "unknown_carrier"):
        assert f"{reason} 1" in text
    assert sorted(r.topic for r in rejected) == sorted(sim["bad_topics"])
    assert _total(text, "MQTT messages received by the agent") == sum(sim["meter_messages"].values()) + len(
        BAD_SCHEDULE)
    assert _total(text, "spool depth at the end") == 0
    assert _total(text, "points refused by the store") == 0


async def test_demo_history_table_and_api(tmp_path: Path) -> None:
    """The SIMULATED history gives the indicator table the demo prints, and the demo's API serves
    the same figures with its key (and nothing without it)."""
    import httpx

    from fmc.demo.history import DEMO_ENTERPRISE_ID, DemoApi, history_points, indicator_table, write_history

    store_path = tmp_path / STORE_FILE
    write_history(store_path, 24)
    last = max((p for p in history_points(DEMO_ENTERPRISE_ID, "330602", "17", equipment_total=24)
                if p.measurement == "enterprise_daily"), key=lambda p: p.ts_ns)
    nc_2020 = 100 * last.fields["equipment_nc"] / last.fields["equipment_total"]  # period end: 31 December
    table, problems = await indicator_table(store_path)
    assert problems == []
    assert "SIMULATED HISTORY" in table
    nc_line = next(line for line in table.splitlines() if line.startswith("装备数控化率"))
    assert nc_line.split()[2] == f"{nc_2020:.2f}"
    api = DemoApi(tmp_path, store_path)
    await api.start()
    try:
        async with httpx.AsyncClient(base_url=api.url) as client:
            url = f"/v1/enterprises/{DEMO_ENTERPRISE_ID}/indicators?period=2020"
            assert (await client.get(url)).status_code == 401
            r = await client.get(url, headers={"Authorization": f"Bearer {api.key}"})
            assert r.status_code == 200, r.text
            assert str(round(nc_2020, 6))[:6] in r.text
    finally:
        await api.stop()


@pytest.mark.parametrize("case", ["workdir-is-a-file", "workdir-under-a-file", "duration-nan", "duration-inf",
                                  "duration-negative"])
def test_demo_usage_mistakes_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     case: str) -> None:
    """A --workdir that is a file and a --duration of nan or inf (argparse's float() takes both)
    are refused in one line, not a traceback (FileExistsError, math.ceil's ValueError)."""
    notes = tmp_path / "notes.txt"
    notes.write_text("not a folder\n", encoding="utf-8")
    workdir = {"workdir-is-a-file": notes, "workdir-under-a-file": notes / "demo"}.get(case, tmp_path / "demo")
    duration = case.removeprefix("duration-").replace("negative", "-1") if case.startswith("duration") else "1"
    assert main(["demo", "--duration", duration, "--workdir", str(workdir)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("fmc demo: --") and err.count("\n") == 1, err
    assert ("--workdir" in err) == case.startswith("workdir") and not (tmp_path / "demo").exists()
