{#- Fails once per combination of the given columns that appears in more than one row: a composite
    primary key test (null values count as equal, so nulls in key columns are caught as duplicates
    too; pair with not_null on each column). -#}
{% test unique_combination_of_columns(model, combination_of_columns) %}

    select
        {{ combination_of_columns | join(', ') }},
        count(*) as n_records
    from {{ model }}
    group by {{ combination_of_columns | join(', ') }}
    having count(*) > 1

{% endtest %}
