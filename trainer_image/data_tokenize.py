"""Tokenisation with the chat template, and which tokens carry loss.

Assistant spans are found on the rendered text, not guessed from token ids: for each assistant
turn i the template renders messages[:i] with the generation prompt (where the answer starts)
and messages[:i+1] (where the turn ends, end-of-turn token included). Both are prefixes of the
full rendering for every usual template, and the fast tokenizer's offsets map those character
spans onto tokens, so every non-assistant turn of a multi-turn chat is masked whatever the
template. Templates that rewrite earlier turns (no prefix property) fall back to finding each
answer's text, plus the end-of-turn token that follows it, in the full rendering.
"""

from __future__ import annotations

from dataclasses import dataclass

from .data_errors import DataError
from .data_formats import Example
from .data_prepare import PreferenceSample, SftSample

IGNORE_INDEX = -100
CHARS_PER_TOKEN_CAP = 32
"""Rows longer than maxSeqLength * this in characters are dropped without tokenising them."""
_PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


@dataclass
class Tokenised:
    example: Example
    sample: SftSample | PreferenceSample

    @property
    def length(self) -> int:
        s = self.sample
        if isinstance(s, SftSample):
            return len(s.input_ids)
        return len(s.prompt_ids) + max(len(s.chosen_ids), len(s.rejected_ids))


@dataclass
class TokeniseResult:
    items: list[Tokenised]
    too_long: int
    template_errors: list[str]
    """`origin: reason` for rows the chat template refused to render."""


def resolve_chat_template(spec, tokenizer) -> str | None:
    """The chat template to render conversations with; None when only text datasets are used.

    Fails before training when a conversation format needs a template and neither the spec
    (preprocessing.chatTemplate) nor the tokenizer has one, or when the template cannot render.
    """
    needs = sorted({ds.format for ds in spec.datasets if ds.format != "text"})
    template = spec.preprocessing.chat_template or getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: use the default one
        template = template.get("default") or next(iter(template.values()), None)
    if not needs:
        return template
    if not template:
        where = getattr(tokenizer, "name_or_path", "") or "the base model"
        raise DataError(
            f"the tokenizer of {where} has no chat template, and dataset format "
            f"{' and '.join(needs)} is rendered with one: set spec.preprocessing.chatTemplate to a "
            "Jinja chat template (for example ChatML), use an instruct model whose "
            "tokenizer_config.json has chat_template, or use format text"
        )
    try:
        rendered = tokenizer.apply_chat_template(_PROBE, tokenize=False, chat_template=template)
    except Exception as exc:  # jinja2 raises many types
        source = "preprocessing.chatTemplate" if spec.preprocessing.chat_template else "the tokenizer's chat template"
        raise DataError(f"{source} does not render a simple user/assistant chat: {exc}") from None
    if "Hello" not in rendered:
        raise DataError("the chat template does not render assistant messages' content; check preprocessing.chatTemplate")
    return template


def tokenise_all(
    examples: list[Example], tokenizer, *, template: str | None, max_seq_length: int,
    train_on_prompt: bool, objective: str = "sft",
) -> TokeniseResult:
    """Tokenise every example; rows over max_seq_length tokens are dropped and counted.

    Conversations are rendered one by one and then encoded in batches (the tokenizer's
    per-call overhead dominates on short rows)."""
    result = TokeniseResult([], 0, [])
    cap = max_seq_length * CHARS_PER_TOKEN_CAP
    pending: list[tuple[Example, str, list[tuple[int, int]]]] = []

    def keep(ex: Example, sample) -> None:
        item = Tokenised(ex, sample)
        if item.length > max_seq_length:
            result.too_long += 1
        else:
            result.items.append(item)

    def flush() -> None:
        texts = [full for _, full, _ in pending]
        for (ex, _, spans), (ids, offsets) in zip(pending, _encode_with_offsets(tokenizer, texts)):
            keep(ex, _label_spans(ids, offsets, spans, train_on_prompt))
        pending.clear()

    for ex in examples:
        if sum(len(t) for t in ex.texts()) > cap:
            result.too_long += 1
            continue
        try:
            if ex.kind == "text":
                keep(ex, tokenise_text(ex.text, tokenizer))
            elif ex.kind == "preference":
                keep(ex, tokenise_preference(ex.messages, ex.chosen, ex.rejected, tokenizer, template))
            else:
                full, spans = assistant_spans(tokenizer, template, ex.messages)
                pending.append((ex, full, spans))
                if len(pending) >= ENCODE_BATCH:
                    flush()
        except _TemplateRefused as exc:
            result.template_errors.append(f"{ex.origin}: {exc}")
    flush()
    # batching reorders chat rows after text/preference ones only within mixed inputs: restore
    order = {id(ex): i for i, ex in enumerate(examples)}
    result.items.sort(key=lambda item: order[id(item.example)])
    return result


