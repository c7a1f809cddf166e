-- Database bootstrap: schemas, roles and grants. Run once per database as a superuser
-- (the postgres image runs it from /docker-entrypoint-initdb.d; the tests apply it with psql).
-- Idempotent: safe to apply again. Passwords come from the environment (see below), with demo defaults.
--
--   transformer: owns raw/seeds/staging/intermediate/marts/audit; runs the loader and dbt.
--   alerter:     reads the marts the alerts need (dbt grants them), owns ops (alert watermark and
--                history); runs alert_script.py.

\set ON_ERROR_STOP on

-- Each role's password: TRANSFORMER_PASSWORD / ALERTER_PASSWORD, or the file named by
-- TRANSFORMER_PASSWORD_FILE / ALERTER_PASSWORD_FILE (Docker secrets; one trailing newline removed).
-- An empty variable counts as unset. A password given is (re)applied; without one, a new role gets the
-- demo default and an existing role keeps its password. psql (15+) runs `backticks` in a shell and
-- removes one trailing newline from their output; a failing one would go unnoticed, hence the checks.
-- A file's one trailing line end goes, \n or \r\n, as init.sh's secrets.py removes it: sed turns a final
-- \r\n into the \n psql removes (-z: the whole file is one record, so only its end can match).
\set transformer_password_given `[ -n "$TRANSFORMER_PASSWORD" ] && echo true || echo false`
\set transformer_password_file_given `[ -n "$TRANSFORMER_PASSWORD_FILE" ] && echo true || echo false`
\if :transformer_password_file_given
  \if :transformer_password_given
    do $$ begin raise exception 'TRANSFORMER_PASSWORD and TRANSFORMER_PASSWORD_FILE are both set: set only one'; end $$;
  \endif
  \set transformer_password_file_readable `cat -- "$TRANSFORMER_PASSWORD_FILE" > /dev/null && echo true || echo false`
  \if :transformer_password_file_readable
  \else
    do $$ begin raise exception 'TRANSFORMER_PASSWORD_FILE: cannot read the file (the reason is above)'; end $$;
  \endif
  -- an empty password would clear the role's password, not set one
  \set transformer_password_file_filled `grep -q '[^[:space:]]' -- "$TRANSFORMER_PASSWORD_FILE" && echo true || echo false`
  \if :transformer_password_file_filled
  \else
    do $$ begin raise exception 'TRANSFORMER_PASSWORD_FILE: the file is empty; put the password in it or unset the variable'; end $$;
  \endif
  \set transformer_password `sed -z -e 's/\r\n$/\n/' -- "$TRANSFORMER_PASSWORD_FILE"`
  \set transformer_password_given true
\elif :transformer_password_given
  \getenv transformer_password TRANSFORMER_PASSWORD
\else
  \set transformer_password transformer
\endif

\set alerter_password_given `[ -n "$ALERTER_PASSWORD" ] && echo true || echo false`
\set alerter_password_file_given `[ -n "$ALERTER_PASSWORD_FILE" ] && echo true || echo false`
\if :alerter_password_file_given
  \if :alerter_password_given
    do $$ begin raise exception 'ALERTER_PASSWORD and ALERTER_PASSWORD_FILE are both set: set only one'; end $$;
  \endif
  \set alerter_password_file_readable `cat -- "$ALERTER_PASSWORD_FILE" > /dev/null && echo true || echo false`
  \if :alerter_password_file_readable
  \else
    do $$ begin raise exception 'ALERTER_PASSWORD_FILE: cannot read the file (the reason is above)'; end $$;
  \endif
  -- an empty password would clear the role's password, not set one
  \set alerter_password_file_filled `grep -q '[^[:space:]]' -- "$ALERTER_PASSWORD_FILE" && echo true || echo false`
  \if :alerter_password_file_filled
  \else
    do $$ begin raise exception 'ALERTER_PASSWORD_FILE: the file is empty; put the password in it or unset the variable'; end $$;
  \endif
  \set alerter_password `sed -z -e 's/\r\n$/\n/' -- "$ALERTER_PASSWORD_FILE"`
  \set alerter_password_given true
\elif :alerter_password_given
  \getenv alerter_password ALERTER_PASSWORD
\else
  \set alerter_password alerter
\endif

-- roles are cluster-wide: create them once
select format('create role transformer login password %L', :'transformer_password')
where not exists (select from pg_roles where rolname = 'transformer') \gexec
select format('create role alerter login password %L', :'alerter_password')
where not exists (select from pg_roles where rolname = 'alerter') \gexec
\if :transformer_password_given
alter role transformer password :'transformer_password';
\endif
\if :alerter_password_given
alter role alerter password :'alerter_password';
\endif

-- only the two roles (and superusers) may connect; dbt's incremental models need temporary tables
select format('revoke all on database %I from public', current_database()) \gexec
select format('grant connect, temporary on database %I to transformer', current_database()) \gexec
select format('grant connect on database %I to alerter', current_database()) \gexec

-- nobody but the owners may create objects in public
revoke create on schema public from public;

-- warehouse layers, owned by the transformer
create schema if not exists raw authorization transformer;
create schema if not exists seeds authorization transformer;
create schema if not exists staging authorization transformer;
create schema if not exists intermediate authorization transformer;
create schema if not exists marts authorization transformer;
-- views of the rows each failing dbt test found (store_failures)
create schema if not exists audit authorization transformer;
-- the alerter's own state
create schema if not exists ops authorization alerter;

-- the alerter may look into the marts, and reads only the tables the alerts need: dbt grants it those on
-- every build (+grants in dbt/dbt_project.yml). So no default privilege grants it the tables created later;
-- the one an older version of this file made goes when it is applied again (the pipeline's next build
-- removes it too, and dbt the grants on tables the alerter no longer reads)
grant usage on schema marts to alerter;
alter default privileges for role transformer in schema marts revoke select on tables from alerter;

-- Dagster (the daily profile, `docker compose --profile daily up`): its own role and its own database
-- for run history, event logs and schedule/sensor state. The role gets nothing in the warehouse.
-- Password: DAGSTER_PG_PASSWORD when set (and then re-applied), else the demo default for a new role.
\set dagster_password_given `[ -n "$DAGSTER_PG_PASSWORD" ] && echo true || echo false`
\if :dagster_password_given
  \getenv dagster_password DAGSTER_PG_PASSWORD
\else
  \set dagster_password dagster
\endif
select format('create role dagster login password %L', :'dagster_password')
where not exists (select from pg_roles where rolname = 'dagster') \gexec
\if :dagster_password_given
alter role dagster password :'dagster_password';
\endif
-- a database is cluster-wide: created once, whichever database this file is applied to
select 'create database dagster owner dagster'
where not exists (select from pg_database where datname = 'dagster') \gexec
revoke all on database dagster from public;
grant connect, temporary on database dagster to dagster;
