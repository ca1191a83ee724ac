"""Balances and spending figures for the bot's /balance command."""

LEDGER: dict[int, list[int]] = {
    1: [1200, -300, -450],
    2: [],
}


def balance(user_id: int) -> int:
    """The user's balance in cents."""
    return sum(LEDGER.get(user_id, []))


def average_spend(amounts: list[int]) -> float:
    """Average amount spent per outgoing transaction, in cents."""
    spent = [-a for a in amounts if a < 0]
    return sum(spent) / len(spent)


def format_cents(cents: int) -> str:
    return f"{cents / 100:.2f}"
