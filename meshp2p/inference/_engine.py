"""The token generation loop of an inference worker, on llama-cpp-python's ``Llama``.

Synchronous and single-threaded by design: one worker thread drives it, and
it checks a cancel flag between tokens so a vanished client frees the model at
once. It produces text deltas and a final usage count; turning those into
OpenAI JSON is ``_completions``' job.
"""

from __future__ import annotations

import codecs
import threading
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..api._openai import ApiError
from ._speculative import (
    GREEDY_GUARD,
    DraftModelProposer,
    DraftPolicy,
    NgramProposer,
    Proposer,
    SpeculationStats,
    decode_batch,
    decode_tokens,
    eval_prompt,
    exact_batch,
    first_of,
    prime_prompt,
)
from ._threads import BatchThreads
from ._toolcalls import ToolCall, parse_tool_calls
from ._toolemu import CALL_OPEN, any_call_grammar, emulate_tools, has_tool_turns, rewrite_messages

# Sampling defaults, the same as llama-cpp-python's create_completion uses, so
# a request gives the same tokens through the mesh as through the library.
_TOP_K = 40
_MIN_P = 0.05
_DEFAULT_TEMPERATURE = {"chat": 0.2, "completion": 0.8}


@dataclass
class Delta:
    """New text generated since the last event."""

    text: str


@dataclass
class Step:
    """One generated token is fully reflected in the deltas yielded before it: an answer
    broken off after this point resumes from the tokens of the steps so far
    (``Engine.generate``'s ``replay``)."""

    token: int


@dataclass
class Finish:
    """The end of a generation."""

    reason: str  # "stop", "length", "tool_calls" or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    #: The stop string that ended the answer, if one did.
    stop_sequence: str | None = None


@dataclass
class PreparedRequest:
    endpoint: str
    prompt_tokens: list[int]
    prompt_text: str
    max_tokens: int
    stop: list[str]
    sampling: dict[str, Any]
    seed: int | None
    echo: bool
    grammar: Any | None
    tools: bool
    #: Tokens that end the answer besides end-of-generation ones: turn markers.
    stop_tokens: frozenset[int] = frozenset()
    #: The prompt ends in "Assistant:", so the answer's first token has a space.
    strip_leading_space: bool = False
    #: Emulated tools (``_toolemu``): the grammar of a call after ``<tool_call>``, and
    #: whether the answer must be one (then the prompt ends in ``<tool_call>``).
    call_grammar: Any | None = None
    call_forced: bool = False


# Models without a chat template in their GGUF are base models, which know no
# turn markers (gemma-3-270m answers its family's <start_of_turn> format with
# noise and never ends a turn) but continue a plain transcript well, and the
# transcript's next "User:" line marks where their answer ends.
_TRANSCRIPT_TEMPLATE = """{{ bos_token }}
{%- for m in messages -%}
{%- if m['role'] in ('system', 'developer') -%}
{{ m['content'] or '' }}{{ '\n\n' }}
{%- else -%}
{%- set role = {'user': 'User', 'assistant': 'Assistant'}.get(m['role'], 'Tool') -%}
{{ role }}: {{ (m['content'] or '') | trim }}{{ '\n' }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}Assistant:{%- endif -%}"""

# Markers that make the boundary between two turns visible in a rendering.
_PROBE = ("\x01a\x01", "\x01b\x01", "\x01c\x01")


class Cancelled(Exception):
    """The client went away; generation stopped between two tokens."""


