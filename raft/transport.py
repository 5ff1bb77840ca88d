"""One Raft port per process: every group's messages share one TCP link.

pysyncobj's own TCP transport opens a listening port per group, so a store
with a thousand Regions would need a thousand ports, and a split would have
to agree on new ports across stores. Here each process (store) has one
:class:`StoreTransportHub` listening at its Raft address; a group's replica
on that store is addressed by the store's address, and frames carry the
group id. pysyncobj sees an ordinary :class:`~pysyncobj.transport.Transport`
per group (:class:`MuxTransport`).

Links are one-way: the hub dials every store it must send to and only sends
on that connection; it only receives on connections others dialled. A peer
counts as *connected* for a group while our outgoing link to its store is up.

Security: without a cluster secret the hub binds the configured address
(loopback by default) and trusts it. With a secret every frame is encrypted
and authenticated with a key derived from it (Fernet, pysyncobj's scheme),
with a per-connection random key against replays; a frame that does not
decrypt closes the connection, so a peer without the secret cannot inject
messages (pickled frames are never unpickled before authentication).
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import socket
import struct
import zlib
from typing import Any

from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.node import TCPNode
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection
from pysyncobj.transport import Transport

from raft.lease import ECHO, STAMP, TRANSFER, LeaderLease

log = logging.getLogger(__name__)

RECONNECT_INTERVAL = 0.2
# A link whose unsent bytes pile up past this is dropped (and redialled):
# with links that never idle out, a peer behind a silent partition would
# otherwise make pysyncobj's write buffer grow without bound. Raft resends
# whatever a dropped link lost.
MAX_UNSENT_BYTES = 64 * 1024 * 1024
# A learner no voter has fed for this long says hello again (seconds).
LEARNER_HELLO_INTERVAL = 0.5
# The hub's housekeeping (redial, learner hellos, undrained links) runs this
# often, not in every driver loop (several per write): it walks every group
# and every link, and none of it is more urgent than RECONNECT_INTERVAL.
HUB_TICK_INTERVAL = 0.01
# Frame kinds: introduce the dialling store; a group's Raft message; a
# learner asking to be fed; a voter asking the leader to hand it leadership.
_HELLO, _MSG, _LEARNER, _TRANSFER = 0, 1, 2, 3


def _never_idle_out(conn: TcpConnection) -> None:
    """pysyncobj closes a connection that has *read* nothing for its timeout.
    Our links are one-way (an outgoing link only sends, an incoming one only
    reads, and between two followers nothing flows for long), so that timeout
    tore every link down every few seconds. A dead peer is still noticed: a
    send to it fails, and Raft's own timers handle silence."""
    conn._TcpConnection__timeout = float("inf")


_STORED_BLOCK = struct.Struct("<BHH")
_MAX_STORED = 0xFFFF


def _zlib_stored(data: bytes) -> bytes:
    """``data`` as a zlib stream of stored (uncompressed) blocks: what
    pysyncobj's receiving side decompresses, without compressing. Its sender
    calls ``zlib.compress`` per message, and that costs ~100 µs even for a
    300-byte message (the deflate state is 256 KiB, allocated and faulted in
    every call): 4 messages per replicated write, more than all the Raft
    logic of the write. Raft messages between stores stay uncompressed, as in
    TiKV."""
    out: list[bytes | memoryview] = [
        b"\x78\x01"
    ]  # deflate, 32 KiB window, no dictionary; header % 31 == 0
    view = memoryview(data)
    pos, n = 0, len(data)
    while True:
        chunk = view[pos : pos + _MAX_STORED]
        pos += len(chunk)
        out.append(_STORED_BLOCK.pack(pos >= n, len(chunk), len(chunk) ^ 0xFFFF))
        out.append(chunk)
        if pos >= n:
            break
    out.append(struct.pack(">I", zlib.adler32(data)))
    return b"".join(out)


