"""Command-line flags and environment variables, validated into one Settings object."""

from __future__ import annotations

import argparse
import difflib
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from urllib.parse import urlsplit

from data_platform import secrets
from data_platform.alerts import exit_codes
from data_platform.alerts.noise import NoiseSettings
from data_platform.alerts.records import MAX_UNCONFIRMED_ATTEMPTS
from data_platform.exports import date_argument

DEFAULT_THRESHOLD = Decimal("0.5")
DEFAULT_CONNECT_TIMEOUT = 10  # seconds (PGCONNECT_TIMEOUT unset); psycopg's own default is over two minutes
# Postgres numeric overflows long before Decimal does; no useful threshold comes near these bounds
MAX_THRESHOLD = Decimal(1_000_000)  # a 100,000,000% move
MAX_THRESHOLD_DECIMALS = 12
MAX_USD = Decimal(10) ** 15
MAX_SUPPRESS_DAYS = 366
MAX_DIGEST_OVER = 100_000
# more alerts than this for one destination in a run: one digest message instead
DEFAULT_DIGEST_OVER = 20


class ConfigError(ValueError):
    """The flags or environment cannot work; the message says what to change."""


@dataclass(frozen=True)
class HttpSettings:
    """How hard to try one webhook message before leaving it for the next run."""

    timeout: float = 10.0  # seconds per HTTP attempt
    retries: int = 3  # retries after the first attempt (429, 5xx, connection errors; never a timeout)
    backoff: float = 0.5  # exponential backoff factor for 5xx / connection errors, in seconds
    max_retry_after: float = 60.0  # longest Retry-After (429) honoured within a run
    slack_min_interval: float = 1.0  # seconds between two messages to one Slack webhook (its rate limit)


LOCK_TIMEOUT_MAX = 86_400  # ALERT_LOCK_TIMEOUT's largest value: a day


@dataclass(frozen=True)
class Settings:
    threshold: Decimal = DEFAULT_THRESHOLD
    include_from_zero: bool = False
    date: date | None = None
    since: date | None = None
    dry_run: bool = False
    webhook_url: str | None = None
    http: HttpSettings = HttpSettings()
    lock_timeout: float = 30.0  # seconds to wait for another run to finish
    noise: NoiseSettings = field(default_factory=NoiseSettings)
    digest_over: int = DEFAULT_DIGEST_OVER
    # the environment the routes' webhook variables are read from (routing.destinations); never shown
    environment: Mapping[str, str] = field(default_factory=dict, repr=False)


def _threshold(value: str) -> Decimal:
    # Decimal, not float: the rule compares against Postgres numeric, and 0.5 must mean exactly 0.5
    try:
        parsed = Decimal(value)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"expected a number such as 0.5, got {value!r}") from None
    if not parsed.is_finite() or not 0 < parsed <= MAX_THRESHOLD:
        raise argparse.ArgumentTypeError(
            f"the threshold must be a positive ratio up to {MAX_THRESHOLD} (0.5 = 50%), got {value!r}"
        )
    exponent = parsed.normalize().as_tuple().exponent  # an int for a finite number
    if isinstance(exponent, int) and -exponent > MAX_THRESHOLD_DECIMALS:
        raise argparse.ArgumentTypeError(
            f"the threshold takes at most {MAX_THRESHOLD_DECIMALS} decimal places, got {value!r}"
        )
    return parsed


# 1,000 or 1_000 read as 1000; a separator anywhere else (a decimal comma: 1,5) is an error, not 15
_GROUPED = re.compile(r"\s*[+-]?\d{1,3}(?:([,_])\d{3})(?:\1\d{3})*(?:\.\d*)?\s*")


def _usd(value: str) -> Decimal:
    try:
        if _GROUPED.fullmatch(value):
            parsed = Decimal(value.replace(",", "").replace("_", ""))
        elif "," in value or "_" in value:  # Decimal itself reads 1_0 as 10
            raise InvalidOperation
        else:
            parsed = Decimal(value)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(
            f"expected an amount in USD such as 1000 or 1,000.50, got {value!r}"
        ) from None
    if not parsed.is_finite() or not 0 <= parsed <= MAX_USD:
        raise argparse.ArgumentTypeError(f"expected an amount in USD from 0 to {MAX_USD:,}, got {value!r}")
    return parsed


def _whole(maximum: int):
    def parse(value: str) -> int:
        try:
            parsed = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
        if not 0 <= parsed <= maximum:
            raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {maximum}, got {value!r}")
        return parsed

    return parse


