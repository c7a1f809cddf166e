"""Daily operation on Dagster: the same pipeline steps as init.sh, run by a schedule and an export sensor.

Modules, one job each:
    project      the dbt project and its manifest (parsed when the code location loads)
    environment  os.environ swapped for a step (how the build plan's variables reach dagster-dbt)
    assets       raw tables (the loader), every dbt model with its tests as checks, the docs, the alerts
    schedules    the daily job and its schedule (PIPELINE_SCHEDULE)
    configuration  the settings the Dagster processes read that cannot be used: reported, never fatal
    sensors      a new export folder, once complete and unchanged, starts one run, and so does a fixed one
    notify       operations messages through the balance alerts' destinations (Slack webhook or stdout)
    failure_alerts  a failed run is told, kept in the sensor's cursor until delivered
    freshness    no new export for too long, or a fact behind the loaded exports, is told (and its end)
    definitions  the one `Definitions` object (`dagster dev -m data_platform.orchestration.definitions`)
    startup      before the daemon starts: fail the runs a previous daemon container left in progress
    run_retries  which failed runs Dagster's run retries start again, and where their daemon starts reading

Every step calls `data_platform.pipeline`; nothing here implements a step a second time.
"""
