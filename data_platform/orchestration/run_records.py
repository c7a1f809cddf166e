"""What a pipeline step records in its run for the run's failure alert (failure_alerts.py), or a later
attempt of the step, to read."""

from dagster import DagsterEventType, DagsterInstance, EventLogEntry

# The balance alerts step records a give-up (an alert that may not have arrived) in the run before it
# retries the run's other alerts, for minutes: a run cut off meanwhile has no failure of the step to say
# it, and its retry, finding the give-up reported, can end green; the run's failure alert says it instead.
# An attempt whose own process is killed meanwhile is retried within the run: that attempt says it.
GIVEN_UP_METADATA = "given_up_alerts"
# A step whose own process (the loader, dbt) a signal ended (the OOM killer, kill -9) records the signal:
# nothing in the data to fix, and Dagster's run retries pass over a step's failure, so its failure alert
# gives the advice of a run cut off.
KILLED_METADATA = "ended_by_signal"
# A step that gave up waiting for the database records it too: not retried by Dagster, and the sensor has
# asked for its export day already, so nothing starts a run again before the next export or schedule.
NO_DATABASE_METADATA = "database_unavailable"


def recorded_give_ups(entries: list[EventLogEntry]) -> list[tuple[str, str]]:
    """(step, what it said) of each give-up of balance alerts recorded in the run, oldest first."""
    observations = [e for e in entries if e.dagster_event_type == DagsterEventType.ASSET_OBSERVATION]
    recorded = [
        (e.step_key, e.dagster_event.event_specific_data.asset_observation.metadata) for e in observations
    ]
    return [
        (step, str(values[GIVEN_UP_METADATA].value))
        for step, values in recorded
        if GIVEN_UP_METADATA in values
    ]


def give_ups_in_run(instance: DagsterInstance, run_id: str) -> list[tuple[str, str]]:
    """recorded_give_ups of a run, read from the instance."""
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_OBSERVATION).records
    return recorded_give_ups([record.event_log_entry for record in records])
