{#-
    Engine-specific SQL for dates, ids and numbers, behind adapter.dispatch: models call the plain
    macro, dbt picks `<adapter>__<name>` and falls back to `default__<name>`. Postgres keeps exact
    numerics; DuckDB and Spark cap decimals at 38 digits and round a decimal division to a few places
    (Spark: 6), so a USD amount computed by division is a double there: 15-16 significant digits, exact
    to the cent for amounts under $1 trillion (to_usd's nudge adds a cent to exact cents from $5 trillion
    up; the loader takes 16 digits, which only Postgres converts exactly), and its ratios agree with
    Postgres's to 1e-9.
-#}

{#- The UTC calendar date of a timestamp with time zone. -#}
{% macro utc_date(column_name) -%}
    {{ return(adapter.dispatch('utc_date', 'data_platform')(column_name)) }}
{%- endmacro %}

{% macro default__utc_date(column_name) -%}
    cast(timezone('UTC', {{ column_name }}) as date)
{%- endmacro %}

{% macro postgres__utc_date(column_name) -%}
    ({{ column_name }} at time zone 'utc')::date
{%- endmacro %}

{#- Spark timestamps are instants rendered in the session time zone, which the profile sets to UTC. -#}
{% macro spark__utc_date(column_name) -%}
    to_date({{ column_name }})
{%- endmacro %}


{#-
    The raw id columns hold the hash of an empty value (var empty_hash_sentinel, set in
    dbt_project.yml) where the source had no id. Return the column with that sentinel turned into null.
-#}
{% macro empty_hash_to_null(column_name) -%}
    {{ return(adapter.dispatch('empty_hash_to_null', 'data_platform')(column_name)) }}
{%- endmacro %}

{% macro default__empty_hash_to_null(column_name) -%}
    nullif({{ column_name }}, cast({{ var('empty_hash_sentinel') }} as bigint))
{%- endmacro %}

{% macro postgres__empty_hash_to_null(column_name) -%}
    nullif({{ column_name }}, {{ var('empty_hash_sentinel') }})
{%- endmacro %}


{#- An amount in a currency converted to USD: fx rates are units of the currency per 1 USD. Rounded to
    the cent (half away from zero), once per amount, as a ledger books it: every balance is then a sum
    of cents, exact on every engine and in every incremental run, and the day-over-day ratio divides by
    the balance the alert shows. Unrounded, amounts that cancel out in their currency left remainders
    like -1e-16 USD, shown as $0.00 but turning the next move into a 10^19 % alert. -#}
{% macro to_usd(amount, fx_rate) -%}
    {{ return(adapter.dispatch('to_usd', 'data_platform')(amount, fx_rate)) }}
{%- endmacro %}

{#- In doubles an exact half cent (0.09 / 0.4 = 0.225) comes out just below it (0.22499999999999998)
    and would round down where Postgres rounds up: the quotient's rounding error is below 4e-16 of it,
    so a nudge of 1e-15 of it away from zero puts every exact half cent above, and moves no other
    amount across one unless it lies within 1e-15 of it. -#}
{% macro default__to_usd(amount, fx_rate) -%}
    round(
        cast({{ amount }} as {{ usd_type() }}) / cast({{ fx_rate }} as {{ usd_type() }}) * 1.000000000000001, 2
    )
{%- endmacro %}

{% macro postgres__to_usd(amount, fx_rate) -%}
    round({{ amount }} / {{ fx_rate }}, 2)
{%- endmacro %}


{#- The type of USD amounts computed by the models (to_usd and the sums of it). -#}
{% macro usd_type() -%}
    {{ return(adapter.dispatch('usd_type', 'data_platform')()) }}
{%- endmacro %}

{% macro default__usd_type() -%}
    double
{%- endmacro %}

{% macro postgres__usd_type() -%}
    numeric
{%- endmacro %}



{#- A running sum of USD amounts, to the cent. Every amount is in cents (to_usd), so Postgres's exact
    numeric sum needs nothing; the other engines' double sums drift in their last bits, and a balance
    that should be zero (or a few cents) must be exactly that before the day-over-day ratio divides by
    it: 1e-13 instead of 0 is a ratio of 10^15, not "no ratio from zero". -#}
{% macro usd_balance(running_sum) -%}
    {{ return(adapter.dispatch('usd_balance', 'data_platform')(running_sum)) }}
{%- endmacro %}

{% macro default__usd_balance(running_sum) -%}
    round({{ running_sum }}, 2)
{%- endmacro %}

{% macro postgres__usd_balance(running_sum) -%}
    {{ running_sum }}
{%- endmacro %}


{#- True when a number is above zero and finite. Postgres numerics can hold NaN (greater than every
    number there) and Infinity; the other engines' decimals cannot. -#}
{% macro is_positive_number(column_name) -%}
    {{ return(adapter.dispatch('is_positive_number', 'data_platform')(column_name)) }}
{%- endmacro %}

{% macro default__is_positive_number(column_name) -%}
    {{ column_name }} > 0
{%- endmacro %}

{% macro postgres__is_positive_number(column_name) -%}
    {{ column_name }} > 0 and {{ column_name }} < 'Infinity'
{%- endmacro %}


{#- True when two USD amounts differ (nulls compare as values). Postgres sums numerics exactly; the
    other engines sum doubles, whose last bits depend on the order of the sum, and whose rounding grows
    with the amount: a millionth of a dollar apart, or 1e-11 of the amount for sums above $100,000 (a
    cent on a billion dollars), is the same amount there. (A $61.6M sum of 932,249 invoices differed by
    $0.0000016 between two orders at 12.7M invoices.) -#}
{% macro usd_differs(left, right) -%}
    {{ return(adapter.dispatch('usd_differs', 'data_platform')(left, right)) }}
{%- endmacro %}

{% macro default__usd_differs(left, right) -%}
    coalesce(
        abs(({{ left }}) - ({{ right }}))
        > greatest(0.000001, 0.00000000001 * greatest(abs({{ left }}), abs({{ right }}))),
        (({{ left }}) is null) <> (({{ right }}) is null)
    )
{%- endmacro %}

{% macro postgres__usd_differs(left, right) -%}
    ({{ left }}) is distinct from ({{ right }})
{%- endmacro %}
