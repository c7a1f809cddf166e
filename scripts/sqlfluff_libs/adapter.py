"""dbt's `adapter.dispatch` for SQLFluff's jinja templater (.sqlfluff: library_path).

SQLFluff renders the models without dbt; this picks a macro's `postgres__` implementation, else its
`default__` one, from the project's macros, so the linted SQL is the Postgres build's.
"""

from jinja2 import pass_context

ADAPTER_PREFIXES = ("postgres__", "default__")


def dispatch(macro_name, macro_namespace=None):
    @pass_context
    def dispatched(context, *args, **kwargs):
        for prefix in ADAPTER_PREFIXES:
            macro = context.get(prefix + macro_name)
            if macro is not None:
                return macro(*args, **kwargs)
        raise KeyError(f"no postgres__ or default__ implementation of the macro {macro_name}")

    return dispatched
