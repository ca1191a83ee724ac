from bot.ledger import average_spend, balance, format_cents


def test_balance_sums_the_ledger():
    assert balance(1) == 450


def test_average_spend_of_outgoing_transactions():
    assert average_spend([1200, -300, -450]) == 375.0


def test_average_spend_without_spending_is_zero():
    # /balance for a user with no transactions must not crash.
    assert average_spend([]) == 0.0


def test_format_cents():
    assert format_cents(450) == "4.50"