class _Connection(TcpConnection):  # type: ignore[misc]
    """pysyncobj's connection, with a cheaper ``send`` (same wire format)."""

    def send(self, message: Any) -> None:
        if self.sendRandKey:
            message = (self.sendRandKey, message)
        data = _zlib_stored(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
        if self.encryptor:
            data = self.encryptor.encrypt_at_time(data, int(monotonic_time()))
        self._TcpConnection__writeBuffer += struct.pack("i", len(data)) + data
        self._TcpConnection__trySendBuffer()


class _Link:
    """Our outgoing connection to one remote store."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self.conn: TcpConnection | None = None
        self.ready = False
        self.last_attempt = 0.0


class StoreTransportHub:
    def __init__(
        self,
        poller: Any,
        self_addr: str,
        *,
        encryptor: Any = None,
        connection_timeout: float = 3.5,
        buffer_size: int = 2**18,
        dial: dict[str, str] | None = None,
    ) -> None:
        """``dial`` maps a peer's Raft address (its identity) to the address
        to connect to instead, e.g. a proxy that fault tests can cut."""
        self.dial = dict(dial or {})
        self.poller = poller
        self.self_addr = self_addr
        self.encryptor = encryptor
        self.timeout = connection_timeout
        self.buffer_size = buffer_size
        host, port = self_addr.rsplit(":", 1)
        self._host, self._port = host, int(port)
        self._listener: socket.socket | None = None
        self.bound = False
        self.links: dict[str, _Link] = {}
        self.groups: dict[int, MuxTransport] = {}
        self._incoming: set[TcpConnection] = set()
        self._next_tick = 0.0  # monotonic_time() of the next housekeeping pass

    # ------------------------------------------------------------ lifecycle
    def bind(self) -> None:
        """Listen at the configured address; port 0 picks a free port, and
        :attr:`self_addr` then names the real one."""
        if self.bound:
            return
        sock = socket.socket(socket.AF_INET6 if ":" in self._host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        sock.listen(128)
        sock.setblocking(False)
        self._port = sock.getsockname()[1]
        self.self_addr = f"{self._host}:{self._port}"
        self._listener = sock
        self.poller.subscribe(sock.fileno(), self._on_accept, POLL_EVENT_TYPE.READ)
        self.bound = True

    def _on_accept(self, _fd: int, _event: int) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                log.exception("raft listener failed")
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.buffer_size)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.buffer_size)
            sock.setblocking(False)
            conn = _Connection(
                poller=self.poller,
                socket=sock,
                timeout=self.timeout,
                sendBufferSize=self.buffer_size,
                recvBufferSize=self.buffer_size,
            )
            self._on_incoming(conn)

    def close(self) -> None:
        for link in self.links.values():
            if link.conn is not None:
                link.conn.disconnect()
        for conn in list(self._incoming):
            conn.disconnect()
        if self._listener is not None:
            self.poller.unsubscribe(self._listener.fileno())
            self._listener.close()
            self._listener = None
        self.bound = False

    # ------------------------------------------------------------ outgoing
    def _wanted(self) -> set[str]:
        out: set[str] = set()
        for t in self.groups.values():
            out |= t.remote_addrs()
        return out

    def tick(self) -> None:
        """Driver thread, every loop: every HUB_TICK_INTERVAL (or at once
        after a group was added or a link went down), (re)dial the stores
        some group needs; learners not being fed introduce themselves again."""
        now = monotonic_time()
        if now < self._next_tick:
            return
        self._next_tick = now + HUB_TICK_INTERVAL
        for t in list(self.groups.values()):
            t.keep_introducing(now)
        for addr in self._wanted():
            link = self.links.setdefault(addr, _Link(addr))
            conn = link.conn
            if conn is not None and conn.state != CONNECTION_STATE.DISCONNECTED:
                if conn.getSendBufferSize() > MAX_UNSENT_BYTES:
                    log.warning("raft link to %s is not draining; reconnecting", addr)
                    conn.disconnect()
                continue
            if now - link.last_attempt < RECONNECT_INTERVAL:
                continue
            link.last_attempt = now
            self._dial(link)

    def _dial(self, link: _Link) -> None:
        conn = _Connection(
            poller=self.poller,
            timeout=self.timeout,
            sendBufferSize=self.buffer_size,
            recvBufferSize=self.buffer_size,
        )
        conn.encryptor = self.encryptor
        _never_idle_out(conn)
        conn.setOnConnectedCallback(functools.partial(self._on_dialled, link, conn))
        conn.setOnDisconnectedCallback(functools.partial(self._on_link_down, link, conn))
        link.conn, link.ready = conn, False
        host, port = self.dial.get(link.addr, link.addr).rsplit(":", 1)
        if not conn.connect(host, int(port)):
            link.conn = None

    def _on_dialled(self, link: _Link, conn: TcpConnection) -> None:
        if self.encryptor is not None:
            # Key exchange first (see module docstring); ready on the reply.
            conn.setOnMessageReceivedCallback(functools.partial(self._on_dialled_msg, link, conn))
            conn.recvRandKey = os.urandom(32)
            conn.send(conn.recvRandKey)
        else:
            conn.send((_HELLO, self.self_addr))
            self._link_up(link)

    def _on_dialled_msg(self, link: _Link, conn: TcpConnection, message: Any) -> None:
        if not conn.sendRandKey:
            conn.sendRandKey = message
            conn.send((_HELLO, self.self_addr))
            self._link_up(link)

    def _link_up(self, link: _Link) -> None:
        link.ready = True
        for t in list(self.groups.values()):
            t.on_link_up(link.addr)

    def _on_link_down(self, link: _Link, conn: TcpConnection) -> None:
        if link.conn is not conn:
            return
        self._next_tick = 0.0  # redial (as soon as RECONNECT_INTERVAL allows)
        was_ready = link.ready
        link.conn, link.ready = None, False
        if was_ready:
            for t in list(self.groups.values()):
                t.on_link_down(link.addr)

    def link_ready(self, addr: str) -> bool:
        link = self.links.get(addr)
        return bool(link and link.ready)

    def send(self, addr: str, group_id: int, kind: int, message: Any) -> bool:
        link = self.links.get(addr)
        conn = link.conn if link is not None and link.ready else None
        if conn is None:
            return False
        conn.send((kind, group_id, message))  # may disconnect (and clear link.conn)
        return bool(conn.state != CONNECTION_STATE.DISCONNECTED)

    # ------------------------------------------------------------ incoming
    def _on_incoming(self, conn: TcpConnection) -> None:
        conn.encryptor = self.encryptor
        _never_idle_out(conn)
        self._incoming.add(conn)
        state: dict[str, Any] = {"peer": None}
        conn.setOnMessageReceivedCallback(functools.partial(self._on_incoming_msg, conn, state))
        conn.setOnDisconnectedCallback(functools.partial(self._on_incoming_down, conn, state))

    def _on_incoming_msg(self, conn: TcpConnection, state: dict[str, Any], message: Any) -> None:
        if self.encryptor is not None and not conn.sendRandKey:
            conn.sendRandKey = message
            conn.recvRandKey = os.urandom(32)
            conn.send(conn.recvRandKey)
            return
        try:
            kind = message[0]
            if kind == _HELLO:
                state["peer"] = str(message[1])
                return
            peer = state["peer"]
            if peer is None:
                raise ValueError("frame before hello")
            _, group_id, payload = message
        except (TypeError, ValueError, IndexError):
            log.warning("malformed raft frame; closing the connection")
            conn.disconnect()
            return
        t = self.groups.get(group_id)
        if t is None:
            return  # not (or no longer) hosted here; the sender retries
        if kind == _LEARNER:
            t.on_learner_hello(peer)
        elif kind == _TRANSFER:
            t.on_transfer_request(peer)
        else:
            t.deliver(peer, payload)

    def _on_incoming_down(self, conn: TcpConnection, state: dict[str, Any]) -> None:
        self._incoming.discard(conn)
        peer = state["peer"]
        if peer is not None:
            for t in list(self.groups.values()):
                t.on_learner_gone(peer)


class MuxTransport(Transport):  # type: ignore[misc]
    """The per-group face of the hub, as pysyncobj expects it. Construct
    through :func:`transport_class`."""

    hub: StoreTransportHub
    group_id: int
    lease: LeaderLease

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        super().__init__(syncObj, selfNode, otherNodes)
        self._obj = syncObj
        self._self = selfNode
        self._nodes: dict[str, Any] = {n.id: n for n in otherNodes}
        self._learners: dict[str, Any] = {}
        self._connected: set[str] = set()
        self._last_fed = 0.0  # learner: when a voter last sent this group anything
        self._last_hello = 0.0
        self.hub.groups[self.group_id] = self
        self.hub._next_tick = 0.0  # dial its peers now

    def _touch(self) -> None:
        # The replica's state changed outside its tick: tick it next loop
        # (see RaftGroup.tick_if_due). A plain SyncObj just ignores it.
        self._obj._wants_tick = True

    # pysyncobj API ------------------------------------------------
    def tryGetReady(self) -> None:
        self.hub.bind()
        for addr in list(self._nodes):
            if self.hub.link_ready(addr):
                self.on_link_up(addr)

    @property
    def ready(self) -> bool:
        return self.hub.bound

    def waitReady(self) -> None:
        self.tryGetReady()

    def addNode(self, node: Any) -> None:
        if self._learners.pop(node.id, None) is not None:
            # A learner promoted to voter: pysyncobj must stop treating it as a
            # read-only node, but without the read-only disconnect callback,
            # which would also drop the progress it has just set up for the
            # voter (the two are the same node to it).
            self._obj._SyncObj__readonlyNodes.discard(node)
        self._nodes[node.id] = node
        self.lease.on_voters_changed(self._term(), set(self._nodes))
        if self.hub.link_ready(node.id):
            self.on_link_up(node.id)

    def dropNode(self, node: Any) -> None:
        self._nodes.pop(node.id, None)
        self._connected.discard(node.id)
        self.lease.on_voters_changed(self._term(), set(self._nodes))

    def send(self, node: Any, message: Any) -> bool:
        if isinstance(message, dict):
            message = self._lease_outgoing(node.id, message)
        return self.hub.send(node.id, self.group_id, _MSG, message)

    def _term(self) -> int:
        return int(self._obj.raftCurrentTerm)

    def _lease_outgoing(self, addr: str, message: dict[str, Any]) -> dict[str, Any]:
        """Add the lease fields (raft/lease.py) to a message pysyncobj sends."""
        kind = message.get("type")
        if kind == "append_entries":
            return {**message, STAMP: self.lease.stamp(message["term"])}
        if kind == "timeout_now":
            self.lease.revoke(message["term"])
        elif kind == "request_vote" and self.lease.is_transfer_vote(message["term"]):
            message = {**message, TRANSFER: True}
        echo = self.lease.echo_for(addr)
        return message if echo is None else {**message, ECHO: echo}

    def destroy(self) -> None:
        if self.hub.groups.get(self.group_id) is self:
            del self.hub.groups[self.group_id]

    # hub callbacks -------------------------------------------------
    def remote_addrs(self) -> set[str]:
        return set(self._nodes) | set(self._learners)

    def on_link_up(self, addr: str) -> None:
        if addr in self._nodes and addr not in self._connected:
            self._touch()
            self._connected.add(addr)
            if self._self is None:
                # A learner introduces itself so the leader starts feeding it.
                self.hub.send(addr, self.group_id, _LEARNER, None)
            self._onNodeConnected(self._nodes[addr])

    def on_link_down(self, addr: str) -> None:
        self._touch()
        if addr in self._connected:
            self._connected.discard(addr)
            self._onNodeDisconnected(self._nodes[addr])
        if addr in self._learners:
            self._onReadonlyNodeDisconnected(self._learners.pop(addr))

    def on_learner_hello(self, addr: str) -> None:
        if self._self is None or addr in self._nodes or addr in self._learners:
            return
        node = TCPNode(addr)
        self._learners[addr] = node
        self._touch()
        self._onReadonlyNodeConnected(node)

    def on_learner_gone(self, addr: str) -> None:
        node = self._learners.pop(addr, None)
        if node is not None:
            self._touch()
            self._onReadonlyNodeDisconnected(node)

    def deliver(self, addr: str, message: Any) -> None:
        self._touch()
        if self._self is None:
            self._last_fed = monotonic_time()
        node = self._nodes.get(addr) or self._learners.get(addr) or TCPNode(addr)
        if not isinstance(message, dict):
            self._onMessageReceived(node, message)
            return
        kind = message.get("type")
        if kind == "request_vote" and self.lease.refuses_vote(message):
            return  # sticky: heard from the leader too recently (raft/lease.py)
        echo = message.get(ECHO)
        if echo is not None and addr in self._nodes and self._obj._isLeader():
            self.lease.on_echo(addr, echo, self._term(), set(self._nodes))
        self._onMessageReceived(node, message)
        if (
            kind == "append_entries"
            and message.get("term") == self._term()
            and self._obj._SyncObj__raftLeader is node
        ):
            self.lease.on_append(addr, message)
        elif kind == "timeout_now" and self._obj._SyncObj__transferInProgress:
            self.lease.on_timeout_now(int(message["term"]))

    def on_transfer_request(self, addr: str) -> None:
        """A voter asked for leadership (:meth:`RaftGroup.campaign`): the
        leader hands it over with timeout_now, giving up its lease."""
        node = self._nodes.get(addr)
        if node is not None and self._obj._isLeader():
            self._touch()
            self._obj.transferLeadership(node)

    def request_transfer(self, leader_addr: str) -> bool:
        return self.hub.send(leader_addr, self.group_id, _TRANSFER, None)

    def keep_introducing(self, now: float) -> None:
        """Learner: say hello again while no voter feeds this group. The
        first hello is lost when it reaches a store that has not created the
        group yet (a split applied here first), and a voter that never got it
        may become the leader; pysyncobj retries its own messages, not ours."""
        if self._self is not None or now - self._last_fed < LEARNER_HELLO_INTERVAL:
            return
        if now - self._last_hello < LEARNER_HELLO_INTERVAL:
            return
        self._last_hello = now
        for addr in self._connected:
            self.hub.send(addr, self.group_id, _LEARNER, None)


def transport_class(
    hub: StoreTransportHub, group_id: int, lease: LeaderLease
) -> type[MuxTransport]:
    """A MuxTransport subclass bound to ``hub``, ``group_id`` and the
    replica's ``lease`` (pysyncobj instantiates the transport class itself)."""
    return type("MuxTransport", (MuxTransport,), {"hub": hub, "group_id": group_id, "lease": lease})
