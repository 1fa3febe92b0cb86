"""The four dataset formats, mapped to one internal shape: a conversation (plus preference pairs).

alpaca (instruction/input/output), chat (OpenAI `messages` with role/content, or ShareGPT
`conversations` with from/value), preference (prompt/chosen/rejected; prompt and answers may be
strings or message lists as in TRL's conversational format) and text. Column names come from
the source's `columns` mapping, else the defaults below. A record that does not fit becomes a
`BadRow` naming its file:line and the missing or wrong field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .data_errors import DataError
from .data_sources import BadRow, LoadedSource

ROLE_ALIASES = {
    "user": "user", "human": "user", "prompter": "user",
    "assistant": "assistant", "gpt": "assistant", "model": "assistant", "bot": "assistant", "chatgpt": "assistant",
    "system": "system",
    "tool": "tool", "function": "tool", "observation": "tool", "ipython": "tool",
}
PREFERENCE_OBJECTIVES = ("dpo", "orpo")


@dataclass
class Example:
    """One row in the internal shape, before tokenisation."""

    kind: str
    """"chat" (alpaca and chat), "text" or "preference"."""
    source: str
    origin: str
    messages: list[dict[str, str]] = field(default_factory=list)
    """chat: the conversation; preference: the prompt conversation (no answer)."""
    text: str = ""
    chosen: str = ""
    rejected: str = ""
    label: str | None = None

    def texts(self) -> list[str]:
        """Every free-text field, in a fixed order (cleaning and dedup work on these)."""
        return [m["content"] for m in self.messages] + [self.text, self.chosen, self.rejected]


@dataclass
class Converted:
    examples: list[Example] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)


def check_objective(spec) -> None:
    """Fail early when a dataset's format cannot feed the objective, saying what to change."""
    objective = spec.objective.type
    for ds in spec.datasets:
        if objective in PREFERENCE_OBJECTIVES and ds.format != "preference":
            raise DataError(
                f"objective.type is {objective}, which trains on preference pairs, but dataset "
                f"{ds.name} has format {ds.format}: give it prompt/chosen/rejected rows with "
                f"format: preference, or set objective.type to sft"
            )
        if objective not in PREFERENCE_OBJECTIVES and ds.format == "preference":
            raise DataError(
                f"objective.type is {objective}, but dataset {ds.name} has format preference: "
                "set objective.type to dpo or orpo to train on the pairs, or use an alpaca, chat "
                "or text dataset"
            )


def convert_rows(source, loaded: LoadedSource, *, label_field: str | None = None) -> Converted:
    """Convert a source's records to Examples; records that do not fit become BadRows."""
    convert = _CONVERTERS[source.format]
    cols = source.columns
    out = Converted()
    for origin, record in loaded.records:
        try:
            ex = convert(record, cols, source.name, origin)
            if label_field is not None:
                value = record.get(label_field)
                ex.label = None if value is None or value == "" else str(value)
        except _Bad as exc:
            out.bad.append(BadRow(origin, str(exc)))
            continue
        out.examples.append(ex)
    return out


class _Bad(Exception):
    pass


def _col(cols, role: str, default: str) -> str:
    name = getattr(cols, role, None) if cols is not None else None
    return name or default


def _text(record: dict, column: str, *, required: bool = True) -> str:
    if column not in record or record[column] is None:
        if required:
            raise _Bad(f"missing column {column!r} (has: {', '.join(map(str, record)) or 'nothing'})")
        return ""
    value = record[column]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _Bad(f"column {column!r} should be text, got {type(value).__name__}")
    return str(value)


def _alpaca(record: dict, cols, source: str, origin: str) -> Example:
    instruction = _text(record, _col(cols, "prompt", "instruction"))
    extra = _text(record, _col(cols, "input", "input"), required=False)
    response = _text(record, _col(cols, "response", "output"))
    system = _text(record, _col(cols, "system", "system"), required=False)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = ([{"role": "system", "content": system}] if system.strip() else []) + [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": response},
    ]
    return Example("chat", source, origin, messages=messages)


def _chat(record: dict, cols, source: str, origin: str) -> Example:
    column = _col(cols, "messages", "messages")
    if column not in record and (cols is None or cols.messages is None) and "conversations" in record:
        column = "conversations"
    if column not in record:
        raise _Bad(f"missing column {column!r} (chat rows need OpenAI `messages` or ShareGPT `conversations`)")
    messages = _messages(record[column], column)
    system = _text(record, _col(cols, "system", "system"), required=False)
    if system.strip() and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    while messages and messages[-1]["role"] != "assistant":
        messages.pop()  # trailing turns without an answer carry no loss
    if not any(m["role"] == "assistant" for m in messages):
        raise _Bad(f"{column!r} has no assistant message to learn from")
    return Example("chat", source, origin, messages=messages)


def _messages(value: Any, column: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise _Bad(f"column {column!r} should be a non-empty list of messages, got {type(value).__name__}")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise _Bad(f"{column}[{i}] should be an object with role/content (or from/value)")
        role = msg.get("role", msg.get("from"))
        content = msg.get("content", msg.get("value"))
        if role is None:
            raise _Bad(f"{column}[{i}] has no 'role' (or ShareGPT 'from')")
        canonical = ROLE_ALIASES.get(str(role).lower())
        if canonical is None:
            raise _Bad(f"{column}[{i}].role {role!r} is unknown; use one of {', '.join(sorted(set(ROLE_ALIASES)))}")
        out.append({"role": canonical, "content": _content(content, f"{column}[{i}]")})
    return out


def _content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                raise _Bad(f"{where}.content: only text parts can be trained on, got {part!r:.60}")
        return "\n".join(texts)
    raise _Bad(f"{where} has no text 'content' (or ShareGPT 'value')")


def _answer(value: Any, column: str) -> str:
    if isinstance(value, list):  # TRL conversational: the answer is the last assistant message
        msgs = _messages(value, column)
        answers = [m["content"] for m in msgs if m["role"] == "assistant"]
        if not answers:
            raise _Bad(f"column {column!r} holds messages but no assistant answer")
        return answers[-1]
    if isinstance(value, str):
        return value
    raise _Bad(f"column {column!r} should be text or a list of messages, got {type(value).__name__}")


def _preference(record: dict, cols, source: str, origin: str) -> Example:
    names = {role: _col(cols, role, role) for role in ("prompt", "chosen", "rejected")}
    for column in names.values():
        if record.get(column) is None:
            raise _Bad(f"missing column {column!r} (preference rows need prompt, chosen and rejected)")
    prompt = record[names["prompt"]]
    if isinstance(prompt, list):
        messages = _messages(prompt, names["prompt"])
    elif isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        raise _Bad(f"column {names['prompt']!r} should be text or a list of messages")
    system = _text(record, _col(cols, "system", "system"), required=False)
    if system.strip() and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return Example(
        "preference", source, origin, messages=messages,
        chosen=_answer(record[names["chosen"]], names["chosen"]),
        rejected=_answer(record[names["rejected"]], names["rejected"]),
    )


def _plain_text(record: dict, cols, source: str, origin: str) -> Example:
    return Example("text", source, origin, text=_text(record, _col(cols, "text", "text")))


_CONVERTERS = {"alpaca": _alpaca, "chat": _chat, "preference": _preference, "text": _plain_text}
