"""The credit engine: what pays for a call, and enforcement of the balance while it runs."""

from gateway.credit.engine import SETUP_WINDOW_S, Authorization, CreditEngine
from gateway.credit.errors import REFUSALS, CreditRefused, Refusal, refusal
from gateway.credit.policy import Decision, decide

__all__ = [
    "SETUP_WINDOW_S",
    "Authorization",
    "CreditEngine",
    "CreditRefused",
    "Decision",
    "REFUSALS",
    "Refusal",
    "decide",
    "refusal",
]
