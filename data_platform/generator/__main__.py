import sys

from data_platform.generator.cli import main

sys.exit(main())
