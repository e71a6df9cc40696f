"""`python -m meddenoise ...` behaves exactly like the `meddenoise` command (torchrun launches it so)."""

import logging
import os
import sys

from meddenoise.cli import main

if __name__ == "__main__":
    code = main()
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        # A torchrun worker: everything is written and the process group is gone, but the interpreter's
        # final C++ destructors can still abort on gloo/TCPStore threads ("terminate called without an
        # active exception"), and torchrun would then report a finished run as failed. Leave without them.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)
