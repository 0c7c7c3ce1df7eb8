import sys

from yoloprune.cli import main

sys.exit(main())
