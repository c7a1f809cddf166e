-- Why each organization's balance moved on a day: one row per organization, day and driver kind, with the
-- kind's invoices, their effect on the balance and the kind's three invoices of largest absolute effect.
-- The drivers of a day sum to the fact's balance_change_usd for that organization and day.
-- A driver is classified by the invoice's version booked that day and its status's rule: a first
-- version is a new invoice (a credit note when it credits); a later version is a payment (paid_coefficient
-- 1), a credit (invoiced_coefficient -1), a cancellation (invoiced_coefficient 0) or another change to an
-- older invoice. So an old invoice paid today is today's payment driver. An invoice that moved to another
-- organization books nothing in the one it left, only the reversal: there it is another change, with the
-- status `moved_away`, not a booking of the status it left with.
-- Incremental like the fact: a run recomputes the days from the ledger window start only.
{{
    config(
        materialized='incremental',
        incremental_strategy=ledger_window_strategy(),
        window_column='balance_date',
        partition_by=ledger_window_partition('balance_date'),
        indexes=postgres_indexes([
            {'columns': ['organization_id', 'balance_date', 'driver_kind'], 'unique': True},
            {'columns': ['balance_date']},
        ]),
    )
}}

with

-- a first version's one entry is its invoice's only entry on its day (a later version books and takes it
-- back on the later version's own export day), so only the changes' entries need grouping per invoice:
-- at 12.7M invoices that grouping was a third of this model's full build. Each CTE reads the ledger view
-- itself: Postgres materialises a CTE read twice, whole, before any filter reaches it.
first_entries as (

    select * from {{ ref('int_invoice_ledger_entries') }}
    where
        version = 1
        {% if is_incremental() %}
            and seen_on >= {{ ledger_window_start() }}
            and booking_date >= {{ ledger_window_start() }}
        {% endif %}

),

change_entries as (

    select * from {{ ref('int_invoice_ledger_entries') }}
    where
        version > 1
        {% if is_incremental() %}
            and seen_on >= {{ ledger_window_start() }}
            and booking_date >= {{ ledger_window_start() }}
        {% endif %}

),

rules as (

    select * from {{ ref('invoice_enrichment') }}

),

invoice_days as (

    select
        organization_id,
        booking_date as balance_date,
        invoice_id,
        true as is_new_invoice,
        status,
        -- a new invoice replaced nothing: null, typed as the status is on every engine
        case when false then status end as previous_status,
        invoiced_amount_usd,
        paid_amount_usd,
        balance_change_usd

    from first_entries

    union all

    -- a changed invoice's entries of one organization and day: its booking and the reversal of its
    -- previous version (an invoice that moved leaves only the reversal in its old organization)
    select
        organization_id,
        booking_date as balance_date,
        invoice_id,
        false as is_new_invoice,
        coalesce(max(status) filter (where entry_kind = 'booking'), 'moved_away') as status,
        -- the status the reversal took back here: what the invoice was before this day's change
        max(status) filter (where entry_kind = 'reversal') as previous_status,
        sum(invoiced_amount_usd) as invoiced_amount_usd,
        sum(paid_amount_usd) as paid_amount_usd,
        sum(balance_change_usd) as balance_change_usd

    from change_entries
    group by organization_id, booking_date, invoice_id

),

classified as (

    select
        invoice_days.*,
        case
            when invoice_days.is_new_invoice and rules.invoiced_coefficient < 0 then 'credits'
            when invoice_days.is_new_invoice then 'new_invoices'
            when invoice_days.status = 'moved_away' then 'other_changes'
            when rules.paid_coefficient > 0 then 'payments'
            when rules.invoiced_coefficient < 0 then 'credits'
            when rules.invoiced_coefficient = 0 then 'cancellations'
            else 'other_changes'
        end as driver_kind

    from invoice_days
    left join rules
        on invoice_days.status = rules.status

),

ranked as (

    select
        *,
        row_number() over (
            partition by organization_id, balance_date, driver_kind
            order by abs(balance_change_usd) desc, invoice_id
        ) as impact_rank

    from classified

),

drivers as (

    select
        organization_id,
        balance_date,
        driver_kind,
        count(*) as invoice_count,
        sum(invoiced_amount_usd) as invoiced_amount_usd,
        sum(paid_amount_usd) as paid_amount_usd,
        sum(balance_change_usd) as balance_change_usd,
        -- invoices that did not move the balance (a new invoice paid the same day) explain nothing
        {{ top_invoices_array(
            'invoice_id', 'status', 'previous_status', 'balance_change_usd', 'impact_rank',
            'impact_rank <= ' ~ var('top_invoices') ~ ' and balance_change_usd <> 0'
        ) }} as top_invoices

    from ranked
    group by organization_id, balance_date, driver_kind

)

select * from drivers