# flag -> (environment variable, parser, default): each noise control is both
NOISE_OPTIONS = {
    "--min-change-usd": ("ALERT_MIN_CHANGE_USD", _usd, NoiseSettings.min_change_usd),
    "--critical-threshold": ("ALERT_CRITICAL_THRESHOLD", _threshold, NoiseSettings.critical_threshold),
    "--critical-usd": ("ALERT_CRITICAL_USD", _usd, NoiseSettings.critical_usd),
    "--suppress-days": ("ALERT_SUPPRESS_DAYS", _whole(MAX_SUPPRESS_DAYS), NoiseSettings.suppress_days),
    "--digest-over": ("ALERT_DIGEST_OVER", _whole(MAX_DIGEST_OVER), DEFAULT_DIGEST_OVER),
}
# each followed by its default (NOISE_OPTIONS)
NOISE_HELP = {
    "--min-change-usd": "alert only when abs(balance - previous) is at least this many USD",
    "--critical-threshold": "severity critical when abs(balance change ratio) >= this, 1 = 100%%",
    "--critical-usd": "severity critical when abs(balance - previous) is above this in USD",
    "--suppress-days": (
        "do not alert an organization alerted in the last N days again unless its severity rises; "
        "suppressed alerts are recorded; 0 = off"
    ),
    "--digest-over": "more alerts than this for one destination in a run: one digest message",
}


