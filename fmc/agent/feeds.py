"""``fmc check``: do the sources feed the ``[[meter]]``s, does the ledger list what they report, and
does each machine's kind have an ``[[equipment_class]]``?

A ``[[meter]]`` no source writes readings for measures nothing: its consumption stays 0 and its
coverage says so only at the day's end. Equipment a source reports but the ledger (设备台账) lacks
has no state tracker and counts in no rate. Every source settings model says what it feeds
(``fmc.agent.plugin.Feeds``): fixed ids, and whether a template (an MQTT topic's ``{meter}``
segment) can name more at run time — then the check cannot tell, and says so instead of warning.
A machine whose ``kind`` no ``[[equipment_class]]`` names is tracked online/offline only: its good data
counts as idle, never running. Pure: the settings in, ``CheckResult``s out (a warning is ``ok`` with
``warning`` set).
"""

from __future__ import annotations

import difflib
import os
from collections import defaultdict
from collections.abc import Collection, Sequence

from fmc.agent.config import AgentSettings
from fmc.agent.plugin import CheckResult, Feeds, SourceSettings
from fmc.plant.equipment import EquipmentItem

SHOWN = 5  # ids named in a message; the count says how many more


def _named(ids: Collection[str]) -> str:
    items = sorted(ids)
    text = ", ".join(repr(i) for i in items[:SHOWN])
    return text + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def _templated(sources: Sequence[tuple[str, Feeds]], meters: bool) -> str:
    return ", ".join(name for name, f in sources if (f.any_meter if meters else f.any_equipment))


def check_feeds(
    sources: Sequence[SourceSettings], meter_tags: Collection[str], ledger: Collection[str],
    without_rollover: Collection[str] = (),
) -> list[CheckResult]:
    """``meter_tags``: the ``meter`` tag each ``[[meter]]`` reads (its ``source``, default its id);
    ``ledger``: the equipment ids of the inventory; ``without_rollover``: the meter tags of the counter
    ``[[meter]]``s without ``rollover``. One result for the meters, one for the ledger."""
    feeds = [(f"{s.section}:{s.name}", s.feeds()) for s in sources]
    return [_meters(feeds, set(meter_tags), set(without_rollover)), _ledger(feeds, set(ledger))]


def _meters(feeds: Sequence[tuple[str, Feeds]], meters: set[str], without_rollover: set[str]) -> CheckResult:
    fed = {m for _, f in feeds for m in f.meters}
    templated = _templated(feeds, meters=True)
    unfed = meters - fed
    extra = fed - meters
    notes = []
    if extra:
        notes.append(f"readings of {_named(extra)} go to no [[meter]] (stored as meter_reading, not counted): "
                     "add a [[meter]] with that id, or remove the node")
    notes += _rollover_notes(feeds, without_rollover)
    if not unfed:
        detail = f"{len(meters)} [[meter]](s), each fed by a source" if meters else "no [[meter]]"
        return CheckResult("meters", True, "; ".join([detail, *notes]), warning=len(notes) > 0)
    if templated:
        return CheckResult("meters", False, f"cannot tell whether {_named(unfed)} get readings: {templated} "
                           "name meters from the topic at run time", undecided=True)
    return CheckResult("meters", True, "; ".join([
        f"{len(unfed)} of {len(meters)} [[meter]](s) fed by no source: {_named(unfed)} will measure nothing; "
        "add a source node or subscription with that meter id (an OPC UA [[opcua.node]] kind = \"meter\", an "
        "MQTT subscription kind = \"meter\"), or remove the [[meter]]", *notes]), warning=True)


def _rollover_notes(feeds: Sequence[tuple[str, Feeds]], without_rollover: set[str]) -> list[str]:
    """A counter whose register wraps, without ``rollover``: the wrap would be taken as a reset of the
    meter (counted from 0, or not at all when implausible), and what came just before it lost."""
    notes = []
    for source, f in feeds:
        for meter in sorted(without_rollover & set(f.wraps)):
            at = f.wraps[meter]
            where = f"rollover = {at:.0f}" if at is not None else "rollover to where the meter's manual says it wraps"
            notes.append(f"[[meter]] reading {meter!r} has no rollover, and its {source} register wraps"
                         f"{f' at {at:.0f}' if at is not None else ''}: set {where} (and max_rate_per_h), or the "
                         "wrap is taken as a reset of the meter and what it counted just before is lost")
    return notes


