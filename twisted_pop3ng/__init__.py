"""twisted-pop3ng: a POP3 server and client framework for Twisted."""

__version__ = "0.1.0"
