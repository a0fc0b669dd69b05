"""One function per subcommand; each returns a frozen dataclass with ``to_dict()`` and never prints."""
