{#-
    dim_organizations.invoice_count_by_status: a JSON object {status: invoice count} over the rows
    where `condition` holds, `{}` when none does. Postgres: jsonb; DuckDB: json; Spark: JSON text.
-#}
{% macro status_counts_object(status, invoice_count, condition) -%}
    {{ return(adapter.dispatch('status_counts_object', 'data_platform')(status, invoice_count, condition)) }}
{%- endmacro %}

{% macro default__status_counts_object(status, invoice_count, condition) -%}
    coalesce(jsonb_object_agg({{ status }}, {{ invoice_count }}) filter (where {{ condition }}), '{}'::jsonb)
{%- endmacro %}

{#- DuckDB's json_group_object takes no filter: a map of the filtered entries, as JSON; keys in status
    order, so the same counts always give the same text -#}
{% macro duckdb__status_counts_object(status, invoice_count, condition) -%}
    coalesce(
        to_json(map_from_entries(list({'k': {{ status }}, 'v': {{ invoice_count }}} order by {{ status }}) filter (where {{ condition }}))),
        '{}'::json
    )
{%- endmacro %}

{#- collect_list skips the nulls of the case, so no matching row gives an empty map: `{}`; sorted by
    status, so the same counts always give the same text -#}
{% macro spark__status_counts_object(status, invoice_count, condition) -%}
    to_json(map_from_entries(array_sort(collect_list(
        case when {{ condition }} then struct({{ status }}, {{ invoice_count }}) end
    ))))
{%- endmacro %}


{#- The empty object, for an organization without invoices. -#}
{% macro empty_status_counts() -%}
    {{ return(adapter.dispatch('empty_status_counts', 'data_platform')()) }}
{%- endmacro %}

{% macro default__empty_status_counts() -%}
    '{}'::jsonb
{%- endmacro %}

{% macro duckdb__empty_status_counts() -%}
    '{}'::json
{%- endmacro %}

{% macro spark__empty_status_counts() -%}
    '{}'
{%- endmacro %}


{#-
    fct_organization_daily_drivers.top_invoices: a JSON array of {invoice_id, status, previous_status,
    balance_change_usd} objects, in `order_by` order, over the rows where `condition` holds; `[]` when none
    does. A null previous_status is written as null on every engine (Spark's to_json would leave it out).
    Postgres: jsonb; DuckDB: json; Spark: JSON text. There, an amount's decimal places follow the rules'
    coefficients' type (DuckDB 19.44000, Spark 19.440000): its zeros past the cents are dropped from the
    JSON text, so that with whole-number rules (the shipped ones) it reads as Postgres's does (19.44), and
    a fractional rule's exact amount (27.8175) is kept, which rounding to the cent would lose. Equal, not
    the same text: Postgres keeps the product's scale (27.8250 where these show 27.825).
-#}
{% macro top_invoices_array(
    invoice_id, status, previous_status, balance_change_usd, order_by, condition
) -%}
    {{ return(adapter.dispatch('top_invoices_array', 'data_platform')(
        invoice_id, status, previous_status, balance_change_usd, order_by, condition
    )) }}
{%- endmacro %}

{% macro default__top_invoices_array(
    invoice_id, status, previous_status, balance_change_usd, order_by, condition
) -%}
    coalesce(
        jsonb_agg(
            jsonb_build_object(
                'invoice_id', {{ invoice_id }},
                'status', {{ status }},
                'previous_status', {{ previous_status }},
                'balance_change_usd', {{ balance_change_usd }}
            )
            order by {{ order_by }}
        ) filter (where {{ condition }}),
        '[]'::jsonb
    )
{%- endmacro %}

{% macro duckdb__top_invoices_array(
    invoice_id, status, previous_status, balance_change_usd, order_by, condition
) -%}
    coalesce(
        regexp_replace(
            to_json(list({
                'invoice_id': {{ invoice_id }},
                'status': {{ status }},
                'previous_status': {{ previous_status }},
                'balance_change_usd': {{ balance_change_usd }}
            } order by {{ order_by }}) filter (where {{ condition }}))::varchar,
            '{{ zeros_past_the_cents() }}', '\1\2', 'g'
        )::json,
        '[]'::json
    )
{%- endmacro %}

{#- collect_list skips the case's nulls; sorting the structs by their first field keeps `order_by` order -#}
{% macro spark__top_invoices_array(
    invoice_id, status, previous_status, balance_change_usd, order_by, condition
) -%}
    regexp_replace(
        to_json(transform(
            array_sort(collect_list(case when {{ condition }} then struct(
                {{ order_by }} as sort_key,
                {{ invoice_id }} as invoice_id,
                {{ status }} as status,
                {{ previous_status }} as previous_status,
                {{ balance_change_usd }} as balance_change_usd
            ) end)),
            entry -> named_struct(
                'invoice_id', entry.invoice_id,
                'status', entry.status,
                'previous_status', entry.previous_status,
                'balance_change_usd', entry.balance_change_usd
            )
        ), map('ignoreNullFields', 'false')),
        '{{ zeros_past_the_cents() }}', '$1$2'
    )
{%- endmacro %}

{#- In a JSON text of top invoices: an amount's zeros after its first two decimal places, between the
    amount (group 1) and what follows it (group 2). -#}
{% macro zeros_past_the_cents() -%}
    ("balance_change_usd":-?[0-9]+[.][0-9]{2}[0-9]*?)0+([,}])
{%- endmacro %}
