"""PURE: the scripted model's scenario format: what it says, turn by turn, read from YAML or JSON.

A scenario is data a test, the demo or `serve --scenario` hands to runner.scripted_model; it is parsed here
on its own (yaml and nothing else), so a front end can refuse a broken file before it starts anything.

    turns:
      - - {type: tool_use, name: Read, input: {file_path: bot/app.py}}
      - - {type: text, text: "Fixed it."}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runner.errors import RunnerError

__all__ = ["DEFAULT_FINAL_TEXT", "DEFAULT_SIDE_TEXT", "Block", "Scenario", "ScenarioError", "TextBlock", "ToolUseBlock"]

DEFAULT_FINAL_TEXT = "Done."
DEFAULT_SIDE_TEXT = "Scripted task"


@dataclass(frozen=True, slots=True)
class TextBlock:
    text: str


@dataclass(frozen=True, slots=True)
class ToolUseBlock:
    name: str
    input: Mapping[str, Any] = field(default_factory=dict)


Block = TextBlock | ToolUseBlock


class ScenarioError(RunnerError, ValueError):
    """A scenario file that cannot be played: unreadable, not YAML, or not the scenario shape."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """What the scripted model says, turn by turn.

    Turn k+1 is played once the conversation holds as many `tool_result` blocks as turns 0..k
    asked for `tool_use`s. A turn without `tool_use` ends the conversation (`end_turn`) and asks for one
    follow-up: the next turn is played when the user speaks again in the same (resumed) session.
    """

    turns: tuple[tuple[Block, ...], ...]
    final_text: str = DEFAULT_FINAL_TEXT
    side_text: str = DEFAULT_SIDE_TEXT

    @classmethod
    def of(cls, *turns: Sequence[Block], final_text: str = DEFAULT_FINAL_TEXT) -> Scenario:
        return cls(turns=tuple(tuple(turn) for turn in turns), final_text=final_text)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scenario:
        """Parse `{"turns": [[{"type": "text", "text": ...} | {"type": "tool_use", "name": ..., "input": {...}}]]}`."""
        raw_turns = data.get("turns")
        if not isinstance(raw_turns, list):
            raise ValueError("scenario: 'turns' must be a list of turns")
        turns: list[tuple[Block, ...]] = []
        for t, raw_turn in enumerate(raw_turns):
            if not isinstance(raw_turn, list) or not raw_turn:
                raise ValueError(f"scenario: turn {t} must be a non-empty list of blocks")
            turns.append(tuple(_parse_block(raw, f"turn {t} block {b}") for b, raw in enumerate(raw_turn)))
        final_text = data.get("final_text", DEFAULT_FINAL_TEXT)
        side_text = data.get("side_text", DEFAULT_SIDE_TEXT)
        if not isinstance(final_text, str) or not isinstance(side_text, str):
            raise ValueError("scenario: 'final_text' and 'side_text' must be strings")
        return cls(turns=tuple(turns), final_text=final_text, side_text=side_text)

    @classmethod
    def from_file(cls, path: str | Path) -> Scenario:
        """Load a scenario from YAML or JSON (JSON is YAML, so one parser reads both).

        Raises ScenarioError (a ValueError) naming the file, and the line when the YAML itself is broken.
        """
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ScenarioError(f"scenario {path}: cannot be read: {exc}") from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ScenarioError(f"scenario {path}{where}: not valid YAML: {problem}") from exc
        if not isinstance(data, dict):
            raise ScenarioError(f"scenario {path}: expected a mapping at the top level")
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ScenarioError(f"scenario {path}: {str(exc).removeprefix('scenario: ')}") from exc

    def turn_for(self, tool_results: int) -> int | None:
        """Index of the turn to play when the conversation holds `tool_results` results; None past the end."""
        asked = 0
        for index, turn in enumerate(self.turns):
            if asked >= tool_results:
                return index
            asked += sum(isinstance(block, ToolUseBlock) for block in turn) or 1
        return None


def _parse_block(raw: Any, where: str) -> Block:
    if not isinstance(raw, dict):
        raise ValueError(f"scenario: {where} must be a mapping")
    kind = raw.get("type")
    if kind == "text" and isinstance(raw.get("text"), str):
        return TextBlock(text=raw["text"])
    if kind == "tool_use" and isinstance(raw.get("name"), str) and isinstance(raw.get("input", {}), dict):
        return ToolUseBlock(name=raw["name"], input=dict(raw.get("input", {})))
    raise ValueError(f"scenario: {where} must be a text block (text) or a tool_use block (name, input)")
