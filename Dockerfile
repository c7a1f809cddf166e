# The pipeline image: Python + dbt + the loader and alert script. Runs init.sh as a non-root user.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DBT_SEND_ANONYMOUS_USAGE_STATS=false

WORKDIR /app

# Dependencies first (exact versions from the lock file) so code changes reuse this layer.
COPY requirements.lock ./
RUN pip install -r requirements.lock

RUN useradd --create-home --uid 10001 app
COPY data_platform ./data_platform
COPY alert_script.py init.sh ./
COPY .dbt ./.dbt
COPY --chown=app:app dbt ./dbt
# dbt's output (the docs site): a compose volume is created from it, so it must exist, owned by the user
RUN mkdir -p dbt/target && chown app:app dbt/target
# no exports in the image: compose bind-mounts the checkout's csv_data/ at /app/csv_data

USER app
EXPOSE 8080
ENTRYPOINT ["./init.sh"]
