"""Chat messages for text generation: the model's chat template, rendered as
transformers' ``tokenizer.apply_chat_template(messages, add_generation_prompt=True)``
renders it.

A task whose ``task_data`` is a conversation (a list of ``{"role", "content"}``
dicts) or a list of conversations is turned into prompt text here, on the
event loop thread, before it is submitted; the native backend then encodes
that text without adding special tokens (the template wrote them), exactly as
``apply_chat_template(..., tokenize=True)`` does.

The template comes from the model's files: ``chat_template.jinja`` when the
repo has one, else ``tokenizer_config.json``'s ``chat_template`` (a string, or
a list of named templates of which ``"default"`` is used).  It runs in
jinja2's immutable sandbox with transformers' settings (``trim_blocks``,
``lstrip_blocks``, the loop-controls extension, a ``tojson`` that does not
escape HTML and keeps non-ASCII, and the globals ``raise_exception``,
``strftime_now``, ``dict`` and ``namespace``), and sees ``messages``,
``tools=None``, ``documents=None``, ``add_generation_prompt=True`` and the
tokenizer's named special tokens (``bos_token``, ``eos_token``, ...) as
strings.  The ``{% generation %}`` tag some templates use renders its body.
"""
from __future__ import annotations

import functools
import json
import os
from datetime import datetime
from typing import Any, Dict, List, Optional, Tuple

ROLES = ("system", "user", "assistant", "tool", "developer")
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                  "mask_token")
_REASONING = ("reasoning_content", "thinking", "reasoning")


class ChatError(ValueError):
    """A conversation or template problem: the task fails with INVALID_ARGUMENT."""


def is_chat(data: Any) -> bool:
    """True when ``data`` is a conversation or a list of conversations (as
    opposed to a string or a list of strings)."""
    if not isinstance(data, (list, tuple)) or not data:
        return False
    first = data[0]
    return isinstance(first, dict) or (isinstance(first, (list, tuple)) and
                                       (not first or isinstance(first[0], dict)))


def conversations(data: Any) -> Tuple[List[List[Dict[str, Any]]], bool]:
    """Checks ``data`` and returns (conversations, batched).  Raises ChatError
    naming the first bad message: not a dict, a role outside ROLES, content
    that is not a string, an empty conversation."""
    batched = not isinstance(data[0], dict)
    convs = list(data) if batched else [data]
    out = []
    for ci, conv in enumerate(convs):
        where = f"conversation {ci} " if batched else ""
        if not isinstance(conv, (list, tuple)) or not conv:
            raise ChatError(f"{where or 'the conversation '}must be a non-empty list of messages")
        msgs = []
        for mi, m in enumerate(conv):
            if not isinstance(m, dict):
                raise ChatError(f"{where}message {mi} is a {type(m).__name__}, not a dict with role and content")
            role = m.get("role")
            if not isinstance(role, str) or role not in ROLES:
                raise ChatError(f"{where}message {mi} has role {role!r}; roles are {', '.join(ROLES)}")
            content = m.get("content")
            if not isinstance(content, str):
                raise ChatError(f"{where}message {mi} ({role}) has content of type {type(content).__name__}; "
                                "content must be a string")
            # transformers drops None-valued keys and aliases reasoning fields
            msg = {k: v for k, v in m.items() if v is not None}
            reasoning = next((msg[k] for k in _REASONING if msg.get(k) is not None), None)
            if reasoning is not None:
                msg = {"thinking": reasoning, **msg, "reasoning_content": reasoning}
            msgs.append(msg)
        out.append(msgs)
    return out, batched


def _token_text(v: Any) -> Optional[str]:
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):
        return v["content"]
    return None


def load_template(model_dir: str) -> Tuple[Optional[str], Dict[str, str]]:
    """(template or None, named special tokens) from a model folder."""
    cfg: Dict[str, Any] = {}
    path = os.path.join(model_dir, "tokenizer_config.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    specials: Dict[str, str] = {}
    smap: Dict[str, Any] = {}
    path = os.path.join(model_dir, "special_tokens_map.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            smap = json.load(f)
    for name in SPECIAL_TOKENS:
        t = _token_text(cfg.get(name))
        if t is None:
            t = _token_text(smap.get(name))
        if t is not None:
            specials[name] = t
    template = None
    jinja = os.path.join(model_dir, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as f:
            template = f.read()
    else:
        t = cfg.get("chat_template")
        if isinstance(t, list):
            named = {e.get("name"): e.get("template") for e in t if isinstance(e, dict)}
            t = named.get("default")
        if isinstance(t, str):
            template = t
    return template, specials


@functools.lru_cache(maxsize=32)
def _compile(template: str):
    try:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:  # pragma: no cover - jinja2 is a dependency
        raise ChatError(f"chat templates need jinja2 ({e})") from None

    class Generation(jinja2.ext.Extension):
        """{% generation %}...{% endgeneration %} renders its body."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    class Namespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):  # noqa: N805 - jinja's signature trick
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for k in attrs:
                if isinstance(k, str) and k.startswith("_"):
                    raise jinja2.exceptions.SecurityError(f"namespace attribute {k!r} is not allowed")
            jinja2.utils.Namespace.__init__(self, attrs)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = dict
    env.globals["namespace"] = Namespace
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateError as e:
        raise ChatError(f"the model's chat template does not compile: {e}") from None


def render(template: str, conversation: List[Dict[str, Any]], specials: Dict[str, str],
           add_generation_prompt: bool = True) -> str:
    """One conversation rendered with ``template``.  Raises ChatError with the
    template's own message when it refuses the conversation (e.g. roles that
    do not alternate)."""
    import jinja2
    compiled = _compile(template)
    try:
        return compiled.render(messages=conversation, tools=None, documents=None,
                               add_generation_prompt=add_generation_prompt, **specials)
    except jinja2.exceptions.TemplateError as e:
        raise ChatError(f"the model's chat template refused the conversation: {e}") from None
