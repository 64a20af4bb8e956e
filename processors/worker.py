"""Entry point of one processor worker process: `python -m onfinish.processors.worker`."""

from __future__ import annotations

import faust


def main() -> None:
    from onfinish.processors.app import app

    # Faust's worker handles SIGTERM and SIGINT: it stops consuming, flushes the producer,
    # commits the processed offsets and leaves the group, so another worker takes over cleanly.
    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
