"""Speculative decoding: propose tokens cheaply, verify them in one batched decode.

A proposer guesses the next tokens: ``NgramProposer`` by finding the text's latest
suffix earlier in the prompt or the answer (copy-heavy work, editing code, repeats
long runs), ``DraftModelProposer`` with a small model of the same vocabulary.
``decode_tokens`` evaluates the last token and the guesses in one ``llama_decode``
and samples at each position in turn with the request's own sampler, stopping at
the first token that differs from the guess: the tokens, and the sampler's random
draws, are those of plain decoding, up to the last bits of the logits that a batch
of several tokens computes differently from one. A split model pays one round trip
per worker for the whole batch.

``DraftPolicy`` decides how many tokens to guess: the draft grows while guesses are
accepted, shrinks when they are not, and drafting pauses (for longer each time)
while too few are accepted for it to pay (``MIN_ACCEPTANCE``, from measured decode
costs). It reads no clock, so the same request decodes in the same batches.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .._errors import WorkerError

#: Longest and shortest suffix the n-gram proposer looks up.
NGRAM_MAX = 4
NGRAM_MIN = 2
#: A greedy token whose logit leads the next by less than this is not taken from a
#: batch (``decode_tokens``' guard) of a model whose batches are not exact
#: (``batches_exact``): there, batches moved logits of gemma-3-270m by up to 1.4.
GREEDY_GUARD = 1.0
#: Below this share of guesses accepted (on average), drafting pauses. Measured on
#: gemma-3-270m, one CPU thread: a decode of 1 + k tokens costs about 1 + 0.45 k
#: one-token decodes (every position computes the 262,144 logits), so guessing pays
#: from about half the guesses held.
MIN_ACCEPTANCE = 0.5
#: Draft lengths the policy moves between.
DRAFT_START = 4
DRAFT_MAX = 16


class Proposer(Protocol):
    """Guesses up to ``k`` tokens that follow ``tokens``."""

    def propose(self, tokens: Sequence[int], k: int) -> list[int]: ...


class NgramProposer:
    """Prompt lookup: the tokens that followed the latest earlier occurrence of the
    text's longest suffix (``NGRAM_MIN`` .. ``NGRAM_MAX`` tokens), and then, while the
    answer keeps copying that place, the tokens that follow it there.

    An index from each n-gram to the position after its latest occurrence is kept up
    to date as tokens arrive, so a lookup costs O(NGRAM_MAX), not a scan of the
    context (llama-cpp-python's prompt lookup rescans the whole text every token).
    Following the copy matters where the text repeats itself: rewriting a file of
    similar blocks, the latest ``count: int =`` is the block just written, while the
    block being copied is the next one of the prompt.
    """

    def __init__(self, max_n: int = NGRAM_MAX, min_n: int = NGRAM_MIN) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"n-gram lengths must satisfy 1 <= min <= max, got {min_n}, {max_n}")
        self.max_n = max_n
        self.min_n = min_n
        self._tokens: list[int] = []
        self._index: dict[tuple[int, ...], int] = {}
        #: The copy being followed: where its next token was, and the text's length then.
        self._copy: tuple[int, int] | None = None

    def _sync(self, tokens: Sequence[int]) -> None:
        known = self._tokens
        if len(tokens) < len(known) or list(tokens[: len(known)]) != known:
            # Another text (a new request): index it from the start.
            self._tokens, self._index, self._copy = [], {}, None
            known = self._tokens
        for token in tokens[len(known) :]:
            known.append(token)
            # The n-grams that end just before the new token now have a continuation.
            end = len(known) - 1
            for n in range(self.min_n, self.max_n + 1):
                if end - n < 0:
                    break
                self._index[tuple(known[end - n : end])] = end

    def _followed(self) -> int | None:
        """Where the copy followed so far goes on, if the text still copies it."""
        if self._copy is None:
            return None
        source, then = self._copy
        known = self._tokens
        grown = len(known) - then
        at = source + grown
        if grown <= 0 or at >= len(known) or known[source:at] != known[then:]:
            return None
        return at

    def propose(self, tokens: Sequence[int], k: int) -> list[int]:
        if k <= 0:
            return []
        self._sync(tokens)
        known = self._tokens
        at = self._followed()
        if at is None:
            for n in range(min(self.max_n, len(known)), self.min_n - 1, -1):
                at = self._index.get(tuple(known[len(known) - n :]))
                if at is not None:
                    break
        if at is None:
            self._copy = None
            return []
        self._copy = (at, len(known))
        return known[at : at + k]


class DraftModelProposer:
    """Greedy guesses from a small model that shares the target's vocabulary.

    It keeps its own KV cache of the text, so each proposal evaluates only the
    tokens accepted since the last one, then ``k`` single-token steps.
    """

    def __init__(self, draft: Any) -> None:
        self.draft = draft

    def propose(self, tokens: Sequence[int], k: int) -> list[int]:
        import numpy as np

        draft = self.draft
        room = draft.n_ctx() - len(tokens) - 1
        k = min(k, room)
        if k <= 0:
            return []
        cached = draft.n_tokens
        prefix = 0
        limit = min(cached, len(tokens) - 1)  # the last token is always evaluated again
        ids = draft.input_ids
        while prefix < limit and ids[prefix] == tokens[prefix]:
            prefix += 1
        draft.n_tokens = prefix
        draft.eval(list(tokens[prefix:]))
        out: list[int] = []
        for i in range(k):
            logits = _logits(draft, -1)
            token = int(np.argmax(logits))
            out.append(token)
            if i + 1 < k:
                draft.eval([token])
        return out


class _FirstOf:
    def __init__(self, proposers: tuple[Proposer, ...]) -> None:
        self.proposers = proposers

    def propose(self, tokens: Sequence[int], k: int) -> list[int]:
        for proposer in self.proposers:
            guesses = proposer.propose(tokens, k)
            if guesses:
                return guesses
        return []


def first_of(*proposers: Proposer) -> Proposer:
    """The guesses of the first of ``proposers`` that has any (cheap ones first)."""
    return _FirstOf(proposers)


def check_vocabularies(target: Any, draft: Any) -> None:
    """Raise WorkerError unless ``draft`` tokenizes exactly as ``target`` does."""
    import llama_cpp

    n_target, n_draft = target.n_vocab(), draft.n_vocab()
    if n_target != n_draft:
        raise WorkerError(
            f"the draft model's vocabulary has {n_draft} tokens, the model's {n_target}; "
            "a draft model must share the model's vocabulary (same family and tokenizer)"
        )
    tv, dv = target._model.vocab, draft._model.vocab
    for name in ("bos", "eos"):
        a = getattr(llama_cpp, f"llama_vocab_{name}")(tv)
        b = getattr(llama_cpp, f"llama_vocab_{name}")(dv)
        if a != b:
            raise WorkerError(
                f"the draft model's {name} token is {b}, the model's {a}; "
                "a draft model must share the model's vocabulary"
            )
    for token in range(n_target):
        a = llama_cpp.llama_vocab_get_text(tv, token)
        b = llama_cpp.llama_vocab_get_text(dv, token)
        if a != b:
            raise WorkerError(
                f"token {token} is {b!r} in the draft model and {a!r} in the model; "
                "a draft model must share the model's vocabulary"
            )


@dataclass
class DraftPolicy:
    """How many tokens to guess next, from the guesses accepted so far.

    ``next()`` gives the draft length (0: decode plainly); ``record_draft`` feeds back
    how many of a draft held. Decisions depend on the tokens only, never on timings,
    so a request decodes in the same batches, and gives the same text, every time.
    """

    k: int = DRAFT_START
    least: int = 1
    most: int = DRAFT_MAX
    #: Exponential average of the share of guesses accepted.
    acceptance: float | None = None
    #: Plain steps left before drafting is tried again, and the next pause's length.
    paused: int = 0
    pause: int = 8
    max_pause: int = 256
    smoothing: float = 0.3

    def begin(self) -> None:
        """A new request: its text may suit guessing where the last one did not."""
        self.k = DRAFT_START
        self.acceptance = None
        self.paused = 0
        self.pause = 8

    def next(self) -> int:
        if self.paused > 0:
            self.paused -= 1
            return 0
        return self.k

    def record_draft(self, drafted: int, accepted: int) -> None:
        if drafted <= 0:
            return
        if accepted >= drafted:
            self.k = min(self.most, self.k * 2)
        else:
            self.k = max(self.least, min(self.k - 1, accepted + 1))
        self.acceptance = _average(self.acceptance, accepted / drafted, self.smoothing)
        if self.acceptance < MIN_ACCEPTANCE:
            # Guessing costs more than it gains here: decode plainly for a while, then
            # try again (the text may turn copy-heavy), forgetting the bad average.
            self.paused = self.pause
            self.pause = min(self.max_pause, self.pause * 2)
            self.acceptance = None
            self.k = DRAFT_START
        elif accepted >= drafted:
            self.pause = max(8, self.pause // 2)


def _average(old: float | None, new: float, smoothing: float) -> float:
    return new if old is None else old + smoothing * (new - old)


@dataclass
class SpeculationStats:
    """Tokens guessed and tokens of those accepted, over the worker's life."""

    drafted: int = 0
    accepted: int = 0
    #: Verification batches (each one decode: one round trip per split worker).
    verifications: int = 0
    #: Near ties in a batch, evaluated again alone (``decode_tokens``' guard).
    reevaluated: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "drafted": self.drafted,
            "accepted": self.accepted,
            "verifications": self.verifications,
            "reevaluated": self.reevaluated,
        }


