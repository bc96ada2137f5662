"""End-to-end tests through the command line: exact resume and 2-process DDP for every method (slow)."""
