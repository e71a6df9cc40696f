"""`python -m meddenoise ...` behaves exactly like the `meddenoise` command (torchrun launches it so)."""

import sys

from meddenoise.cli import main

if __name__ == "__main__":
    sys.exit(main())
