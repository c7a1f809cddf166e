-- The current state's bookkeeping: which version of each invoice is current, and since when.
-- The invoice's values are those of that version in stg_payments__invoice_versions.

with

source as (

    select * from {{ source('payments', 'invoices') }}

),

renamed as (

    select
        invoice_id,
        version as current_version,
        first_seen_on,
        seen_on as current_version_seen_on

    from source

)

select * from renamed
