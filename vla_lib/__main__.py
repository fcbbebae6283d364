import sys

from vla_lib.cli import main

sys.exit(main())
