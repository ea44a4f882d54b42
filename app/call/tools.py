"""Tools the agent can call (Realtime function calling).

Users add tools without touching the bridge: `AGENT_TOOLS=mypkg.tools` names a module whose
public functions become tools. A function's typed signature becomes the JSON Schema of its
parameters (through pydantic) and its docstring the description the model reads. Tools run
off the audio path, with a timeout; whatever goes wrong becomes a result the model can talk
about instead of an exception.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError, create_model

END_CALL = "end_call"
TRANSFER_CALL = "transfer_call"


class ToolsError(Exception):
    """AGENT_TOOLS names something that cannot be used as tools."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    arguments: type[BaseModel]
    function: Callable[..., Any] | None  # None: a built-in the bridge carries out itself

    def schema(self) -> dict[str, Any]:
        """The Realtime `tools` entry (GA: a flat function definition)."""
        parameters = self.arguments.model_json_schema()
        parameters.pop("title", None)
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": parameters,
        }

    def parse(self, arguments_json: str) -> BaseModel:
        return self.arguments.model_validate_json(arguments_json or "{}")


def tool_from_function(function: Callable[..., Any]) -> Tool:
    """A tool from a plain typed function (sync or async)."""
    fields: dict[str, Any] = {}
    for name, parameter in inspect.signature(function, eval_str=True).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise ToolsError(f"{function.__name__}: *args/**kwargs cannot be described to a model")
        if parameter.annotation is inspect.Parameter.empty:
            raise ToolsError(f"{function.__name__}: parameter {name!r} needs a type annotation")
        default = ... if parameter.default is inspect.Parameter.empty else parameter.default
        fields[name] = (parameter.annotation, default)
    model = create_model(f"{function.__name__}_arguments", **fields)
    description = inspect.cleandoc(function.__doc__ or "").strip() or function.__name__
    return Tool(function.__name__, description, model, function)


def load_tools(module_path: str) -> list[Tool]:
    """The public functions defined in `module_path` (or listed in its `__all__`).

    The module is looked for in the working directory first, as `python -m` would: the
    installed `voicebridge` script has only its own directory on the import path."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_path)
    except ImportError as error:
        raise ToolsError(f"cannot import {module_path!r}: {error}") from None
    names = getattr(module, "__all__", None) or [
        name
        for name, value in vars(module).items()
        if inspect.isfunction(value)
        and value.__module__ == module.__name__
        and not name.startswith("_")
    ]
    tools = [tool_from_function(getattr(module, name)) for name in names]
    clash = {t.name for t in tools} & {END_CALL, TRANSFER_CALL}
    if clash:
        raise ToolsError(f"{module_path}: {', '.join(sorted(clash))} is a built-in tool name")
    return tools


class _NoArguments(BaseModel):
    pass


class _TransferArguments(BaseModel):
    reason: str = ""


def builtin_tools(transfer_number: str | None) -> list[Tool]:
    """`end_call` always; `transfer_call` when there is a number to transfer to."""
    tools = [
        Tool(
            END_CALL,
            "End the phone call. Say a short goodbye first, in the same turn; the line is "
            "closed once your goodbye has been heard.",
            _NoArguments,
            None,
        )
    ]
    if transfer_number:
        tools.append(
            Tool(
                TRANSFER_CALL,
                "Transfer the caller to a human colleague. First tell the caller you are "
                "transferring them, in the same turn.",
                _TransferArguments,
                None,
            )
        )
    return tools


async def run_tool(tool: Tool, arguments_json: str, timeout_s: float) -> str:
    """Run a user tool and return its result as JSON text for `function_call_output`.

    Sync functions run in a thread, so a slow tool never blocks the audio path."""
    assert tool.function is not None
    try:
        arguments = tool.parse(arguments_json).model_dump()
        if inspect.iscoroutinefunction(tool.function):
            call = tool.function(**arguments)
        else:
            call = asyncio.to_thread(tool.function, **arguments)
        result = await asyncio.wait_for(call, timeout_s)
    except ValidationError as error:
        return json.dumps({"error": f"invalid arguments: {error.errors(include_url=False)}"})
    except TimeoutError:
        return json.dumps({"error": f"{tool.name} took longer than {timeout_s:g} s"})
    except Exception as error:
        return json.dumps({"error": f"{tool.name} failed: {error}"})
    return json.dumps({"result": result}, default=str)
