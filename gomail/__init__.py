"""gomail: a Twisted multi-protocol mail server framework."""

__version__ = "0.1.0"
