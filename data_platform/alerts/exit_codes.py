"""alert_script.py's exit codes, and the start of its stderr line for each failed delivery: the alert run
writes them and the pipeline reads them."""

OK = 0
DELIVERY_FAILED = 1  # some alerts are still undelivered (or unrouted): the next run retries them
ERROR = 2  # bad settings, a database error or an unexpected one: the run stopped
GIVEN_UP = 3  # the run gave up on an alert after its retries (reported)
BUSY = 4  # another alert run held the lock past ALERT_LOCK_TIMEOUT: nothing was sent, run again later
INTERRUPTED = 130  # Ctrl-C
TERMINATED = 143  # SIGTERM

# the pipeline quotes the alert run's stderr from the last such line on (where to, why, and the run's notes
# after it): a failure alert sent to a channel has no log "above" to point to
DELIVERY_FAILED_LINE = "alert_script.py: delivery to "
