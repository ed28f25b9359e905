"""Speculation through a real worker child: ``--draft`` refused at load for another
vocabulary, and the guessed/accepted counts reaching ``InferenceWorker.status()``."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio
from synthetic_gguf import vocabulary, write_model

from meshp2p.inference._worker import InferenceWorker, WorkerSettings

TIMEOUT = 120.0


def settings(tmp_path: Path, target: Path, draft: Path | None, **extra: object) -> WorkerSettings:
    return WorkerSettings(
        model_id="target",
        model_path=target,
        threads=1,
        ctx_size=256,
        log_dir=tmp_path / "logs",
        draft_path=draft,
        **extra,  # type: ignore[arg-type]
    )


async def wait_for(worker: InferenceWorker, *states: str) -> None:
    with trio.fail_after(TIMEOUT):
        while worker.state not in states:
            await worker.wait_state_change()


async def test_a_draft_of_another_vocabulary_is_refused_at_load(tmp_path: Path) -> None:
    target = write_model(tmp_path / "target.gguf", seed=1)
    other = write_model(tmp_path / "other.gguf", seed=1, tokens=vocabulary("zebra"))
    worker = InferenceWorker(settings(tmp_path, target, other))
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await wait_for(worker, "restarting")
        nursery.cancel_scope.cancel()
    assert worker.last_error is not None
    assert worker.last_error.startswith("exit code 2: meshp2p-worker: token 270 is")
    assert "a draft model must share the model's vocabulary" in worker.last_error


@pytest.mark.parametrize("speculative", [True, False])
async def test_status_counts_guessed_and_accepted_tokens(tmp_path: Path, speculative: bool) -> None:
    target = write_model(tmp_path / "target.gguf", seed=1)
    draft = write_model(tmp_path / "draft.gguf", seed=1)
    worker = InferenceWorker(settings(tmp_path, target, draft, speculative=speculative))
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await wait_for(worker, "ready")
        assert worker.info["speculative"] is speculative
        assert (worker.info["draft"] == str(draft)) is speculative
        body = {
            "endpoint": "completion",
            "params": {"prompt": [1, 259, 260, 261], "max_tokens": 24, "temperature": 0},
        }
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            reported: dict[str, int] = {}
            seen = trio.Event()

            async def watch() -> None:
                reported.update(await worker.wait_speculation_change())
                seen.set()

            nursery.start_soon(watch)
            reply = await http.post(f"{worker.base_url}/generate", json=body)
            assert reply.status_code == 200, reply.text
            health = (await http.get(f"{worker.base_url}/health")).json()
        if speculative:
            with trio.fail_after(TIMEOUT):
                await seen.wait()
            status = worker.status()["speculation"]
            assert status == reported
            assert status == health["speculation"]
            assert status["drafted"] > 0 and status["accepted"] > 0
        else:
            assert health["speculation"]["drafted"] == 0
            assert worker.status()["speculation"] == {}
        nursery.cancel_scope.cancel()
