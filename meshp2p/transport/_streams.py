"""Small helpers for libp2p streams: bounded close and reset, and reading one frame."""

from __future__ import annotations

from typing import Any

import trio
from libp2p.abc import INetStream

from ._wire import FrameDecoder

# A close or reset must never hold up a caller: a dead peer does not answer.
_GIVE_UP_AFTER = 2.0


async def close_quietly(stream: INetStream) -> None:
    """Close ``stream``, ignoring errors and giving up after two seconds."""
    with trio.move_on_after(_GIVE_UP_AFTER):
        try:
            await stream.close()
        except Exception:
            pass


async def reset_quietly(stream: INetStream) -> None:
    """Reset ``stream`` (abort both ways), ignoring errors; bounded like close_quietly."""
    with trio.move_on_after(_GIVE_UP_AFTER):
        try:
            await stream.reset()
        except Exception:
            pass


async def read_message(
    stream: INetStream, decoder: FrameDecoder, pending: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The next decoded frame from ``stream``: None at end of stream.

    ``pending`` keeps frames that arrived together with an earlier one.
    """
    while not pending:
        data = await stream.read(65536)
        if not data:
            return None
        pending.extend(decoder.feed(data))
    return pending.pop(0)


async def read_some(stream: INetStream, max_bytes: int) -> bytes:
    """Up to ``max_bytes`` from ``stream``; b"" at its end (py-libp2p raises StreamEOF
    there, and some muxers also return b""). A reset still raises."""
    from libp2p.network.stream.exceptions import StreamEOF

    try:
        return await stream.read(max_bytes)
    except StreamEOF:
        return b""


async def close_write(stream: INetStream) -> None:
    """Half-close: we send no more, the peer may still answer.

    ``NetStream.close`` would close both ways on QUIC; ``close_write`` is the half-close
    on every muxer, but is not part of ``INetStream``.
    """
    half_close = getattr(stream, "close_write", None)
    if half_close is not None:
        await half_close()
    else:
        await stream.close()
