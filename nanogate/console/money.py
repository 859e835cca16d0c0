"""Credits shown as money: `credits_per_unit` credits make one unit of `currency`.

The console's script formats amounts the same way (console.js `money`), from the prefix and
rate the page carries, so a chart legend and a table cell never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from nanogate.core.config import Settings

# Codes an operator is likely to sell in, shown by their symbol; any other code or word is
# shown as written, followed by a space ("CHF 1.20"), and a symbol as written ("₿0.0001").
SYMBOLS = {
    "USD": "$",
    "EUR": "€",
    "GBP": "£",
    "JPY": "¥",
    "CNY": "¥",
    "INR": "₹",
    "KRW": "₩",
    "BRL": "R$",
    "CAD": "CA$",
    "AUD": "A$",
}


@dataclass(frozen=True, slots=True)
class Money:
    prefix: str = "$"
    credits_per_unit: int = 1_000_000

    @classmethod
    def of(cls, settings: Settings) -> Money:
        code = settings.currency
        prefix = SYMBOLS.get(code.upper(), code)
        if prefix[-1].isalpha():
            prefix += " "
        return cls(prefix, settings.credits_per_unit)

    def format(self, credits: float) -> str:
        """`credits` as money: cents for a unit or more, finer for less (an image may cost
        $0.039), never fewer than two decimals."""
        amount = abs(credits) / self.credits_per_unit
        digits = 2 if amount >= 1 or amount == 0 else 4 if amount >= 0.01 else 6
        text = f"{amount:,.{digits}f}"
        while digits > 2 and text.endswith("0"):
            text, digits = text[:-1], digits - 1
        return f"{'-' if credits < 0 else ''}{self.prefix}{text}"
