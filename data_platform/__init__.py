"""data_platform: load payments CSVs into Postgres, model them with dbt, alert on balance moves."""
