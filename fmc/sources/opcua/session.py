"""One OPC UA session (``_Session``): subscriptions, polling, the watchdog, and taking it over again.

``setup`` resolves the nodes (``nodes.py``), creates one subscription per (sampling interval,
queue size) with monitored items in batches, and polls the nodes the server will not monitor
and the ``mode = "poll"`` ones. ``on_publish`` is asyncua's callback for every PublishResponse:
it works on the raw ``PublishResult`` (no ``Subscription`` or ``Node`` objects per notification)
and hands the points of each response to the source at once. ``supervise`` is the watchdog: it
returns why the session ended (the connection closed, no publish response or keep-alive for
``watchdog_s``, the server's CurrentTime stalled or unanswered) or None when stopping. After a
broken connection the same object is kept: ``suspend`` drops the connection, ``resume`` takes
the session over on a new one, and first asks the server again (Republish) for the notification
messages it had sent that never arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from asyncua import ua
from asyncua.client.ua_client import UaClientState

from fmc.agent.plugin import Rejection
from fmc.core.points import Point
from fmc.sources.opcua.connection import (
    ConnectedClient,
    _status_name,
    _stop_publish_loop,
    close_client,
    describe_failure,
    drop_connection,
    reactivate_session,
)
from fmc.sources.opcua.convert import _NodePlan, change_to_point, data_value_to_point
from fmc.sources.opcua.nodes import (
    _NODE_UNUSABLE,
    DEFAULT_ITEMS_PER_CALL,
    DEFAULT_NODES_PER_READ,
    DEFAULT_PATHS_PER_CALL,
    _read_params,
    read_namespace_array,
    read_operation_limits,
    resolve_aliases,
    resolve_nodes,
)
from fmc.sources.opcua.publish import DataChanges, acknowledge_later, install

if TYPE_CHECKING:
    from fmc.sources.opcua.source import OpcUaSource

MAX_NOTIFICATIONS_PER_PUBLISH = 10_000
MIN_PUBLISHING_MS = 100.0
SUPERVISE_TICK_S = 0.25
# a polled node the server calls unusable (BadNodeIdUnknown, BadNotReadable, …: a PLC program being
# downloaded, say) is read again after this long, doubling up to the longest, while the session lives
UNUSABLE_RETRY_S = (5.0, 300.0)
_CURRENT_TIME = ua.NodeId(ua.ObjectIds.Server_ServerStatus_CurrentTime, 0)
# a server keeps only so many unacknowledged messages; asking for more than this after one broken
# connection means something else is wrong
MAX_REPUBLISH = 10_000

_S = ua.StatusCodes
# the server will not monitor these nodes (or not at all): read them periodically instead
_POLL_INSTEAD = frozenset({
    _S.BadTooManyMonitoredItems, _S.BadNotSupported, _S.BadServiceUnsupported, _S.BadTooManySubscriptions,
    _S.BadMonitoredItemIdInvalid,
})
# the server refused the deadband filter: monitor without it
_FILTER_REFUSED = frozenset({
    _S.BadMonitoredItemFilterUnsupported, _S.BadFilterNotAllowed, _S.BadMonitoredItemFilterInvalid,
    _S.BadDeadbandFilterInvalid,
})


@dataclass(slots=True)
class _LiveNode:
    plan: _NodePlan
    node_id: ua.NodeId
    topic: str  # the resolved NodeId string, the "topic" of rejection records
    poll_interval_s: float = 0.0


class _Session:
    """One OPC UA session: its handles, subscriptions, poll tasks and watchdog.

    It survives a broken connection when the server still holds it (``resume``); a new object
    is made for a new session.
    """

    def __init__(self, source: OpcUaSource, connected: ConnectedClient) -> None:
        self.source = source
        self.cfg = source.cfg
        self.client = connected.client
        self.limits = {"read": DEFAULT_NODES_PER_READ, "items": DEFAULT_ITEMS_PER_CALL,
                       "paths": DEFAULT_PATHS_PER_CALL}
        self.prefer_source = self.cfg.timestamp == "source"
        self.handles: dict[int, _LiveNode] = {}
        self.next_handle = 1
        self.subscription_ids: list[int] = []
        # subscription id -> sequence number of the last notification message with data received
        self.last_sequence: dict[int, int] = {}
        self.subscribed = 0
        self.polled: list[_LiveNode] = []
        self.unresolved = 0
        self.indexes: dict[str, int] = {}
        self.namespace_array: list[str] = []
        self.last_publish = time.monotonic()
        self.keepalive_limit_s = self.cfg.watchdog_s
        self.channel_opened = time.monotonic()
        self.lost_reason: str | None = None
        self.resumable = True
        self.lost = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.resting: dict[int, tuple[float, float]] = {}  # id(polled node) -> (read again at, next wait)
        # Hear of a closed socket at once (asyncua calls state listeners from connection_lost), before
        # the publish loop wakes up to its failed request and logs it as a crash.
        add_listener = getattr(self.client.uaclient, "_add_state_listener", None)
        if add_listener is not None:
            add_listener(self._on_client_state)

    def _on_client_state(self, state: UaClientState) -> None:
        if state is UaClientState.DISCONNECTED:
            _stop_publish_loop(self.client)
            self.lose("the connection closed")

    def lose(self, reason: str, *, resumable: bool = True) -> None:
        if self.lost_reason is None:
            self.lost_reason = reason
            self.resumable = resumable
        self.lost.set()

    # --- data ----------------------------------------------------------------------------

    def on_publish(self, result: ua.PublishResult) -> None:
        """asyncua's publish loop calls this for every PublishResponse of our subscriptions."""
        self.last_publish = time.monotonic()
        data = result.NotificationMessage.NotificationData
        if not data:
            return  # keep-alive
        self.last_sequence[result.SubscriptionId] = result.NotificationMessage.SequenceNumber
        received_ns = time.time_ns()
        points: list[Point] = []
        rejected: list[tuple[str, Rejection]] = []
        clock_faults: list[_NodePlan] = []
        handles = self.handles
        prefer_source = self.prefer_source
        changes = 0
        for notification in data:
            if type(notification) is DataChanges:
                batch = notification.changes
                changes += len(batch)
                for change in batch:
                    node = handles.get(change[0])
                    if node is not None:
                        change_to_point(node.plan, node.topic, change, received_ns, prefer_source, points, rejected,
                                        clock_faults)
            elif type(notification) is ua.DataChangeNotification:
                items = notification.MonitoredItems
                changes += len(items)
                for item in items:
                    node = handles.get(item.ClientHandle)
                    if node is not None:
                        data_value_to_point(node.plan, node.topic, item.Value, received_ns, prefer_source, points,
                                            rejected, clock_faults)
            elif isinstance(notification, ua.StatusChangeNotification):
                status = notification.Status
                if status is not None and not status.is_good():
                    self.lose(f"the server ended subscription {result.SubscriptionId} ({status.name})",
                              resumable=False)
        self.source.deliver(points, rejected, changes)
        self.last_publish = time.monotonic()  # a slow ingest (full queue) must not look like a silent server
        if clock_faults:
            self.log_clock_faults(clock_faults)

    def log_clock_faults(self, plans: list[_NodePlan]) -> None:
        for plan in plans:
            self.source.log.warning(
                "%s (%s): the server sent a timestamp before 2000 or in the future; using the other timestamp or "
                "the receive time instead (check the device's clock)", plan.where, plan.address,
            )

    # --- set-up --------------------------------------------------------------------------

    async def read_indexes(self) -> dict[str, int]:
        """Namespace aliases resolved by URI against the server's current NamespaceArray."""
        namespace_array = await read_namespace_array(self.client)
        indexes, missing = resolve_aliases(self.cfg.namespace_uris(), namespace_array)
        for alias, uri in missing.items():
            self.source.log.error("namespace %s = %r is not on the server (its NamespaceArray: %s); nodes using it "
                                  "are skipped", alias, uri, ", ".join(namespace_array))
        self.namespace_array = namespace_array
        return indexes

    async def setup(self) -> None:
        """Resolve every node, subscribe what can be subscribed, poll the rest."""
        self.indexes = await self.read_indexes()
        self.limits = await read_operation_limits(self.client)
        resolved = await resolve_nodes(self.client, self.cfg.node, self.indexes, self.namespace_array,
                                       self.limits["paths"])
        for node, why in resolved.failures:
            self.source.log.error("%s (%s): %s; skipped until the next session", node.where, node.address(), why)
        self.unresolved = len(resolved.failures)
        plan_of = self.source.plan_of
        live = [_LiveNode(plan_of(node), node_id, node_id.to_string(), node.effective_poll_interval_s())
                for node, node_id in resolved.nodes]
        to_poll = [n for n in live if n.plan.config.mode == "poll"]
        poll_instead = await self.subscribe([n for n in live if n.plan.config.mode == "subscribe"])
        if poll_instead:
            self.source.log.warning("%d node(s) cannot be subscribed, e.g. %s: %s; polling them instead",
                                    len(poll_instead), poll_instead[0][0].plan.where, poll_instead[0][1])
            to_poll.extend(n for n, _ in poll_instead)
        self.polled = to_poll
        self.start_polling()
        self.publish_live()

    def publish_live(self) -> None:
        """Tell the source which equipment and meters this session reads now (``live_equipment``,
        ``live_meters``): the nodes monitored and the polled ones not resting, not the config's."""
        nodes = [*self.handles.values(), *(n for n in self.polled if id(n) not in self.resting)]
        equipment = frozenset(n.plan.config.equipment for n in nodes
                              if n.plan.config.mode == "subscribe" and n.plan.config.equipment is not None)
        meters = frozenset(n.plan.config.meter for n in nodes if n.plan.config.meter is not None)
        self.source.set_live(equipment, meters)

    async def resume(self) -> bool:
        """Take the session over on a new connection; False when a new session is needed."""
        self.source.log.info("re-activating the existing session with %s", self.cfg.endpoint)
        try:
            back = await asyncio.wait_for(reactivate_session(self.client, self.cfg), self.cfg.timeout_s * 2)
            # the link may fail again right after: that is a failed re-activation too
            indexes = await self.read_indexes() if back else None
            if back and indexes == self.indexes:
                await self.republish_missed()
        except BaseException as e:
            drop_connection(self.client)
            if isinstance(e, asyncio.CancelledError):
                raise
            raise describe_failure(e, self.cfg) from e
        if not back:
            self.source.log.info("the server no longer has the session; opening a new one")
            return False
        if indexes != self.indexes:  # cannot happen without a restart, which ends sessions; but be sure
            self.source.log.info("namespace indexes changed; opening a new session")
            await close_client(self.client)
            return False
        self.client.uaclient.ensure_publish_loop()
        self.channel_opened = time.monotonic()
        self.last_publish = time.monotonic()
        self.lost_reason, self.resumable = None, True
        self.lost.clear()
        self.resting.clear()  # read every node again: what was unusable may be back
        self.start_polling()
        self.publish_live()
        return True

    async def republish_missed(self) -> int:
        """Ask the server again for each subscription's notification messages after the last one
        received, before publishing starts again; returns how many came.

        A message the server sent just before the connection broke is lost in flight, yet the
        server counts it as sent: it keeps it, unacknowledged, for Republish (OPC UA Part 4
        §5.13.6), and later messages do not repeat it. A changed state or count delivered only
        there would otherwise be missing until the node next changes. Sequence numbers of data
        messages are consecutive, so the server is asked for the next one until it has none
        (BadMessageNotAvailable; asyncua's server answers an empty message instead). They come
        before anything newer, so the plant model sees them in order.
        """
        session = self.client.uaclient.session
        resent = 0
        for subscription_id in self.subscription_ids:
            last = self.last_sequence.get(subscription_id)
            if last is not None:
                acknowledge_later(session, subscription_id, last)  # its acknowledgement died with the loop
            number = 1 if last is None or last >= 0xFFFF_FFFF else last + 1
            for _ in range(MAX_REPUBLISH):
                try:
                    message = await session.republish(subscription_id, number)
                except ua.UaStatusCodeError:  # BadMessageNotAvailable: nothing more was sent
                    break
                if message.SequenceNumber != number:
                    break
                self.on_publish(ua.PublishResult(SubscriptionId=subscription_id, NotificationMessage=message))
                acknowledge_later(session, subscription_id, number)
                resent += 1
                number = 1 if number >= 0xFFFF_FFFF else number + 1
        if resent:
            self.source.messages_republished += resent
            self.source.log.info("received %d notification message(s) again that the broken connection had lost",
                                 resent)
        return resent

    async def suspend(self) -> None:
        """Stop polling and drop the connection, keeping the session for ``resume``."""
        await self._stop_tasks()
        drop_connection(self.client)

    async def close(self) -> None:
        """Close the session for good (the server deletes its subscriptions)."""
        await self._stop_tasks()
        await close_client(self.client)

    async def _stop_tasks(self) -> None:
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def subscribe(self, nodes: list[_LiveNode]) -> list[tuple[_LiveNode, str]]:
        """Create subscriptions and monitored items; returns the nodes to poll instead, with why."""
        groups: dict[tuple[float, int], list[_LiveNode]] = {}
        for node in nodes:
            c = node.plan.config
            groups.setdefault((c.sampling_interval_ms, c.queue_size), []).append(node)
        poll_instead: list[tuple[_LiveNode, str]] = []
        for (sampling_ms, queue_size), members in sorted(groups.items()):
            try:
                subscription_id, keepalive_s = await self._create_subscription(sampling_ms)
            except ua.UaStatusCodeError as e:
                if e.code in _POLL_INSTEAD:
                    poll_instead.extend((n, f"the server cannot create a subscription ({_status_name(e.code)})")
                                        for n in members)
                    continue
                raise
            self.keepalive_limit_s = max(self.keepalive_limit_s, 2 * keepalive_s)
            poll_instead.extend(await self._create_items(subscription_id, sampling_ms, queue_size, members))
        return poll_instead

    async def _create_subscription(self, sampling_ms: float) -> tuple[int, float]:
        publishing_ms = max(MIN_PUBLISHING_MS, sampling_ms)
        # a keep-alive at least every half watchdog period, so silence means trouble
        keepalive = max(1, min(10_000, int(self.cfg.watchdog_s * 1000 / 2 // publishing_ms)))
        # the subscription lives as long as the session when no publish requests come (connection
        # down), so taking the session over again brings the subscriptions back with it
        lifetime = max(keepalive * 3, math.ceil(self.cfg.session_timeout_s * 1000 / publishing_ms))
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=publishing_ms, RequestedLifetimeCount=min(lifetime, 2**31 - 1),
            RequestedMaxKeepAliveCount=keepalive, MaxNotificationsPerPublish=MAX_NOTIFICATIONS_PER_PUBLISH,
            PublishingEnabled=True, Priority=0,
        )
        install(self.client.uaclient.session)  # before the publish loop starts: our decoding (publish.py)
        result = await self.client.uaclient.create_subscription(params, self.on_publish)
        self.subscription_ids.append(result.SubscriptionId)
        self.last_publish = time.monotonic()
        revised_keepalive_s = result.RevisedPublishingInterval * result.RevisedMaxKeepAliveCount / 1000
        if revised_keepalive_s > self.cfg.watchdog_s:
            self.source.log.warning(
                "the server sends keep-alives only every %.0fs, longer than watchdog_s = %.0f; the watchdog waits "
                "for two of them", revised_keepalive_s, self.cfg.watchdog_s,
            )
        return result.SubscriptionId, revised_keepalive_s

    async def _create_items(
        self, subscription_id: int, sampling_ms: float, queue_size: int, members: list[_LiveNode]
    ) -> list[tuple[_LiveNode, str]]:
        poll_instead: list[tuple[_LiveNode, str]] = []
        retry_without_filter: list[_LiveNode] = []
        step = max(1, self.limits["items"])
        for start in range(0, len(members), step):
            chunk = members[start : start + step]
            results = await self._create_chunk(subscription_id, sampling_ms, queue_size, chunk, with_filter=True)
            for node, code in results:
                if code in _FILTER_REFUSED:
                    retry_without_filter.append(node)
                elif code in _POLL_INSTEAD:
                    poll_instead.append((node, f"the server will not monitor it ({_status_name(code)})"))
                elif code is not None:
                    self._log_unusable(node, code)
        if retry_without_filter:
            self.source.log.warning(
                "the server refused the data change filter (deadband, or a meter's timestamp trigger) of %d "
                "node(s) (e.g. %s); monitoring them without it",
                len(retry_without_filter), retry_without_filter[0].plan.where,
            )
            results = await self._create_chunk(subscription_id, sampling_ms, queue_size, retry_without_filter,
                                               with_filter=False)
            for node, code in results:
                if code in _POLL_INSTEAD or code in _FILTER_REFUSED:
                    poll_instead.append((node, f"the server will not monitor it ({_status_name(code)})"))
                elif code is not None:
                    self._log_unusable(node, code)
        return poll_instead

    async def _create_chunk(
        self, subscription_id: int, sampling_ms: float, queue_size: int, chunk: list[_LiveNode], *, with_filter: bool
    ) -> list[tuple[_LiveNode, int | None]]:
        """Create monitored items; (node, None) when monitored, (node, status code) when not."""
        requests = []
        handles = []
        for node in chunk:
            handle = self.next_handle
            self.next_handle += 1
            # registered before the call: the first notification may arrive before its response
            self.handles[handle] = node
            handles.append(handle)
            config = node.plan.config
            deadband = config.deadband if with_filter else None
            mfilter = None
            if deadband is not None or (with_filter and config.kind == "meter"):
                # a meter's new reading may equal the last one (an interval meter's equal quarter hours, a
                # counter the device stamps again): with the timestamp in the trigger it is still reported
                mfilter = ua.DataChangeFilter(
                    Trigger=ua.DataChangeTrigger.StatusValueTimestamp if config.kind == "meter"
                    else ua.DataChangeTrigger.StatusValue,
                    DeadbandType=0 if deadband is None else 1 if deadband.type == "absolute" else 2,
                    DeadbandValue=0.0 if deadband is None else deadband.value,
                )
            requests.append(ua.MonitoredItemCreateRequest(
                ItemToMonitor=ua.ReadValueId(NodeId=node.node_id, AttributeId=ua.AttributeIds.Value),
                MonitoringMode=ua.MonitoringMode.Reporting,
                RequestedParameters=ua.MonitoringParameters(
                    ClientHandle=handle, SamplingInterval=float(sampling_ms), Filter=mfilter,
                    QueueSize=queue_size, DiscardOldest=True,
                ),
            ))
        params = ua.CreateMonitoredItemsParameters(
            SubscriptionId=subscription_id, TimestampsToReturn=ua.TimestampsToReturn.Both, ItemsToCreate=requests,
        )
        try:
            results = await self.client.uaclient.create_monitored_items(params)
        except BaseException:
            for handle in handles:
                self.handles.pop(handle, None)
            raise
        out: list[tuple[_LiveNode, int | None]] = []
        for node, handle, result in zip(chunk, handles, results, strict=True):
            if result.StatusCode.is_good():
                self.subscribed += 1
                out.append((node, None))
            else:
                self.handles.pop(handle, None)
                out.append((node, result.StatusCode.value))
        return out

    def _log_unusable(self, node: _LiveNode, code: int, retry_s: float | None = None) -> None:
        later = "it is skipped until the next connection" if retry_s is None else f"read again in {retry_s:g}s"
        self.source.log.error(
            "%s: node %s (%s) cannot be read (%s: %s); %s",
            node.plan.where, node.topic, node.plan.address, _status_name(code), ua.StatusCode(code).doc, later,
        )

    def start_polling(self) -> None:
        groups: dict[float, list[_LiveNode]] = {}
        for node in self.polled:
            groups.setdefault(node.poll_interval_s, []).append(node)
        for interval, members in sorted(groups.items()):
            self.tasks.append(asyncio.create_task(self._poll(interval, members), name=f"fmc-opcua-poll-{interval}"))

    async def _poll(self, interval_s: float, nodes: list[_LiveNode]) -> None:
        batch = max(1, self.limits["read"])
        nodes = list(nodes)
        due = time.monotonic()
        try:
            while nodes:
                points: list[Point] = []
                rejected: list[tuple[str, Rejection]] = []
                clock_faults: list[_NodePlan] = []
                unusable: list[tuple[_LiveNode, int]] = []
                back: list[_LiveNode] = []
                now = time.monotonic()
                reading = [n for n in nodes if id(n) not in self.resting or self.resting[id(n)][0] <= now]
                start = 0
                while start < len(reading):
                    chunk = reading[start : start + batch]
                    try:
                        values = await self.client.uaclient.read(_read_params([n.node_id for n in chunk]))
                    except ua.UaStatusCodeError as e:
                        if e.code == _S.BadTooManyOperations and batch > 1:
                            batch = max(1, batch // 2)  # the server's real limit is lower than it said
                            continue
                        raise
                    received_ns = time.time_ns()
                    for node, dv in zip(chunk, values, strict=True):
                        code = dv.StatusCode.value if dv.StatusCode is not None else 0
                        if code in _NODE_UNUSABLE:
                            unusable.append((node, code))
                            continue
                        if id(node) in self.resting:
                            back.append(node)
                        data_value_to_point(node.plan, node.topic, dv, received_ns, self.prefer_source, points,
                                            rejected, clock_faults)
                    start += len(chunk)
                for node, code in unusable:
                    wait = self.resting[id(node)][1] if id(node) in self.resting else UNUSABLE_RETRY_S[0]
                    if id(node) not in self.resting:
                        self._log_unusable(node, code, wait)
                    self.resting[id(node)] = (time.monotonic() + wait, min(2 * wait, UNUSABLE_RETRY_S[1]))
                for node in back:
                    del self.resting[id(node)]
                    self.source.log.info("%s: node %s reads again", node.plan.where, node.topic)
                if unusable or back:
                    self.publish_live()
                self.source.deliver(points, rejected, len(points) + len(rejected))
                if clock_faults:
                    self.log_clock_faults(clock_faults)
                due += interval_s
                now = time.monotonic()
                if due < now:  # fell behind (slow server): skip the missed rounds, do not burst
                    due = now + interval_s
                await asyncio.sleep(due - now)
        except asyncio.CancelledError:
            raise
        except ua.UaStatusCodeError as e:
            self.lose(f"polling failed ({_status_name(e.code)})")
        except (ConnectionError, TimeoutError, OSError) as e:
            self.lose(f"polling failed: {describe_failure(e, self.cfg).message}")
        except Exception as e:
            self.source.log.exception("polling failed")
            self.lose(f"polling failed: {type(e).__name__}: {e}")

    # --- watchdog ------------------------------------------------------------------------

    async def supervise(self, stop: asyncio.Event) -> str | None:
        """Watch the session until ``stop`` (returns None) or until it fails (returns why)."""
        cfg = self.cfg
        probe_every = min(max(cfg.watchdog_s / 3, 0.5), 10.0)
        probe_timeout = min(cfg.timeout_s, cfg.watchdog_s)
        next_probe = time.monotonic()
        last_time: object = None
        last_time_change = time.monotonic()
        waiters = (asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.lost.wait()))
        try:
            while True:
                await asyncio.wait(waiters, timeout=SUPERVISE_TICK_S, return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set():
                    return None
                if self.lost.is_set():
                    return self.lost_reason
                now = time.monotonic()
                if self.client.uaclient.state is not UaClientState.CONNECTED:
                    return self._lost("the connection closed")
                if self.subscription_ids and now - self.last_publish > self.keepalive_limit_s:
                    return self._lost(f"no data and no keep-alive from the server for {now - self.last_publish:.1f}s "
                                      f"(watchdog_s = {cfg.watchdog_s:g}): the connection is open but silent")
                if now - self.channel_opened > 0.75 * self.client.secure_channel_timeout / 1000:
                    # the secure channel's token expires: renew it as OPC UA asks, at 75 % of its lifetime
                    try:
                        await asyncio.wait_for(self.client.open_secure_channel(renew=True), cfg.timeout_s)
                    except asyncio.CancelledError:
                        raise
                    except Exception as e:  # a busy server or a silent link: reconnect, as for any loss
                        return self._lost(f"renewing the secure channel failed: {describe_failure(e, cfg).message}")
                    self.client.uaclient.revolve_security_token()
                    self.channel_opened = now
                if now < next_probe:
                    continue
                next_probe = now + probe_every
                try:
                    [dv] = await asyncio.wait_for(self.client.uaclient.read(_read_params([_CURRENT_TIME])),
                                                  probe_timeout)
                except asyncio.CancelledError:
                    raise
                except TimeoutError:
                    return self._lost(f"the server did not answer a read of its CurrentTime within "
                                      f"{probe_timeout:g}s (watchdog)")
                except Exception as e:
                    return self._lost(f"reading the server's CurrentTime failed: {describe_failure(e, cfg).message}")
                current = dv.Value.Value if dv.Value is not None else None
                if current != last_time:
                    last_time, last_time_change = current, time.monotonic()
                elif time.monotonic() - last_time_change > cfg.watchdog_s:
                    return self._lost(f"the server's CurrentTime has not advanced for "
                                      f"{time.monotonic() - last_time_change:.1f}s (stuck at {current}; watchdog_s = "
                                      f"{cfg.watchdog_s:g}): the server is stalled")
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _lost(self, reason: str) -> str:
        self.lose(reason)
        return self.lost_reason or reason