def _logits(llama: Any, index: int) -> Any:
    import llama_cpp
    import numpy as np

    pointer = llama_cpp.llama_get_logits_ith(llama._ctx.ctx, index)
    return np.ctypeslib.as_array(pointer, shape=(llama.n_vocab(),))


def _margin(llama: Any, index: int, processor: Any | None) -> float:
    """How far the best logit at output ``index`` leads the second best, after the
    request's logits processor (logit bias) when it has one."""
    import numpy as np

    logits = _logits(llama, index)
    if processor is not None:
        # Ours (``_engine._logit_bias_processor``) reads no token history.
        logits = processor(np.empty(0, dtype=np.intc), logits.copy())
    # Two passes of max, not a sort: a vocabulary has up to 262,144 entries. The best
    # is masked in place and put back (the sampler reads these very logits next).
    best = int(logits.argmax())
    top = float(logits[best])
    logits[best] = -np.inf
    second = float(logits.max())
    logits[best] = top
    return top - second


#: llama.cpp's CPU backend multiplies K-quant weights (Q4_K, Q6_K, ...) by 8 or more
#: token rows with a tiled kernel that rounds otherwise than its one-row kernel
#: (gemma-3-270m: logits up to ~1.4 apart, which turns near ties). ggml reads this
#: variable once per process, at its first such product: ``0`` turns the kernel off.
TILED_MM_ENV = "GGML_CPU_TILED_MM"

