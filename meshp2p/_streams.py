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
