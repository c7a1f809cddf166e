with

source as (

    select * from {{ source('payments', 'organizations') }}

),

renamed as (

    select

        ----------  ids
        organization_id,
        legal_entity_country_code,

        ---------- numerics
        count_total_contracts_active,

        ---------- dates
        first_payment_date,
        last_payment_date,

        ---------- timestamps
        created_date as organization_created_at

    from source

)

select * from renamed