#: The most tokens an exact decode may hold while the tiled kernel is on: 7 rows never
#: take it.
EXACT_BATCH = 7

#: The most tokens an exact decode may hold with the tiled kernel off (checked up to
#: this many; flash attention's own tiled path starts at 64 query rows).
EXACT_BATCH_UNTILED = 32


def tiled_matmul_off() -> bool:
    """Whether ggml's tiled K-quant product is off in this process, read as ggml
    reads ``GGML_CPU_TILED_MM`` (``atoi``: off when set and 0). It is decided at the
    process's first product of 8 or more rows, so set it before that."""
    value = os.environ.get(TILED_MM_ENV)
    if value is None:
        return False
    match = re.match(r"\s*([+-]?\d+)", value)
    return int(match.group(1)) == 0 if match else True


def exact_kernels() -> None:
    """Turn ggml's tiled K-quant product off in this process, unless
    ``GGML_CPU_TILED_MM`` says otherwise already, so that decodes of up to
    ``EXACT_BATCH_UNTILED`` tokens are exact. Worker and RPC children call it first
    thing: ggml reads the variable once, at the process's first such product.

    The trade (docs/performance.md): prompts of K-quant models evaluate somewhat
    slower on CPU, and speculation may verify 16 guesses at once instead of 6.
    ``GGML_CPU_TILED_MM=1`` in a node's environment keeps the tiled product."""
    os.environ.setdefault(TILED_MM_ENV, "0")


