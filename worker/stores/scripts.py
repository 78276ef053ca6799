"""Lua scripts kept in ``.lua`` files, composed by name, called with named keys and arguments.

Each script under ``lua/`` starts with a header::

    --! keys: jobs active runs
    --! args: now id run
    --! rest: writes          (optional: the variadic tail of ARGV, as the table REST)
    --! uses: clock lease     (optional: functions from lua/lib/*.lua, themselves with headers)

and reads ``KEY.jobs``, ``ARG.now``, ``REST``: never ``KEYS[3]`` or ``ARGV[7]``. A script that
takes any number of keys declares one, starred (``--! keys: *chats``), and reads ``KEY.chats``,
a table. The loader
writes the prologue that binds the names to positions, and :meth:`LuaScript.run` refuses a call
whose key or argument names are not exactly the declared ones, so adding an argument can never
silently shift the others.

Time: scripts take ``now`` (µs) as an argument; an empty string means "Redis's own clock", which
every host agrees on. Tests pin it (worker/stores/clock.py).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import redis
from redis.client import Pipeline
from redis.commands.core import Script

from config import ArchiverError

LUA_DIR = Path(__file__).parent / "lua"
_HEADER = re.compile(r"^--!\s*(keys|args|rest|uses):(.*)$")
_NAME = re.compile(r"^\*?[a-z_][a-z0-9_]*$")


class ScriptCallError(ArchiverError, TypeError):
    """A script was called with keys or arguments other than the ones it declares."""


@dataclass
class LuaScript:
    name: str
    keys: tuple[str, ...]
    args: tuple[str, ...]
    rest: str | None
    source: str
    _registered: weakref.WeakKeyDictionary[Any, Script] = field(
        default_factory=weakref.WeakKeyDictionary, repr=False
    )

    def _positional(
        self,
        keys: Mapping[str, str | Sequence[str]],
        args: Mapping[str, Any],
        rest: Sequence[Any],
    ) -> tuple[list[str], list[Any]]:
        declared = [name.lstrip("*") for name in self.keys]
        if set(keys) != set(declared):
            raise ScriptCallError(
                f"{self.name}.lua: keys {sorted(keys)} != declared {sorted(declared)}"
            )
        if set(args) != set(self.args):
            raise ScriptCallError(
                f"{self.name}.lua: args {sorted(args)} != declared {sorted(self.args)}"
            )
        if rest and self.rest is None:
            raise ScriptCallError(f"{self.name}.lua: declares no rest arguments")
        positional: list[str] = []
        for name in self.keys:
            value = keys[name.lstrip("*")]
            if name.startswith("*"):
                positional.extend(value)
            elif isinstance(value, str):
                positional.append(value)
            else:
                raise ScriptCallError(f"{self.name}.lua: key {name} takes one name")
        return positional, [*(args[n] for n in self.args), *rest]

    def run(
        self,
        client: redis.Redis,
        keys: Mapping[str, str | Sequence[str]],
        args: Mapping[str, Any],
        rest: Sequence[Any] = (),
    ) -> Any:
        positional_keys, positional_args = self._positional(keys, args, rest)
        script = self._registered.get(client)
        if script is None:
            script = self._registered[client] = client.register_script(self.source)
        return script(keys=positional_keys, args=positional_args, client=client)

    def queue(
        self,
        pipe: Pipeline,
        keys: Mapping[str, str | Sequence[str]],
        args: Mapping[str, Any],
        rest: Sequence[Any] = (),
    ) -> None:
        """Add the script to a pipeline as EVAL: redis-py's EVALSHA in a pipeline costs a
        SCRIPT EXISTS round trip first; the text (Redis caches it by its SHA) costs bytes only."""
        positional_keys, positional_args = self._positional(keys, args, rest)
        pipe.eval(self.source, len(positional_keys), *positional_keys, *positional_args)


@dataclass(frozen=True)
class _Parsed:
    keys: tuple[str, ...]
    args: tuple[str, ...]
    rest: str | None
    uses: tuple[str, ...]
    body: str


def _parse(path: Path) -> _Parsed:
    headers: dict[str, list[str]] = {"keys": [], "args": [], "rest": [], "uses": []}
    text = path.read_text(encoding="utf-8")
    for line in text.splitlines():
        match = _HEADER.match(line.strip())
        if match:
            names = match.group(2).split()
            for name in names:
                if not _NAME.match(name):
                    raise ValueError(f"{path.name}: {name!r} is not a Lua-friendly name")
            headers[match.group(1)].extend(names)
    if len(headers["rest"]) > 1:
        raise ValueError(f"{path.name}: one rest argument at most")
    starred = [name for name in headers["keys"] if name.startswith("*")]
    if starred and len(headers["keys"]) > 1:
        raise ValueError(f"{path.name}: a starred key list must be the only key")
    return _Parsed(
        keys=tuple(headers["keys"]),
        args=tuple(headers["args"]),
        rest=headers["rest"][0] if headers["rest"] else None,
        uses=tuple(headers["uses"]),
        body=text,
    )


def _libraries(uses: Sequence[str], seen: dict[str, str]) -> dict[str, str]:
    """Library name -> body, in dependency order (a library's own `uses` first)."""
    for name in uses:
        if name not in seen:
            parsed = _parse(LUA_DIR / "lib" / f"{name}.lua")
            _libraries(parsed.uses, seen)
            seen[name] = parsed.body
    return seen


@cache
def load(name: str) -> LuaScript:
    """The script ``lua/{name}.lua`` with its libraries and prologue, parsed once per process."""
    parsed = _parse(LUA_DIR / f"{name}.lua")
    libraries = list(_libraries(parsed.uses, {}).values())
    prologue = ["local KEY = {"]
    prologue += [
        f"  {key.lstrip('*')} = KEYS," if key.startswith("*") else f"  {key} = KEYS[{i}],"
        for i, key in enumerate(parsed.keys, start=1)
    ]
    prologue += ["}", "local ARG = {"]
    prologue += [f"  {arg} = ARGV[{i}]," for i, arg in enumerate(parsed.args, start=1)]
    prologue.append("}")
    if parsed.rest is not None:
        first = len(parsed.args) + 1
        # A loop, not unpack(): unpack stops at a few thousand values.
        prologue.append(f"local REST = {{}}  -- {parsed.rest}")
        prologue.append(f"for i = {first}, #ARGV do REST[#REST + 1] = ARGV[i] end")
    source = "\n".join([*libraries, *prologue, parsed.body])
    return LuaScript(name, parsed.keys, parsed.args, parsed.rest, source)
