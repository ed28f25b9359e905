"""The inference worker process: loads one GGUF with llama.cpp and serves it on 127.0.0.1.

Run by the node as ``python -m meshp2p.inference._worker_child``. It is a child process so
that a llama.cpp abort can never take the node down. It prints one JSON line
``{"event": "ready", "port": N, ...}`` on stdout when it serves, and exits when
its stdin closes, so it never outlives the node, even after a ``kill -9``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import threading
import time
from typing import Any

import trio

from .._errors import WorkerError
from ..api._anthropic import count_tokens_body
from ..api._asgi import (
    ClientGone,
    Receive,
    Scope,
    Send,
    hypercorn_config,
    lifespan,
    read_body,
    send_error,
    send_json,
    start_stream,
    watch_disconnect,
)
from ..api._embeddings import embeddings_body
from ..api._openai import ApiError, error_style
from ..api._resume import (
    PROGRESS_HEADER,
    RESUMED_HEADER,
    Resume,
    answer_frame,
    start_frame,
    step_frame,
)
from ..api._shapes import AnswerShaper, ChatShaper, Ending, shaper_for
from ._embed import Embedder, load_embedder, pooling_for
from ._engine import Cancelled, Delta, Engine, Finish, Step
from ._speculative import exact_kernels
from ._threads import BatchThreads

log = logging.getLogger("meshp2p.worker")

# Requests come from our own gateway, already validated and bounded.
_MAX_BODY = 64 * 1024 * 1024


class RequestQueue:
    """First come, first served access to the one model; bounded in length and waiting time."""

    def __init__(self, max_waiting: int, timeout: float) -> None:
        self._lock = trio.Lock()  # trio's Lock is fair: FIFO
        self.max_waiting = max_waiting
        self.timeout = timeout
        self.waiting = 0
        self.busy = False

    async def acquire(self) -> None:
        if self.waiting >= self.max_waiting:
            raise ApiError(
                503,
                f"this model's queue is full ({self.max_waiting} waiting); retry later",
                type="server_error",
                code="queue_full",
                headers={"retry-after": "5"},
            )
        self.waiting += 1
        try:
            with trio.move_on_after(self.timeout) as scope:
                await self._lock.acquire()
        finally:
            self.waiting -= 1
        if scope.cancelled_caught:
            raise ApiError(
                503,
                f"waited {self.timeout:.0f} s in this model's queue; retry later",
                type="server_error",
                code="queue_timeout",
                headers={"retry-after": "5"},
            )
        self.busy = True

    def release(self) -> None:
        self.busy = False
        self._lock.release()


class Started:
    """The prompt is ready: how many tokens it has (Anthropic's stream opens with it)."""

    def __init__(self, prompt_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens


Event = Delta | Step | Finish | Started | ApiError


class WorkerApp:
    """ASGI app of the worker: ``POST /generate`` (every endpoint: generations, token
    counts, embeddings), ``GET /health``, ``GET /info``."""

    def __init__(
        self,
        engine: Engine,
        model_id: str,
        queue: RequestQueue,
        embedder: Embedder | None = None,
        embed_queue: RequestQueue | None = None,
    ) -> None:
        self.engine = engine
        self.model_id = model_id
        self.queue = queue
        #: Embeddings run in a context of their own, queued apart from generation.
        self.embedder = embedder
        self.embed_queue = embed_queue or RequestQueue(queue.max_waiting, queue.timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        try:
            if path == "/health" and method == "GET":
                await send_json(
                    send,
                    200,
                    {
                        "status": "ok",
                        "model": self.model_id,
                        "waiting": self.queue.waiting,
                        "busy": self.queue.busy,
                        "speculation": self.engine.speculation.as_dict(),
                    },
                )
            elif path == "/info" and method == "GET":
                await send_json(send, 200, self.info())
            elif path == "/generate" and method == "POST":
                request = json.loads(await read_body(scope, receive, _MAX_BODY))
                try:
                    await self.generate(request, receive, send)
                except ApiError as err:
                    await send_error(send, err, error_style(request.get("endpoint", "chat")))
            else:
                raise ApiError(404, f"no route {method} {path}", code="not_found")
        except ApiError as err:
            await send_error(send, err)
        except ClientGone:
            pass

    def info(self) -> dict[str, Any]:
        return {
            "model": self.model_id,
            "n_ctx": self.engine.n_ctx,
            "tools_supported": self.engine.tools_supported,
            "chat_template": self.engine.chat_template_source,
            "n_embd": self.embedder.n_embd if self.embedder else None,
            "speculative": self.engine.speculative,
            "draft": self.engine.draft.model_path if self.engine.draft is not None else None,
            "pid": os.getpid(),
        }

    async def generate(self, request: dict[str, Any], receive: Receive, send: Send) -> None:
        endpoint = request["endpoint"]
        if endpoint == "embeddings":
            await self.embeddings(request, receive, send)
            return
        if endpoint == "count_tokens":
            # Tokenizing reads the model only: no need to wait for a generation.
            count = await trio.to_thread.run_sync(self.engine.count_tokens, request["params"])
            await send_json(send, 200, count_tokens_body(count))
            return
        shaper = shaper_for(endpoint, self.model_id, request, now=int(time.time()))
        kind = "completion" if endpoint == "completion" else "chat"
        stream = bool(request.get("stream"))
        # Progress and resuming (mid-stream failover, ``api/_resume``): chat and completion.
        progress = isinstance(shaper, ChatShaper) and bool(request.get("progress"))
        resume: Resume | None = None
        if progress and request.get("resume") is not None:
            try:
                resume = Resume.from_json(request["resume"])
            except ValueError as exc:
                raise ApiError(400, f"bad resume: {exc}", param="resume") from None
            assert isinstance(shaper, ChatShaper)
            shaper.shaper.id, shaper.shaper.created = resume.id, resume.created
        replay = resume.tokens if resume is not None else ()
        cancel = threading.Event()
        # Unbounded: a generation makes at most n_ctx small events, and the model
        # thread must never wait for the event loop between two tokens.
        send_events, events = trio.open_memory_channel[Event](math.inf)
        loop = trio.lowlevel.current_trio_token()

        def emit(event: Event) -> None:
            loop.run_sync_soon(_deliver, send_events, event)

        def produce() -> None:
            """Runs in a worker thread: the only place the model is touched."""
            try:
                prepared = self.engine.prepare(kind, request["params"])
                emit(Started(len(prepared.prompt_tokens)))
                # The node's own benchmarks compare with and without speculation on one
                # worker; the gateway never sends this.
                speculative = request.get("speculative") is not False
                for event in self.engine.generate(
                    prepared, cancel, replay=replay, steps=progress, speculative=speculative
                ):
                    emit(event)
            except Cancelled:
                pass
            except ApiError as err:
                emit(err)
            except Exception as exc:
                log.exception("generation failed")
                emit(ApiError(500, f"generation failed: {exc}", type="server_error"))
            finally:
                loop.run_sync_soon(send_events.close)
                if self.engine.speculative:
                    # The node's /api/status shows these (``InferenceWorker``).
                    stats = self.engine.speculation.as_dict()
                    print(json.dumps({"event": "speculation", **stats}), flush=True)

        error: ApiError | None = None
        await self.queue.acquire()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_disconnect, receive, cancel.set)

                async def run_model() -> None:
                    # Never abandon the thread: the model must be idle before the
                    # next request may use it.
                    await trio.to_thread.run_sync(produce, abandon_on_cancel=False)

                nursery.start_soon(run_model)
                try:
                    if progress:
                        assert isinstance(shaper, ChatShaper)
                        await self._progress(shaper, events, send, stream, resume)
                    elif stream:
                        await self._stream(shaper, events, send)
                    else:
                        await self._respond(shaper, events, send)
                except ApiError as err:
                    error = err  # raised outside the nursery, not as an ExceptionGroup
                finally:
                    cancel.set()
                    events.close()
                    nursery.cancel_scope.cancel()
        finally:
            self.queue.release()
        if error is not None:
            raise error

    async def _first(
        self, events: trio.MemoryReceiveChannel[Event]
    ) -> tuple[Delta | Step | Finish | None, int]:
        """The first token's event (errors before it keep their status), and the prompt's
        token count."""
        prompt_tokens = 0
        async for event in events:
            if isinstance(event, ApiError):
                raise event
            if isinstance(event, Started):
                prompt_tokens = event.prompt_tokens
                continue
            return event, prompt_tokens
        return None, prompt_tokens

    async def _stream(
        self, shaper: AnswerShaper, events: trio.MemoryReceiveChannel[Event], send: Send
    ) -> None:
        first, prompt_tokens = await self._first(events)
        if first is None:
            return
        await start_stream(send)
        for frame in shaper.opening(prompt_tokens):
            await _body(send, frame)
        event: Event = first
        while True:
            if isinstance(event, Delta):
                for frame in shaper.delta(event.text):
                    await _body(send, frame)
            elif isinstance(event, Finish):
                for frame in shaper.closing(_ending(event)):
                    await _body(send, frame)
                await _body(send, b"", more=False)
                return
            elif isinstance(event, ApiError):
                await _body(send, shaper.failure(event), more=False)
                return
            try:
                event = await events.receive()
            except trio.EndOfChannel:
                ended = ApiError(500, "generation ended unexpectedly", type="server_error")
                await _body(send, shaper.failure(ended), more=False)
                return

    async def _progress(
        self,
        shaper: ChatShaper,
        events: trio.MemoryReceiveChannel[Event],
        send: Send,
        stream: bool,
        resume: Resume | None,
    ) -> None:
        """An answer with progress comments; a whole answer comes as one event at the
        end. A resumed stream leaves out its opening: the client has it already."""
        first, prompt_tokens = await self._first(events)
        if first is None:
            return
        headers = [(PROGRESS_HEADER, "1")]
        if resume is not None:
            headers.append((RESUMED_HEADER, str(len(resume.tokens))))
        await start_stream(send, headers=headers)
        await _body(send, start_frame(shaper.shaper.id, shaper.shaper.created))
        if stream and resume is None:
            for frame in shaper.opening(prompt_tokens):
                await _body(send, frame)
        event: Event = first
        while True:
            if isinstance(event, Step):
                await _body(send, step_frame(event.token))
            elif isinstance(event, Delta) and stream:
                for frame in shaper.delta(event.text):
                    await _body(send, frame)
            elif isinstance(event, Finish):
                if stream:
                    frames = shaper.closing(_ending(event))
                else:
                    frames = [answer_frame(200, shaper.body(_ending(event)))]
                for frame in frames:
                    await _body(send, frame)
                await _body(send, b"", more=False)
                return
            elif isinstance(event, ApiError):
                if stream:
                    frame = shaper.failure(event)
                else:
                    frame = answer_frame(event.status, event.body(shaper.style))
                await _body(send, frame, more=False)
                return
            try:
                event = await events.receive()
            except trio.EndOfChannel:
                return  # the client went away

    async def _respond(
        self, shaper: AnswerShaper, events: trio.MemoryReceiveChannel[Event], send: Send
    ) -> None:
        async for event in events:
            if isinstance(event, ApiError):
                raise event
            if isinstance(event, Finish):
                await send_json(send, 200, shaper.body(_ending(event)))
                return
        # The channel closed without a Finish: the client went away.

    async def embeddings(self, request: dict[str, Any], receive: Receive, send: Send) -> None:
        params = request["params"]
        if self.embedder is None:
            raise ApiError(
                400,
                f"{self.model_id!r} gives no embeddings while it is split across nodes",
                param="model",
                code="unsupported",
            )
        dimensions = params.get("dimensions")
        if dimensions is not None and dimensions != self.embedder.n_embd:
            raise ApiError(
                400,
                f"{self.model_id!r} makes embeddings of {self.embedder.n_embd} dimensions and "
                f"cannot shorten them; send dimensions {self.embedder.n_embd} or leave it out",
                param="dimensions",
                code="unsupported",
            )
        cancel = threading.Event()
        embedder = self.embedder
        result: tuple[list[list[float]], int] | None = None
        error: ApiError | None = None
        await self.embed_queue.acquire()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_disconnect, receive, cancel.set)
                try:
                    result = await trio.to_thread.run_sync(
                        embedder.embed, params["input"], cancel, abandon_on_cancel=False
                    )
                except Cancelled:
                    pass
                except ApiError as err:
                    error = err  # raised outside the nursery, not as an ExceptionGroup
                nursery.cancel_scope.cancel()
        finally:
            self.embed_queue.release()
        if error is not None:
            raise error
        if result is None:
            return  # the client went away
        vectors, tokens = result
        body = embeddings_body(self.model_id, vectors, tokens, params["encoding_format"])
        await send_json(send, 200, body)


def _ending(finish: Finish) -> Ending:
    return Ending(
        finish.reason,
        finish.prompt_tokens,
        finish.completion_tokens,
        finish.text,
        [call.to_openai() for call in finish.tool_calls],
        finish.stop_sequence,
    )


def _deliver(channel: trio.MemorySendChannel[Event], event: Event) -> None:
    """Runs in the event loop; the reader may be gone already (client left)."""
    try:
        channel.send_nowait(event)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _body(send: Send, data: bytes, *, more: bool = True) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


async def _exit_when_parent_gone(cancel_scope: trio.CancelScope) -> None:
    """The node holds our stdin; EOF means it is gone, so we go too."""
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stream:
        while await stream.receive_some(4096):
            pass
    cancel_scope.cancel()


def load_model(
    path: str,
    threads: int,
    ctx_size: int,
    rpc: list[str] | None = None,
    n_gpu_layers: int = 0,
    tensor_split: list[float] | None = None,
    threads_batch: int | None = None,
) -> Any:
    """Load the model solo, or split over the RPC servers ``rpc`` (host:port, in plan order).

    CPU repacking is off either way: a worker's plain CPU buffers compute slightly
    different floats than repacked ones, and a split must answer exactly as a solo run.
    Flash attention is on: with both, a decode of several tokens computes the same
    logits and cache as one token at a time, bit for bit (``batches_exact``; up to
    ``exact_batch`` tokens, 32 where ``main`` turned the tiled K-quant product off
    with ``exact_kernels``), so speculative decoding and a resumed answer's replay give
    the text plain decoding gives.
    A split keeps the output layer and embeddings on this host (``split_model_params``).
    """
    from ._llamacpp import OUTPUT_TENSORS, register_rpc_servers, split_model_params

    if rpc:
        register_rpc_servers(rpc)  # before the model: llama.cpp aborts on a dead endpoint
    from llama_cpp import Llama

    with split_model_params(keep_on_host=OUTPUT_TENSORS if rpc else None, cpu_repack=False):
        return Llama(
            model_path=path,
            n_ctx=ctx_size,
            n_threads=threads,
            n_threads_batch=threads_batch or threads,
            n_gpu_layers=n_gpu_layers if rpc else -1,
            tensor_split=tensor_split if rpc else None,
            flash_attn=True,
            verbose=False,
        )


def load_draft(path: str, target: Any, threads: int) -> Any:
    """The draft model for speculative decoding, on this host, with the target's context;
    WorkerError unless it shares the target's vocabulary."""
    from llama_cpp import Llama

    from ._speculative import check_vocabularies

    try:
        draft = Llama(model_path=path, n_ctx=target.n_ctx(), n_threads=threads, verbose=False)
    except ValueError as exc:
        raise WorkerError(f"cannot load the draft model {path}: {exc}") from None
    check_vocabularies(target, draft)
    return draft


async def serve(args: argparse.Namespace) -> None:
    from hypercorn.trio import serve as hypercorn_serve

    split = [float(x) for x in args.tensor_split.split(",")] if args.tensor_split else None
    started = time.monotonic()
    llama = await trio.to_thread.run_sync(
        load_model,
        args.model_path,
        args.threads,
        args.ctx_size,
        args.rpc,
        args.n_gpu_layers,
        split,
        args.threads_batch,
    )
    draft = None
    if args.draft and not args.no_speculative:
        draft = await trio.to_thread.run_sync(load_draft, args.draft, llama, args.threads)
    base = args.threads_batch or args.threads
    engine = Engine(
        llama,
        default_max_tokens=args.default_max_tokens,
        speculative=not args.no_speculative,
        draft=draft,
        batch_threads=BatchThreads(base, args.threads_batch_idle or base),
    )
    embedder = None
    if not args.rpc:
        # A split model's layers live on other nodes: a second copy is not made there.
        pooling = pooling_for(llama.metadata)
        embedder = Embedder(
            lambda: load_embedder(
                args.model_path, threads=args.threads, ctx_size=args.ctx_size, pooling=pooling
            ),
            llama.n_embd(),
        )
    app = WorkerApp(
        engine, args.model_id, RequestQueue(args.max_queue, args.queue_timeout), embedder
    )
    config = hypercorn_config("127.0.0.1", 0, "meshp2p.worker.http")
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(hypercorn_serve, app, config)
        port = int(binds[0].rsplit(":", 1)[1])
        load_s = round(time.monotonic() - started, 3)
        ready = {"event": "ready", "port": port, "load_s": load_s, **app.info()}
        print(json.dumps(ready), flush=True)
        nursery.start_soon(_exit_when_parent_gone, nursery.cancel_scope)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="meshp2p-worker", description=__doc__)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--model-id", required=True)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--threads-batch", type=int, default=None, help="default: --threads")
    parser.add_argument(
        "--threads-batch-idle",
        type=int,
        default=None,
        help="threads for batches while other processes leave cores idle (default: "
        "--threads-batch)",
    )
    parser.add_argument("--ctx-size", type=int, default=4096)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument(
        "--default-max-tokens", type=int, default=0, help="cap without max_tokens; 0: the context"
    )
    parser.add_argument("--queue-timeout", type=float, default=300.0)
    parser.add_argument(
        "--rpc", action="append", default=[], help="an RPC server (host:port) holding layers"
    )
    parser.add_argument("--n-gpu-layers", type=int, default=0, help="with --rpc: llama.cpp's")
    parser.add_argument("--tensor-split", default="", help="with --rpc: shares, comma-separated")
    parser.add_argument(
        "--no-speculative", action="store_true", help="decode one token per step, no guesses"
    )
    parser.add_argument("--draft", default="", help="a draft model (.gguf) sharing the vocabulary")
    args = parser.parse_args(argv)
    exact_kernels()
    logging.basicConfig(
        level=os.environ.get("MESHP2P_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        trio.run(serve, args)
    except KeyboardInterrupt:
        pass
    except WorkerError as exc:
        # One line, the last of the log: the node shows it as the worker's last error.
        print(f"meshp2p-worker: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
