"""linewatch: streaming surface inspection for production lines (the daemon; never imports torch)."""

__version__ = "0.1.0"
