"""A network lab of Linux namespaces: hosts on a bridge, NAT routers, bandwidth caps.

Everything lives in namespaces this module creates, named ``<prefix>-*``; nothing is
attached to the namespace the tests run in, so lab traffic never leaves the lab:

    <prefix>-inet      the "internet": bridge br0, 10.77.0.0/24, no route anywhere else
    <prefix>-<host>    a public host: eth0 10.77.0.N/24 on br0
    <prefix>-<router>  a NAT router: wan 10.77.0.N/24 on br0, lan 192.168.K.1/24 on its
                       own bridge, nftables masquerade from lan to wan
    <prefix>-<host>    a host behind a router: eth0 192.168.K.M/24, default via the router

A host's links are its ``eth0`` and the peer end in the bridge's namespace, so a cap
(``tbf``) or a link going down is set on both directions. ``netem`` is not available on
the kernels CI runs, so the lab adds no delay; a test that needs delay must add it in
user space (a forwarding proxy that sleeps), as docs/networks.md says.

``Lab.close()`` deletes every namespace it made (their links go with them), and
``reap_stale()`` deletes the namespaces of lab runs whose process is gone, so a run
killed half-way leaves nothing behind for long.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

PREFIX_ROOT = "mlab"
CLONE_NEWNET = 0x40000000
#: Longest any single ``ip``/``nft``/``tc`` command may take.
COMMAND_TIMEOUT = 20.0


class LabUnavailable(Exception):
    """The lab cannot run here (not root, tools missing, no namespaces); says why."""


def unavailable_reason() -> str | None:
    """Why the lab cannot run on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "the network lab needs root (Linux namespaces); CI runs as root"
    for tool in ("ip", "tc", "nft"):
        if shutil.which(tool) is None:
            hint = " (make lab-install)" if tool == "nft" else ""
            return f"the network lab needs {tool!r} on PATH{hint}"
    probe = f"{PREFIX_ROOT}{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def sh(*args: str, ns: str | None = None, check: bool = True) -> str:
    """Run one command (in namespace ``ns`` if given) and return its stdout."""
    command = [*(["ip", "netns", "exec", ns] if ns else []), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return done.stdout


def reap_stale() -> list[str]:
    """Delete namespaces left by lab runs whose process no longer exists."""
    gone = []
    for line in sh("ip", "netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX_ROOT):
            continue
        pid = name[len(PREFIX_ROOT) :].split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            sh("ip", "netns", "del", name, check=False)
            gone.append(name)
    return gone


_libc = ctypes.CDLL(None, use_errno=True)


def in_namespace(ns: str, fn: Callable[[], T], timeout: float = 120.0) -> T:
    """Call ``fn`` in a thread that has entered network namespace ``ns``.

    setns(2) with CLONE_NEWNET moves only the calling thread, and a socket stays in
    the namespace it was made in: HTTP clients made inside ``fn`` talk to the
    namespace's 127.0.0.1, where a node's API listens.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:  # handed to the caller's thread
            error.append(exc)

    thread = threading.Thread(target=run, name=f"netns-{ns}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"call in namespace {ns} did not end within {timeout} s")
    if error:
        raise error[0]
    return result[0]


@dataclass
class Host:
    """A namespace with one address: ``eth0`` inside, ``peer`` on the bridge side."""

    name: str
    ns: str
    ip: str
    peer: str
    bridge_ns: str

    def wrap(self) -> list[str]:
        """Prefix for a command that runs in this host's namespace."""
        return ["ip", "netns", "exec", self.ns]

    def run(self, *args: str, check: bool = True) -> str:
        return sh(*args, ns=self.ns, check=check)

    def call(self, fn: Callable[[], T], timeout: float = 120.0) -> T:
        return in_namespace(self.ns, fn, timeout)

    def link(self, up: bool) -> None:
        """Take this host's link down (both ends) or bring it back up."""
        state = "up" if up else "down"
        sh("ip", "link", "set", "eth0", state, ns=self.ns)
        sh("ip", "link", "set", self.peer, state, ns=self.bridge_ns)

    def cap(self, rate: str | None) -> None:
        """Cap this host's link to ``rate`` (tc syntax, e.g. ``1mbit``) both ways;
        ``None`` lifts the cap. ``tbf`` on the egress of each end of the veth."""
        for dev, ns in (("eth0", self.ns), (self.peer, self.bridge_ns)):
            sh("tc", "qdisc", "del", "dev", dev, "root", ns=ns, check=False)
            if rate is not None:
                sh(
                    "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                    "rate", rate, "burst", "32kbit", "latency", "400ms", ns=ns,
                )  # fmt: skip


@dataclass
class NatRouter:
    """A namespace that masquerades its LAN (192.168.K.0/24) behind its WAN address."""

    name: str
    ns: str
    wan: Host
    subnet: int
    lab: Lab
    hosts: list[Host] = field(default_factory=list)

    def private(self, name: str) -> Host:
        """A host on this router's LAN, its default route through the router."""
        ip = f"192.168.{self.subnet}.{len(self.hosts) + 2}"
        host = self.lab._attach(name, self.ns, "lan", ip, gateway=f"192.168.{self.subnet}.1")
        self.hosts.append(host)
        return host


class Lab:
    """One lab: create hosts and routers, then ``close()`` (the fixture does)."""

    def __init__(self, tag: str = "") -> None:
        reason = unavailable_reason()
        if reason:
            raise LabUnavailable(reason)
        reap_stale()
        self.prefix = f"{PREFIX_ROOT}{os.getpid()}-{tag}" if tag else f"{PREFIX_ROOT}{os.getpid()}"
        self.namespaces: list[str] = []
        self._links = 0
        self._public = 0
        self._routers = 0
        try:
            self.inet = self._namespace("inet")
            sh("ip", "link", "add", "br0", "type", "bridge", ns=self.inet)
            sh("ip", "link", "set", "br0", "up", ns=self.inet)
        except BaseException:
            self.close()
            raise

    def _namespace(self, name: str) -> str:
        ns = f"{self.prefix}-{name}"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
        return ns

    def _attach(self, name: str, bridge_ns: str, bridge: str, ip: str, gateway: str | None) -> Host:
        """A new namespace ``name`` with eth0 at ``ip``/24, wired to ``bridge``."""
        ns = self._namespace(name)
        self._links += 1
        peer = f"v{self._links}"
        sh(
            "ip", "link", "add", "eth0", "netns", ns, "type", "veth",
            "peer", "name", peer, "netns", bridge_ns,
        )  # fmt: skip
        sh("ip", "link", "set", peer, "master", bridge, "up", ns=bridge_ns)
        sh("ip", "addr", "add", f"{ip}/24", "dev", "eth0", ns=ns)
        sh("ip", "link", "set", "eth0", "up", ns=ns)
        if gateway:
            sh("ip", "route", "add", "default", "via", gateway, ns=ns)
        return Host(name=name, ns=ns, ip=ip, peer=peer, bridge_ns=bridge_ns)

    def public(self, name: str) -> Host:
        """A host with a public address on the lab's internet."""
        self._public += 1
        return self._attach(name, self.inet, "br0", f"10.77.0.{10 + self._public}", None)

    def nat(self, name: str) -> NatRouter:
        """A NAT router: WAN on the internet, its own LAN, masquerading (nftables)."""
        self._routers += 1
        subnet = self._routers
        wan = self._attach(name, self.inet, "br0", f"10.77.0.{200 + subnet}", None)
        ns = wan.ns
        sh("ip", "link", "add", "lan", "type", "bridge", ns=ns)
        sh("ip", "addr", "add", f"192.168.{subnet}.1/24", "dev", "lan", ns=ns)
        sh("ip", "link", "set", "lan", "up", ns=ns)
        sh("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward", ns=ns)
        ruleset = (
            "table ip meshlab {\n"
            "  chain masq { type nat hook postrouting priority 100; "
            'oifname "eth0" masquerade; }\n'
            "  chain lan_only { type filter hook forward priority 0; policy drop;\n"
            '    iifname "lan" accept\n'
            "    ct state established,related accept\n  }\n"
            # Like a home router: what nobody inside asked for is dropped, not refused
            # (a refusal's RST would also end a TCP hole punch's simultaneous open).
            "  chain wan_in { type filter hook input priority 0; policy drop;\n"
            '    iifname { "lo", "lan" } accept\n'
            "    ct state established,related accept\n  }\n"
            "}\n"
        )
        loaded = subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-f", "-"],
            input=ruleset,
            text=True,
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
        )
        if loaded.returncode != 0:
            raise RuntimeError(f"nft in {ns} refused the NAT ruleset: {loaded.stderr.strip()}")
        return NatRouter(name=name, ns=ns, wan=wan, subnet=subnet, lab=self)

    def close(self) -> None:
        """Delete every namespace of this lab (their veths and bridges go with them)."""
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()


def can_connect(src: Host, ip: str, port: int, timeout: float = 2.0) -> bool:
    """Whether a TCP connection from ``src`` to ``ip:port`` opens."""
    import socket

    def attempt() -> bool:
        try:
            with socket.create_connection((ip, port), timeout=timeout):
                return True
        except OSError:
            return False

    return src.call(attempt, timeout=timeout + 5)
