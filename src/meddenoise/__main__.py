"""`python -m meddenoise ...` behaves exactly like the `meddenoise` command (torchrun launches it so)."""

from meddenoise.cli import leave, main

if __name__ == "__main__":
    leave(main())
