with

source as (

    select * from {{ source('payments', 'load_log') }}

),

renamed as (

    select
        export_date,
        lag(export_date) over (order by export_date) as previous_export_date,
        source as export_source,
        invoice_rows,
        invoices_new,
        invoices_changed,
        invoices_unchanged,
        organization_rows,
        loaded_at

    from source

)

select * from renamed
