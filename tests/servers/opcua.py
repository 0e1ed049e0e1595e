"""Real asyncua OPC UA servers for the tests, on free 127.0.0.1 ports.

``OpcUaTestServer`` runs an asyncua ``Server`` in a thread with its own event loop, so it keeps
answering while a test (sync or async) waits for the source under test, which runs in its own
thread too. The address space looks like a small machine shop:

    Objects
      Machines                      (OPC 40001 folder, Machinery namespace)
        CNC-01, CNC-02              machine tools (OPC 40501 shape): Identification,
                                    MachineryBuildingBlocks, Equipment, Monitoring (MachineTool with
                                    OperationMode and Power, Channel1 with ChannelState, Spindle with
                                    ActualSpeed), Production/ActiveProgram/State/CurrentState
        Loom-07                     an OPC 40001 machine: MachineryItemState, Power
      Filler                        a PackML object: Admin, Status, BaseStateMachine/CurrentState
      Lab                           plain variables: Temperature, Counter, Label, Flag

Every variable has a string NodeId in the plant namespace ("CNC-01.Spindle.ActualSpeed"), so a
test can name it by that id or by browse path. ``restart(namespace_shift=n)`` stops the server
and starts a new one on the same port whose namespaces are registered after n filler
namespaces, which renumbers every namespace index (what a real server may do after an update).

Options: Basic256Sha256 security with a server certificate made here and a trust folder for
client certificates, users with passwords, a cap on monitored items per server (asyncua has
none; the cap answers BadTooManyMonitoredItems as real servers do), a stopped clock
(CurrentTime no longer advances) and a freeze (the server's loop blocks: nothing answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from asyncua import Server, ua
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.user_managers import UserManager
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.ports import free_port

HOST = "127.0.0.1"
PLANT_URI = "http://example.com/plant/"
MACHINERY_URI = "http://opcfoundation.org/UA/Machinery/"
MACHINE_TOOL_URI = "http://opcfoundation.org/UA/MachineTool/"
DI_URI = "http://opcfoundation.org/UA/DI/"
PACKML_URI = "http://opcfoundation.org/UA/PackML/"
SERVER_APPLICATION_URI = "urn:fmc-test:opcua-server"
# registered in this order after the filler namespaces; index = 2 + shift + position
NAMESPACES = (PLANT_URI, DI_URI, MACHINERY_URI, MACHINE_TOOL_URI, PACKML_URI)
START_TIMEOUT_S = 30.0

T = TypeVar("T")


def make_server_certificate(directory: Path, application_uri: str = SERVER_APPLICATION_URI) -> tuple[Path, Path]:
    """A self-signed server certificate (DER) and key (PEM), made with asyncua's own generator."""
    directory.mkdir(parents=True, exist_ok=True)
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key, "fmc test server", {}, [x509.UniformResourceIdentifier(application_uri), x509.DNSName("localhost"),
                                     x509.DNSName(socket.gethostname())],
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], days=30,
    )
    cert_path, key_path = directory / "server.der", directory / "server-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    return cert_path, key_path


