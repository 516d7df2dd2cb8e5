import sys

from lavis_listwise_cli import main

sys.exit(main())
