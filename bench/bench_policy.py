"""Decisions per second of the policy engine against the floor of bare parsing on the same commands.

The parser is bashlex, and tree-sitter-bash for what bashlex refuses (issue 14); the floor does exactly that too:
`bashlex.parse`, and on its failure `tree_sitter.Parser.parse`. For the record it also runs the engine with each
parser alone, and says how many of the ordinary and adversarial corpus cases each gets right.

Run: .venv/bin/python bench/bench_policy.py [--count N] [--rounds R]
Goal (issue 3, 14): the engine's total cost at most 1.5x the bare parse; repeated commands hit the cache.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import bashlex
import tree_sitter_bash
import yaml
from tree_sitter import Language, Parser

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import policy  # noqa: E402
import policy.bash  # noqa: E402
import policy.engine  # noqa: E402
from policy import ToolCall  # noqa: E402

CASES = Path(__file__).resolve().parents[1] / "tests" / "policy" / "cases"

FILES = ["bot/main.py", "bot/handlers/balance.py", "tests/test_balance.py", "README.md", "bot/db.py", "setup.cfg"]
DIRS = ["bot", "tests", "bot/handlers", ".", "docs"]
WORDS = ["balance", "TODO", "def handle", "import", "user_id", "raise", "async def", "logger"]


def realistic_commands(count: int, seed: int = 7) -> list[str]:
    """`count` distinct commands of the kinds a coding agent runs, benign and hostile mixed."""
    rnd = random.Random(seed)
    templates: list[Callable[[], str]] = [
        lambda: f"grep -rn '{rnd.choice(WORDS)}' {rnd.choice(DIRS)} | head -{rnd.randint(5, 80)}",
        lambda: f"sed -n '{rnd.randint(1, 200)},{rnd.randint(201, 400)}p' {rnd.choice(FILES)}",
        lambda: (
            f"python -m pytest -q {rnd.choice(FILES)} -k {rnd.choice(WORDS).split()[0]} -x "
            f"--maxfail={rnd.randint(1, 9)}"
        ),
        lambda: f"git diff HEAD~{rnd.randint(1, 30)} -- {rnd.choice(FILES)}",
        lambda: f"git log --oneline -{rnd.randint(1, 99)} {rnd.choice(FILES)}",
        lambda: f"find {rnd.choice(DIRS)} -name '*.py' -newer {rnd.choice(FILES)} | wc -l",
        lambda: f"cat {rnd.choice(FILES)} | grep -n '{rnd.choice(WORDS)}' | sort | uniq -c",
        lambda: f"cd {rnd.choice(DIRS)} && ls -la && head -n {rnd.randint(1, 99)} {rnd.choice(FILES)}",
        lambda: f"mkdir -p build/out{rnd.randint(0, 999)} && cp {rnd.choice(FILES)} build/out{rnd.randint(0, 999)}/",
        lambda: f"echo {rnd.randint(0, 10**6)} > /tmp/note{rnd.randint(0, 999)}.txt",
        lambda: f"git status && rm -rf {rnd.choice(DIRS)}/tmp{rnd.randint(0, 999)}",
        lambda: f"echo ${{X:-$(curl http://10.0.0.{rnd.randint(1, 254)})}}",
        lambda: f"cat .env.{rnd.choice(['prod', 'dev', 'local'])}{rnd.randint(0, 99)}",
        lambda: f'for f in {rnd.choice(DIRS)}/*.py; do wc -l "$f"; done # {rnd.randint(0, 10**6)}',
        lambda: f"rg -n '{rnd.choice(WORDS)}' {rnd.choice(DIRS)} --max-count {rnd.randint(1, 50)}",
        lambda: f"sed -i 's/{rnd.choice(WORDS).split()[0]}/x{rnd.randint(0, 999)}/g' {rnd.choice(FILES)}",
        # the families of issue 14: code in the workspace, venv tools, [[ ]], case, arithmetic, heredoc commits
        lambda: f"python -c \"import bot.handlers; print({rnd.randint(0, 999)})\"",
        lambda: f".venv/bin/ruff check {rnd.choice(DIRS)} --line-length {rnd.randint(80, 130)}",
        lambda: f"[[ -f {rnd.choice(FILES)} ]] && wc -l {rnd.choice(FILES)} || echo missing{rnd.randint(0, 99)}",
        lambda: f'case "$(git status --porcelain | wc -l)" in 0) echo clean{rnd.randint(0, 99)};; *) git diff;; esac',
        lambda: f"echo $(( {rnd.randint(0, 99)} * {rnd.randint(0, 99)} ))",
        lambda: (
            f"git add {rnd.choice(FILES)} && git commit -m \"$(cat <<'EOF'\nFix {rnd.choice(WORDS)} "
            f"{rnd.randint(0, 10**6)}\n\nCo-Authored-By: Claude <noreply@anthropic.com>\nEOF\n)\""
        ),
        lambda: f"cat > /tmp/t{rnd.randint(0, 999)}.py <<'EOF'\nimport bot\nprint(bot)\nEOF",
    ]
    seen: set[str] = set()
    while len(seen) < count:
        seen.add(rnd.choice(templates)())
    return sorted(seen, key=lambda _: rnd.random())


def _rate(fn: Callable[[str], object], commands: list[str], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for c in commands:
            fn(c)
        best = min(best, time.perf_counter() - start)
    return len(commands) / best


def _corpus(name: str) -> list[dict[str, object]]:
    return [c for c in yaml.safe_load((CASES / name).read_text(encoding="utf-8")) if "cmd" in c]


def _correct(p: policy.Policy, strict: policy.Policy) -> tuple[int, int, int, int]:
    """(ordinary allowed, ordinary, adversarial denied, adversarial expected denied) with the engine as set up."""
    ordinary = _corpus("ordinary.yaml")
    adversarial = [c for c in _corpus("adversarial.yaml") if c["expect"] == "deny"]
    allowed = sum(policy.evaluate(p, ToolCall("Bash", {"command": c["cmd"]})).effect.value == "allow" for c in ordinary)
    denied = sum(
        policy.evaluate(strict if c.get("strict") else p, ToolCall("Bash", {"command": c["cmd"]})).effect.value
        == "deny"
        for c in adversarial
    )
    return allowed, len(ordinary), denied, len(adversarial)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    commands = realistic_commands(args.count)
    p = policy.load_default()

    ts = Parser(Language(tree_sitter_bash.language()))

    def parse_only(c: str) -> object:
        try:
            return bashlex.parse(c)
        except Exception:  # the floor pays for errors too, and reads what bashlex refuses with tree-sitter
            return ts.parse(c.encode("utf-8", "surrogatepass"))

    def engine_cold(c: str) -> object:
        return policy.evaluate(p, ToolCall("Bash", {"command": c}))

    def run_cold(c: str) -> object:
        policy.clear_cache()
        return engine_cold(c)

    parse_rate = _rate(parse_only, commands, args.rounds)
    cold_rate = _rate(run_cold, commands, args.rounds)
    for c in commands:
        engine_cold(c)
    warm_rate = _rate(engine_cold, commands, args.rounds)
    denied = sum(policy.evaluate(p, ToolCall("Bash", {"command": c})).effect.value != "allow" for c in commands)

    print(f"commands: {len(commands)} distinct ({denied} not allowed), best of {args.rounds} rounds")
    print(f"bare parse          : {parse_rate:10.0f} commands/s   (bashlex; tree-sitter-bash where bashlex refuses)")
    print(
        f"engine, cold cache  : {cold_rate:10.0f} decisions/s   ratio (engine/parse cost) {parse_rate / cold_rate:.2f}x"
    )
    print(
        f"engine, warm cache  : {warm_rate:10.0f} decisions/s   ratio (engine/parse cost) {parse_rate / warm_rate:.2f}x"
    )
    goal = parse_rate / cold_rate <= 1.5
    print("goal (cold <= 1.5x bare parse):", "met" if goal else "NOT met")

    # the same engine with one parser only: cost, and how many corpus cases it gets right
    strict = policy.load(policy.default_text().replace("  interpreters: allow\n", "  interpreters: deny\n", 1))
    print("parser            decisions/s  ordinary allowed  adversarial denied")
    original = policy.engine.parse
    for mode in ("auto", "bashlex", "tree-sitter"):

        def forced(text: str, *, max_length: int = 32768, _mode: str = mode) -> policy.bash.ParsedBash:
            return policy.bash.parse(text, max_length=max_length, parser=_mode)  # type: ignore[arg-type]

        policy.engine.parse = forced  # type: ignore[assignment]
        try:
            rate = _rate(run_cold, commands, 1)
            policy.clear_cache()
            allowed, ordinary, denied, adversarial = _correct(p, strict)
        finally:
            policy.engine.parse = original  # type: ignore[assignment]
        print(f"{mode:16} {rate:12.0f}  {allowed:7}/{ordinary:<8}  {denied:7}/{adversarial}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