ENCODE_BATCH = 512


def _encode_with_offsets(tokenizer, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    if not texts:
        return []
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return list(zip(enc["input_ids"], enc["offset_mapping"]))
    out = []
    for text in texts:  # slow tokenizers have no offsets: decode growing prefixes
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        out.append((ids, _offsets_by_prefix(tokenizer, text, ids)))
    return out


def _label_spans(ids: list[int], offsets, spans: list[tuple[int, int]], train_on_prompt: bool) -> SftSample:
    """Labels = ids on tokens whose character range overlaps an assistant span."""
    import numpy as np

    ids = list(ids)
    if train_on_prompt:
        return SftSample(ids, list(ids))
    if not ids or not spans:
        return SftSample(ids, [IGNORE_INDEX] * len(ids))
    bounds = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    trained = np.zeros(len(ids), dtype=bool)
    for start, end in spans:
        trained |= (bounds[:, 0] < end) & (bounds[:, 1] > start)
    labels = np.where(trained, np.asarray(ids, dtype=np.int64), IGNORE_INDEX)
    return SftSample(ids, labels.tolist())


class _TemplateRefused(Exception):
    pass


def _render(tokenizer, template: str, messages: list[dict], *, generation: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation, chat_template=template
        )
    except Exception as exc:  # the template's own raise_exception, or jinja errors
        raise _TemplateRefused(f"chat template refused the conversation: {exc}") from None


def assistant_spans(tokenizer, template: str, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The full rendering and the character spans of each assistant turn (answer + end of turn,
    trailing whitespace excluded)."""
    full = _render(tokenizer, template, messages)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        start_text = _render(tokenizer, template, messages[:i], generation=True) if i else ""
        end_text = _render(tokenizer, template, messages[: i + 1])
        if full.startswith(start_text) and full.startswith(end_text) and len(start_text) >= cursor:
            start, end = len(start_text), len(end_text)
        else:
            start = full.find(msg["content"], cursor)
            if start < 0:
                raise _TemplateRefused(f"assistant turn {i} does not appear in the rendered chat")
            end = start + len(msg["content"])
            eos = tokenizer.eos_token or ""
            stripped = len(full[end:]) - len(full[end:].lstrip())
            if eos and full.startswith(eos, end + stripped):
                end += stripped + len(eos)
        while end > start and full[end - 1].isspace():
            end -= 1
        spans.append((start, end))
        cursor = end
    return full, spans


def tokenise_chat(messages: list[dict], tokenizer, template: str, *, train_on_prompt: bool = False) -> SftSample:
    """Input ids of the rendered conversation; labels only on assistant turns unless
    train_on_prompt."""
    full, spans = assistant_spans(tokenizer, template, messages)
    ((ids, offsets),) = _encode_with_offsets(tokenizer, [full])
    return _label_spans(ids, offsets, spans, train_on_prompt)


def _offsets_by_prefix(tokenizer, full: str, ids: list[int]) -> list[tuple[int, int]]:
    out, prev = [], 0
    for t in range(len(ids)):
        end = len(tokenizer.decode(ids[: t + 1]))
        out.append((prev, max(prev + 1, end)))
        prev = end
    return out


def tokenise_text(text: str, tokenizer) -> SftSample:
    """Raw text: every token carries loss; the eos token ends the document."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    return SftSample(ids, list(ids))


def tokenise_preference(messages: list[dict], chosen: str, rejected: str, tokenizer, template: str) -> PreferenceSample:
    """Prompt ids (with the generation prompt) and each answer's ids up to its end of turn."""
    prompt_text = _render(tokenizer, template, messages, generation=True)
    prompt_ids = list(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    answers = []
    for answer in (chosen, rejected):
        full = _render(tokenizer, template, messages + [{"role": "assistant", "content": answer}])
        tail = full[len(prompt_text):] if full.startswith(prompt_text) else answer
        ids = list(tokenizer(tail.rstrip(), add_special_tokens=False)["input_ids"])
        eos = tokenizer.eos_token_id
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        answers.append(ids)
    return PreferenceSample(prompt_ids, answers[0], answers[1])
