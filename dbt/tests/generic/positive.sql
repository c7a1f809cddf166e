{#- Fails on rows where the column is zero, negative or not a finite number (macros/engines: in Postgres, NaN
    counts as greater than every number, so `> 0` alone would pass it). Nulls are left to not_null. -#}
{% test positive(model, column_name) %}

    select {{ column_name }}
    from {{ model }}
    where not ({{ is_positive_number(column_name) }})

{% endtest %}
