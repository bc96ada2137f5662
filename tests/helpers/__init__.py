"""Shared test helpers: tiny networks for every method (`nets`) and the method contract test (`contract`)."""
