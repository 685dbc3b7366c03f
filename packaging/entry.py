"""The bundle's program: every role of the application (window, --headless, worker) in one executable."""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()  # compute processes are started by running this program again
    from ilastik_desktop.cli.main import main

    sys.exit(main())
