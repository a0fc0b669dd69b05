"""The Typer command-line interface: parse, call one ops function, render."""