def batches_exact(llama: Any) -> bool:
    """Whether decodes of up to ``exact_batch(llama)`` tokens give ``llama`` the same
    logits and cache as one token at a time, bit for bit. On llama.cpp's CPU backend
    that takes CPU repacking off (its repacked kernels take another path for one
    token than for several) and flash attention on (the plain attention path sums in
    another order once the cache passes ~64 tokens); the worker loads models so
    (``_worker_child.load_model``; ``tests/inference/test_speculative.py`` checks it)."""
    import llama_cpp

    model = getattr(llama, "model_params", None)
    context = getattr(llama, "context_params", None)
    if model is None or context is None:
        return False
    return (
        not bool(model.use_extra_bufts)
        and context.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    )


def exact_batch(llama: Any) -> int:
    """The most tokens one decode of ``llama`` may hold and compute what one-token
    decodes compute; 0 when its batches are not exact at all (``batches_exact``)."""
    if not batches_exact(llama):
        return 0
    return EXACT_BATCH_UNTILED if tiled_matmul_off() else EXACT_BATCH


def decode_tokens(
    llama: Any,
    prompt: Sequence[int],
    sampling: dict[str, Any],
    grammar: Any | None,
    proposer: Proposer | None,
    policy: DraftPolicy | None,
    stats: SpeculationStats,
    guard: float | None = None,
    max_step: int | None = None,
    before_batch: Callable[[], object] | None = None,
) -> Generator[int, None, None]:
    """The tokens that ``llama.generate(prompt, grammar=grammar, **sampling)`` yields,
    verifying guesses of ``proposer`` in batches when ``policy`` says so.

    Reuses the KV cache's longest prefix with ``prompt`` as ``generate`` does, and
    leaves ``llama.n_tokens`` and ``llama.input_ids`` describing the cache. Without a
    proposer every step is one token, as in ``generate``.

    ``guard`` (greedy requests): a position of the batch whose best logit leads the
    next by less than this is evaluated again alone, so that the last bits in which a
    batch differs cannot turn a near tie the other way. ``max_step``: the most tokens
    a verification decodes (``exact_batch`` keeps batches exact). ``before_batch`` is
    called before each decode of several tokens (``_threads``: how many threads).
    """
    sampler = llama._init_sampler(grammar=grammar, **sampling)
    llama._sampler = sampler
    ctx = llama._ctx
    processor = sampling.get("logits_processor")
    if before_batch is not None:
        before_batch()
    eval_prompt(llama, prompt)
    token = sampler.sample(ctx, -1)
    text = [*prompt, token]  # the prompt and every token yielded
    yield token
    drafting = proposer is not None and policy is not None
    while True:
        # Evaluate `token`, with guesses of what follows it, and sample what follows.
        room = llama._n_ctx - llama.n_tokens - 1
        if room < 0:
            return
        most = min(room, llama.n_batch - 1, (max_step or llama.n_batch) - 1)
        k = min(policy.next(), most) if drafting else 0  # type: ignore[union-attr]
        guesses = proposer.propose(text, k)[:k] if k > 0 else []  # type: ignore[union-attr]
        if not guesses:
            llama.eval([token])
            token = sampler.sample(ctx, -1)
            text.append(token)
            yield token
            continue
        n_past = llama.n_tokens
        step = [token, *guesses]
        ctx.kv_cache_seq_rm(-1, n_past, -1)
        if before_batch is not None:
            before_batch()
        decode_batch(llama, step, logits_all=True)
        stats.verifications += 1
        stats.drafted += len(guesses)
        # Sampled in order, each after the sampler accepted the previous token, as
        # plain decoding does; a guess that held was evaluated already.
        out: list[int] = []
        for i in range(len(step)):
            if guard is not None and _margin(llama, i, processor) < guard:
                # A near tie, where the batch's last bits could pick another token than
                # plain decoding: evaluate this position alone, as plain decoding does.
                llama.n_tokens = n_past + i
                ctx.kv_cache_seq_rm(-1, llama.n_tokens, -1)
                llama.eval([step[i]])
                out.append(sampler.sample(ctx, -1))
                stats.reevaluated += 1
                break
            out.append(sampler.sample(ctx, i))
            if i == len(guesses) or out[-1] != guesses[i]:
                # Positions after the last guess that held saw a wrong token: drop them.
                llama.n_tokens = n_past + i + 1
                ctx.kv_cache_seq_rm(-1, llama.n_tokens, -1)
                break
        # The last token is not evaluated yet: the next step does it.
        accepted = sum(1 for a, b in zip(out, guesses, strict=False) if a == b)
        stats.accepted += accepted
        # Guesses after a near tie count as failed: their verification was work lost.
        policy.record_draft(len(guesses), accepted)  # type: ignore[union-attr]
        token = out[-1]
        text.extend(out)
        yield from out


