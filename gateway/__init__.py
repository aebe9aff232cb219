"""creditgate: a SIP call-control gateway that enforces prepaid communications credits."""

__all__ = ["__version__"]

__version__ = "0.1.0"