def _apply_noise_environment(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    """Fill each noise flag not given on the command line from its variable, else its default. Read
    after parsing: a flag wins even over a malformed variable, and --help works whatever the variables."""
    for flag, (name, parse, default) in NOISE_OPTIONS.items():
        attribute = flag[2:].replace("-", "_")
        if getattr(args, attribute) is not None:
            continue
        raw = env.get(name, "").strip()
        try:
            setattr(args, attribute, parse(raw) if raw else default)
        except argparse.ArgumentTypeError as error:
            raise ConfigError(f"{name}: {error}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alert_script.py",
        description=(
            "Alert when an organization's balance moved by the threshold and the USD floor or more day over "
            "day, with why it moved. Reads marts.fct_organization_daily_financials and the drivers, "
            "organizations and routes marts; keeps its watermarks and alert history in the ops schema; "
            "posts to each route's webhook (the alert_routing seed; by default SLACK_WEBHOOK_URL, or the URL "
            "in the file SLACK_WEBHOOK_URL_FILE names), or prints to stdout when no route's webhook is set."
        ),
        # the exit codes as data_platform/alerts/cli.py returns them (its docstring has the detail)
        epilog=(
            f"Exit codes: {exit_codes.OK} all alerts delivered (or nothing to send); "
            f"{exit_codes.DELIVERY_FAILED} some delivery failed or went unanswered (retried on the next "
            "run), or alerts wait undelivered for a destination no route names any more, or, in a console "
            f"run, for a route's webhook; {exit_codes.ERROR} configuration or database error, or an "
            f"unexpected error; {exit_codes.GIVEN_UP} an alert given up after {MAX_UNCONFIRMED_ATTEMPTS} "
            "unanswered attempts (not sent again: check the channel; wins over "
            f"{exit_codes.DELIVERY_FAILED}); {exit_codes.BUSY} another alert run still held the lock after "
            f"ALERT_LOCK_TIMEOUT (nothing was sent: run again later); {exit_codes.INTERRUPTED} interrupted; "
            f"{exit_codes.TERMINATED} stopped by SIGTERM. Connection from PGHOST, PGPORT, PGUSER, "
            f"PGPASSWORD, PGDATABASE (and PGCONNECT_TIMEOUT, default {DEFAULT_CONNECT_TIMEOUT} s)."
        ),
    )
    parser.add_argument(
        "--threshold",
        type=_threshold,
        default=DEFAULT_THRESHOLD,
        help=f"alert when abs(balance change ratio) >= this (default {DEFAULT_THRESHOLD} = "
        f"{(DEFAULT_THRESHOLD * 100).normalize():f}%%)",
    )
    parser.add_argument(
        "--include-from-zero",
        action="store_true",
        help="also alert when the previous balance was 0 ('new balance' alerts); otherwise only counted",
    )
    days = parser.add_mutually_exclusive_group()
    days.add_argument("--date", type=date_argument, metavar="YYYY-MM-DD", help="process exactly this day")
    days.add_argument(
        "--since",
        type=date_argument,
        metavar="YYYY-MM-DD",
        help="backfill: process this day up to the latest day",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be sent; change nothing (no history rows, no watermark move, no HTTP)",
    )
    for flag, (name, parse, default) in NOISE_OPTIONS.items():
        parser.add_argument(
            flag, type=parse, help=f"{NOISE_HELP[flag]} (default {default}); environment {name}"
        )
    return parser


def _env_number(
    env: Mapping[str, str], name: str, default: float, *, minimum: float, maximum: float
) -> float:
    # bounded above too: a huge timeout or backoff overflows the socket / sleep call mid-run, and a
    # run's delivery retries must end in bounded time
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be a number from {minimum:g} to {maximum:g}, got {raw!r}")
    return value


def _env_count(env: Mapping[str, str], name: str, default: int, *, maximum: int) -> int:
    value = _env_number(env, name, default, minimum=0, maximum=maximum)
    if not float(value).is_integer():
        raise ConfigError(f"{name} must be a whole number, got {env[name].strip()!r}")
    return int(value)


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def _url_problem(url: str) -> str | None:
    """Why `url` cannot be a webhook, in words that never repeat it (it is a secret); None if fine."""
    if not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
        return "it contains spaces, control or non-ASCII characters"
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError: not a number up to 65535
    except ValueError:
        return "it does not parse as a URL"
    https_only = "it must start with https:// (plain http only to localhost)"
    if parts.scheme not in ("https", "http"):
        return https_only
    if not parts.hostname:
        return "it has no host"
    if port == 0:
        return "its port is 0"
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        return https_only  # the secret would cross the network in clear text
    return None  # https, or a stand-in on this machine (tests, a local relay)


def webhook_url(env: Mapping[str, str], name: str = "SLACK_WEBHOOK_URL") -> str | None:
    """The URL in the variable `name`, or in the file `name`_FILE names (Docker secrets); None if unset."""
    direct = env.get(name, "").strip()
    path = env.get(f"{name}_FILE", "").strip()
    try:
        from_file = secrets.resolve(env, [name])
    except secrets.SecretError as error:
        raise ConfigError(str(error)) from None
    if path:  # never empty: secrets refuses an empty or blank file
        url = from_file[name].strip()
        source = f"the file {name}_FILE names ({path})"
    elif direct:
        url, source = direct, name
    else:
        return None
    problem = _url_problem(url)
    if problem:
        # the value is never echoed: it is a secret
        raise ConfigError(
            f"{source} is set but is not a valid webhook URL: {problem}. Fix it, or unset it to print "
            "to stdout."
        )
    return url


def http_settings(env: Mapping[str, str]) -> HttpSettings:
    """The ALERT_HTTP_* and ALERT_SLACK_MIN_INTERVAL settings (ConfigError when one is invalid)."""
    return HttpSettings(
        timeout=_env_number(env, "ALERT_HTTP_TIMEOUT", HttpSettings.timeout, minimum=0.01, maximum=300),
        retries=_env_count(env, "ALERT_HTTP_RETRIES", HttpSettings.retries, maximum=10),
        backoff=_env_number(env, "ALERT_HTTP_BACKOFF", HttpSettings.backoff, minimum=0, maximum=60),
        max_retry_after=_env_number(
            env, "ALERT_HTTP_MAX_RETRY_AFTER", HttpSettings.max_retry_after, minimum=0, maximum=3600
        ),
        slack_min_interval=_env_number(
            env, "ALERT_SLACK_MIN_INTERVAL", HttpSettings.slack_min_interval, minimum=0, maximum=60
        ),
    )


def load(argv: Sequence[str] | None, env: Mapping[str, str]) -> Settings:
    """Parse flags (argparse exits 2 on bad usage) and the ALERT_* / SLACK_* environment."""
    args = build_parser().parse_args(argv)
    _apply_noise_environment(args, env)
    http = http_settings(env)
    noise = NoiseSettings(
        min_change_usd=args.min_change_usd,
        critical_threshold=args.critical_threshold,
        critical_usd=args.critical_usd,
        suppress_days=args.suppress_days,
    )
    return Settings(
        threshold=args.threshold,
        include_from_zero=args.include_from_zero,
        date=args.date,
        since=args.since,
        dry_run=args.dry_run,
        webhook_url=webhook_url(env),
        http=http,
        lock_timeout=_env_number(
            env, "ALERT_LOCK_TIMEOUT", Settings.lock_timeout, minimum=0, maximum=LOCK_TIMEOUT_MAX
        ),
        noise=noise,
        digest_over=args.digest_over,
        environment=dict(env),
    )


class _NamesRead(Mapping[str, str]):
    """An environment that remembers each name looked up in it."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.names: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.names.add(name)
        return self._env[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._env)

    def __len__(self) -> int:
        return len(self._env)


def setting_names() -> frozenset[str]:
    """The ALERT_* variables load() reads, as it looks them up in an empty environment: a new setting is
    known here without a second list to keep."""
    names = _NamesRead({})
    load([], names)
    return frozenset(name for name in names.names if name.startswith("ALERT_"))


def misspelt_settings(env: Mapping[str, str], route_variables: Iterable[str] = ()) -> list[str]:
    """A warning for each ALERT_* variable that no setting reads but that looks like a typo of one that
    does (a letter off, or its name cut short): set, it changes nothing. A route's webhook variable
    (`route_variables`, and its _FILE) is read, and any other ALERT_* name (another tool's) is left alone."""
    known = setting_names()
    read = {*route_variables, *(f"{name}_FILE" for name in route_variables)}
    warnings = []
    for name in sorted(env):
        if not name.startswith("ALERT_") or name in known or name in read:
            continue
        cut_short = sorted(setting for setting in known if setting.startswith(f"{name}_"))
        close = cut_short or difflib.get_close_matches(name, known, n=1, cutoff=0.9)
        if close:
            warnings.append(
                f"{name} is not a setting of the alert run and changes nothing; did you mean {close[0]}?"
            )
    return warnings
