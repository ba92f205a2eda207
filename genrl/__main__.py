import sys

from genrl.cli import main

sys.exit(main())