class Engine:
    """Wraps one loaded ``llama_cpp.Llama`` and generates for one request at a time.

    ``default_max_tokens`` caps requests that name no ``max_tokens`` (0: up to the
    context), so a model that never ends its turn cannot run for minutes.

    ``speculative`` verifies guessed tokens in batches (``_speculative``): guesses from
    the text itself, and from ``draft`` (a loaded ``Llama`` sharing the vocabulary,
    checked by the caller) when there is one. Requests with a seed and a temperature
    above 0 decode plainly: their random draws must meet the very logits of plain
    decoding, and a batch computes some in other last bits.

    ``batch_threads`` chooses the threads of each prompt and verification batch (more
    while the machine's other processes leave cores idle).
    """

    def __init__(
        self,
        llama: Any,
        *,
        default_max_tokens: int = 0,
        speculative: bool = True,
        draft: Any | None = None,
        batch_threads: BatchThreads | None = None,
    ) -> None:
        from llama_cpp import llama_chat_format

        self.llama = llama
        #: Threads for decodes of several tokens, chosen before each (``_threads``).
        self.batch_threads = batch_threads
        self.default_max_tokens = default_max_tokens
        self.speculative = speculative
        self.draft = draft
        #: Guessed and accepted tokens over this engine's life (``/api/status``).
        self.speculation = SpeculationStats()
        self._policy = DraftPolicy()
        # llama.cpp rounds the context up to a multiple of 256, but llama-cpp-python
        # sizes its token buffer by the size asked for: the smaller one binds.
        self.n_ctx: int = min(llama.n_ctx(), len(llama.input_ids))
        meta: dict[str, str] = llama.metadata
        template = meta.get("tokenizer.chat_template")
        self.chat_template_source = "gguf" if template else "transcript"
        if not template:
            template = _TRANSCRIPT_TEMPLATE
        self.chat_template = template
        self.tools_supported = self.chat_template_source == "gguf" and "tools" in template
        eos_id, bos_id = llama.token_eos(), llama.token_bos()
        model = llama._model
        eos = model.token_get_text(eos_id) if eos_id != -1 else ""
        bos = model.token_get_text(bos_id) if bos_id != -1 else ""
        self._formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template, eos_token=eos, bos_token=bos, stop_token_ids=[eos_id]
        )
        boundaries = _turn_boundaries(
            self._formatter,
            llama_chat_format.Jinja2ChatFormatter(
                template=template, eos_token=eos, bos_token=bos, add_generation_prompt=False
            ),
        )
        #: Where the template starts a new turn (the next user's, or another answer's):
        #: a model that writes one has finished its answer (see ``turn_stops``).
        self.turn_boundaries = boundaries
        self.turn_stop_strings, self.turn_stop_tokens = turn_stops(boundaries, llama)

    def prepare(self, endpoint: str, params: dict[str, Any]) -> PreparedRequest:
        """Tokenize and check a validated request; ApiError (400) when it cannot run."""
        llama = self.llama
        stop = list(params.get("stop", []))
        has_tools = bool(params.get("tools"))
        call_grammar = None
        call_forced = False
        if endpoint == "chat":
            prompt_text, tokens, template_stops, emulation = self._chat_prompt(params)
            stop.extend(s for s in template_stops if s not in stop)
            stop.extend(s for s in self.turn_stop_strings if s not in stop)
            if emulation is not None:
                call_grammar = self._call_grammar(emulation.grammar, params["tools"])
                call_forced = emulation.forced
            elif params.get("tool_choice") == "none" and not self.tools_supported:
                has_tools = False
        else:
            prompt = params["prompt"]
            if isinstance(prompt, str):
                prompt_text = prompt
                tokens = llama.tokenize(prompt.encode(), add_bos=True, special=True)
            else:
                tokens = list(prompt)
                vocab = llama.n_vocab()
                if any(not 0 <= t < vocab for t in tokens):
                    raise ApiError(
                        400, f"'prompt' holds a token id outside 0..{vocab - 1}", param="prompt"
                    )
                prompt_text = llama.detokenize(tokens).decode("utf-8", "replace")
        if not tokens:
            raise ApiError(400, "the prompt is empty", param="prompt")
        if len(tokens) >= self.n_ctx:
            raise ApiError(
                400,
                f"the prompt has {len(tokens)} tokens; this model's context holds {self.n_ctx}",
                param="messages" if endpoint == "chat" else "prompt",
                code="context_length_exceeded",
            )
        room = self.n_ctx - len(tokens)
        requested = params.get("max_tokens")
        if requested is None:
            requested = self.default_max_tokens or room
        max_tokens = min(requested, room)

        grammar = None
        fmt = params.get("response_format")
        if fmt is not None:
            grammar = self._grammar(fmt)

        logits_processor = None
        bias = params.get("logit_bias")
        if bias:
            logits_processor = _logit_bias_processor(bias, llama.n_vocab())

        temperature = params.get("temperature", _DEFAULT_TEMPERATURE[endpoint])
        sampling: dict[str, Any] = {
            "temp": temperature,
            "top_p": params.get("top_p", 0.95),
            "top_k": params.get("top_k", _TOP_K),
            "min_p": _MIN_P,
            "frequency_penalty": params.get("frequency_penalty", 0.0),
            "presence_penalty": params.get("presence_penalty", 0.0),
            "logits_processor": logits_processor,
        }
        return PreparedRequest(
            endpoint=endpoint,
            prompt_tokens=tokens,
            prompt_text=prompt_text,
            max_tokens=max_tokens,
            stop=[s for s in stop if s],
            sampling=sampling,
            seed=params.get("seed"),
            echo=bool(params.get("echo")),
            grammar=grammar,
            tools=has_tools,
            stop_tokens=self.turn_stop_tokens if endpoint == "chat" else frozenset(),
            strip_leading_space=endpoint == "chat" and self.chat_template_source == "transcript",
            call_grammar=call_grammar,
            call_forced=call_forced,
        )

    def _chat_prompt(self, params: dict[str, Any]) -> tuple[str, list[int], list[str], Any]:
        """A conversation's prompt: its text, its tokens, the template's stop strings, and
        the tool emulation (None when the template takes the tools, or there are none)."""
        messages = params["messages"]
        tools = params.get("tools")
        choice = params.get("tool_choice", "auto")
        emulation = None
        stops: list[str] = []
        if not self.tools_supported:
            alternate = self.chat_template_source == "gguf"
            if tools and choice != "none":
                emulation = emulate_tools(messages, tools, choice, alternate=alternate)
                messages = emulation.messages
            elif has_tool_turns(messages):
                messages = rewrite_messages(messages, None, alternate=alternate)
                # No tools to call now: an answer that starts a call has ended.
                stops.append(CALL_OPEN)
            if not alternate and (emulation is not None or stops):
                # A transcript's results are "Tool:" turns: the model must not write one.
                stops.append("\nTool:")
            tools = None
        formatted = self._format(messages, tools, params.get("tool_choice"))
        prompt_text = formatted.prompt
        if emulation is not None and emulation.forced:
            # The answer is a call: it starts with the marker, the grammar does the rest.
            space = " " if self.chat_template_source == "transcript" else ""
            prompt_text += space + CALL_OPEN
        tokens = self.llama.tokenize(
            prompt_text.encode(), add_bos=not formatted.added_special, special=True
        )
        stops += [formatted.stop] if isinstance(formatted.stop, str) else list(formatted.stop or [])
        return prompt_text, tokens, stops, emulation

    def _format(self, messages: Any, tools: Any, choice: Any) -> Any:
        """The template's rendering; ApiError (400) if it refuses the conversation."""
        try:
            return self._formatter(messages=messages, tools=tools, tool_choice=choice)
        except Exception as exc:  # jinja raises whatever the template author chose
            folded = _fold_system(messages)
            if folded is None:
                raise ApiError(
                    400, f"the model's chat template rejected the messages: {exc}", param="messages"
                ) from None
        # Some templates (Mistral's first) take no system turn: it leads the first user's.
        return self._format(folded, tools, choice)

    def count_tokens(self, params: dict[str, Any]) -> int:
        """Prompt tokens of a conversation, as a generation would see it (tools included)."""
        return len(self._chat_prompt(params)[1])

    def _call_grammar(self, grammar: str, tools: list[dict[str, Any]]) -> Any:
        from llama_cpp import llama_grammar

        if not self._loads(grammar):
            # A schema the converter took but llama.cpp refuses: any object will do.
            grammar = any_call_grammar(tools)
        return llama_grammar.LlamaGrammar.from_string(grammar, verbose=False)

    def _loads(self, grammar: str) -> bool:
        """Whether llama.cpp parses ``grammar`` (given one it does not, a sampler chain
        would hold a null sampler and crash the worker)."""
        import llama_cpp

        vocab = self.llama._model.vocab
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        if not sampler:
            return False
        llama_cpp.llama_sampler_free(sampler)
        return True

    def _grammar(self, fmt: dict[str, Any]) -> Any:
        import json

        from llama_cpp import llama_grammar

        schema = fmt.get("schema")
        try:
            if schema is not None:
                grammar = llama_grammar.LlamaGrammar.from_json_schema(
                    json.dumps(schema), verbose=False
                )
            else:
                grammar = llama_grammar.LlamaGrammar.from_string(
                    llama_grammar.JSON_GBNF, verbose=False
                )
        except Exception as exc:
            raise ApiError(
                400,
                f"the JSON schema cannot be turned into a grammar: {exc}",
                param="response_format",
            ) from None
        if not self._loads(grammar._grammar):
            raise ApiError(
                400, "llama.cpp cannot use the JSON schema's grammar", param="response_format"
            )
        return grammar

    def _replayed(
        self, prompt: list[int], grammar: Any, sampling: dict[str, Any], pending: deque[int]
    ) -> Generator[int, None, None]:
        """Like ``Llama.generate``, but the first tokens are ``pending`` (yielded as
        ``_REPLAYED``; the caller pops each): the sampler accepts them as if it had drawn
        them, and with a seed it draws once for each too, so the tokens after them are
        those of the run they came from.

        On a model whose batches are exact (``exact_batch``: the worker's), the
        replayed tokens go in batches of that many, greedy or seeded (a seeded sampler
        draws from each position's logits of the batch, which are those of one-token
        decodes bit for bit). Otherwise each replayed token is evaluated alone, as
        generation did: in one batch of a model loaded otherwise, the logits differ
        from a token-by-token run's in their last bits, and that is enough to change a
        token at a near tie. That costs about a third of generating them (measured in
        docs/routing.md)."""
        import ctypes

        import llama_cpp
        import numpy as np
        from llama_cpp import _internals

        llama = self.llama
        sampler = llama._init_sampler(grammar=grammar, **sampling)
        n_vocab = llama.n_vocab()
        # Greedy keeps no state but the tokens accepted; a seeded sampler draws per token.
        draws = sampling["temp"] != 0
        candidates = _internals.LlamaTokenDataArray(n_vocab=n_vocab) if draws else None
        try:
            llama.reset()
            self._before_batch()
            eval_prompt(llama, prompt)

            def draw(index: int) -> None:
                # What sampling at this position drew (the seeded sampler's state moves
                # on); the token itself is the replayed one.
                if candidates is not None:
                    logits = np.ctypeslib.as_array(
                        llama._ctx.get_logits_ith(index), shape=(n_vocab,)
                    )
                    candidates.copy_logits(logits)
                    llama_cpp.llama_sampler_apply(
                        sampler.sampler, ctypes.byref(candidates.candidates)
                    )

            step = exact_batch(llama)
            if step:
                # Exact batches (the worker's models): replay in batches that compute
                # what one-token decodes did, each position's logits too, from which a
                # seeded sampler draws as it drew then.
                replay = list(pending)
                for start in range(0, len(replay), step):
                    chunk = replay[start : start + step]
                    draw(-1)  # the logits of the token before the chunk
                    sampler.accept(chunk[0])
                    yield _REPLAYED
                    self._before_batch()
                    decode_batch(llama, chunk, logits_all=draws)
                    for i, token in enumerate(chunk[1:]):
                        draw(i)
                        sampler.accept(token)
                        yield _REPLAYED
                pending.clear()
            while pending:
                token = pending[0]
                draw(-1)
                sampler.accept(token)
                yield _REPLAYED
                llama.eval([token])
            while True:
                token = sampler.sample(llama._ctx, -1)
                yield token
                llama.eval([token])
        finally:
            sampler.close()

    def speculates(self, req: PreparedRequest, grammar: Any = None) -> bool:
        """Whether ``req`` is decoded speculatively: not with a seed and a temperature
        above 0, nor greedy under a grammar (its margin guard cannot see which tokens
        the grammar allows)."""
        if not self.speculative:
            return False
        if req.sampling["temp"] > 0:
            return req.seed is None
        return grammar is None

    def _tokens(
        self, req: PreparedRequest, prompt: list[int], grammar: Any, speculative: bool
    ) -> Generator[int, None, None]:
        if not (speculative and self.speculates(req, grammar)):
            self._before_batch()
            prime_prompt(self.llama, prompt)
            return self.llama.generate(prompt, grammar=grammar, **req.sampling)  # type: ignore[no-any-return]
        proposer: Proposer = NgramProposer()
        if self.draft is not None:
            proposer = first_of(proposer, DraftModelProposer(self.draft))
        self._policy.begin()
        # Batches that are not exact need the guard at greedy near ties.
        exact = exact_batch(self.llama)
        guard = GREEDY_GUARD if req.sampling["temp"] <= 0 and not exact else None
        max_step = exact or None
        return decode_tokens(
            self.llama,
            prompt,
            req.sampling,
            grammar,
            proposer,
            self._policy,
            self.speculation,
            guard,
            max_step,
            self._before_batch,
        )

    def _before_batch(self) -> None:
        if self.batch_threads is not None:
            self.batch_threads.apply(self.llama, self.llama.context_params.n_threads)

    def generate(
        self,
        req: PreparedRequest,
        cancel: threading.Event,
        *,
        replay: Sequence[int] = (),
        steps: bool = False,
        speculative: bool = True,
    ) -> Iterator[Delta | Step | Finish]:
        """Yield text deltas, then one Finish. Checks ``cancel`` before every token.

        With ``steps``, a ``Step`` follows the deltas of each token. ``replay`` resumes an
        answer another worker broke off: the tokens of its steps are taken as generated
        (same seed, so the sampler's state advances as it did there) and what they
        produced is not yielded again; the answer then goes on as it would have there.
        """
        import random

        import llama_cpp

        llama = self.llama
        vocab = llama._model.vocab
        seed = req.seed if req.seed is not None else random.getrandbits(32)
        llama.set_seed(seed)
        if req.seed is not None:
            # A prompt evaluated in one batch and one resumed from the cache give
            # logits that differ in the last bits, which sampling at temperature > 0
            # can turn into another text: with a seed, evaluate the whole prompt.
            llama.reset()

        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        # Everything generated so far; a forced call's answer starts with the marker,
        # which its prompt ends in.
        text = CALL_OPEN if req.call_forced else ""
        raw = ""  # the generated text as written (before a leading space is cut)
        sent = 0  # how much of `text` was already yielded
        holdback = max((len(s) for s in req.stop), default=1) - 1
        count = 0
        reason = "length"
        matched: str | None = None
        pending = deque(replay)
        if req.echo and not pending:
            yield Delta(req.prompt_text)

        # Emulated tools run in two phases: free text, watched for "<tool_call>"; then
        # the call under its grammar, from a prompt that ends in the marker. A forced
        # call starts in the second. Stop strings and turn markers end free text only.
        constrained = req.call_forced
        prompt = req.prompt_tokens
        step: tuple[int, bool] = (0, False)
        while True:
            prev = list(prompt)
            switch_at: int | None = None
            grammar = req.call_grammar if constrained else req.grammar
            tokens = (
                self._replayed(prompt, grammar, req.sampling, pending)
                if pending
                else self._tokens(req, prompt, grammar, speculative)
            )
            try:
                for token in tokens:
                    replayed = bool(pending) and token == _REPLAYED
                    if replayed:
                        token = pending.popleft()
                    if cancel.is_set():
                        reason = "cancelled"
                        break
                    if llama_cpp.llama_vocab_is_eog(vocab, token) or (
                        not constrained and token in req.stop_tokens
                    ):
                        reason = "stop"
                        break
                    count += 1
                    piece = decoder.decode(llama.detokenize([token], prev_tokens=prev[-8:]))
                    prev.append(token)
                    raw += piece
                    text += piece
                    if req.strip_leading_space and count == 1 and text.startswith(" "):
                        text = text[1:]
                    if not constrained:
                        found = _find_stop(text, req.stop, sent)
                        if found is not None:
                            text, matched = text[: found[0]], found[1]
                            reason = "stop"
                            break
                        at = text.find(CALL_OPEN) if req.call_grammar is not None else -1
                        if at != -1:
                            switch_at = at + len(CALL_OPEN)
                            step = token, replayed
                            break
                    safe = _streamable_end(text, holdback, req.tools)
                    if safe > sent:
                        if not replayed:
                            yield Delta(text[sent:safe])
                        sent = safe
                    if steps and not replayed:
                        yield Step(token)
                    if count >= req.max_tokens:
                        break
            finally:
                tokens.close()
            if switch_at is not None and steps and not step[1]:
                yield Step(step[0])  # the marker's token is the call's first step
            if switch_at is None or count >= req.max_tokens:
                break
            # The call begins: resume from the prompt and the text up to the marker.
            raw = raw[: switch_at + len(raw) - len(text)]
            text = text[:switch_at]
            prompt = req.prompt_tokens + llama.tokenize(raw.encode(), add_bos=False, special=False)
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            constrained = True
        text += decoder.decode(b"", final=True) if reason != "stop" else ""
        if reason == "cancelled":
            raise Cancelled()

        calls: list[ToolCall] = []
        if req.tools:
            content, calls = parse_tool_calls(text)
            if calls:
                # What was streamed came before the first call, so it leads `content`.
                streamed = text[:sent]
                text = content if content.startswith(streamed) else streamed
                reason = "tool_calls"
        if len(text) > sent:
            yield Delta(text[sent:])
        full = req.prompt_text + text if req.echo else text
        yield Finish(reason, len(req.prompt_tokens), count, full, calls, matched)


