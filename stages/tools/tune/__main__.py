"""``python -m stages.tools.tune run|worker|best ...``: the commands of ``stages.tools.tune.cli``."""

import sys

from stages import KERAS_EXTRAS, finish, leave_out
from stages.tools.tune.cli import main

if sys.argv[1:2] == ["worker"]:
    leave_out(*KERAS_EXTRAS)  # a worker trains only; figures are drawn by `run`
finish(main())
