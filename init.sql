-- Database bootstrap: schemas, roles and grants. Run once per database as a superuser
-- (the postgres image runs it from /docker-entrypoint-initdb.d; the tests apply it with psql).
-- Idempotent: safe to apply again. Passwords come from the environment through psql's \getenv,
-- with demo defaults when unset.
--
--   transformer: owns raw/seeds/staging/intermediate/marts; runs the loader and dbt.
--   alerter:     reads marts, owns ops (alert watermark and history); runs alert_script.py.

\set ON_ERROR_STOP on

-- A password given in the environment is (re)applied; without one, a new role gets the demo default
-- and an existing role keeps its password.
\getenv transformer_password TRANSFORMER_PASSWORD
\if :{?transformer_password}
  \set set_transformer_password true
\else
  \set set_transformer_password false
  \set transformer_password transformer
\endif
\getenv alerter_password ALERTER_PASSWORD
\if :{?alerter_password}
  \set set_alerter_password true
\else
  \set set_alerter_password false
  \set alerter_password alerter
\endif

-- roles are cluster-wide: create them once
select format('create role transformer login password %L', :'transformer_password')
where not exists (select from pg_roles where rolname = 'transformer') \gexec
select format('create role alerter login password %L', :'alerter_password')
where not exists (select from pg_roles where rolname = 'alerter') \gexec
\if :set_transformer_password
alter role transformer password :'transformer_password';
\endif
\if :set_alerter_password
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
-- the alerter's own state
create schema if not exists ops authorization alerter;

-- the alerter reads the marts: existing tables and every table dbt creates later
grant usage on schema marts to alerter;
grant select on all tables in schema marts to alerter;
alter default privileges for role transformer in schema marts grant select on tables to alerter;
