-- The alert routing rules from the alert_routing seed, in the marts so the alerter (which may read only
-- the marts) can route each alert. A handful of rows: a table rebuilt on every build.
{{
    config(
        indexes=postgres_indexes([
            {'columns': ['priority'], 'unique': True},
        ]),
    )
}}

with

routes as (

    select * from {{ ref('alert_routing') }}

),

final as (

    select
        priority,
        route_name,
        organization_id,
        legal_entity_country_code,
        min_balance_usd,
        max_balance_usd,
        webhook_env,
        coalesce(sink, 'slack') as sink,
        nullif(mention, '') as mention,
        organization_id is null
        and legal_entity_country_code is null
        and min_balance_usd is null
        and max_balance_usd is null as is_default

    from routes

)

select * from final
