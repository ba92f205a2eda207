"""Test fixtures that ship with genrl: the real adapters and rewards on tiny random weights.

Importing this package registers `tiny-random-sd3`, `tiny-random-flux`, `tiny-random-wan` and the `tiny-random-*`
rewards (genrl.testing.components), which `genrl bench SUITE --dry-run` and the tests use to run
a GPU suite's code paths on a CPU; `genrl.testing.builders` writes the folders they load.
Production code never imports it, except `genrl.build` when a config names one of these.
"""

from genrl.testing import components  # noqa: F401  (registers the names)
from genrl.testing.builders import *  # noqa: F401,F403
