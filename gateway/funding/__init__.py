"""Funding an organization's balance: one-time top-ups and purchases (auto-recharge builds on it)."""

from gateway.funding.service import FundingRefused, fund_once

__all__ = ["FundingRefused", "fund_once"]
