"""``python -m tidepool_cli``: the same entry point as the ``tidepool`` command."""

from tidepool_cli.cli.app import main

if __name__ == "__main__":
    main()
