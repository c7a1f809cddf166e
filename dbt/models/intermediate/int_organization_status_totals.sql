-- One row per organization and invoice status: the ledger summed over every day, what dim_organizations
-- reads instead of every day's totals.
-- Incremental: a run adds the days after the latest day already summed (`summed_through_date`) to the
-- stored totals of the organizations and statuses they touch. Adding is exact because the ledger never
-- books on a day an earlier export has closed (a late invoice books on its export's day), and it repeats
-- nothing when a build failed after this model ran: those days are already summed. Without a ledger window
-- (a hand-run `dbt build`) everything is summed again, like the other incremental models.
{{
    config(
        materialized=keyed_replace_materialization(),
        incremental_strategy='delete+insert',
        unique_key=['organization_id', 'status'],
        indexes=postgres_indexes([
            {'columns': ['organization_id', 'status'], 'unique': True},
        ]),
    )
}}

{% set adds_new_days = is_incremental() and ledger_window_is_set() %}

with

status_totals as (

    select * from {{ ref('int_organization_daily_status_totals') }}
    {% if adds_new_days %}
        where balance_date > (
            select coalesce(max(kept.summed_through_date), cast('0001-01-01' as date))
            from {{ this }} as kept
        )
    {% endif %}

),

new_day_totals as (

    select
        organization_id,
        status,
        sum(net_invoice_count) as invoice_count,
        sum(invoiced_amount_usd) as invoiced_amount_usd,
        sum(paid_amount_usd) as paid_amount_usd,
        sum(balance_change_usd) as balance_usd,
        min(balance_date) filter (where new_invoice_count > 0) as first_invoice_date,
        max(balance_date) filter (where new_invoice_count > 0) as last_invoice_date

    from status_totals
    group by organization_id, status

),

-- the stored totals of the organizations and statuses the new days touch (none on a full build)
stored_totals as (

    select
        kept.organization_id,
        kept.status,
        kept.invoice_count,
        kept.invoiced_amount_usd,
        kept.paid_amount_usd,
        kept.balance_usd,
        kept.first_invoice_date,
        kept.last_invoice_date

    {% if adds_new_days %}
        from {{ this }} as kept
        inner join new_day_totals
            on
                kept.organization_id = new_day_totals.organization_id
                and kept.status = new_day_totals.status
    {% else %}
        from new_day_totals as kept
        where false
    {% endif %}

),

stored_and_new as (

    select * from new_day_totals
    union all
    select * from stored_totals

),

totals as (

    select
        organization_id,
        status,
        sum(invoice_count) as invoice_count,
        sum(invoiced_amount_usd) as invoiced_amount_usd,
        sum(paid_amount_usd) as paid_amount_usd,
        sum(balance_usd) as balance_usd,
        min(first_invoice_date) as first_invoice_date,
        max(last_invoice_date) as last_invoice_date

    from stored_and_new
    group by organization_id, status

),

summed as (

    select max(balance_date) as summed_through_date
    from status_totals

),

final as (

    select
        totals.organization_id,
        totals.status,
        cast(totals.invoice_count as bigint) as invoice_count,
        totals.invoiced_amount_usd,
        totals.paid_amount_usd,
        totals.balance_usd,
        totals.first_invoice_date,
        totals.last_invoice_date,
        summed.summed_through_date

    from totals
    cross join summed

)

select * from final
