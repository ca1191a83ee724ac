"""The policy core: every tool call the agent makes is allowed, denied or sent to the owner by a YAML policy.

Pure: no I/O but `load_file` reading its file, no clock, no environment.

>>> import policy
>>> p = policy.load_default()
>>> policy.evaluate(p, policy.ToolCall("Bash", {"command": "git status && rm -rf ."})).effect.value
'deny'
"""

from __future__ import annotations

from policy.changeset import ChangesetVerdict, FileChange, check_changeset
from policy.engine import clear_cache, evaluate, explain, is_read_protected
from policy.errors import CommandParseError, PolicyError, PolicyLoadError
from policy.examples import ExampleResult, run_examples
from policy.loader import default_text, load, load_default, load_file
from policy.model import (
    BashRules,
    Decision,
    Effect,
    Example,
    Explanation,
    Limits,
    Migrations,
    Policy,
    Profile,
    RateLimits,
    Rule,
    Step,
    ToolCall,
)

__all__ = [
    "BashRules",
    "ChangesetVerdict",
    "CommandParseError",
    "Decision",
    "Effect",
    "Example",
    "ExampleResult",
    "Explanation",
    "FileChange",
    "Limits",
    "Migrations",
    "Policy",
    "PolicyError",
    "PolicyLoadError",
    "Profile",
    "RateLimits",
    "Rule",
    "Step",
    "ToolCall",
    "check_changeset",
    "clear_cache",
    "default_text",
    "evaluate",
    "explain",
    "is_read_protected",
    "load",
    "load_default",
    "load_file",
    "run_examples",
]
