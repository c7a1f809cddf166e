{#- Fails on rows where the column is zero, negative or not a finite number (NaN counts as greater than
    every number in Postgres, so `> 0` alone would pass it). Nulls are left to not_null. -#}
{% test positive(model, column_name) %}

    select {{ column_name }}
    from {{ model }}
    where not ({{ column_name }} > 0 and {{ column_name }} < 'Infinity')

{% endtest %}
