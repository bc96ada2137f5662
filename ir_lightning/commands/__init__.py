"""Thin command-line front-ends of `ir-lightning` subcommands: argparse and calls into the library."""