#: What ``Engine._replayed`` yields for a token to be taken from the replay queue.
_REPLAYED = -1


def _fold_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The conversation with its leading system turn put in the first user turn; None if
    it has no system turn to fold."""
    if len(messages) < 2 or messages[0].get("role") != "system":
        return None
    system, first, *rest = messages
    if first.get("role") != "user":
        return None
    content = f"{system.get('content') or ''}\n\n{first.get('content') or ''}"
    return [{**first, "content": content}, *rest]


def _turn_boundaries(with_prompt: Any, without_prompt: Any) -> list[str]:
    """What a chat template writes where a turn ends and the next begins: between an
    answer and the next user message (Gemma: ``<end_of_turn>\\n<start_of_turn>user\\n``),
    and its generation prompt (``\\n<start_of_turn>model\\n``), each with the newline
    before it when the template puts one there. Empty for a template that refuses the
    probe conversation."""
    a, b, c = _PROBE
    ask = [{"role": "user", "content": a}]
    conversation = [*ask, {"role": "assistant", "content": b}, {"role": "user", "content": c}]
    try:
        turns = without_prompt(messages=conversation).prompt
        asked = without_prompt(messages=ask).prompt
        prompted = with_prompt(messages=ask).prompt
    except Exception:  # jinja raises whatever the template author chose
        return []
    out = []
    start, end = turns.find(b), turns.find(c)
    if start != -1 and end > start:
        out.append(turns[start + len(b) : end])
    if prompted.startswith(asked) and len(prompted) > len(asked):
        opening = prompted[len(asked) :]
        out.append(("\n" if asked.endswith("\n") else "") + opening)
    return out


def turn_stops(boundaries: list[str], llama: Any) -> tuple[list[str], frozenset[int]]:
    """Stop strings and stop tokens that end an answer where the template's next turn
    would begin.

    Each line of a boundary is a stop string, with the newline before it when the
    boundary has one there (so a mid-line ``User:`` does not stop a transcript).
    Control tokens in a boundary (Gemma's ``<start_of_turn>``, ChatML's ``<|im_end|>``
    in a vocabulary that has them) are stop tokens: they never appear in the text.
    """
    import llama_cpp

    strings: list[str] = []
    control: set[int] = set()
    vocab = llama._model.vocab
    for boundary in boundaries:
        for i, line in enumerate(boundary.split("\n")):
            line = line.strip()
            if line and (stop := ("\n" if i > 0 else "") + line) not in strings:
                strings.append(stop)
        tokens = llama.tokenize(boundary.encode(), add_bos=False, special=True)
        control.update(t for t in tokens if llama_cpp.llama_vocab_is_control(vocab, t))
    return strings, frozenset(control)


_CALL_MARKERS = ("<tool_call>", "[TOOL_CALLS]")


def _streamable_end(text: str, holdback: int, tools: bool) -> int:
    """How much of ``text`` can go to the client now.

    A tail that might be the start of a stop string is held back. With tools,
    so is everything from a tool-call marker on, and an answer that opens like
    a JSON call, so that calls reach the client as ``tool_calls``, not text.
    """
    end = len(text) - holdback
    if not tools:
        return end
    head = text.lstrip()
    if head.startswith(("{", "[")) or any(m.startswith(head) for m in _CALL_MARKERS):
        return 0
    for marker in _CALL_MARKERS:
        at = text.find(marker)
        if at != -1:
            end = min(end, at)
        else:
            # A partial marker at the very end.
            for k in range(len(marker) - 1, 0, -1):
                if text.endswith(marker[:k]):
                    end = min(end, len(text) - k)
                    break
    return end


def _find_stop(text: str, stops: list[str], sent: int) -> tuple[int, str] | None:
    """Where the earliest stop string starts, and which it is, searching only text not
    yet final."""
    best: tuple[int, str] | None = None
    for stop in stops:
        i = text.find(stop, max(0, sent - len(stop)))
        if i != -1 and (best is None or i < best[0]):
            best = (i, stop)
    return best


def _logit_bias_processor(bias: dict[Any, float], n_vocab: int) -> Any:
    from llama_cpp import LogitsProcessorList

    # Token ids arrive as JSON object keys, so as strings.
    valid = {int(t): float(b) for t, b in bias.items() if 0 <= int(t) < n_vocab}

    def apply(_input_ids: Any, scores: Any) -> Any:
        for token, value in valid.items():
            scores[token] += value
        return scores

    return LogitsProcessorList([apply])
