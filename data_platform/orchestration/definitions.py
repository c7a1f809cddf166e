"""The one Dagster `Definitions` object: `dagster dev -m data_platform.orchestration.definitions`."""

from __future__ import annotations

import sys

from dagster import Definitions

from data_platform.orchestration import configuration
from data_platform.orchestration.assets import balance_alerts, dbt_docs, dbt_models, raw_tables
from data_platform.orchestration.failure_alerts import run_failure_alerts
from data_platform.orchestration.freshness import freshness_alerts
from data_platform.orchestration.project import dbt_resource
from data_platform.orchestration.schedules import daily_job, daily_schedule
from data_platform.orchestration.sensors import new_export_sensor

# Every Dagster process (webserver, daemon, code server, run worker) loads this module; with Docker
# secrets its environment holds NAME_FILE paths, which init.sh would have resolved (README). A secret
# file or a PIPELINE_SCHEDULE that cannot be used must not stop the definitions from loading (no
# schedule, no sensor, no failure alert): it is reported here, and every run's steps fail with it
# (configuration.problems, assets.pipeline_step).
for problem in configuration.problems():
    print(f"error: {problem}", file=sys.stderr)

defs = Definitions(
    assets=[raw_tables, dbt_models, dbt_docs, balance_alerts],
    jobs=[daily_job],
    schedules=[daily_schedule()],
    sensors=[new_export_sensor, run_failure_alerts, freshness_alerts],
    resources={"dbt": dbt_resource},
)
