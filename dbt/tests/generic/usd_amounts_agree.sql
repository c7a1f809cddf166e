{#- Fails on rows where two USD expressions differ (macros/engines: exactly in Postgres, by more than a
    millionth of a dollar where amounts are doubles). -#}
{% test usd_amounts_agree(model, left, right) %}

    select *
    from {{ model }}
    where {{ usd_differs(left, right) }}

{% endtest %}
