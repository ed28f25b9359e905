"""make soak: mixed load and random faults on a lab mesh, then one line of counts.

Two hosts of the default model and a passive client, each in its own namespace
(``netlab``); two load threads send chat and completion requests through the client,
streamed and not, greedy and seeded; a fault thread hits one host every 30-60 s with
``kill -9`` (then a restart), ``SIGSTOP`` for 10-30 s, its link down for 5-15 s, or a
cut to 1 Mbit/s for 20 s, and lets the mesh converge after each. At the end:

    requests=N answered=A resumed=R errors=E hung=H

``hung`` counts requests with no end within ``HUNG_AFTER`` s (the documented 120 s
between frames, plus slack); it must be 0, and the exit status says whether it was.
``resumed`` is the client's count of answers resumed on another host (``/api/status``
``requests``, from mid-stream failover), 0 where the node does not report it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from conftest import NodeProcess  # noqa: E402
from labnodes import FAST, LabNode  # noqa: E402
from netlab import Host, Lab, LabUnavailable  # noqa: E402

from meshp2p.inference._models import ModelStore  # noqa: E402

DEFAULT = "gemma-3-270m-Q4_K_M"
HUNG_AFTER = 150.0
END_OF_TEXT_BANNED = {"1": -100, "106": -100}


class Soak:
    def __init__(self, lab: Lab, model: Path, workdir: Path, tcp_only: bool = False) -> None:
        self.lab = lab
        self.listen = ["--listen", "/ip4/0.0.0.0/tcp/0"] if tcp_only else None
        self.workdir = workdir
        self.model_args = ["--model", str(model), *FAST]
        self.nodes: list[NodeProcess] = []
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.homes: dict[str, Path] = {}
        h1 = self.start(lab.public("h1"), self.model_args)
        h1.wait_ready()
        self.token = h1.invite()
        h2 = self.start(lab.public("h2"), ["--join", self.token, *self.model_args])
        h2.wait_ready()
        self.hosts: dict[str, LabNode] = {"h1": h1, "h2": h2}
        self.client = self.start(lab.public("c"), ["--join", self.token, "--client", *FAST])
        self.client.wait_started()
        self.wait_listed(60)

    def wait_listed(self, timeout: float) -> bool:
        """Wait until the client's routing lists both hosts; False if it did not."""
        url = self.client.api_url + "/models"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.client.host.call(lambda: httpx.get(url, timeout=5).json()["data"])
                listed = {n for m in data if m["id"] == DEFAULT for n in m["meshp2p"]["nodes"]}
                if len(listed) == len(self.hosts):
                    return True
            except Exception:
                pass
            time.sleep(0.5)
        return False

    def start(self, host: Host, args: list[str]) -> LabNode:
        home = self.homes.setdefault(host.name, Path(tempfile.mkdtemp(dir=self.workdir)))
        node = LabNode(host, home, args, listen=self.listen)
        self.nodes.append(node)
        return node

    # -- load -------------------------------------------------------------------

    def request(self, rng: random.Random) -> str:
        """One request through the client: 'answered', 'error' or 'hung'."""
        chat = rng.random() < 0.6
        stream = rng.random() < 0.6
        body: dict[str, Any] = {
            "model": DEFAULT,
            "max_tokens": rng.choice([16, 64, 160]),
            "stream": stream,
            "logit_bias": END_OF_TEXT_BANNED,
        }
        if rng.random() < 0.5:
            body["temperature"] = 0
        else:
            body["seed"] = rng.randrange(1 << 30)
        if chat:
            body["messages"] = [{"role": "user", "content": f"Tell me about {rng.random()}"}]
        else:
            body["prompt"] = f"Once upon a time {rng.random()}"
        url = self.client.api_url + ("/chat/completions" if chat else "/completions")

        def run() -> str:
            with httpx.Client(timeout=HUNG_AFTER) as http:
                if not stream:
                    reply = http.post(url, json=body)
                    if reply.status_code != 200:
                        self.note(f"{reply.status_code} {reply.text[:120]}")
                        return "error"
                    return "answered"
                with http.stream("POST", url, json=body) as response:
                    if response.status_code != 200:
                        self.note(f"{response.status_code} {response.read()[:120]!r}")
                        return "error"
                    finished = False
                    for line in response.iter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        event = json.loads(line[len("data: ") :])
                        if "error" in event:
                            self.note(f"error event {str(event['error'])[:120]}")
                            return "error"
                        finished = finished or any(
                            c.get("finish_reason") for c in event.get("choices", [])
                        )
                    return "answered" if finished else "lost"

        try:
            return self.client.host.call(run, timeout=HUNG_AFTER * 2)
        except httpx.TimeoutException:
            return "hung"
        except TimeoutError:
            return "hung"
        except httpx.HTTPError as exc:
            self.note(f"{type(exc).__name__} {exc}")
            return "error"

    def note(self, why: str) -> None:
        with self.lock:
            self.errors[why] += 1

    def load(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            outcome = self.request(rng)
            with self.lock:
                self.counts["requests"] += 1
                self.counts[outcome] += 1

    # -- faults -----------------------------------------------------------------

    def fault(self, rng: random.Random) -> str:
        name = rng.choice(sorted(self.hosts))
        node = self.hosts[name]
        kind = rng.choice(["kill", "stop", "link", "cap"])
        if kind == "kill":
            node.kill()
            other = next(n for k, n in self.hosts.items() if k != name)
            args = ["--join", other.invite(), *self.model_args]
            self.hosts[name] = self.start(node.host, args)
            self.hosts[name].wait_ready()
        elif kind == "stop":
            node.freeze(rng.uniform(10, 30))
        elif kind == "link":
            node.flap(rng.uniform(5, 15))
        else:
            node.host.cap("1mbit")
            time.sleep(20)
            node.host.cap(None)
        return f"{kind} {name}"

    def resumed(self) -> int:
        try:
            requests = self.client.status().get("requests", {})
            return sum(int(m.get("resumed", 0)) for m in requests.values())
        except Exception:
            return 0

    def run(self, seconds: float, seed: int) -> Counter[str]:
        rng = random.Random(seed)
        threads = [
            threading.Thread(target=self.load, args=(seed + i,), daemon=True) for i in (1, 2)
        ]
        for thread in threads:
            thread.start()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(min(rng.uniform(30, 60), max(0.0, end - time.monotonic())))
            if time.monotonic() >= end:
                break
            done = self.fault(rng)
            if not self.wait_listed(60):
                done += " (the client did not list both hosts again within 60 s)"
            print(f"{time.strftime('%H:%M:%S')} fault: {done}; {dict(self.counts)}", flush=True)
        self.stop.set()
        for thread in threads:
            thread.join(HUNG_AFTER * 2 + 10)
            if thread.is_alive():
                self.counts["hung"] += 1
        self.counts["resumed"] = self.resumed()
        return self.counts

    def close(self) -> None:
        for node in self.nodes:
            if node.proc.poll() is None:
                os.kill(node.proc.pid, signal.SIGCONT)
            node.close(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--tcp-only", action="store_true", help="nodes listen on TCP only")
    args = parser.parse_args()
    try:
        lab = Lab(tag="soak")
    except LabUnavailable as why:
        print(f"soak: {why}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="meshp2p-soak-"))
    soak: Soak | None = None
    try:
        model = ModelStore(workdir / "models").ensure_default().path
        soak = Soak(lab, model, workdir, tcp_only=args.tcp_only)
        counts = soak.run(args.seconds, args.seed)
    finally:
        if soak is not None:
            soak.close()
        lab.close()
    lost = counts["lost"]
    if soak is not None:
        for why, n in soak.errors.most_common(10):
            print(f"  {n} x {why}", file=sys.stderr)
    print(
        f"requests={counts['requests']} answered={counts['answered']} "
        f"resumed={counts['resumed']} errors={counts['error'] + lost} hung={counts['hung']}"
        + (f" (lost without an error event: {lost})" if lost else "")
    )
    return 0 if counts["hung"] == 0 and lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
