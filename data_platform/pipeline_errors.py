"""How a pipeline run ends when it does not end well: its exit codes, and the error that carries one."""

from __future__ import annotations

from data_platform.steps import exit_status

EXIT_CONFIG = 2  # a setting to fix, or no database
# EXIT_BUSY (3) is the loader's exit code when its lock is busy, and the pipeline's when another pipeline
# run, a loader run by hand or an alert run by hand holds its lock past PIPELINE_LOCK_TIMEOUT: nothing is
# wrong, run again later
# EXIT_DATABASE_FAILED (6) is the loader's, and so the pipeline's, when the database failed during the load:
# the export being loaded rolled back through no fault of its own, run again once the database is back

# The run went to its end and the warehouse is built, but not every alert was delivered: a run from cron
# must not end green then. Not used while the docs are served: the server runs on, the message is printed.
EXIT_ALERTS_UNDELIVERED = 4  # they wait for the next alert run
EXIT_ALERTS_GIVEN_UP = 5  # some were given up on: check the channel


class PipelineError(Exception):
    """A step failed or the run could not start; `exit_code` is what the pipeline exits with."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_status(exit_code)
