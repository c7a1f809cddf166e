{#- Fails on rows where the column's text is shorter than min_length or longer than max_length
    characters (nulls pass). -#}
{% test length_between(model, column_name, min_length, max_length) %}

    select {{ column_name }}
    from {{ model }}
    where char_length({{ column_name }}) not between {{ min_length }} and {{ max_length }}

{% endtest %}
