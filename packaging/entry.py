"""The bundle's program: every role of the application (window, --headless, worker) in one executable."""

import multiprocessing
import sys

from ilastik_desktop.runtime.frozen import use_user_kernel_cache

if __name__ == "__main__":
    use_user_kernel_cache()  # before numba is imported, here and in every process started from here
    multiprocessing.freeze_support()  # compute processes are started by running this program again
    from ilastik_desktop.cli.main import main

    sys.exit(main())