def decode_batch(llama: Any, tokens: Sequence[int], *, logits_all: bool) -> None:
    """Evaluate ``tokens`` after the cache in one ``llama_decode`` (``Llama.eval`` splits
    at ``n_batch`` and keeps only the last position's logits): every position's logits
    with ``logits_all``, else the last one's. The caller keeps it within ``n_batch``."""
    n_past = llama.n_tokens
    llama._batch.set_batch(batch=list(tokens), n_past=n_past, logits_all=logits_all)
    llama._ctx.decode(llama._batch)
    llama.input_ids[n_past : n_past + len(tokens)] = tokens
    llama.n_tokens = n_past + len(tokens)


def prime_prompt(llama: Any, prompt: Sequence[int]) -> list[int]:
    """Keep the cache's longest prefix of ``prompt`` and evaluate what follows it but
    the last token, in one batch; return the tokens left (the last one).

    The last token is left to be evaluated alone, always: a prompt found whole in the
    cache has its last token evaluated again alone (for its logits; llama-cpp-python's
    ``generate`` does the same), and a batch of 64 or more tokens takes another flash
    attention path than one token does, so evaluating it in the prompt's batch the
    first time made the same greedy request answer otherwise once its prompt was
    cached (the Python file of ``make bench-spec``: ``count: int = 1`` fresh, ``0``
    cached). ``Llama.generate`` after this finds the prefix and evaluates the rest."""
    pending = _reuse_prefix(llama, list(prompt))
    if len(pending) > 1:
        llama.eval(pending[:-1])
    return pending[-1:]


def eval_prompt(llama: Any, prompt: Sequence[int]) -> None:
    """Evaluate ``prompt`` as ``prime_prompt`` says, its last token alone (with logits)."""
    llama.eval(prime_prompt(llama, prompt))


def _reuse_prefix(llama: Any, tokens: list[int]) -> list[int]:
    """The prompt tokens still to evaluate, after keeping the cache's longest prefix of
    them (at least the last one is evaluated, for its logits)."""
    cached = llama.n_tokens
    prefix = 0
    ids = llama.input_ids
    limit = min(cached, len(tokens) - 1)
    while prefix < limit and ids[prefix] == tokens[prefix]:
        prefix += 1
    if prefix == 0 or not llama._ctx.kv_cache_seq_rm(-1, prefix, -1):
        llama.reset()
        prefix = 0
    llama.n_tokens = prefix
    return tokens[prefix:]
