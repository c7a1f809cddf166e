{#-
    Engine-specific SQL for dates, ids and numbers, behind adapter.dispatch: models call the plain
    macro, dbt picks `<adapter>__<name>` and falls back to `default__<name>`. USD amounts are exact
    decimals of cents on every engine (Postgres numeric; elsewhere to_usd's DECIMAL(38, 2), and sums in
    as many places as the rules' coefficients add), so every sum and balance is the same to the last
    digit on Postgres, DuckDB and Spark; only ratios are doubles outside Postgres.
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

{#- DuckDB divides decimals into doubles and Spark rounds a decimal quotient to a fixed number of
    places; a double is off by up to 1e-16 of the quotient: 77350.82 / 0.93877259 = 82395.69499999995
    in doubles would round to .70, where the exact quotient (82395.6949999999...) rounds to .69. So the
    cents are computed in integers: with a = the amount in cents and f = the rate in units of 1e-8,
    the amount in cents is a * 1e8 / f, rounded half away from zero = floor((2 |a| 1e8 + f) / 2f) with
    the amount's sign. Up to 16 digits of amount and a rate down to 0.00000001 that is at most 27
    digits of cents, within DECIMAL(38, 0). The floor is (n - n % d) / d, a division with no remainder:
    exact on an engine whose decimal division is exact when the quotient is a whole number (Spark,
    Postgres), not on DuckDB, whose `/` returns a double (its own version below). -#}
{% macro default__to_usd(amount, fx_rate) -%}
    {%- set numerator, denominator = usd_cents_division(amount, fx_rate, 'decimal(38, 0)') -%}
    {{ signed_usd(
        amount,
        'cast((' ~ numerator ~ ' - ' ~ numerator ~ ' % ' ~ denominator ~ ') / ' ~ denominator
        ~ ' as decimal(38, 0))'
    ) }}
{%- endmacro %}

{#- DuckDB's `/` always returns a double: its integer division `//` on 128-bit integers is exact, but
    twenty times slower than doubles. So the cents are the double quotient's, rounded, unless a half
    cent lies within 1e-15 of it: the quotient is four roundings (the two casts, the division and the
    product) of 2^-53 away from the exact one, under 4.5e-16 of it, so no half cent lies between them,
    and both round to the same cent (its fraction and rounding are exact on a double). From 1e15 cents,
    where the margin passes half a cent, every amount takes the exact path. -#}
{% macro duckdb__to_usd(amount, fx_rate) -%}
    {%- set quotient = '(abs(cast(' ~ amount ~ ' as double)) / cast(' ~ fx_rate ~ ' as double) * 100)' -%}
    {%- set numerator, denominator = usd_cents_division(amount, fx_rate, 'hugeint') -%}
    {{ signed_usd(
        amount,
        'case when ' ~ quotient ~ ' < 1e15 and abs(' ~ quotient ~ ' - floor(' ~ quotient ~ ') - 0.5) > 1e-15 * '
        ~ quotient ~ ' then cast(round(' ~ quotient ~ ') as bigint) else ' ~ numerator ~ ' // ' ~ denominator
        ~ ' end'
    ) }}
{%- endmacro %}

{#- The exact rounding of default__to_usd, as [numerator, denominator] in `integer_type`: the floor of
    their quotient is the amount's absolute value in cents, rounded half away from zero. -#}
{% macro usd_cents_division(amount, fx_rate, integer_type) -%}
    {%- set cents = 'cast(abs(cast(' ~ amount ~ ' as decimal(38, 2))) * 100 as ' ~ integer_type ~ ')' -%}
    {%- set rate = 'cast(cast(' ~ fx_rate ~ ' as decimal(38, 8)) * 100000000 as ' ~ integer_type ~ ')' -%}
    {{ return(['(2 * ' ~ cents ~ ' * 100000000 + ' ~ rate ~ ')', '(2 * ' ~ rate ~ ')']) }}
{%- endmacro %}

{#- A whole number of cents, the amount's absolute value in USD, as the USD amount with its sign. -#}
{% macro signed_usd(amount, absolute_cents) -%}
    cast(case when {{ amount }} < 0 then -1 else 1 end * {{ absolute_cents }} * 0.01 as decimal(38, 2))
{%- endmacro %}

{#- Postgres divides numerics exactly, but rounds the quotient to a scale of its own (16 significant
    digits, or the operands' scale if larger) before round() rounds it to the cent: 137998787.78 /
    1387.65432101 = 99447.52499999999981... became 99447.525000000000, then .53. At the dividend's 22
    places that first rounding cannot reach a half cent: with a = the amount in cents and f = the rate in
    units of 1e-8 (f < 1e18), the quotient a * 1e6 / f is a half cent or at least 1 / (200 f) > 5e-21 from
    one, and a rounding at 22 places moves it by at most 5e-23. -#}
{% macro postgres__to_usd(amount, fx_rate) -%}
    round({{ amount }}::numeric(40, 22) / {{ fx_rate }}, 2)
{%- endmacro %}


{#- The ratio of two USD amounts (null when the denominator is). Postgres divides numerics; Spark's
    decimal division of two sums would keep 6 places (a ratio of 0.0000004 read as 0), so elsewhere it
    is the quotient of the two amounts as doubles, within 1e-15 of the exact ratio, relatively. -#}
{% macro usd_ratio(numerator, denominator) -%}
    {{ return(adapter.dispatch('usd_ratio', 'data_platform')(numerator, denominator)) }}
{%- endmacro %}

{% macro default__usd_ratio(numerator, denominator) -%}
    cast({{ numerator }} as double) / cast({{ denominator }} as double)
{%- endmacro %}

{% macro postgres__usd_ratio(numerator, denominator) -%}
    ({{ numerator }}) / ({{ denominator }})
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
