#!/usr/bin/env python3
"""Per-organization balance alerts from the warehouse: `python alert_script.py --help`.

The code lives in data_platform/alerts/; this file is the command that the README and init.sh run.
"""

from data_platform.alerts.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
