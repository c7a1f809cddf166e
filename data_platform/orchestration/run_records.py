"""What a pipeline step records in its run for the run's failure alert (failure_alerts.py) to read."""

# The balance alerts step records a give-up (an alert that may not have arrived) in the run before it
# retries the run's other alerts, for minutes: a run cut off meanwhile has no failure of the step to say
# it, and its retry, finding the give-up reported, can end green; the run's failure alert says it instead.
GIVEN_UP_METADATA = "given_up_alerts"
# A step whose own process (the loader, dbt) a signal ended (the OOM killer, kill -9) records the signal:
# nothing in the data to fix, and Dagster's run retries pass over a step's failure, so its failure alert
# gives the advice of a run cut off.
KILLED_METADATA = "ended_by_signal"
