"""The process entry: ``python -m bulkd`` and the ``bulkd`` console script."""

from bulkd.memory import configure_process


def run() -> int:
    """Set the process's memory policy first: importing the CLI imports the pipeline, whose
    first Arrow call makes pyarrow look for pandas."""
    configure_process()
    from bulkd.cli import main

    return main()


if __name__ == "__main__":
    raise SystemExit(run())
