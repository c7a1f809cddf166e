{#- What an invoice version adds to its organization's balance under its status's rule (a left-joined row
    of the invoice_enrichment seed), in USD: the invoiced amount, the paid amount and their difference.
    `prefix` names the columns, e.g. previous_invoiced_amount_usd. -#}
{% macro rule_amounts(rules, invoices, prefix='') -%}
    {{ rules }}.invoiced_coefficient * {{ invoices }}.amount_usd as {{ prefix }}invoiced_amount_usd,
    {{ rules }}.paid_coefficient * coalesce({{ invoices }}.payment_amount_usd, 0) as {{ prefix }}paid_amount_usd,
    {{ rules }}.invoiced_coefficient * {{ invoices }}.amount_usd
    - {{ rules }}.paid_coefficient * coalesce({{ invoices }}.payment_amount_usd, 0)
    as {{ prefix }}balance_contribution_usd
{%- endmacro %}
