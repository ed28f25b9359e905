"""``meshp2p`` subcommands: ``node`` runs a node, ``models`` lists what can be served."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import NoReturn

import trio

from meshp2p import MeshError, Node, NodeConfig, format_size, parse_size
from meshp2p.inference import InferenceWorker, ModelStore, ProgressBar, default_home, load_catalog
from meshp2p.node import DEFAULT_API_PORT, DEFAULT_CONSOLE_PORT, DEFAULT_MAX_TOKENS
from meshp2p.transport import DEFAULT_LISTEN

from . import apikeys, discovery, launch


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except MeshError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """Options every command takes, before or after its name (``meshp2p node --home D``).

    A subcommand's own defaults would overwrite what was given before its name, so
    there they are left unset (SUPPRESS) and only the top-level parser has them.
    """

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--home",
        type=Path,
        default=default(None),
        help="node home: key, models, logs (default $MESHP2P_HOME or ~/.meshp2p)",
    )
    parser.add_argument(
        "--log-level",
        default=default(os.environ.get("MESHP2P_LOG_LEVEL", "WARNING")),
        help="DEBUG, INFO, WARNING (default) or ERROR",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshp2p",
        description="Peer-to-peer LLM inference mesh with an OpenAI-compatible API.",
    )
    _global_options(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, defaults=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    node = sub.add_parser(
        "node", parents=[common], help="run a node serving models over an OpenAI API"
    )
    node.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="MODEL",
        help="a .gguf path, a file in the model store, or a catalog name (repeatable; "
        "default: what this home served last, else the default model for a new mesh)",
    )
    node.add_argument(
        "--standby",
        action="store_true",
        help="serve no model this time, whatever this home served before: offer memory only",
    )
    node.add_argument(
        "--host", default="127.0.0.1", help="API address (default 127.0.0.1: this machine only)"
    )
    apikeys.add_node_options(node)
    node.add_argument(
        "--port",
        type=int,
        default=DEFAULT_API_PORT,
        help=f"API port (default {DEFAULT_API_PORT}; 0 picks a free one)",
    )
    node.add_argument("--console-host", default="127.0.0.1")
    node.add_argument(
        "--console-port",
        type=int,
        default=DEFAULT_CONSOLE_PORT,
        help=f"management API port (default {DEFAULT_CONSOLE_PORT})",
    )
    node.add_argument(
        "--threads",
        type=int,
        default=None,
        help="llama.cpp threads per model (default: the cores but one, shared by the models; "
        "see docs/performance.md)",
    )
    node.add_argument(
        "--threads-batch",
        type=int,
        default=None,
        metavar="N",
        help="threads per model for prompt evaluation (default: as --threads)",
    )
    node.add_argument("--ctx-size", type=int, default=4096, help="context tokens per model")
    node.add_argument(
        "--default-max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        metavar="N",
        help=f"tokens generated for a request without max_tokens (default {DEFAULT_MAX_TOKENS}; "
        "0: up to the context)",
    )
    node.add_argument(
        "--max-vram",
        type=_size,
        default=None,
        metavar="SIZE",
        help="memory this node offers, e.g. 150MB or 8GiB",
    )
    node.add_argument(
        "--max-body",
        type=_size,
        default="8MiB",
        metavar="SIZE",
        help="largest API request body (default 8MiB)",
    )
    node.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="requests that may wait per model before 503 (default 64)",
    )
    node.add_argument(
        "--join", metavar="TOKEN", help="join the mesh of this invite token (printed by its nodes)"
    )
    node.add_argument(
        "--client",
        action="store_true",
        help="join as a passive client: API only, no model, no gossip (needs --join)",
    )
    node.add_argument(
        "--no-prefix-affinity",
        dest="prefix_affinity",
        action="store_false",
        help="do not send requests with the same prompt start to the same host",
    )
    node.add_argument(
        "--no-speculative",
        dest="speculative",
        action="store_false",
        help="decode one token per step: no guessed tokens verified in batches",
    )
    node.add_argument(
        "--draft",
        metavar="MODEL",
        default=None,
        help="a small model sharing the served models' vocabulary, to guess tokens "
        "(a .gguf path, store file name or catalog name)",
    )
    node.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="MULTIADDR",
        help="libp2p listen address (repeatable; default QUIC and TCP on all interfaces)",
    )
    node.add_argument(
        "--heartbeat-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between gossip heartbeats (default 5)",
    )
    node.add_argument(
        "--dead-after",
        type=float,
        default=12.0,
        metavar="SECONDS",
        help="silence after which a peer is declared dead (default 12)",
    )
    node.add_argument(
        "--plan-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="seconds between planning rounds: which model a standby node takes on (default 60)",
    )
    node.add_argument(
        "--reassign",
        action="store_true",
        help="let the planner move this node from the models it was started with to others",
    )
    discovery.add_node_options(node)

    sub.add_parser("models", parents=[common], help="list the models in the store and the catalog")
    discovery.add_discover_command(sub, common)
    launch.add_launch_command(sub, common)
    sub.add_parser(
        "doctor",
        parents=[common],
        help="check the installation: llama.cpp and its RPC backend (needed for splits)",
    )
    return parser


async def _run_node(config: NodeConfig) -> None:
    node = Node(config, progress=lambda label, total: ProgressBar(label, total))
    print(f"meshp2p {node.version} node {node.node_id}", flush=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, node, nursery.cancel_scope)

        async def run_node(*, task_status: trio.TaskStatus[Node]) -> None:
            await node.run(task_status=task_status)
            nursery.cancel_scope.cancel()  # the node has stopped: so do the printers

        await nursery.start(run_node)
        for worker in node.workers:
            print(f"model {worker.model_id}: {worker.settings.model_path}", flush=True)
        if node.config.client:
            print("client: API only, routing to the mesh's hosts", flush=True)
        elif not node.workers:
            print("no model: standby, offering this node's memory to the mesh", flush=True)
        print(f"mesh: {node.credentials.mesh_id}", flush=True)
        print(f"api: {node.api_url}", flush=True)
        print(f"console: {node.console_url}", flush=True)
        assert node.mesh is not None
        print(f"invite: {node.mesh.invite_token()}", flush=True)
        if node.config.publish:
            print(
                "published: this mesh is listed on Nostr with its invite token; anyone can join",
                flush=True,
            )
        for worker in node.workers:
            nursery.start_soon(_report_states, worker)


async def _report_states(worker: InferenceWorker) -> None:
    while True:
        state = await worker.wait_state_change()
        detail = f" ({worker.last_error})" if state == "restarting" else ""
        print(f"model {worker.model_id}: {state}{detail}", flush=True)


async def _stop_on_signal(node: Node, scope: trio.CancelScope) -> None:
    """First signal: leave the mesh and stop cleanly. Second: stop at once."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            print(f"stopping ({signal.Signals(signum).name})", file=sys.stderr, flush=True)
            if node.stopping:
                scope.cancel()
                return
            node.stop()