class _Users(UserManager):
    """Username/password from a dict; anonymous and certificate users when allowed."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is None:
            return User(role=UserRole.User)
        if self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


class OpcUaTestServer:
    """One asyncua server on 127.0.0.1 in a thread of its own. ``with`` starts and stops it."""

    def __init__(
        self,
        *,
        port: int | None = None,
        namespace_shift: int = 0,
        security_dir: Path | None = None,
        users: dict[str, str] | None = None,
        allow_anonymous: bool = True,
        max_monitored_items: int | None = None,
        extra_variables: int = 0,
        layout: str = "shop",
    ) -> None:
        self.port = port or free_port()
        self.url = f"opc.tcp://{HOST}:{self.port}/fmc-test/"
        self.namespace_shift = namespace_shift
        self.security_dir = security_dir
        self.users = users
        self.allow_anonymous = allow_anonymous
        self.max_monitored_items = max_monitored_items
        self.extra_variables = extra_variables
        self.layout = layout  # "shop" (the docstring's), or "factory" (_build_factory)
        self.server_certificate: Path | None = None
        self.server_key: Path | None = None
        self.trusted_clients: Path | None = None
        if security_dir is not None:
            self.server_certificate, self.server_key = make_server_certificate(security_dir / "server")
            self.trusted_clients = security_dir / "trusted-clients"
            self.trusted_clients.mkdir(parents=True, exist_ok=True)
        self.starts = 0
        # the factory's registers keep their values over a restart, as a PLC's do: what tests wrote is
        # written again when the server comes back
        self.retained: dict[str, ua.DataValue] = {}
        self._server: Server | None = None
        self._monitored_items = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"opcua-test-{self.port}", daemon=True)
        self._thread.start()

    # --- thread plumbing ------------------------------------------------------------------

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, timeout: float = START_TIMEOUT_S) -> T:
        """Run ``fn(*args)`` in the server's loop and wait for its result."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(fn(*args), self._loop)  # type: ignore[arg-type]
        return future.result(timeout)

    def __enter__(self) -> OpcUaTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> OpcUaTestServer:
        self.call(self._start)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self.call(self._stop)

    def restart(self, *, namespace_shift: int | None = None, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds, start again on the same port (optionally renumbered)."""
        self.stop()
        time.sleep(down_s)
        if namespace_shift is not None:
            self.namespace_shift = namespace_shift
        self.start()

    def close(self) -> None:
        self.stop()
        self.call(self._cancel_leftovers)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    # --- the server -------------------------------------------------------------------------

    async def _start(self) -> None:
        user_manager = _Users(self.users or {}) if (self.users is not None or self.security_dir) else None
        server = Server(user_manager=user_manager)
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name("fmc test server")
        await server.set_application_uri(SERVER_APPLICATION_URI)
        tokens: list[type] = [ua.UserNameIdentityToken] if self.users is not None else []
        if self.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        if self.security_dir is not None:
            assert self.server_certificate and self.server_key and self.trusted_clients
            await server.load_certificate(str(self.server_certificate))
            await server.load_private_key(str(self.server_key))
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                                        ua.SecurityPolicyType.Basic256Sha256_Sign])
            trust = TrustStore([self.trusted_clients], [])
            await trust.load()
            server.set_certificate_validator(CertificateValidator(
                CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT, trust))
            tokens.append(ua.X509IdentityToken)
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_identity_tokens(tokens)
        for i in range(self.namespace_shift):
            await server.register_namespace(f"urn:fmc-test:filler:{i}")
        indexes = {uri: await server.register_namespace(uri) for uri in NAMESPACES}
        if self.layout == "factory":
            await _build_factory(server, indexes)
            for name, dv in self.retained.items():
                await server.write_attribute_value(ua.NodeId(name, indexes[PLANT_URI]), dv)
        else:
            await _build_plant(server, indexes, self.extra_variables)
        if self.max_monitored_items is not None:
            self._cap_monitored_items(server, self.max_monitored_items)
        await server.start()
        self._server = server
        self.starts += 1

    async def _stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        # asyncua's stop() waits for its clock task to finish a 1 s sleep; end the task at once instead
        iserver = server.iserver
        iserver._time_task_stop = True
        task, iserver.time_task = iserver.time_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await server.stop()

    async def _cancel_leftovers(self) -> None:
        # a stopped asyncua server leaves the tasks of sessions it did not close (session timeouts)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _cap_monitored_items(self, server: Server, cap: int) -> None:
        # asyncua has no such limit; real servers do. Items beyond the cap are refused one by one.
        service = server.iserver.subscription_service
        original = service.create_monitored_items
        self._monitored_items = 0

        async def create_monitored_items(params: ua.CreateMonitoredItemsParameters) -> list[Any]:
            allowed = max(0, cap - self._monitored_items)
            items = params.ItemsToCreate
            params.ItemsToCreate = items[:allowed]
            results = await original(params) if params.ItemsToCreate else []
            self._monitored_items += len(params.ItemsToCreate)
            refused = ua.MonitoredItemCreateResult(StatusCode=ua.StatusCode(ua.StatusCodes.BadTooManyMonitoredItems))
            return [*results, *([refused] * (len(items) - allowed))]

        service.create_monitored_items = create_monitored_items  # type: ignore[method-assign]

    # --- what tests do to it -------------------------------------------------------------------

    @property
    def server(self) -> Server:
        assert self._server is not None, "the server is not running"
        return self._server

    def namespace_index(self, uri: str) -> int:
        return 2 + self.namespace_shift + NAMESPACES.index(uri)

    def node_id(self, name: str) -> ua.NodeId:
        return ua.NodeId(name, self.namespace_index(PLANT_URI))

    def write(
        self, name: str, value: Any, *, variant_type: ua.VariantType | None = None, status: int | None = None,
        source_ts: datetime | None = None, server_ts: datetime | None = None,
    ) -> None:
        """Set a variable as the device would: value, status and both timestamps (default: now)."""
        now = datetime.now(UTC)
        variant = ua.Variant(value, variant_type) if variant_type is not None else ua.Variant(value)
        dv = ua.DataValue(
            variant, StatusCode=ua.StatusCode(status if status is not None else 0),
            SourceTimestamp=source_ts or now, ServerTimestamp=server_ts or now,
        )

        async def write() -> None:
            await self.server.write_attribute_value(self.node_id(name), dv)

        self.call(write)
        if self.layout == "factory":
            self.retained[name] = dv

    def read(self, name: str) -> ua.DataValue:
        async def read() -> ua.DataValue:
            return self.server.read_attribute_value(self.node_id(name))

        return self.call(read)

    def open_sessions(self) -> int:
        """Sessions the server holds (active, or abandoned and not yet timed out)."""
        async def count() -> int:
            return len(self.server.iserver._external_sessions)

        return self.call(count)

    def stop_clock(self) -> None:
        """CurrentTime stops advancing (the server's time loop ends) while everything else answers."""
        async def stop() -> None:
            self.server.iserver._time_task_stop = True

        self.call(stop)

    def freeze(self, seconds: float) -> None:
        """Block the server's loop for ``seconds`` (returns at once): it answers nothing, TCP stays open."""
        self._loop.call_soon_threadsafe(time.sleep, seconds)


# --- address space -------------------------------------------------------------------------------------


async def _folder(parent: Any, ns: int, plant: int, path: str, name: str) -> Any:
    return await parent.add_object(ua.NodeId(path, plant), ua.QualifiedName(name, ns))


async def _variable(parent: Any, ns: int, plant: int, path: str, name: str, value: Any,
                    vtype: ua.VariantType | None = None) -> Any:
    variant = ua.Variant(value, vtype) if vtype is not None else ua.Variant(value)
    return await parent.add_variable(ua.NodeId(path, plant), ua.QualifiedName(name, ns), variant)


async def _build_plant(server: Server, ix: dict[str, int], extra_variables: int) -> None:
    plant, di, machinery, mt, packml = (ix[u] for u in NAMESPACES)
    objects = server.nodes.objects
    machines = await _folder(objects, machinery, plant, "Machines", "Machines")
    for n, (name, serial) in enumerate((("CNC-01", "SN-1001"), ("CNC-02", "SN-1002"))):
        cnc = await _folder(machines, plant, plant, name, name)
        ident = await _folder(cnc, di, plant, f"{name}.Identification", "Identification")
        await _variable(ident, di, plant, f"{name}.Identification.Manufacturer", "Manufacturer",
                        ua.LocalizedText("Hangzhou Machine Tool"))
        await _variable(ident, di, plant, f"{name}.Identification.Model", "Model", ua.LocalizedText("VMC-850"))
        await _variable(ident, di, plant, f"{name}.Identification.SerialNumber", "SerialNumber", serial)
        blocks = await _folder(cnc, di, plant, f"{name}.Blocks", "MachineryBuildingBlocks")
        item_state = await _folder(blocks, machinery, plant, f"{name}.ItemState", "MachineryItemState")
        await _variable(item_state, 0, plant, f"{name}.ItemState.CurrentState", "CurrentState",
                        ua.LocalizedText("Executing"))
        op_mode = await _folder(blocks, machinery, plant, f"{name}.OperationModeSM", "MachineryOperationMode")
        await _variable(op_mode, 0, plant, f"{name}.OperationModeSM.CurrentState", "CurrentState",
                        ua.LocalizedText("Processing"))
        await _folder(cnc, mt, plant, f"{name}.Equipment", "Equipment")
        monitoring = await _folder(cnc, mt, plant, f"{name}.Monitoring", "Monitoring")
        machine_tool = await _folder(monitoring, mt, plant, f"{name}.MachineTool", "MachineTool")
        await _variable(machine_tool, mt, plant, f"{name}.MachineTool.OperationMode", "OperationMode", 2,
                        ua.VariantType.Int32)
        await _variable(machine_tool, mt, plant, f"{name}.MachineTool.Power", "Power", 7.5 + n)
        channel = await _folder(monitoring, mt, plant, f"{name}.Channel1", "Channel1")
        await _variable(channel, mt, plant, f"{name}.Channel1.ChannelState", "ChannelState", 0, ua.VariantType.Int32)
        await _variable(channel, mt, plant, f"{name}.Channel1.FeedOverride", "FeedOverride", 100.0)
        spindle = await _folder(monitoring, mt, plant, f"{name}.Spindle", "Spindle")
        await _variable(spindle, mt, plant, f"{name}.Spindle.ActualSpeed", "ActualSpeed", 0.0)
        production = await _folder(cnc, mt, plant, f"{name}.Production", "Production")
        program = await _folder(production, mt, plant, f"{name}.ActiveProgram", "ActiveProgram")
        await _variable(program, mt, plant, f"{name}.ActiveProgram.Name", "Name", "O1234")
        state = await _folder(program, mt, plant, f"{name}.ActiveProgram.State", "State")
        await _variable(state, 0, plant, f"{name}.ActiveProgram.State.CurrentState", "CurrentState",
                        ua.LocalizedText("Running"))
    loom = await _folder(machines, plant, plant, "Loom-07", "Loom-07")
    ident = await _folder(loom, di, plant, "Loom-07.Identification", "Identification")
    await _variable(ident, di, plant, "Loom-07.Identification.Manufacturer", "Manufacturer",
                    ua.LocalizedText("Shaoxing Looms"))
    blocks = await _folder(loom, di, plant, "Loom-07.Blocks", "MachineryBuildingBlocks")
    item_state = await _folder(blocks, machinery, plant, "Loom-07.ItemState", "MachineryItemState")
    await _variable(item_state, 0, plant, "Loom-07.ItemState.CurrentState", "CurrentState",
                    ua.LocalizedText("NotExecuting"))
    await _variable(loom, plant, plant, "Loom-07.Power", "Power", 3.2)

    filler = await _folder(objects, packml, plant, "Filler", "Filler")
    await _folder(filler, packml, plant, "Filler.Admin", "Admin")
    await _folder(filler, packml, plant, "Filler.Status", "Status")
    base_sm = await _folder(filler, packml, plant, "Filler.BaseStateMachine", "BaseStateMachine")
    await _variable(base_sm, 0, plant, "Filler.BaseStateMachine.CurrentState", "CurrentState",
                    ua.LocalizedText("Execute"))

    lab = await _folder(objects, plant, plant, "Lab", "Lab")
    await _variable(lab, plant, plant, "Lab.Temperature", "Temperature", 21.5)
    await _variable(lab, plant, plant, "Lab.Counter", "Counter", 0, ua.VariantType.Int32)
    await _variable(lab, plant, plant, "Lab.Label", "Label", "ready")
    await _variable(lab, plant, plant, "Lab.Flag", "Flag", False)
    if extra_variables:
        bulk = await _folder(objects, plant, plant, "Bulk", "Bulk")
        for i in range(extra_variables):
            await _variable(bulk, plant, plant, f"Bulk.V{i}", f"V{i}", float(i))


# the "factory" layout: a plant as a vendor's server lays it out (not the companion specs' full shape)
FACTORY_METERS = {  # BrowseName -> (start reading, carrier)
    "Main_Electricity_kWh": (125_000.0, "electricity"),
    "NaturalGas_m3": (8_000.0, "natural_gas"),
    "WaterIntake_m3": (3_200.0, "water_intake"),
    "Wastewater_m3": (2_900.0, "wastewater"),
}
FACTORY_CNCS = ("CNC-01", "CNC-02")


async def _build_factory(server: Server, ix: dict[str, int]) -> None:
    """Objects/Meters: four site meters (counters). Objects/Machines: CNC-01 and CNC-02 with OPC 40001
    MachineryItemState and OPC 40501 Monitoring/Channel1/ChannelState, Monitoring/MachineTool/OperationMode
    and Monitoring/Spindle/ActualSpeed directly under the machine (no Equipment child) and an energy
    counter Energy_kWh; Loom-07 with only Running, PickRate and its ActiveEnergy counter.
    NodeIds are strings in the plant namespace, "Meters.Main_Electricity_kWh", "CNC-01.Energy_kWh", …"""
    plant, di, machinery, mt = ix[PLANT_URI], ix[DI_URI], ix[MACHINERY_URI], ix[MACHINE_TOOL_URI]
    objects = server.nodes.objects
    meters = await _folder(objects, plant, plant, "Meters", "Meters")
    for name, (start, _) in FACTORY_METERS.items():
        await _variable(meters, plant, plant, f"Meters.{name}", name, start)
    machines = await _folder(objects, machinery, plant, "Machines", "Machines")
    for name in FACTORY_CNCS:
        cnc = await _folder(machines, plant, plant, name, name)
        ident = await _folder(cnc, di, plant, f"{name}.Identification", "Identification")
        await _variable(ident, di, plant, f"{name}.Identification.Manufacturer", "Manufacturer",
                        ua.LocalizedText("Ningbo CNC"))
        item_state = await _folder(cnc, machinery, plant, f"{name}.ItemState", "MachineryItemState")
        await _variable(item_state, 0, plant, f"{name}.ItemState.CurrentState", "CurrentState",
                        ua.LocalizedText("Executing"))
        monitoring = await _folder(cnc, mt, plant, f"{name}.Monitoring", "Monitoring")
        machine_tool = await _folder(monitoring, mt, plant, f"{name}.MachineTool", "MachineTool")
        await _variable(machine_tool, mt, plant, f"{name}.MachineTool.OperationMode", "OperationMode", 2,
                        ua.VariantType.Int32)
        channel = await _folder(monitoring, mt, plant, f"{name}.Channel1", "Channel1")
        await _variable(channel, mt, plant, f"{name}.Channel1.ChannelState", "ChannelState", 0, ua.VariantType.Int32)
        spindle = await _folder(monitoring, mt, plant, f"{name}.Spindle", "Spindle")
        await _variable(spindle, mt, plant, f"{name}.Spindle.ActualSpeed", "ActualSpeed", 1200.0)
        await _variable(cnc, plant, plant, f"{name}.Energy_kWh", "Energy_kWh", 4_000.0)
    loom = await _folder(machines, plant, plant, "Loom-07", "Loom-07")
    await _variable(loom, plant, plant, "Loom-07.Running", "Running", True)
    await _variable(loom, plant, plant, "Loom-07.PickRate", "PickRate", 450.0)
    await _variable(loom, plant, plant, "Loom-07.ActiveEnergy", "ActiveEnergy", 900.0)


def utc(seconds_ago: float = 0.0) -> datetime:
    """A whole-millisecond UTC time ``seconds_ago`` before now (exact after an OPC UA round trip)."""
    t = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)