def _ledger(feeds: Sequence[tuple[str, Feeds]], ledger: set[str]) -> CheckResult:
    reported = {e for _, f in feeds for e in f.equipment}
    templated = _templated(feeds, meters=False)
    missing = reported - ledger
    if missing:
        more = f" ({templated} may report more at run time)" if templated else ""
        return CheckResult("ledger", True, f"{len(missing)} equipment the sources report are not in the ledger: "
                           f"{_named(missing)}{more}; their states are not tracked and they count in no rate: add "
                           "them to the inventory ([inventory] csv or [[equipment]])", warning=True)
    if templated:  # not a doubt to raise on every check: unknown equipment is counted at run time
        return CheckResult("ledger", True, f"the {len(reported)} equipment named in the config are in the ledger; "
                           f"{templated} name equipment at run time (one the ledger lacks is counted in "
                           "fmc_plant_events{kind=\"unknown_equipment\"})")
    return CheckResult("ledger", True, f"the {len(reported)} equipment the sources report are all in the ledger")


def check_classes(
    cfg: AgentSettings, inventory: Sequence[EquipmentItem], config_file: str | os.PathLike[str]
) -> CheckResult:
    """The equipment the agent expects data from (connected in the ledger, or named by a source) whose
    ``kind`` no ``[[equipment_class]]`` names, with the file that lists it (``config_file`` for an
    ``[[equipment]]`` table, else the ``[inventory] csv``) and the closest class name. Such equipment is
    legitimate (the shipped example has one class for many kinds: online/offline is all the networking
    rate needs), so this is a warning, never a failure; ``fmc run`` logs the same at start."""
    classes = [c.name for c in cfg.equipment_class]
    reported = {e for s in cfg.sources() for e in s.feeds().equipment}
    expected = [e for e in inventory if e.connected or e.id in reported]
    in_config = {e.id for e in cfg.equipment}
    csv_file = cfg.inventory.csv
    # unconnected equipment no source names is offline all day: its class does not matter
    unclassified: dict[tuple[str, str], list[str]] = defaultdict(list)
    for e in expected:
        kind = e.kind or ""
        if kind not in classes:
            where = str(config_file) if e.id in in_config or csv_file is None else str(csv_file)
            unclassified[(where, kind)].append(e.id)
    if not unclassified:
        if not expected:
            return CheckResult("classes", True, "no equipment the agent expects data from (connected, or named "
                                                "by a source): no [[equipment_class]] needed")
        return CheckResult("classes", True, f"the {len(expected)} equipment the agent expects data from have an "
                                            "[[equipment_class]] for their kind")
    by_file: dict[str, list[str]] = defaultdict(list)
    for (where, kind), ids in unclassified.items():
        by_file[where].append(f"{_named(ids)} of kind {kind!r}{_closest(kind, classes)}")
    named = "; ".join(f"{where}: {', '.join(kinds)}" for where, kinds in by_file.items())
    count = sum(len(ids) for ids in unclassified.values())
    return CheckResult("classes", True, (
        f"{count} equipment the agent expects data from have a kind no [[equipment_class]] names: {named}; "
        "their states are online/offline only (good data counts as idle, never running, so their utilisation "
        "reads 0): add an [[equipment_class]] with that name and the rules that say when it runs, or correct "
        "the kind (the kind field, or the 设备类别 it is made from)"), warning=True)


def _closest(kind: str, classes: Sequence[str]) -> str:
    """' (did you mean 'cnc_lathe'?)' for the class name most like ``kind``, case aside; '' when none is."""
    folded = {c.casefold(): c for c in classes}
    match = difflib.get_close_matches(kind.casefold(), list(folded), n=1)
    return f" (did you mean {folded[match[0]]!r}?)" if match else ""
