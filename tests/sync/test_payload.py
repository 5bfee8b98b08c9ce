"""What a contact's custom fields say: lifetime spend in the currency's own decimals."""

from __future__ import annotations

import pytest

from stripesync.sync.payload import money_text


@pytest.mark.parametrize(
    ("minor", "currency", "shown"),
    [
        (12345, "usd", "123.45"),
        (500, "jpy", "500"),  # zero-decimal: ¥500, not 5.00
        (500, "JPY", "500"),
        (1500, "krw", "1500"),
        (12345, "kwd", "12.345"),  # three decimals
        (5, "eur", "0.05"),
        (0, "gbp", "0.00"),
    ],
)
def test_lifetime_spend_uses_the_currency_decimals(minor: int, currency: str, shown: str) -> None:
    assert money_text(minor, currency) == shown