def _list_models(home: Path) -> None:
    store = ModelStore(home)
    print(f"model store {store.models_dir}:")
    local = store.list()
    for model in local:
        print(f"  {model.id:40} {format_size(model.size):>10}  {model.path.name}")
    if not local:
        print("  (empty)")
    print("catalog:")
    for entry in load_catalog().values():
        print(f"  {entry.name:40} {format_size(entry.size):>10}  {entry.description}")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    home = args.home or default_home()
    try:
        if args.command == "models":
            _list_models(home)
            return
        if args.command == "discover":
            discovery.run_discover(args, home)
            return
        if args.command == "launch":
            sys.exit(launch.run_launch(args))
        if args.command == "doctor":
            from meshp2p.inference._llamacpp import main as check_llamacpp

            sys.exit(check_llamacpp())
        config = NodeConfig(
            home=home,
            models=tuple(args.model),
            api_host=args.host,
            **apikeys.node_config(args),
            api_port=args.port,
            console_host=args.console_host,
            console_port=args.console_port,
            threads=args.threads,
            threads_batch=args.threads_batch,
            ctx_size=args.ctx_size,
            default_max_tokens=args.default_max_tokens,
            max_vram=args.max_vram,
            max_body=args.max_body,
            max_queue=args.max_queue,
            join=args.join,
            client=args.client,
            standby=args.standby,
            prefix_affinity=args.prefix_affinity,
            speculative=args.speculative,
            draft=args.draft,
            heartbeat_interval=args.heartbeat_interval,
            dead_after=args.dead_after,
            listen=tuple(args.listen) or DEFAULT_LISTEN,
            plan_interval=args.plan_interval,
            reassign=args.reassign,
            **discovery.node_config(args),
        )
        trio.run(_run_node, config)
    except MeshError as exc:
        _fail(exc)
    except BaseExceptionGroup as group:
        # Errors raised inside nurseries arrive wrapped; an expected one is still one line.
        expected = _first_mesh_error(group)
        if expected is None:
            raise
        _fail(expected)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _configure_logging(level: str) -> None:
    """Our loggers at ``level``; py-libp2p's only at DEBUG.

    py-libp2p logs every failed stream and DHT message at WARNING or ERROR (a peer
    that died makes dozens); the mesh layer says what matters in one line of its own.
    """
    try:
        logging.basicConfig(
            level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    except ValueError:
        _fail(MeshError(f"--log-level {level!r} is not one of DEBUG, INFO, WARNING, ERROR"))
    libp2p = logging.getLogger("libp2p")
    debug = logging.getLogger().level <= logging.DEBUG
    libp2p.handlers.clear()
    libp2p.propagate = debug
    libp2p.setLevel(logging.DEBUG if debug else logging.CRITICAL + 1)


def _first_mesh_error(group: BaseExceptionGroup[BaseException]) -> MeshError | None:
    for exc in group.exceptions:
        if isinstance(exc, MeshError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_mesh_error(exc)
            if found is not None:
                return found
    return None


def _fail(exc: MeshError) -> NoReturn:
    print(f"meshp2p: error: {exc}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
